//! Credentials out of text: every `scheme://user:password@host` in a string loses its user info,
//! for error messages and logs (a location is never shown with its credentials).
//!
//! Specifications: RFC 3986 §3.2 (authority) and §3.2.1 (userinfo, which ends at the last `@`
//! before the path).

use std::borrow::Cow;

/// The user info of each URL in `text`: byte ranges from the authority's start to (not
/// including) the `@` that ends it. The authority ends at the path, the query, the fragment, a
/// quote or whitespace; an `@` after that is not user info.
fn userinfo_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let rest = &text[start..];
        let len = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..len].rfind('@') {
            spans.push((start, start + at));
        }
        from = start + len;
    }
    spans
}

/// `text` with `with` in place of each URL's user info (and its `@` unless `keep_at`), borrowed
/// when there is none.
fn rewrite<'a>(text: &'a str, keep_at: bool, with: &str) -> Cow<'a, str> {
    if !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let spans = userinfo_spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (start, at) in spans {
        out.push_str(&text[done..start]);
        out.push_str(with);
        // The `@` stays when something replaced the user info, goes with it otherwise.
        done = if keep_at { at } else { at + 1 };
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// `text` with every URL's `user:password@` removed: `rtsp://cam/live`.
pub fn strip_userinfo(text: &str) -> Cow<'_, str> {
    rewrite(text, false, "")
}

/// `text` with every URL's user info replaced by `redacted`: `rtsp://redacted@cam/live`, which
/// keeps visible that credentials were given.
pub fn mask_userinfo(text: &str) -> Cow<'_, str> {
    rewrite(text, true, "redacted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped() {
        for (location, shown) in [
            ("rtsp://user:secret@cam:554/live", "rtsp://cam:554/live"),
            ("rtsp://user@cam/live", "rtsp://cam/live"),
            (
                "rtsp://us%40er:p%40ss@cam/live?x=a@b",
                "rtsp://cam/live?x=a@b",
            ),
            ("rtsp://user:p@ss@cam", "rtsp://cam"),
            ("rtsp://user:secret@[::1]:8554/", "rtsp://[::1]:8554/"),
            ("rtsp://cam/live@path", "rtsp://cam/live@path"),
            ("rtsp://cam/live", "rtsp://cam/live"),
            ("not a url user:secret@", "not a url user:secret@"),
            ("rtsp://user:secret@", "rtsp://"),
            ("", ""),
            (
                "url=rtsp://a:b@h/1;seq=1, url=rtsp://c:d@h/2;seq=2",
                "url=rtsp://h/1;seq=1, url=rtsp://h/2;seq=2",
            ),
            ("Location: rtsp://u:p@h:554", "Location: rtsp://h:554"),
        ] {
            assert_eq!(strip_userinfo(location), shown, "{location}");
        }
    }

    #[test]
    fn masked() {
        assert_eq!(
            mask_userinfo("DESCRIBE rtsp://admin:s3cret@10.0.0.1:554/live RTSP/1.0"),
            "DESCRIBE rtsp://redacted@10.0.0.1:554/live RTSP/1.0"
        );
        assert_eq!(
            mask_userinfo("a rtsp://u@h b http://x:y@z?q=1@2"),
            "a rtsp://redacted@h b http://redacted@z?q=1@2"
        );
        assert_eq!(mask_userinfo("rtsp://host/a@b"), "rtsp://host/a@b");
        assert!(matches!(
            mask_userinfo("rtsp://host/stream"),
            Cow::Borrowed(_)
        ));
    }
}
