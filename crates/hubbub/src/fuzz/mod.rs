//! `hubbub fuzz`: fuzz targets for every parser of outside input, on the stable toolchain.
//!
//! Each target feeds generated inputs to the real function that reads outside input and
//! counts what panics:
//!
//! | target | function |
//! | --- | --- |
//! | `client-frame` | `hubbub_protocol::ClientFrame::parse` (every WebSocket text frame) |
//! | `token` | `hubbub_edge::auth::Auth::verify` (our access tokens and app tokens) |
//! | `config` | [`crate::config::Config::load`] (the TOML file and `HUBBUB_*` variables) |
//! | `media-type` | `hubbub_edge::media_type::parse_upload` and `serve_as` |
//! | `sse-streams` | `hubbub_edge::sse::parse_streams` (`?streams=` of `GET /v1/sse`) |
//! | `deliver-body` | the edge's internal `POST /internal/v1/deliver` handler (secret, JSON) |
//!
//! Inputs are a mix of (a) random bytes and strings, (b) structure-aware inputs built from the
//! real types (frames serialized with `ClientFrame::to_json`, JWTs signed with the right key,
//! a wrong key or none, TOML made of the real settings, batches of `ToEdge`), with
//! JSON-level edits (wrong types, odd numbers, deep nesting, long and unicode strings, NUL),
//! and (c) byte-level mutations of (b): flips, inserts, deletes, duplications, splices and
//! truncations. Input `i` of a run depends only on the seed and `i`, so
//! `--target T --seed S --skip I --inputs 1` replays exactly the input a run reports.
//!
//! Besides panics, each target checks a few properties of what the parser accepts (an
//! accepted frame serializes and parses back to itself, an accepted `Content-Disposition`
//! carries only safe characters, ...); a failed check is a panic too. Bounded allocation is
//! checked with the process's peak resident set (`VmHWM`), reset (`/proc/self/clear_refs`)
//! and read before each target and read after it; `--max-rss-growth-mib` bounds the growth.
//! A stack overflow would abort the process rather than panic: the parsers bound their
//! recursion (serde_json at 128 levels, toml at 80), and the generators nest deeper than that.
//!
//! `hubbub fuzz` is run by hand (10 million inputs per target, figures in
//! docs/benchmarks.md); a short run of every target is part of the test suite.

use crate::config::Config;
use anyhow::Context;
use fastrand::Rng;
use hubbub_edge::auth::{Auth, AuthConfig};
use hubbub_edge::media_type::{ALLOWED, parse_upload, serve_as};
use hubbub_protocol::{
    Attachment, ClientFrame, ConversationKind, ErrorCode, IdempotencyKey, Request,
    SetPresenceStatus, TypingState,
};
use serde_json::Value;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod config;
#[cfg(feature = "cluster")]
mod deliver;
mod frame;
mod inputs;
mod media;
mod token;

use config::ConfigTarget;
#[cfg(feature = "cluster")]
use deliver::DeliverTarget;
use frame::ClientFrameTarget;
use inputs::*;
use media::{MediaTypeTarget, SseTarget};
use token::TokenTarget;

/// Every target, in the order `hubbub fuzz` runs them.
#[cfg(feature = "cluster")]
pub const TARGETS: &[&str] = &[
    "client-frame",
    "token",
    "config",
    "media-type",
    "sse-streams",
    "deliver-body",
];
/// Every target, in the order `hubbub fuzz` runs them (`deliver-body`, the edge link's
/// receiving end, comes with the `cluster` feature).
#[cfg(not(feature = "cluster"))]
pub const TARGETS: &[&str] = &[
    "client-frame",
    "token",
    "config",
    "media-type",
    "sse-streams",
];

/// The longest input the mutations grow to, bytes.
const MAX_INPUT: usize = 256 * 1024;

/// `hubbub fuzz` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// One target (client-frame, token, config, media-type, sse-streams, deliver-body);
    /// every target when absent.
    #[arg(long)]
    pub target: Option<String>,
    /// Inputs per target.
    #[arg(long, default_value_t = 10_000_000)]
    pub inputs: u64,
    /// The generator's seed: the same seed gives the same inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Start at this input index (with `--inputs 1`, replays one reported input).
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Fail a target that grows the peak resident set by more than this, MiB.
    #[arg(long, default_value_t = 256)]
    pub max_rss_growth_mib: u64,
}

/// The first input of a run that panicked.
#[derive(Debug, Clone)]
pub struct PanicReport {
    /// Its index (replay with `--skip`).
    pub index: u64,
    /// The input, each part escaped (`\xNN` for bytes that are not printable ASCII).
    pub input: String,
    /// Where and why it panicked.
    pub message: String,
}

/// What one target's run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs fed.
    pub inputs: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    /// Inputs that panicked (or failed a property check).
    pub panics: u64,
    /// Wall time of the run, setup excluded.
    pub seconds: f64,
    /// Resident set when the run starts (after setup; the peak is reset to it where Linux
    /// allows), MiB (0 when unknown).
    pub rss_before_mib: f64,
    /// Peak resident set after the run, MiB (0 when unknown).
    pub rss_peak_mib: f64,
    /// The first panic.
    pub first_panic: Option<PanicReport>,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.seconds.max(1e-9)
    }

    /// How much the run grew the peak resident set, MiB.
    pub fn rss_growth_mib(&self) -> f64 {
        (self.rss_peak_mib - self.rss_before_mib).max(0.0)
    }
}

