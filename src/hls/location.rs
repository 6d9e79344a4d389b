//! Where segments, playlists and keys go: hlssink2-style `%05d` patterns, directories,
//! `http(s)://` URLs for upload and `s3://bucket/key` locations for object storage.
//!
//! Specifications: none of its own: hlssink2's `%d` location patterns, RFC 3986 for http(s)
//! URLs, and the AWS CLI's `s3://bucket/key` notation for objects.

/// A `location` / `playlist-location` that cannot be used. The locations quoted have no
/// `user:password@`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("location is empty")]
    Empty,
    #[error("'{0}': pattern ends after '%'")]
    TrailingPercent(String),
    #[error("'{0}': only an integer directive such as %05d is supported")]
    NotInteger(String),
    #[error("'{0}' has more than one % directive")]
    SeveralDirectives(String),
    #[error("'{0}' has no %d directive for the segment number")]
    NoDirective(String),
    #[error(
        "segments ('{segments}') and playlist ('{playlist}') must both be local or both be URLs"
    )]
    Mixed { segments: String, playlist: String },
}

fn shown(location: &str) -> String {
    redact_location(location).into_owned()
}

/// `location` without `user:password@` (URLs), for logs and errors.
pub fn redact_location(location: &str) -> std::borrow::Cow<'_, str> {
    if !location.contains('@') {
        return location.into();
    }
    match url::Url::parse(location) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().into()
        }
        _ => location.into(),
    }
}

/// A printf-style file name pattern with exactly one integer directive (`%d`, `%05d`, `%u`,
/// `%lu`, ...), as hlssink2's `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    prefix: String,
    suffix: String,
    width: usize,
    zero: bool,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, LocationError> {
        let mut prefix = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '%' {
                prefix.push(c);
                continue;
            }
            if let Some((_, '%')) = chars.peek() {
                chars.next();
                prefix.push('%');
                continue;
            }
            let rest = &s[i + 1..];
            let zero = rest.starts_with('0');
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let width = digits.parse::<usize>().unwrap_or(0).min(20);
            let after = &rest[digits.len()..];
            let after = after.trim_start_matches(['l', 'h', 'z', 'j']);
            let conv = after
                .chars()
                .next()
                .ok_or_else(|| LocationError::TrailingPercent(shown(s)))?;
            if !matches!(conv, 'd' | 'i' | 'u') {
                return Err(LocationError::NotInteger(shown(s)));
            }
            let suffix_raw = &after[1..];
            if suffix_raw.replace("%%", "").contains('%') {
                return Err(LocationError::SeveralDirectives(shown(s)));
            }
            return Ok(Pattern {
                prefix,
                suffix: suffix_raw.replace("%%", "%"),
                width,
                zero,
            });
        }
        Err(LocationError::NoDirective(shown(s)))
    }

    /// Everything before the number (directory and file name prefix).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn format(&self, n: u64) -> String {
        let num = if self.zero {
            format!("{n:0w$}", w = self.width)
        } else {
            format!("{n:w$}", w = self.width)
        };
        format!("{}{}{}", self.prefix, num, self.suffix)
    }
}

/// An upload location: `http://`, `https://` or `s3://`.
pub fn is_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://") || is_s3(s)
}

/// An object in S3-compatible storage: `s3://bucket/key`.
pub fn is_s3(s: &str) -> bool {
    s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("s3://"))
}

/// Does the location name a directory (or URL base) rather than a segment pattern?
pub fn is_directory_like(location: &str) -> bool {
    !location.contains('%')
}

/// `base` joined with a relative `name` (plain string join, URL or path).
pub fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// Directory part of a path or URL (without trailing slash), "" if none.
pub fn parent(location: &str) -> &str {
    match location.rfind('/') {
        Some(i) => {
            let p = &location[..i];
            // Keep "http://host" intact and "/" for root files.
            if p.is_empty() { "/" } else { p }
        }
        None => "",
    }
}

/// Last component of a path or URL.
pub fn basename(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or(location)
}

/// The resolved output locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    pub segment: Pattern,
    pub playlist: String,
    pub key: Pattern,
    pub upload: bool,
}

/// Resolves the element's `location` and `playlist-location`:
/// - `location` with a `%d` directive is a segment pattern (hlssink2); a relative
///   `playlist-location` is then used as is, except under a URL, where it is relative to the
///   segments' URL directory;
/// - `location` without one is a directory or URL: segments are `segment%05d.ts` in it and a
///   relative `playlist-location` is put in it too.
///
/// Key files are `key%05d.key` beside the segments.
pub fn resolve(location: &str, playlist_location: &str) -> Result<Locations, LocationError> {
    if location.is_empty() {
        return Err(LocationError::Empty);
    }
    let upload = is_url(location);
    let (segment, dir) = if is_directory_like(location) {
        let dir = location.trim_end_matches('/');
        let dir = if dir.is_empty() { "/" } else { dir };
        (
            Pattern::parse(&join(dir, "segment%05d.ts"))?,
            dir.to_owned(),
        )
    } else {
        (Pattern::parse(location)?, parent(location).to_owned())
    };
    let absolute = playlist_location.starts_with('/') || is_url(playlist_location);
    let playlist = if absolute || (!upload && !is_directory_like(location)) {
        playlist_location.to_owned()
    } else {
        join(&dir, playlist_location)
    };
    if upload != is_url(&playlist) {
        return Err(LocationError::Mixed {
            segments: shown(location),
            playlist: shown(&playlist),
        });
    }
    let key = Pattern::parse(&join(&dir, "key%05d.key"))?;
    Ok(Locations {
        segment,
        playlist,
        key,
        upload,
    })
}

