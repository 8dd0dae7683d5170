//! The `media-type` and `sse-streams` targets: upload types and the SSE `streams` parameter.

use super::*;

pub(super) struct MediaTypeTarget;

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

pub(super) struct SseTarget;

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
