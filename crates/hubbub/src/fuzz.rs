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
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use fastrand::Rng;
use hubbub_edge::auth::{Auth, AuthConfig};
use hubbub_edge::media_type::{ALLOWED, parse_upload, serve_as};
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{
    Attachment, ClientFrame, Comment, Conversation, ConversationKind, ConversationSummary,
    ErrorCode, IdempotencyKey, Message, NotificationKind, Post, Presence, PresenceStatus,
    ReplyData, Request, ServerFrame, SetPresenceStatus, TopWriter, TypingState, UserRef,
};
use hubbub_registry::distributed::SECRET_HEADER;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Every target, in the order `hubbub fuzz` runs them.
pub const TARGETS: &[&str] = &[
    "client-frame",
    "token",
    "config",
    "media-type",
    "sse-streams",
    "deliver-body",
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

const JSON_ALPHABET: &[u8] = b"{}[]\":,0123456789.eE+-tfnrulsa \\u\"\n\t\x00";
const TOML_ALPHABET: &[u8] = b"[]{}=\"'.,#\n\r\t _-+0123456789eEinfatruslx:TZ\\";
const HEADER_ALPHABET: &[u8] = b"imageaudiovideopngjpeg/;=,\" \t\r\n+-.*";
const STREAMS_ALPHABET: &[u8] = b"post:,P1_-x \x00";
const B64_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";

/// Random bytes: anything, printable ASCII, the parser's alphabet, or unicode.
fn random_bytes(rng: &mut Rng, alphabet: &[u8]) -> Vec<u8> {
    let len = random_len(rng);
    match rng.u8(0..4) {
        0 => {
            let mut b = vec![0u8; len];
            rng.fill(&mut b);
            b
        }
        1 => (0..len).map(|_| rng.u8(0x20..0x7f)).collect(),
        2 => (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect(),
        _ => (0..len)
            .map(|_| any_char(rng))
            .collect::<String>()
            .into_bytes(),
    }
}

/// A length: mostly short, sometimes a few KiB, rarely up to 64 KiB.
fn random_len(rng: &mut Rng) -> usize {
    match rng.u8(0..20) {
        0 => rng.usize(0..65_536),
        1..=3 => rng.usize(0..4096),
        _ => rng.usize(0..64),
    }
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

/// A character, biased to the ones parsers trip on.
fn any_char(rng: &mut Rng) -> char {
    const ODD: &[char] = &[
        '\0',
        '"',
        '\\',
        '\n',
        '\r',
        '\t',
        '\u{7f}',
        '\u{80}',
        'é',
        'ß',
        '日',
        '𝄞',
        '😀',
        '\u{200b}',
        '\u{202e}',
        '\u{feff}',
        '\u{fffd}',
        '\u{10ffff}',
        ',',
        ';',
        ':',
        '/',
        '=',
        '.',
        '%',
        ' ',
    ];
    match rng.u8(0..4) {
        0 => *pick(rng, ODD),
        1 => rng.char(..),
        _ => rng.alphanumeric(),
    }
}

/// A string for a field: ids, empty, boundary lengths, unicode, NUL, now and then long.
fn any_string(rng: &mut Rng) -> String {
    match rng.u8(0..64) {
        0..=1 => String::new(),
        2 => "x".repeat(*pick(rng, &[63, 64, 65, 80, 255, 256, 257, 4000, 4001])),
        3 => "é".repeat(rng.usize(0..2100)),
        4..=5 => "\0".repeat(rng.usize(1..8)),
        6..=15 => (0..rng.usize(0..40)).map(|_| any_char(rng)).collect(),
        16 => "😀".repeat(rng.usize(1..100)),
        17..=19 => pick(
            rng,
            &["-0", "1e9", "null", "true", "[]", "{}", "\"", "\\u0000"],
        )
        .to_string(),
        20 => "a".repeat(rng.usize(0..20_000)),
        _ => format!(
            "{}{}",
            pick(rng, &["c", "u", "m", "p", "md", "s", ""]),
            rng.u32(..)
        ),
    }
}

/// An unsigned number, biased to the boundaries.
fn any_u64(rng: &mut Rng) -> u64 {
    match rng.u8(0..4) {
        0 => *pick(
            rng,
            &[
                0,
                1,
                49,
                50,
                51,
                100,
                101,
                u32::MAX as u64,
                u32::MAX as u64 + 1,
                i64::MAX as u64,
                i64::MAX as u64 + 1,
                u64::MAX,
            ],
        ),
        1 => rng.u64(..),
        _ => rng.u64(0..1000),
    }
}

fn any_u32(rng: &mut Rng) -> u32 {
    match rng.u8(0..3) {
        0 => *pick(rng, &[0, 1, 50, 100, 101, u32::MAX]),
        1 => rng.u32(..),
        _ => rng.u32(0..200),
    }
}

fn any_i64(rng: &mut Rng) -> i64 {
    match rng.u8(0..3) {
        0 => *pick(rng, &[0, -1, 1, i64::MIN, i64::MAX, 1_700_000_000_000]),
        1 => rng.i64(..),
        _ => rng.i64(0..2_000_000_000_000),
    }
}

fn maybe<T>(rng: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    if rng.bool() { Some(f(rng)) } else { None }
}

/// A list of strings: mostly a few, sometimes hundreds (at most 64 KiB of them).
fn strings(rng: &mut Rng) -> Vec<String> {
    let n = match rng.u8(0..16) {
        0 => rng.usize(0..400),
        _ => rng.usize(0..5),
    };
    let (mut out, mut bytes) = (Vec::with_capacity(n), 0);
    while out.len() < n && bytes < 64 * 1024 {
        let s = any_string(rng);
        bytes += s.len();
        out.push(s);
    }
    out
}

/// A JSON number literal that serde_json's `Value` cannot hold, or an odd one.
fn odd_number(rng: &mut Rng) -> &'static str {
    pick::<&'static str>(
        rng,
        &[
            "1e999",
            "-1e999",
            "-0",
            "0.0",
            "1.5",
            "-1",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "1e-400",
            "00",
            "01",
            "1.",
            ".5",
            "+1",
            "0x10",
            "NaN",
            "Infinity",
            "4102444800.0",
            "9999999999999999999999999999999999999999",
        ],
    )
}

/// A random JSON value, at most `depth` deep.
fn any_json(rng: &mut Rng, depth: u32) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.u8(0..kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => Value::from(any_u64(rng)),
        3 => Value::from(any_i64(rng)),
        4 => Value::String(any_string(rng)),
        5 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| any_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(0..4))
                .map(|_| (field_name(rng), any_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

fn field_name(rng: &mut Rng) -> String {
    const NAMES: &[&str] = &[
        "type",
        "id",
        "kind",
        "seq",
        "user",
        "session",
        "frames",
        "frame",
        "data",
        "text",
        "conversation",
        "members",
        "post",
        "posts",
        "users",
        "words",
        "after_seq",
        "limit",
        "before",
        "code",
        "reason",
        "origin_ms",
        "message",
        "status",
        "items",
        "top",
    ];
    if rng.u8(0..4) == 0 {
        any_string(rng)
    } else {
        pick(rng, NAMES).to_string()
    }
}

/// `[[[...]]]` or `{"a":{"a":...}}`, deeper than any parser's recursion limit sometimes.
fn deep_json(rng: &mut Rng) -> String {
    let n = match rng.u8(0..4) {
        0 => rng.usize(100..5000),
        _ => rng.usize(1..200),
    };
    if rng.bool() {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    } else {
        format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
    }
}

/// Edit a JSON document at the value level, then maybe textually: a value of the wrong
/// type, a field removed or added, odd numbers, deep nesting, duplicate keys.
fn mutate_json(rng: &mut Rng, doc: &mut Value) -> String {
    for _ in 0..rng.usize(1..4) {
        let node = random_node(rng, doc);
        match rng.u8(0..6) {
            0 => *node = any_json(rng, 3),
            1 => {
                if let Value::Object(map) = node
                    && !map.is_empty()
                {
                    let k = map.keys().nth(rng.usize(..map.len())).cloned();
                    if let Some(k) = k {
                        map.remove(&k);
                    }
                }
            }
            2 => {
                if let Value::Object(map) = node {
                    map.insert(field_name(rng), any_json(rng, 2));
                }
            }
            3 => {
                if let Value::Array(items) = node
                    && let Some(first) = items.first().cloned()
                {
                    // Many copies, within 256 KiB.
                    let size = first.to_string().len().max(1);
                    let n = rng.usize(1..300).min(MAX_INPUT / size);
                    items.extend(std::iter::repeat_n(first, n));
                }
            }
            4 => *node = Value::String(any_string(rng)),
            _ => {
                if let Value::Object(map) = node {
                    map.insert("type".into(), Value::String(any_type(rng)));
                }
            }
        }
    }
    let mut text = doc.to_string();
    match rng.u8(0..8) {
        // A number the typed parsers read differently.
        0 => {
            let spots: Vec<usize> = text
                .match_indices(':')
                .map(|(i, _)| i + 1)
                .filter(|&i| {
                    text.as_bytes()
                        .get(i)
                        .is_some_and(|b| b.is_ascii_digit() || *b == b'-')
                })
                .collect();
            if let Some(&at) = spots.get(rng.usize(..spots.len().max(1))) {
                let end = text[at..]
                    .find(|c: char| !(c.is_ascii_digit() || "-+.eE".contains(c)))
                    .map_or(text.len(), |e| at + e);
                text.replace_range(at..end, odd_number(rng));
            }
        }
        // A duplicate key.
        1 if text.starts_with('{') => {
            let dup = format!(
                "\"{}\":{},",
                field_name(rng).replace('"', ""),
                any_json(rng, 1)
            );
            text.insert_str(1, &dup);
        }
        // Deep nesting in a field.
        2 if text.starts_with('{') => {
            let deep = format!(
                "\"{}\":{},",
                field_name(rng).replace('"', ""),
                deep_json(rng)
            );
            text.insert_str(1, &deep);
        }
        // The document wrapped, or trailing garbage.
        3 => {
            text = match rng.u8(0..3) {
                0 => format!("[{text}]"),
                1 => format!("{text}{text}"),
                _ => format!(" \n{text} \t"),
            }
        }
        _ => {}
    }
    text
}

fn any_type(rng: &mut Rng) -> String {
    match rng.u8(0..4) {
        0 => any_string(rng),
        1 => pick(
            rng,
            &["reply", "events", "engagement", "close", "Reply", ""],
        )
        .to_string(),
        _ => pick(rng, Request::TYPES).to_string(),
    }
}

/// A random node of a JSON document (the root included).
fn random_node<'a>(rng: &mut Rng, mut node: &'a mut Value) -> &'a mut Value {
    enum Step {
        Key(String),
        Index(usize),
    }
    loop {
        if rng.u8(0..3) == 0 {
            return node;
        }
        let step = match &*node {
            Value::Object(map) if !map.is_empty() => map
                .keys()
                .nth(rng.usize(..map.len()))
                .cloned()
                .map(Step::Key),
            Value::Array(items) if !items.is_empty() => Some(Step::Index(rng.usize(..items.len()))),
            _ => None,
        };
        node = match step {
            Some(Step::Key(k)) => &mut node[k.as_str()],
            Some(Step::Index(i)) => &mut node[i],
            None => return node,
        };
    }
}

/// Byte-level mutations of one input: 1 to 8 of flip, set, insert, delete, duplicate, splice
/// (from a corpus input), truncate; sometimes a part added or dropped.
fn mutate(rng: &mut Rng, input: &mut Input, corpus: &[Input]) {
    const TOKENS: &[&[u8]] = &[
        b"null",
        b"true",
        b"1e999",
        b"-1",
        b"\\u0000",
        b"\\ud800",
        b"\"",
        b"{}",
        b"[]",
        b",",
        b":",
        b".",
        b"=",
        b"__",
        b"post:",
        b"\r\n",
        b"\xc3\xa9",
        b"\xf0\x9f\x98\x80",
        b"\xff",
        b"\xed\xa0\x80",
        b"\x00",
        b"[[",
        b"]]",
        b"'''",
        b"\"\"\"",
        b";",
        b"/",
    ];
    if input.parts.is_empty() {
        input.parts.push(Vec::new());
    }
    match rng.u8(0..16) {
        0 => input.parts.push(random_bytes(rng, JSON_ALPHABET)),
        1 if input.parts.len() > 1 => {
            let i = rng.usize(..input.parts.len());
            input.parts.remove(i);
        }
        _ => {}
    }
    for _ in 0..rng.usize(1..=8) {
        let p = rng.usize(..input.parts.len());
        let part = &mut input.parts[p];
        let len = part.len();
        match rng.u8(0..8) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                part[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                part[i] = *pick(rng, b"\x00\xff\x7f\"\\{}[],:.=;/\n0 \xc3\x80");
            }
            2 => {
                let at = rng.usize(..=len);
                let token = *pick(rng, TOKENS);
                part.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let at = rng.usize(..len);
                let end = (at + rng.usize(1..=16.min(len - at).max(1))).min(len);
                part.drain(at..end);
            }
            4 if len > 0 && len < MAX_INPUT => {
                let at = rng.usize(..len);
                let end = (at + rng.usize(1..=64)).min(len);
                let copy: Vec<u8> = part[at..end].to_vec();
                let times = rng.usize(1..=4);
                let to = rng.usize(..=len);
                for _ in 0..times {
                    part.splice(to..to, copy.iter().copied());
                }
            }
            5 => {
                let donor = &corpus[rng.usize(..corpus.len())];
                if let Some(d) = donor.parts.get(rng.usize(..donor.parts.len().max(1))) {
                    let at = rng.usize(..=len);
                    let from = rng.usize(..=d.len());
                    part.truncate(at);
                    part.extend_from_slice(&d[from..]);
                }
            }
            6 if len > 0 => {
                let at = rng.usize(..len);
                part.truncate(at);
            }
            _ => {
                let at = rng.usize(..=len);
                let mut extra = vec![0u8; rng.usize(1..=8)];
                rng.fill(&mut extra);
                part.splice(at..at, extra);
            }
        }
        part.truncate(MAX_INPUT);
    }
}

fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

// ---------------------------------------------------------------------------------------
// client-frame: ClientFrame::parse.

struct ClientFrameTarget;

fn any_attachments(rng: &mut Rng) -> Option<Vec<Attachment>> {
    maybe(rng, |rng| {
        (0..rng.usize(0..6))
            .map(|_| Attachment {
                media: any_string(rng),
            })
            .collect()
    })
}

fn any_key(rng: &mut Rng) -> Option<IdempotencyKey> {
    maybe(rng, |rng| IdempotencyKey::try_from(any_string(rng)).ok()).flatten()
}

/// A request of every type, with generated fields.
fn any_request(rng: &mut Rng) -> Request {
    let s = any_string;
    match rng.usize(..Request::TYPES.len()) {
        0 => Request::Sync {
            after_seq: any_u64(rng),
        },
        1 => Request::Ack { seq: any_u64(rng) },
        2 => Request::Auth {
            access_token: s(rng),
        },
        3 => Request::ConversationCreate {
            kind: if rng.bool() {
                ConversationKind::Direct
            } else {
                ConversationKind::Group
            },
            members: strings(rng),
            title: maybe(rng, s),
            ephemeral: maybe(rng, |r| r.bool()),
            idempotency_key: any_key(rng),
        },
        4 => Request::ConversationList {},
        5 => Request::ConversationGet {
            conversation: s(rng),
        },
        6 => Request::ConversationAdd {
            conversation: s(rng),
            user: s(rng),
        },
        7 => Request::ConversationRemove {
            conversation: s(rng),
            user: s(rng),
        },
        8 => Request::ConversationLeave {
            conversation: s(rng),
        },
        9 => Request::MessageSend {
            conversation: s(rng),
            client_msg_id: s(rng),
            text: s(rng),
            attachments: any_attachments(rng),
        },
        10 => Request::MessageHistory {
            conversation: s(rng),
            before: maybe(rng, s),
            limit: maybe(rng, any_u32),
        },
        11 => Request::MessageSearch {
            query: s(rng),
            conversation: maybe(rng, s),
        },
        12 => Request::MessageRead {
            conversation: s(rng),
            message: s(rng),
        },
        13 => Request::Typing {
            conversation: s(rng),
            state: if rng.bool() {
                TypingState::Start
            } else {
                TypingState::Stop
            },
        },
        14 => Request::PresenceSet {
            status: *pick(
                rng,
                &[
                    SetPresenceStatus::Online,
                    SetPresenceStatus::Away,
                    SetPresenceStatus::Invisible,
                ],
            ),
        },
        15 => Request::PresenceWatch {
            users: strings(rng),
        },
        16 => Request::PresenceUnwatch {
            users: strings(rng),
        },
        17 => Request::BlockAdd { user: s(rng) },
        18 => Request::BlockRemove { user: s(rng) },
        19 => Request::BlockList {},
        20 => Request::PostCreate {
            text: s(rng),
            attachments: any_attachments(rng),
            idempotency_key: any_key(rng),
        },
        21 => Request::PostDelete { post: s(rng) },
        22 => Request::CommentCreate {
            post: s(rng),
            text: s(rng),
            idempotency_key: any_key(rng),
        },
        23 => Request::PostLike { post: s(rng) },
        24 => Request::PostUnlike { post: s(rng) },
        25 => Request::Follow { user: s(rng) },
        26 => Request::Unfollow { user: s(rng) },
        27 => Request::TimelineGet {
            before: maybe(rng, s),
            limit: maybe(rng, any_u32),
        },
        28 => Request::PostWatch {
            posts: strings(rng),
        },
        29 => Request::PostUnwatch {
            posts: strings(rng),
        },
        _ => Request::CommentTyping {
            post: s(rng),
            words: any_u32(rng),
        },
    }
}

