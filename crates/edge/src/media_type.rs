//! The media types hubbub accepts for uploads and how it serves them back.
//!
//! An upload's `Content-Type` is parsed strictly: exactly one `type/subtype` (parameters after
//! `;` are allowed and dropped), and the type must be on an allow-list of raster image, audio
//! and video types. Anything a browser could run as a document is refused: SVG (it carries
//! scripts), HTML, XML, and lists such as `image/png,text/html` that some browsers read as
//! their last member. Downloads are served with the stored type only if it is still on the
//! list (older rows may predate it), else as an `application/octet-stream` attachment.

/// Every accepted type, lower case.
pub const ALLOWED: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/heic",
    "image/heif",
    "image/bmp",
    "audio/mpeg",
    "audio/mp4",
    "audio/aac",
    "audio/ogg",
    "audio/opus",
    "audio/wav",
    "audio/webm",
    "audio/flac",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
];

/// Why a `Content-Type` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    /// Not one `type/subtype`.
    #[error("Content-Type is not a single media type")]
    Malformed,
    /// A well-formed type that is not accepted.
    #[error("media type {0} is not accepted; send one of: {list}", list = ALLOWED.join(", "))]
    NotAllowed(String),
}

/// RFC 9110 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parse an upload's `Content-Type` header into the (lower-case) type to store.
pub fn parse_upload(header: &str) -> Result<&'static str, MediaTypeError> {
    if header.len() > 256 || header.contains(',') {
        return Err(MediaTypeError::Malformed);
    }
    let essence = header.split(';').next().unwrap_or("").trim();
    let (ty, sub) = essence.split_once('/').ok_or(MediaTypeError::Malformed)?;
    if !is_token(ty) || !is_token(sub) {
        return Err(MediaTypeError::Malformed);
    }
    let essence = essence.to_ascii_lowercase();
    ALLOWED
        .iter()
        .find(|t| **t == essence)
        .copied()
        .ok_or(MediaTypeError::NotAllowed(essence))
}

/// How a stored medium is served: its `Content-Type` and `Content-Disposition`.
pub fn serve_as(stored: &str, id: &str) -> (&'static str, String) {
    let name: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    match ALLOWED.iter().find(|t| **t == stored) {
        Some(t) => (t, format!("inline; filename=\"{name}\"")),
        None => (
            "application/octet-stream",
            format!("attachment; filename=\"{name}\""),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_allowed_types_with_parameters() {
        assert_eq!(parse_upload("image/png"), Ok("image/png"));
        assert_eq!(parse_upload(" IMAGE/PNG "), Ok("image/png"));
        assert_eq!(parse_upload("audio/ogg; codecs=opus"), Ok("audio/ogg"));
    }

    #[test]
    fn refuses_what_a_browser_could_run() {
        for bad in [
            "image/png,text/html",
            "text/html",
            "image/svg+xml",
            "image/svg+xml; charset=utf-8",
            "application/xhtml+xml",
            "image/",
            "/png",
            "image png",
            "image/pn g",
            "",
            "image/png\r\nX-Evil: 1",
        ] {
            assert!(parse_upload(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            parse_upload("image/svg+xml"),
            Err(MediaTypeError::NotAllowed(t)) if t == "image/svg+xml"
        ));
    }

    #[test]
    fn stored_types_off_the_list_are_attachments() {
        assert_eq!(
            serve_as("image/png", "md1"),
            ("image/png", "inline; filename=\"md1\"".to_owned())
        );
        let (ty, disp) = serve_as("image/svg+xml", "md\"2");
        assert_eq!(ty, "application/octet-stream");
        assert_eq!(disp, "attachment; filename=\"md2\"");
    }
}