/// The URI a playlist uses for a file: `root/basename` with a `playlist-root`, else the basename
/// (files beside the playlist), as hlssink2 does.
pub fn playlist_uri(root: Option<&str>, location: &str) -> String {
    match root {
        Some(r) if !r.is_empty() => join(r, basename(location)),
        _ => basename(location).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_format_like_printf() {
        let p = Pattern::parse("/tmp/x/segment%05d.ts").unwrap();
        assert_eq!(p.format(42), "/tmp/x/segment00042.ts");
        assert_eq!(Pattern::parse("s%d.ts").unwrap().format(7), "s7.ts");
        assert_eq!(Pattern::parse("s%3u.ts").unwrap().format(7), "s  7.ts");
        assert_eq!(
            Pattern::parse("100%%-%lu.ts").unwrap().format(1),
            "100%-1.ts"
        );
        assert_eq!(
            Pattern::parse("seg.ts"),
            Err(LocationError::NoDirective("seg.ts".into()))
        );
        assert_eq!(
            Pattern::parse("seg%s.ts"),
            Err(LocationError::NotInteger("seg%s.ts".into()))
        );
        assert_eq!(
            Pattern::parse("seg%d-%d.ts"),
            Err(LocationError::SeveralDirectives("seg%d-%d.ts".into()))
        );
        assert!(matches!(
            Pattern::parse("https://u:pa55@h/seg%s.ts"),
            Err(LocationError::NotInteger(l)) if !l.contains("pa55")
        ));
    }

    #[test]
    fn hlssink2_style_locations_stay_as_they_are() {
        let l = resolve("segment%05d.ts", "playlist.m3u8").unwrap();
        assert_eq!(l.segment.format(1), "segment00001.ts");
        assert_eq!(l.playlist, "playlist.m3u8");
        assert_eq!(l.key.format(0), "key00000.key");
        assert!(!l.upload);
        let l = resolve("/a/b/s%03d.ts", "/c/p.m3u8").unwrap();
        assert_eq!(l.segment.format(1), "/a/b/s001.ts");
        assert_eq!(l.playlist, "/c/p.m3u8");
        assert_eq!(l.key.format(2), "/a/b/key00002.key");
    }

    #[test]
    fn a_directory_location_holds_everything() {
        let l = resolve("/tmp/hls", "playlist.m3u8").unwrap();
        assert_eq!(l.segment.format(3), "/tmp/hls/segment00003.ts");
        assert_eq!(l.playlist, "/tmp/hls/playlist.m3u8");
        let l = resolve("/tmp/hls/", "/elsewhere/p.m3u8").unwrap();
        assert_eq!(l.segment.format(3), "/tmp/hls/segment00003.ts");
        assert_eq!(l.playlist, "/elsewhere/p.m3u8");
    }

    #[test]
    fn urls_upload() {
        let l = resolve("http://127.0.0.1:8080/live", "playlist.m3u8").unwrap();
        assert!(l.upload);
        assert_eq!(
            l.segment.format(0),
            "http://127.0.0.1:8080/live/segment00000.ts"
        );
        assert_eq!(l.playlist, "http://127.0.0.1:8080/live/playlist.m3u8");
        let l = resolve("https://h/x/s%d.ts", "p.m3u8").unwrap();
        assert_eq!(l.playlist, "https://h/x/p.m3u8");
        assert!(matches!(
            resolve("http://h/x", "/tmp/p.m3u8"),
            Err(LocationError::Mixed { .. })
        ));
    }

    #[test]
    fn s3_locations_upload() {
        let l = resolve("s3://bucket/live", "playlist.m3u8").unwrap();
        assert!(l.upload);
        assert_eq!(l.segment.format(2), "s3://bucket/live/segment00002.ts");
        assert_eq!(l.playlist, "s3://bucket/live/playlist.m3u8");
        assert_eq!(l.key.format(0), "s3://bucket/live/key00000.key");
        let l = resolve("S3://bucket/a/s%03d.ts", "p.m3u8").unwrap();
        assert_eq!(l.playlist, "S3://bucket/a/p.m3u8");
        assert!(is_s3("s3://b/k") && !is_s3("s3:/b") && !is_s3("/s3://"));
        assert!(matches!(
            resolve("s3://bucket/live", "/tmp/p.m3u8"),
            Err(LocationError::Mixed { .. })
        ));
    }

    #[test]
    fn playlist_uris() {
        assert_eq!(
            playlist_uri(None, "/tmp/hls/segment00001.ts"),
            "segment00001.ts"
        );
        assert_eq!(
            playlist_uri(Some("https://cdn/x/"), "/tmp/hls/segment00001.ts"),
            "https://cdn/x/segment00001.ts"
        );
    }
}
