//! The wire helpers of `hubbub bench fanout`: payloads that carry their send time, hubbub's
//! seqs, engine.io packets and NATS `MSG` framing. Pure, unit-tested.

use super::*;

/// Microseconds since the epoch.
pub(super) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of (at least) `len` bytes carrying its send time and publisher.
pub(super) fn payload(sent_us: u64, publisher: usize, len: usize) -> String {
    let mut p = format!("{MARKER}{sent_us}:{publisher}:");
    while p.len() < len {
        p.push('.');
    }
    p
}

/// The send time of the first payload in `data` (a frame that carries one).
pub(super) fn sent_us(data: &[u8]) -> Option<u64> {
    let m = MARKER.as_bytes();
    let start = data.windows(m.len()).position(|w| w == m)? + m.len();
    let digits = &data[start..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The seq of a hubbub durable event line (`message.new`, `conversation.updated`, ...):
/// those put `"seq"` right after `"type"`.
pub(super) fn durable_seq(line: &str) -> Option<u64> {
    let rest = line.strip_prefix(r#"{"type":""#)?;
    let after_type = &rest[rest.find('"')? + 1..];
    let digits = after_type.strip_prefix(r#","seq":"#)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// An engine.io v4 packet as Socket.IO v4 uses it over a WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Eio<'a> {
    /// `0{...}`: the engine.io handshake.
    Open,
    /// `2`: a ping from the server (answer `3`).
    Ping,
    /// `3`: a pong.
    Pong,
    /// `40...`: the Socket.IO namespace is connected.
    Connect,
    /// `41`: the namespace is disconnected.
    Disconnect,
    /// `42[...]`: an event; the JSON array of its name and arguments.
    Event(&'a str),
    /// `44...`: the connection was refused.
    ConnectError(&'a str),
    /// `1`: the engine.io connection is closed.
    Close,
    /// Anything else (acks, binary packets, upgrades).
    Other,
}

pub(super) fn parse_eio(text: &str) -> Eio<'_> {
    let mut chars = text.chars();
    match chars.next() {
        Some('0') => Eio::Open,
        Some('1') => Eio::Close,
        Some('2') => Eio::Ping,
        Some('3') => Eio::Pong,
        Some('4') => match chars.next() {
            Some('0') => Eio::Connect,
            Some('1') => Eio::Disconnect,
            Some('2') => Eio::Event(&text[2..]),
            Some('4') => Eio::ConnectError(&text[2..]),
            _ => Eio::Other,
        },
        _ => Eio::Other,
    }
}

/// The name of a Socket.IO event (`["name",...]`).
pub(super) fn event_name(args: &str) -> Option<&str> {
    let rest = args.strip_prefix("[\"")?;
    Some(&rest[..rest.find('"')?])
}

/// A NATS protocol message from the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Nats<'a> {
    /// `INFO {...}`.
    Info,
    /// `MSG <subject> <sid> [reply] <size>` and its payload.
    Msg(&'a [u8]),
    /// `PING` (answer `PONG`).
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR '...'`.
    Err(&'a str),
}

/// Splits the NATS byte stream into messages; WebSocket frames need not align with them.
#[derive(Debug, Default)]
pub(super) struct NatsParser {
    pub(super) buf: Vec<u8>,
}

impl NatsParser {
    /// Add `data`; call `on` with every whole message now in the buffer.
    pub(super) fn feed(&mut self, data: &[u8], mut on: impl FnMut(Nats<'_>)) -> anyhow::Result<()> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            let word = line
                .split(|b| *b == b' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match word.as_slice() {
                b"MSG" => {
                    let text = std::str::from_utf8(line).context("a MSG line is not UTF-8")?;
                    let size: usize = text
                        .split_ascii_whitespace()
                        .last()
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("bad NATS line {text:?}"))?;
                    let need = eol + 2 + size + 2;
                    if rest.len() < need {
                        break;
                    }
                    on(Nats::Msg(&rest[eol + 2..eol + 2 + size]));
                    pos += need;
                    continue;
                }
                b"INFO" => on(Nats::Info),
                b"PING" => on(Nats::Ping),
                b"PONG" => on(Nats::Pong),
                b"+OK" => on(Nats::Ok),
                b"-ERR" => on(Nats::Err(
                    std::str::from_utf8(line).unwrap_or("-ERR (not UTF-8)"),
                )),
                _ => bail!("unexpected NATS line {:?}", String::from_utf8_lossy(line)),
            }
            pos += eol + 2;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_send_time() {
        let p = payload(1_764_460_800_123_456, 3, 64);
        assert_eq!(p.len(), 64);
        assert!(p.starts_with("fo:1764460800123456:3:"));
        assert_eq!(sent_us(p.as_bytes()), Some(1_764_460_800_123_456));
        // Inside a hubbub line and a Socket.IO event.
        let line =
            format!(r#"{{"type":"message.new","seq":7,"message":{{"id":"m1","text":"{p}"}}}}"#);
        assert_eq!(sent_us(line.as_bytes()), Some(1_764_460_800_123_456));
        assert_eq!(sent_us(b"no marker"), None);
        assert_eq!(payload(1, 0, 4), "fo:1:0:");
    }

    #[test]
    fn hubbub_durable_seqs() {
        assert_eq!(
            durable_seq(r#"{"type":"message.new","seq":42,"message":{}}"#),
            Some(42)
        );
        assert_eq!(
            durable_seq(r#"{"type":"conversation.updated","seq":1,"conversation":{}}"#),
            Some(1)
        );
        assert_eq!(
            durable_seq(r#"{"type":"hello","user":{},"session":"s","last_seq":9}"#),
            None
        );
        assert_eq!(
            durable_seq(r#"{"type":"ok","id":"s1","data":{"seq":3}}"#),
            None
        );
    }

    #[test]
    fn engine_io_packets() {
        assert_eq!(parse_eio(r#"0{"sid":"x","pingInterval":25000}"#), Eio::Open);
        assert_eq!(parse_eio("2"), Eio::Ping);
        assert_eq!(parse_eio("3"), Eio::Pong);
        assert_eq!(parse_eio(r#"40{"sid":"y"}"#), Eio::Connect);
        assert_eq!(parse_eio("40"), Eio::Connect);
        assert_eq!(parse_eio("41"), Eio::Disconnect);
        assert_eq!(parse_eio("1"), Eio::Close);
        assert_eq!(
            parse_eio(r#"44{"message":"no"}"#),
            Eio::ConnectError(r#"{"message":"no"}"#)
        );
        let e = parse_eio(r#"42["msg","fo:12:0:...."]"#);
        assert_eq!(e, Eio::Event(r#"["msg","fo:12:0:...."]"#));
        let Eio::Event(args) = e else { panic!() };
        assert_eq!(event_name(args), Some("msg"));
        assert_eq!(sent_us(args.as_bytes()), Some(12));
        assert_eq!(event_name("[]"), None);
        assert_eq!(parse_eio(""), Eio::Other);
        assert_eq!(parse_eio("6"), Eio::Other);
    }

    fn feed_all(p: &mut NatsParser, data: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        p.feed(data, |m| {
            seen.push(match m {
                Nats::Msg(b) => format!("MSG {}", String::from_utf8_lossy(b)),
                other => format!("{other:?}"),
            })
        })
        .unwrap();
        seen
    }

    #[test]
    fn nats_framing() {
        let mut p = NatsParser::default();
        let seen = feed_all(
            &mut p,
            b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPING\r\nMSG room 1 5\r\nhello\r\nMSG room 1 r.1 3\r\na\r\n\r\n",
        );
        assert_eq!(seen, ["Info", "Ok", "Ping", "MSG hello", "MSG a\r\n"]);
        assert!(p.buf.is_empty());
        // Split anywhere, even inside the payload and the line ends.
        let stream = b"MSG room 1 4\r\nfo:1\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";
        for cut in 0..stream.len() {
            let mut p = NatsParser::default();
            let mut seen = feed_all(&mut p, &stream[..cut]);
            seen.extend(feed_all(&mut p, &stream[cut..]));
            assert_eq!(
                seen,
                ["MSG fo:1", "Pong", "Err(\"-ERR 'Slow Consumer'\")"],
                "cut at {cut}"
            );
        }
        // An empty payload, and a line this parser does not know.
        let mut p = NatsParser::default();
        assert_eq!(feed_all(&mut p, b"MSG room 1 0\r\n\r\n"), ["MSG "]);
        assert!(p.feed(b"WHAT\r\n", |_| {}).is_err());
        assert!(p.feed(b"MSG room 1 x\r\n", |_| {}).is_err());
    }

    #[test]
    fn proc_stat_cpu() {
        let stat =
            "1234 (node (v8)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 11 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("1234 (x) S 1"), None);
    }
}
