//! What the targets are made of: alphabets, random values and strings, JSON documents
//! and their edits, and the byte-level mutations of an input.

use super::*;

pub(super) const JSON_ALPHABET: &[u8] = b"{}[]\":,0123456789.eE+-tfnrulsa \\u\"\n\t\x00";
pub(super) const TOML_ALPHABET: &[u8] = b"[]{}=\"'.,#\n\r\t _-+0123456789eEinfatruslx:TZ\\";
pub(super) const HEADER_ALPHABET: &[u8] = b"imageaudiovideopngjpeg/;=,\" \t\r\n+-.*";
pub(super) const STREAMS_ALPHABET: &[u8] = b"post:,P1_-x \x00";
pub(super) const B64_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";

/// Random bytes: anything, printable ASCII, the parser's alphabet, or unicode.
pub(super) fn random_bytes(rng: &mut Rng, alphabet: &[u8]) -> Vec<u8> {
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
pub(super) fn random_len(rng: &mut Rng) -> usize {
    match rng.u8(0..20) {
        0 => rng.usize(0..65_536),
        1..=3 => rng.usize(0..4096),
        _ => rng.usize(0..64),
    }
}

pub(super) fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

/// A character, biased to the ones parsers trip on.
pub(super) fn any_char(rng: &mut Rng) -> char {
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
pub(super) fn any_string(rng: &mut Rng) -> String {
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
pub(super) fn any_u64(rng: &mut Rng) -> u64 {
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

pub(super) fn any_u32(rng: &mut Rng) -> u32 {
    match rng.u8(0..3) {
        0 => *pick(rng, &[0, 1, 50, 100, 101, u32::MAX]),
        1 => rng.u32(..),
        _ => rng.u32(0..200),
    }
}

pub(super) fn any_i64(rng: &mut Rng) -> i64 {
    match rng.u8(0..3) {
        0 => *pick(rng, &[0, -1, 1, i64::MIN, i64::MAX, 1_700_000_000_000]),
        1 => rng.i64(..),
        _ => rng.i64(0..2_000_000_000_000),
    }
}

pub(super) fn maybe<T>(rng: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    if rng.bool() { Some(f(rng)) } else { None }
}

/// A list of strings: mostly a few, sometimes hundreds (at most 64 KiB of them).
pub(super) fn strings(rng: &mut Rng) -> Vec<String> {
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
pub(super) fn odd_number(rng: &mut Rng) -> &'static str {
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
pub(super) fn any_json(rng: &mut Rng, depth: u32) -> Value {
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

pub(super) fn field_name(rng: &mut Rng) -> String {
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
        "origin_edge",
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
pub(super) fn deep_json(rng: &mut Rng) -> String {
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
pub(super) fn mutate_json(rng: &mut Rng, doc: &mut Value) -> String {
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

pub(super) fn any_type(rng: &mut Rng) -> String {
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
pub(super) fn random_node<'a>(rng: &mut Rng, mut node: &'a mut Value) -> &'a mut Value {
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
pub(super) fn mutate(rng: &mut Rng, input: &mut Input, corpus: &[Input]) {
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

pub(super) fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

// ---------------------------------------------------------------------------------------
// client-frame: ClientFrame::parse.
