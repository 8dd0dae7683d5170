//! The `config` target: `Config::load` of TOML files and `HUBBUB_*` variables.

use super::*;

/// Every setting of hubbub.example.toml (which a test keeps equal to the defaults),
/// commented-out optional ones included.
pub(super) const EXAMPLE: &str = include_str!("../../../../hubbub.example.toml");

pub(super) struct Setting {
    pub(super) section: Option<String>,
    pub(super) key: String,
    default: String,
}

pub(super) struct ConfigTarget {
    pub(super) settings: Vec<Setting>,
}

impl ConfigTarget {
    pub(super) fn new() -> Self {
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