/// Run `hubbub fuzz`: every selected target, one line each; an error if any panicked or
/// grew the resident set past the limit.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    println!(
        "{:<13} {:>11} {:>11} {:>7} {:>9} {:>10} {:>13} {:>11}",
        "target",
        "inputs",
        "accepted",
        "panics",
        "seconds",
        "inputs/s",
        "peak RSS MiB",
        "growth MiB"
    );
    let mut failed = Vec::new();
    for name in targets {
        let r = run_target(name, args.skip, args.inputs, args.seed)?;
        println!(
            "{:<13} {:>11} {:>11} {:>7} {:>9.1} {:>10.0} {:>13.1} {:>11.1}",
            r.target,
            r.inputs,
            r.accepted,
            r.panics,
            r.seconds,
            r.rate(),
            r.rss_peak_mib,
            r.rss_growth_mib()
        );
        if let Some(p) = &r.first_panic {
            println!(
                "  first panic at input {} (replay: hubbub fuzz --target {} --seed {} --skip {} --inputs 1)\n  {}\n  input: {}",
                p.index,
                r.target,
                args.seed,
                p.index,
                p.message.replace('\n', "\n  "),
                p.input
            );
            failed.push(format!("{}: {} panics", r.target, r.panics));
        }
        if r.rss_growth_mib() > args.max_rss_growth_mib as f64 {
            failed.push(format!(
                "{}: peak RSS grew by {:.1} MiB (limit {})",
                r.target,
                r.rss_growth_mib(),
                args.max_rss_growth_mib
            ));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("fuzzing failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Feed inputs `skip..skip + inputs` of `seed` to one target.
pub fn run_target(name: &str, skip: u64, inputs: u64, seed: u64) -> anyhow::Result<Report> {
    let mut target: Box<dyn Target> = match name {
        "client-frame" => Box::new(ClientFrameTarget),
        "token" => Box::new(TokenTarget::new(seed)?),
        "config" => Box::new(ConfigTarget::new()),
        "media-type" => Box::new(MediaTypeTarget),
        "sse-streams" => Box::new(SseTarget),
        #[cfg(feature = "cluster")]
        "deliver-body" => Box::new(DeliverTarget::new()),
        other => anyhow::bail!("unknown target {other:?}; targets: {}", TARGETS.join(", ")),
    };
    let target_name = TARGETS
        .iter()
        .copied()
        .find(|t| *t == name)
        .unwrap_or("unknown");
    // Splice donors: structure-aware inputs that depend on the seed only.
    let mut corpus_rng = Rng::with_seed(seed);
    let corpus: Vec<Input> = (0..64)
        .map(|_| target.structured(&mut corpus_rng))
        .collect();
    install_quiet_hook();
    reset_peak_rss();
    let rss_before = peak_rss_kib();
    let started = Instant::now();
    let (mut accepted, mut panics, mut first_panic) = (0u64, 0u64, None);
    for index in skip..skip.saturating_add(inputs) {
        let mut rng = Rng::with_seed(input_seed(seed, index));
        let input = generate(target.as_mut(), &mut rng, &corpus);
        QUIET.with(|q| q.set(true));
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.feed(&input.parts)));
        QUIET.with(|q| q.set(false));
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(payload) => {
                panics += 1;
                if first_panic.is_none() {
                    let message = LAST_PANIC
                        .with(|l| l.borrow_mut().take())
                        .unwrap_or_else(|| panic_text(payload.as_ref()));
                    first_panic = Some(PanicReport {
                        index,
                        input: input.escaped(),
                        message,
                    });
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = peak_rss_kib();
    Ok(Report {
        target: target_name,
        inputs,
        accepted,
        panics,
        seconds,
        rss_before_mib: rss_before.unwrap_or(0) as f64 / 1024.0,
        rss_peak_mib: rss_after.unwrap_or(0) as f64 / 1024.0,
        first_panic,
    })
}

// ---------------------------------------------------------------------------------------
// The harness: panics, resident set, inputs.

thread_local! {
    /// Whether this thread is feeding a fuzz input (its panics are counted, not printed).
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The last panic of this thread while quiet, with its location.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install, once per process, a panic hook that keeps quiet on threads feeding a fuzz input
/// (remembering the panic) and hands every other panic to the hook that was there before.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|l| *l.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Reset the process's peak resident set to its current one (Linux 4.0 and later; elsewhere
/// the peak stays the process's), so each target's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set (`VmHWM`), KiB; `None` off Linux.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The seed of input `index` of a run: inputs are independent of one another.
fn input_seed(seed: u64, index: u64) -> u64 {
    // splitmix64 of the pair.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One input: a few byte strings whose meaning is the target's (a frame; a TOML file then
/// environment names and values; a header then a body ...).
#[derive(Debug, Clone, PartialEq)]
struct Input {
    parts: Vec<Vec<u8>>,
}

impl Input {
    fn one(part: impl Into<Vec<u8>>) -> Self {
        Input {
            parts: vec![part.into()],
        }
    }

    /// Every part escaped, at most 4,096 characters each.
    fn escaped(&self) -> String {
        let show = |p: &Vec<u8>| {
            let e = p.escape_ascii().to_string();
            if e.len() > 4096 {
                format!("b\"{}\"... ({} bytes)", &e[..4096], p.len())
            } else {
                format!("b\"{e}\"")
            }
        };
        self.parts.iter().map(show).collect::<Vec<_>>().join(", ")
    }
}

/// A fuzz target: how to build structure-aware inputs, and the parser to feed.
trait Target {
    /// A structure-aware input, built from the real types.
    fn structured(&mut self, rng: &mut Rng) -> Input;
    /// A random input (random bytes or strings over an alphabet the parser cares about).
    fn random(&mut self, rng: &mut Rng) -> Input {
        Input::one(random_bytes(rng, self.alphabet()))
    }
    /// The characters that mean something to this parser.
    fn alphabet(&self) -> &'static [u8] {
        JSON_ALPHABET
    }
    /// Feed one input; true when the parser accepted it. Panics on a failed property.
    fn feed(&mut self, parts: &[Vec<u8>]) -> bool;
}

/// One input of a run: 30 % random, 30 % structure-aware, 40 % a mutation of a
/// structure-aware one (fresh, or from the corpus).
fn generate(target: &mut dyn Target, rng: &mut Rng, corpus: &[Input]) -> Input {
    match rng.u8(0..10) {
        0..=2 => target.random(rng),
        3..=5 => target.structured(rng),
        _ => {
            let mut input = if rng.u8(0..4) == 0 {
                corpus[rng.usize(..corpus.len())].clone()
            } else {
                target.structured(rng)
            };
            mutate(rng, &mut input, corpus);
            input
        }
    }
}

#[cfg(test)]
mod tests {
    use super::frame::any_request;
    use super::token::b64url;
    use super::*;

    /// A short run of one target: no panics, and the structure-aware inputs get through the
    /// parser now and then.
    fn short_run(name: &str) {
        let r = run_target(name, 0, 20_000, 20261130).expect("target");
        assert_eq!(r.panics, 0, "{name}: {:?}", r.first_panic);
        assert!(r.accepted > 0, "{name}: nothing accepted");
        assert!(r.accepted < r.inputs, "{name}: nothing refused");
    }

    #[test]
    fn short_run_client_frame() {
        short_run("client-frame");
    }

    #[test]
    fn short_run_token() {
        short_run("token");
    }

    #[test]
    fn short_run_config() {
        short_run("config");
    }

    #[test]
    fn short_run_media_type() {
        short_run("media-type");
    }

    #[test]
    fn short_run_sse_streams() {
        short_run("sse-streams");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn short_run_deliver_body() {
        short_run("deliver-body");
    }

    #[test]
    fn every_target_has_a_short_run() {
        assert_eq!(
            TARGETS.len(),
            if cfg!(feature = "cluster") { 6 } else { 5 },
            "add a short_run_* test for the new target"
        );
    }

    /// Structure-aware frames cover every request type.
    #[test]
    fn generated_requests_cover_every_type() {
        let mut rng = Rng::with_seed(7);
        let seen: std::collections::BTreeSet<&str> = (0..2000)
            .map(|_| any_request(&mut rng).type_name())
            .collect();
        let all: std::collections::BTreeSet<&str> = Request::TYPES.iter().copied().collect();
        assert_eq!(seen, all);
    }

    /// The generated valid tokens verify: the token path past the signature is exercised.
    #[test]
    fn valid_tokens_of_both_kinds_verify() {
        let mut t = TokenTarget::new(3).expect("target");
        let mut rng = Rng::with_seed(3);
        let (mut ours, mut app) = (0, 0);
        for _ in 0..3000 {
            let input = t.structured(&mut rng);
            let token = lossy(&input.parts[0]).into_owned();
            if let Ok(v) = t.auth.verify(&token) {
                if v.app { app += 1 } else { ours += 1 }
            }
        }
        assert!(ours > 0 && app > 0, "ours {ours}, app {app}");
    }

    #[test]
    fn the_example_file_yields_every_setting() {
        let t = ConfigTarget::new();
        let names: Vec<String> = t
            .settings
            .iter()
            .map(|s| format!("{}.{}", s.section.as_deref().unwrap_or(""), s.key))
            .collect();
        for expected in [
            ".listen",
            ".admin_listen",
            "auth.app_hmac_secret",
            "limits.burst",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let mut t = ClientFrameTarget;
        let corpus = vec![Input::one("{}")];
        let a = generate(&mut t, &mut Rng::with_seed(input_seed(5, 9)), &corpus);
        let b = generate(&mut t, &mut Rng::with_seed(input_seed(5, 9)), &corpus);
        assert_eq!(a, b);
    }

    #[test]
    fn base64url_matches_the_rfc_examples() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }
}