impl Target for ClientFrameTarget {
    fn structured(&mut self, rng: &mut Rng) -> Input {
        let frame = ClientFrame {
            id: maybe(rng, any_string),
            request: any_request(rng),
        };
        let text = frame.to_json();
        if rng.bool() {
            return Input::one(text);
        }
        let mut doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Input::one(mutate_json(rng, &mut doc))
    }

    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let text = lossy(parts.first().map_or(&[][..], Vec::as_slice));
        match ClientFrame::parse(&text) {
            Ok(frame) => {
                // An accepted frame serializes to a frame that parses back to itself.
                let again = ClientFrame::parse(&frame.to_json());
                assert_eq!(again.as_ref(), Ok(&frame), "frame does not round-trip");
                true
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                false
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// token: Auth::verify.

const KID: &str = "kfuzz";
const APP_SECRET: &str = "fuzz-app-secret-0123456789abcdef-0123456789";
const APP_AUDIENCE: &str = "fuzz-app";
/// 2100-01-01: far enough for every generated "valid" token, and the same every run.
const FAR_EXP: u64 = 4_102_444_800;

struct TokenTarget {
    auth: Auth,
    our_secret: String,
    _dir: TempDir,
    // Keeps the store's writer alive while `auth` holds the store.
    _runtime: tokio::runtime::Runtime,
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("hubbub-fuzz-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TokenTarget {
    fn new(seed: u64) -> anyhow::Result<Self> {
        let dir = TempDir::new("token")?;
        // Our signing key, from the seed, so a run's tokens are the same every time.
        let mut rng = Rng::with_seed(seed);
        let our_secret: String = (0..64).map(|_| rng.digit(16)).collect();
        let key_file = dir.0.join("keys.json");
        let keys = serde_json::json!({"current": KID, "keys": {KID: our_secret}});
        std::fs::write(&key_file, keys.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store: Arc<dyn hubbub_store::Store> = runtime.block_on(async {
            let queue = hubbub_queue::EmbeddedQueue::open(
                dir.0.join("hubbub.db"),
                hubbub_queue::EmbeddedConfig::default(),
            )?;
            anyhow::Ok(Arc::new(hubbub_store::SqliteStore::open(queue).await?))
        })?;
        let config = AuthConfig {
            app_hmac_secret: Some(APP_SECRET.into()),
            app_audience: Some(APP_AUDIENCE.into()),
            ..AuthConfig::default()
        };
        let auth = Auth::new(store, config, &key_file)?;
        Ok(TokenTarget {
            auth,
            our_secret,
            _dir: dir,
            _runtime: runtime,
        })
    }

    fn json_str(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_default()
    }

    /// A time claim: valid, expired, or not a u64 at all.
    fn time_literal(rng: &mut Rng) -> String {
        match rng.u8(0..6) {
            0..=2 => FAR_EXP.to_string(),
            3 => any_u64(rng).to_string(),
            4 => odd_number(rng).to_string(),
            _ => pick(rng, &["null", "\"4102444800\"", "[]", "{}", "true", "-1"]).to_string(),
        }
    }

    fn header(&self, rng: &mut Rng, alg: &str) -> String {
        let mut fields = vec![format!("\"alg\":{alg}")];
        if rng.u8(0..4) != 0 {
            fields.push("\"typ\":\"JWT\"".into());
        }
        match rng.u8(0..6) {
            0..=2 => fields.push(format!("\"kid\":\"{KID}\"")),
            3 => fields.push(format!("\"kid\":{}", Self::json_str(&any_string(rng)))),
            4 => fields.push(format!("\"kid\":{}", any_json(rng, 2))),
            _ => {}
        }
        if rng.u8(0..8) == 0 {
            let name = pick(
                rng,
                &["crit", "jku", "jwk", "x5u", "x5c", "cty", "b64", "enc"],
            );
            fields.push(format!("\"{name}\":{}", any_json(rng, 3)));
        }
        if rng.u8(0..16) == 0 {
            fields.push(format!("\"n\":{}", deep_json(rng)));
        }
        rng.shuffle(&mut fields);
        format!("{{{}}}", fields.join(","))
    }

    fn claims(&self, rng: &mut Rng, ours: bool) -> String {
        let mut fields = Vec::new();
        let sub = match rng.u8(0..8) {
            0..=4 => Self::json_str(&format!("u{}", rng.u32(..))),
            5 => Self::json_str(&any_string(rng)),
            6 => any_json(rng, 2).to_string(),
            _ => String::new(),
        };
        if !sub.is_empty() {
            fields.push(format!("\"sub\":{sub}"));
        }
        match rng.u8(0..4) {
            0 | 1 => fields.push(format!("\"handle\":{}", Self::json_str(&any_string(rng)))),
            2 => fields.push(format!("\"handle\":{}", any_json(rng, 1))),
            _ => {}
        }
        if rng.u8(0..8) != 0 {
            fields.push(format!("\"exp\":{}", Self::time_literal(rng)));
        }
        if rng.bool() {
            fields.push(format!("\"iat\":{}", Self::time_literal(rng)));
        }
        if rng.u8(0..4) == 0 {
            fields.push(format!("\"iat_ms\":{}", Self::time_literal(rng)));
        }
        if rng.u8(0..8) == 0 {
            fields.push(format!("\"nbf\":{}", Self::time_literal(rng)));
        }
        let iss = if ours && rng.u8(0..4) != 0 {
            Some("\"hubbub\"".to_string())
        } else {
            match rng.u8(0..4) {
                0 => Some(any_json(rng, 1).to_string()),
                1 => Some("[\"hubbub\",\"other\"]".into()),
                _ => None,
            }
        };
        if let Some(iss) = iss {
            fields.push(format!("\"iss\":{iss}"));
        }
        let aud = if !ours && rng.u8(0..4) != 0 {
            Some(format!("\"{APP_AUDIENCE}\""))
        } else {
            match rng.u8(0..6) {
                0 => Some(any_json(rng, 1).to_string()),
                1 => Some(format!("[\"{APP_AUDIENCE}\",\"x\"]")),
                2 => Some("[]".into()),
                _ => None,
            }
        };
        if let Some(aud) = aud {
            fields.push(format!("\"aud\":{aud}"));
        }
        if rng.u8(0..8) == 0 {
            fields.push(format!(
                "\"{}\":{}",
                field_name(rng).replace('"', ""),
                any_json(rng, 4)
            ));
        }
        if rng.u8(0..32) == 0 {
            fields.push(format!("\"deep\":{}", deep_json(rng)));
        }
        rng.shuffle(&mut fields);
        format!("{{{}}}", fields.join(","))
    }
}

impl TokenTarget {
    /// A token that verifies, encoded by jsonwebtoken: one of ours (any `sub`, a handle),
    /// or an app token (a valid `sub`, the audience).
    fn valid(&self, rng: &mut Rng) -> String {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let handle = maybe(rng, any_string);
        let (header, claims, secret) = if rng.bool() {
            let header = Header {
                kid: Some(KID.into()),
                ..Header::default()
            };
            let claims = serde_json::json!({
                "sub": any_string(rng), "handle": handle, "exp": FAR_EXP,
                "iat": any_u64(rng), "iss": "hubbub",
            });
            let mut claims = claims;
            if rng.bool() {
                claims["iat_ms"] = Value::from(any_u64(rng));
            }
            (header, claims, self.our_secret.as_str())
        } else {
            const SUB: &[u8] = b"abcXYZ019_.-";
            let sub: String = (0..rng.usize(1..=64))
                .map(|_| char::from(*pick(rng, SUB)))
                .collect();
            let mut claims = serde_json::json!({"sub": sub, "exp": FAR_EXP, "aud": APP_AUDIENCE});
            if let Some(h) = handle {
                claims["handle"] = Value::String(h);
            }
            (Header::default(), claims, APP_SECRET)
        };
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    }
}

/// Base64url without padding, as JWTs use it.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Target for TokenTarget {
    fn alphabet(&self) -> &'static [u8] {
        B64_ALPHABET
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        use jsonwebtoken::{Algorithm, EncodingKey};
        if rng.u8(0..4) == 0 {
            return Input::one(self.valid(rng));
        }
        // Who signs: us, the app, a stranger, or nobody.
        let signer = rng.u8(0..10);
        let ours = signer < 4 || (signer >= 7 && rng.bool());
        let alg = match rng.u8(0..8) {
            0..=4 => "\"HS256\"",
            _ => pick(
                rng,
                &[
                    "\"HS384\"",
                    "\"HS512\"",
                    "\"RS256\"",
                    "\"ES256\"",
                    "\"none\"",
                    "\"None\"",
                    "\"\"",
                    "null",
                    "256",
                    "[\"HS256\"]",
                ],
            ),
        };
        let header = self.header(rng, alg);
        let claims = self.claims(rng, ours);
        let message = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        let sign_alg = match rng.u8(0..8) {
            0 => Algorithm::HS384,
            1 => Algorithm::HS512,
            _ => Algorithm::HS256,
        };
        let secret = match signer {
            0..=3 => self.our_secret.clone(),
            4..=6 => APP_SECRET.to_string(),
            7 => "a-stranger's-secret-that-is-at-least-32-bytes".to_string(),
            _ => String::new(),
        };
        let signature = match signer {
            8 => String::new(),
            9 => {
                let mut junk = vec![0u8; rng.usize(0..600)];
                rng.fill(&mut junk);
                b64url(&junk)
            }
            _ => jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret.as_bytes()),
                sign_alg,
            )
            .unwrap_or_default(),
        };
        let token = match rng.u8(0..12) {
            0 => message,
            1 => format!("{message}.{signature}.{signature}"),
            2 => format!("{message}.{signature}{}", "A".repeat(rng.usize(0..9000))),
            _ => format!("{message}.{signature}"),
        };
        Input::one(token)
    }

    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let token = lossy(parts.first().map_or(&[][..], Vec::as_slice));
        match self.auth.verify(&token) {
            Ok(v) => {
                if v.app {
                    assert!(
                        (1..=64).contains(&v.sub.len())
                            && v.sub
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                        "app token accepted with sub {:?}",
                        v.sub
                    );
                }
                assert!(token.len() <= 8192, "a token over 8 KiB accepted");
                true
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// config: Config::load.

/// Every setting of hubbub.example.toml (which a test keeps equal to the defaults),
/// commented-out optional ones included.
const EXAMPLE: &str = include_str!("../../../hubbub.example.toml");

struct Setting {
    section: Option<String>,
    key: String,
    default: String,
}

struct ConfigTarget {
    settings: Vec<Setting>,
}

impl ConfigTarget {
    fn new() -> Self {
        let mut settings = Vec::new();
        let mut section = None;
        for line in EXAMPLE.lines() {
            let l = line.trim();
            if l.starts_with('[') && l.ends_with(']') {
                section = Some(l.trim_matches(|c| c == '[' || c == ']').to_owned());
                continue;
            }
            let l = l.trim_start_matches('#').trim();
            if let Some((key, value)) = l.split_once(" = ")
                && !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                let default = value.split(" #").next().unwrap_or(value).trim().to_owned();
                settings.push(Setting {
                    section: section.clone(),
                    key: key.to_owned(),
                    default,
                });
            }
        }
        ConfigTarget { settings }
    }

    /// A TOML value for a setting: its default, another of its type, or anything.
    fn value(rng: &mut Rng, default: &str) -> String {
        let toml_str = |s: &str| toml::Value::String(s.to_owned()).to_string();
        match rng.u8(0..12) {
            0..=2 => default.to_owned(),
            3 => any_i64(rng).to_string(),
            4 => pick(
                rng,
                &[
                    "0",
                    "-1",
                    "9223372036854775807",
                    "9223372036854775808",
                    "-9223372036854775809",
                    "1.5",
                    "1e999",
                    "nan",
                    "-inf",
                    "0x10",
                    "0o7",
                    "0b1",
                    "1_000",
                    "true",
                    "false",
                    "1979-05-27T07:32:00Z",
                    "07:32:00",
                    "[]",
                    "{}",
                    "[1, \"a\"]",
                    "{ a = 1 }",
                    "\"\"",
                ],
            )
            .to_string(),
            5 => toml_str(&any_string(rng)),
            6 => toml_str(pick::<&str>(
                rng,
                &[
                    "0.0.0.0:0",
                    "[::1]:7700",
                    "127.0.0.1:65536",
                    "localhost:7700",
                    "s3",
                    "local",
                    "redis://127.0.0.1:6379",
                    "/",
                    "",
                    "x-forwarded-for",
                ],
            )),
            7 => format!("\"\"\"\n{}\"\"\"", any_string(rng).replace('"', "'")),
            8 => format!("'{}'", any_string(rng).replace(['\'', '\n', '\r'], "")),
            9 => {
                let n = rng.usize(1..200);
                format!("{}1{}", "[".repeat(n), "]".repeat(n))
            }
            10 => any_u64(rng).to_string(),
            _ => format!(
                "[{}]",
                (0..rng.usize(0..5))
                    .map(|_| default)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// A TOML file from the real settings: some set, in sections, dotted keys or inline
    /// tables, with unknown keys and odd structure now and then.
    fn file(&self, rng: &mut Rng) -> String {
        if rng.u8(0..8) == 0 {
            return self.real_config(rng);
        }
        if rng.u8(0..16) == 0 {
            return EXAMPLE.to_owned();
        }
        let mut top = Vec::new();
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for _ in 0..rng.usize(0..10) {
            let s = pick(rng, &self.settings);
            let line = format!("{} = {}", s.key, Self::value(rng, &s.default));
            match &s.section {
                None => top.push(line),
                Some(sec) => match rng.u8(0..8) {
                    0 => top.push(format!("{sec}.{line}")),
                    1 => top.push(format!("{sec} = {{ {line} }}")),
                    _ => match sections.iter_mut().find(|(n, _)| n == sec) {
                        Some((_, lines)) if rng.u8(0..8) != 0 => lines.push(line),
                        _ => sections.push((sec.clone(), vec![line])),
                    },
                },
            }
        }
        match rng.u8(0..10) {
            0 => top.push(format!("{} = 1", any_string(rng).replace(['\n', '='], ""))),
            1 => top.push(format!("{} = 1", vec!["a"; rng.usize(1..200)].join("."))),
            2 => sections.push((format!("[{}]", pick(rng, &self.settings).key), Vec::new())),
            3 => top.push(format!("x = {}", deep_json(rng))),
            _ => {}
        }
        let newline = if rng.u8(0..8) == 0 { "\r\n" } else { "\n" };
        let mut text = String::new();
        if rng.u8(0..32) == 0 {
            text.push('\u{feff}');
        }
        for l in top {
            text.push_str(&l);
            text.push_str(newline);
        }
        for (name, lines) in sections {
            text.push_str(&format!("[{name}]{newline}"));
            for l in lines {
                text.push_str(&l);
                text.push_str(newline);
            }
        }
        text
    }

    /// The TOML of a real `Config` with a few values changed.
    fn real_config(&self, rng: &mut Rng) -> String {
        let mut c = Config::default();
        c.limits.frames_per_s = any_u32(rng);
        c.limits.max_frame_bytes = any_u64(rng) as usize;
        c.server.max_connections = any_u64(rng) as usize;
        c.auth.access_ttl_s = any_u64(rng);
        c.auth.app_hmac_secret = maybe(rng, any_string);
        c.auth.app_audience = maybe(rng, any_string);
        c.server.client_ip_header = maybe(rng, any_string);
        c.data_dir = PathBuf::from(any_string(rng));
        c.listen = std::net::SocketAddr::from((rng.u32(..).to_be_bytes(), rng.u16(..)));
        c.admin_listen = maybe(rng, |rng| {
            std::net::SocketAddr::from((rng.u128(..).to_be_bytes(), rng.u16(..)))
        });
        c.to_toml()
    }

    /// `HUBBUB_*` variables: settings (right or wrong values), names that are not settings,
    /// unknown names, deep paths.
    fn env(&self, rng: &mut Rng) -> Vec<(String, String)> {
        (0..rng.usize(0..5))
            .map(|_| {
                let s = pick(rng, &self.settings);
                let path = match &s.section {
                    Some(sec) => format!("{}__{}", sec.to_uppercase(), s.key.to_uppercase()),
                    None => s.key.to_uppercase(),
                };
                let name = match rng.u8(0..12) {
                    0..=5 => format!("HUBBUB_{path}"),
                    6 => pick(
                        rng,
                        &[
                            "HUBBUB_LOG",
                            "HUBBUB_CONFIG",
                            "HUBBUB_TEST_X",
                            "HUBBUB_",
                            "HUBBUB___",
                            "HUBBUB____",
                            "PATH",
                            "hubbub_listen",
                        ],
                    )
                    .to_string(),
                    7 => format!("HUBBUB_{}", "A__".repeat(rng.usize(1..2000))),
                    8 => format!("HUBBUB_{path}__{}", s.key.to_uppercase()),
                    9 => format!("HUBBUB_{}", any_string(rng)),
                    10 => format!("HUBBUB_{}", path.to_lowercase()),
                    _ => format!("HUBBUB_{path}"),
                };
                let value = match rng.u8(0..4) {
                    0 => s.default.trim_matches('"').to_owned(),
                    1 => any_string(rng),
                    _ => Self::value(rng, &s.default).trim_matches('"').to_owned(),
                };
                (name, value)
            })
            .collect()
    }
}

impl Target for ConfigTarget {
    fn alphabet(&self) -> &'static [u8] {
        TOML_ALPHABET
    }

    fn random(&mut self, rng: &mut Rng) -> Input {
        let mut parts = vec![random_bytes(rng, TOML_ALPHABET)];
        if rng.u8(0..4) == 0 {
            parts.push(format!("HUBBUB_{}", lossy(&random_bytes(rng, b"ABC_"))).into_bytes());
            parts.push(random_bytes(rng, TOML_ALPHABET));
        }
        Input { parts }
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        let file = if rng.u8(0..4) == 0 {
            String::new()
        } else {
            self.file(rng)
        };
        let mut parts = vec![file.into_bytes()];
        for (name, value) in self.env(rng) {
            parts.push(name.into_bytes());
            parts.push(value.into_bytes());
        }
        Input { parts }
    }

    /// Part 0 is the file (none when empty), then environment names and values.
    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let file = parts.first().filter(|f| !f.is_empty()).map(|f| lossy(f));
        let env: Vec<(String, String)> = parts
            .get(1..)
            .unwrap_or_default()
            .chunks(2)
            .map(|pair| {
                let value = pair.get(1).map_or(Cow::Borrowed(""), |v| lossy(v));
                (lossy(&pair[0]).into_owned(), value.into_owned())
            })
            .collect();
        match Config::load(file.as_deref(), &env, &[]) {
            Ok(config) => {
                // What `hubbub config` prints loads back as the same configuration.
                let text = config.to_toml();
                let again = Config::load(Some(&text), &[], &[]);
                assert!(
                    again.as_ref().is_ok_and(|c| c.to_toml() == text),
                    "the printed configuration does not load back: {again:?}\n{text}"
                );
                true
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// media-type: parse_upload and serve_as.

struct MediaTypeTarget;

impl Target for MediaTypeTarget {
    fn alphabet(&self) -> &'static [u8] {
        HEADER_ALPHABET
    }

    fn random(&mut self, rng: &mut Rng) -> Input {
        Input {
            parts: vec![
                random_bytes(rng, HEADER_ALPHABET),
                random_bytes(rng, HEADER_ALPHABET),
            ],
        }
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        let mut ty = match rng.u8(0..6) {
            0..=2 => pick(rng, ALLOWED).to_string(),
            3 => pick(
                rng,
                &[
                    "text/html",
                    "image/svg+xml",
                    "application/xhtml+xml",
                    "text/xml",
                    "application/octet-stream",
                    "image/png,text/html",
                    "image/",
                    "/png",
                    "image//png",
                    "*/*",
                    "image/*",
                ],
            )
            .to_string(),
            4 => format!("{}/{}", any_string(rng), any_string(rng)),
            _ => any_string(rng),
        };
        if rng.u8(0..3) == 0 {
            ty = ty
                .chars()
                .map(|c| {
                    if rng.bool() {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
        }
        for _ in 0..rng.usize(0..3) {
            let param = pick(
                rng,
                &[
                    "; charset=utf-8",
                    ";codecs=opus",
                    ";",
                    ";;",
                    "; a=\"b;c\"",
                    ", text/html",
                    "\r\nX-Evil: 1",
                    "\0",
                    " ",
                    "\t",
                ],
            );
            ty.push_str(param);
        }
        match rng.u8(0..6) {
            0 => ty = format!("{}{ty}", " ".repeat(rng.usize(0..300))),
            // Around the 256-byte limit, with a multi-byte character across it.
            1 => {
                let pad = 256usize.saturating_sub(ty.len()) + rng.usize(0..3);
                ty = format!("{ty};{}é", "x".repeat(pad.saturating_sub(2)));
            }
            _ => {}
        }
        let id = match rng.u8(0..3) {
            0 => format!("md-{}", rng.u64(..)),
            _ => any_string(rng),
        };
        Input {
            parts: vec![ty.into_bytes(), id.into_bytes()],
        }
    }

    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let header = lossy(parts.first().map_or(&[][..], Vec::as_slice));
        let id = lossy(parts.get(1).map_or(&[][..], Vec::as_slice));
        let check = |(ty, disposition): (&str, String)| {
            assert!(
                ty == "application/octet-stream" || ALLOWED.contains(&ty),
                "served as {ty:?}"
            );
            let name = disposition
                .strip_prefix("inline; filename=\"")
                .or_else(|| disposition.strip_prefix("attachment; filename=\""))
                .and_then(|rest| rest.strip_suffix('"'));
            assert!(
                name.is_some_and(|n| n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
                "unsafe Content-Disposition {disposition:?}"
            );
        };
        check(serve_as(&header, &id));
        match parse_upload(&header) {
            Ok(ty) => {
                assert!(ALLOWED.contains(&ty), "accepted {ty:?}");
                assert!(!header.contains(','), "a list accepted: {header:?}");
                let served = serve_as(ty, &id);
                assert_eq!(served.0, ty, "an accepted type is served as another");
                check(served);
                true
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// sse-streams: parse_streams.

struct SseTarget;

impl Target for SseTarget {
    fn alphabet(&self) -> &'static [u8] {
        STREAMS_ALPHABET
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        let n = match rng.u8(0..6) {
            0 => rng.usize(190..420),
            1 => rng.usize(45..56),
            _ => rng.usize(0..8),
        };
        let mut streams: Vec<String> = (0..n)
            .map(|_| match rng.u8(0..12) {
                0 => String::new(),
                1 => pick(rng, &["post", "Post:x", "user:u1", " post:x", "post:"]).to_string(),
                2 => format!("post:{}", "x".repeat(*pick(rng, &[63, 64, 65]))),
                3 => format!("post:{}", "é".repeat(rng.usize(30..34))),
                4 => format!("post:{}", any_string(rng).replace(',', "")),
                5 => any_string(rng).replace(',', ""),
                _ => format!("post:p{}", rng.u32(0..60)),
            })
            .collect();
        if rng.u8(0..8) == 0
            && let Some(first) = streams.first().cloned()
        {
            streams.extend(std::iter::repeat_n(first, rng.usize(1..300)));
        }
        Input::one(streams.join(","))
    }

    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let streams = lossy(parts.first().map_or(&[][..], Vec::as_slice));
        match hubbub_edge::sse::parse_streams(&streams) {
            Ok(posts) => {
                assert!(
                    (1..=50).contains(&posts.len()),
                    "{} posts accepted",
                    posts.len()
                );
                assert!(
                    posts.windows(2).all(|w| w[0] < w[1]),
                    "posts not sorted and distinct"
                );
                assert!(
                    posts
                        .iter()
                        .all(|p| (1..=64).contains(&p.len()) && !p.contains(',')),
                    "a bad post id accepted"
                );
                true
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// deliver-body: the edge's internal delivery endpoint.

const INTERNAL_SECRET: &str = "fuzz-internal-secret-0123456789";

struct DeliverTarget {
    tx: mpsc::UnboundedSender<Vec<ToEdge>>,
    rx: mpsc::UnboundedReceiver<Vec<ToEdge>>,
}

impl DeliverTarget {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        DeliverTarget { tx, rx }
    }

    fn message(rng: &mut Rng) -> Message {
        Message {
            id: any_string(rng),
            conversation: any_string(rng),
            sender: any_string(rng),
            client_msg_id: any_string(rng),
            text: any_string(rng),
            attachments: any_attachments(rng).unwrap_or_default(),
            ts: any_i64(rng),
        }
    }

    fn conversation(rng: &mut Rng) -> Conversation {
        Conversation {
            id: any_string(rng),
            kind: if rng.bool() {
                ConversationKind::Direct
            } else {
                ConversationKind::Group
            },
            title: maybe(rng, any_string),
            members: strings(rng),
            created_by: any_string(rng),
            created_ts: any_i64(rng),
            ephemeral: rng.bool(),
        }
    }

    fn post(rng: &mut Rng) -> Post {
        Post {
            id: any_string(rng),
            author: any_string(rng),
            text: any_string(rng),
            attachments: any_attachments(rng).unwrap_or_default(),
            ts: any_i64(rng),
            likes: any_u64(rng),
            comments: any_u64(rng),
        }
    }

    fn presence(rng: &mut Rng) -> Presence {
        Presence {
            user: any_string(rng),
            status: *pick(
                rng,
                &[
                    PresenceStatus::Online,
                    PresenceStatus::Away,
                    PresenceStatus::Offline,
                ],
            ),
            last_seen_ts: maybe(rng, any_i64),
        }
    }

    fn reply_data(rng: &mut Rng) -> ReplyData {
        match rng.u8(0..15) {
            0 => ReplyData::Conversations {
                conversations: (0..rng.usize(0..3))
                    .map(|_| ConversationSummary {
                        conversation: Self::conversation(rng),
                        last_message: maybe(rng, Self::message),
                        unread: any_u64(rng),
                    })
                    .collect(),
            },
            1 => ReplyData::Conversation {
                conversation: Self::conversation(rng),
            },
            2 => ReplyData::History {
                messages: (0..rng.usize(0..3)).map(|_| Self::message(rng)).collect(),
                more: rng.bool(),
            },
            3 => ReplyData::Search {
                messages: (0..rng.usize(0..3)).map(|_| Self::message(rng)).collect(),
            },
            4 => ReplyData::Message {
                message: Self::message(rng),
            },
            5 => ReplyData::Presence {
                presence: (0..rng.usize(0..3)).map(|_| Self::presence(rng)).collect(),
            },
            6 => ReplyData::Users {
                users: strings(rng),
            },
            7 => ReplyData::Post {
                post: Self::post(rng),
            },
            8 => ReplyData::Comment {
                comment: Comment {
                    id: any_string(rng),
                    post: any_string(rng),
                    author: any_string(rng),
                    text: any_string(rng),
                    ts: any_i64(rng),
                },
            },
            9 => ReplyData::Likes {
                likes: any_u64(rng),
            },
            10 => ReplyData::Timeline {
                items: (0..rng.usize(0..3)).map(|_| Self::post(rng)).collect(),
                computed_ts: any_i64(rng),
            },
            11 => ReplyData::Sync {
                last_seq: any_u64(rng),
                truncated: rng.bool(),
            },
            12 => ReplyData::Auth {
                expires_ts: any_i64(rng),
            },
            _ => ReplyData::Empty {},
        }
    }

    fn frame(rng: &mut Rng) -> ServerFrame {
        match rng.u8(0..11) {
            0 => ServerFrame::Hello {
                user: UserRef {
                    id: any_string(rng),
                    handle: any_string(rng),
                },
                session: any_string(rng),
                last_seq: any_u64(rng),
                server_ts: any_i64(rng),
            },
            1 => ServerFrame::Ok {
                id: any_string(rng),
                data: Self::reply_data(rng),
            },
            2 => ServerFrame::Error {
                id: maybe(rng, any_string),
                code: *pick(
                    rng,
                    &[
                        ErrorCode::BadRequest,
                        ErrorCode::Unauthorized,
                        ErrorCode::Forbidden,
                        ErrorCode::NotFound,
                        ErrorCode::Conflict,
                        ErrorCode::TooLarge,
                        ErrorCode::RateLimited,
                        ErrorCode::Internal,
                        ErrorCode::Unavailable,
                    ],
                ),
                message: any_string(rng),
                retry_after_ms: maybe(rng, any_u64),
            },
            3 => ServerFrame::MessageNew {
                seq: any_u64(rng),
                message: Self::message(rng),
            },
            4 => ServerFrame::ConversationUpdated {
                seq: any_u64(rng),
                conversation: Self::conversation(rng),
            },
            5 => ServerFrame::ReceiptRead {
                seq: any_u64(rng),
                conversation: any_string(rng),
                user: any_string(rng),
                message: any_string(rng),
            },
            6 => ServerFrame::Notification {
                seq: any_u64(rng),
                kind: *pick(
                    rng,
                    &[
                        NotificationKind::Like,
                        NotificationKind::Comment,
                        NotificationKind::Follow,
                        NotificationKind::Mention,
                        NotificationKind::System,
                    ],
                ),
                data: any_json(rng, 4),
            },
            7 => ServerFrame::Typing {
                conversation: any_string(rng),
                user: any_string(rng),
                state: if rng.bool() {
                    TypingState::Start
                } else {
                    TypingState::Stop
                },
            },
            8 => ServerFrame::Presence(Self::presence(rng)),
            9 => ServerFrame::Timeline {
                items: (0..rng.usize(0..3)).map(|_| Self::post(rng)).collect(),
                computed_ts: any_i64(rng),
            },
            _ => ServerFrame::Engagement {
                post: any_string(rng),
                window_s: any_u32(rng),
                writers: any_u32(rng),
                comments: any_u64(rng),
                top: (0..rng.usize(0..4))
                    .map(|_| TopWriter {
                        user: any_string(rng),
                        handle: any_string(rng),
                        words: any_u32(rng),
                    })
                    .collect(),
            },
        }
    }

    fn frames(rng: &mut Rng) -> Vec<ServerFrame> {
        (0..rng.usize(0..4)).map(|_| Self::frame(rng)).collect()
    }

    fn to_edge(rng: &mut Rng) -> ToEdge {
        match rng.u8(0..4) {
            0 => ToEdge::Reply {
                session: any_string(rng),
                frame: Self::frame(rng),
            },
            1 => ToEdge::Events {
                user: any_string(rng),
                frames: Self::frames(rng),
                origin_ms: maybe(rng, any_i64),
            },
            2 => ToEdge::Engagement {
                frames: Self::frames(rng),
            },
            _ => ToEdge::Close {
                user: any_string(rng),
                session: maybe(rng, any_string),
                code: rng.u16(..),
                reason: any_string(rng),
            },
        }
    }

    fn secret_header(rng: &mut Rng) -> Vec<u8> {
        match rng.u8(0..12) {
            0 => b"wrong".to_vec(),
            1 => INTERNAL_SECRET[..rng.usize(..INTERNAL_SECRET.len())].into(),
            2 => format!("{INTERNAL_SECRET}x").into_bytes(),
            3 => b"fuzz-internal-secret-\xff\xfe".to_vec(),
            4 => any_string(rng).into_bytes(),
            _ => INTERNAL_SECRET.as_bytes().to_vec(),
        }
    }
}

impl Target for DeliverTarget {
    fn random(&mut self, rng: &mut Rng) -> Input {
        let header = Self::secret_header(rng);
        Input {
            parts: vec![header, random_bytes(rng, JSON_ALPHABET)],
        }
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        let batch: Vec<ToEdge> = (0..rng.usize(0..6)).map(|_| Self::to_edge(rng)).collect();
        let body = serde_json::to_string(&batch).unwrap_or_default();
        let body = if rng.bool() {
            body
        } else {
            let mut doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            mutate_json(rng, &mut doc)
        };
        let mut parts = vec![body.into_bytes()];
        // No header at all, now and then.
        if rng.u8(0..16) != 0 {
            parts.insert(0, Self::secret_header(rng));
        }
        Input { parts }
    }

    /// With two parts, the secret header's value then the body; with one, only the body.
    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let (header, body) = match parts {
            [] => (None, &[][..]),
            [body] => (None, body.as_slice()),
            [header, body, ..] => (Some(header), body.as_slice()),
        };
        let mut headers = HeaderMap::new();
        // Bytes no HTTP/1 parser lets through a header are not tried.
        let sent = header.and_then(|h| HeaderValue::from_bytes(h).ok());
        let authorized = sent
            .as_ref()
            .is_some_and(|v| v.as_bytes() == INTERNAL_SECRET.as_bytes());
        if let Some(v) = sent {
            headers.insert(SECRET_HEADER, v);
        }
        let response = crate::roles::deliver(&headers, body, INTERNAL_SECRET, &self.tx);
        let delivered = std::iter::from_fn(|| self.rx.try_recv().ok()).count();
        let status = response.status();
        match status {
            StatusCode::NO_CONTENT => {
                assert!(authorized, "a batch accepted without the secret");
                assert_eq!(delivered, 1, "an accepted batch was not handed on once");
                true
            }
            StatusCode::UNAUTHORIZED => {
                assert!(!authorized, "the right secret refused");
                assert_eq!(delivered, 0);
                false
            }
            StatusCode::BAD_REQUEST => {
                assert!(authorized, "a body parsed before the secret was checked");
                assert_eq!(delivered, 0);
                false
            }
            other => panic!("unexpected status {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn short_run_deliver_body() {
        short_run("deliver-body");
    }

    #[test]
    fn every_target_has_a_short_run() {
        assert_eq!(
            TARGETS.len(),
            6,
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
