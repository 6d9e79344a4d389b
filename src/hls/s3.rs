//! Output to S3-compatible object storage: `s3://bucket/key` locations, uploaded with PUT Object
//! and expired segments removed with DELETE Object, each request signed with AWS Signature
//! Version 4.
//!
//! Specifications: AWS Signature Version 4 (query-string authentication, "presigned" requests:
//! the signature, credential scope, date and signed headers travel in `X-Amz-*` query
//! parameters; the payload is `UNSIGNED-PAYLOAD`), the S3 REST API (PutObject, DeleteObject, the
//! XML error document's `Code` and `Message`), path-style and virtual-hosted-style bucket
//! addressing; RFC 9111 §5.2 (Cache-Control).
//!
//! Signing is done by the `rusty-s3` crate (BSD-2-Clause), chosen over the official `aws-sigv4`:
//! it is sans-I/O (it turns a request into a signed URL and leaves the sending to us, so the
//! HTTP/1.1 client, its connection reuse, bounded timeouts and TLS configuration are the ones of
//! the HTTP upload, [`super::upload`]); it adds 9 small crates to the build and shares `sha2`
//! 0.11 and `url` with ours, where `aws-sigv4` brings the smithy runtime crates, `http` 0.2 and
//! 1, `time` and `tracing`; its MSRV is 1.89 and it builds with `--locked` on 1.95. It is
//! maintained, tested against AWS's published signing examples and used by S3 clients of other
//! projects. Only its `rustcrypto` feature is on (HMAC-SHA256 from RustCrypto), not its XML
//! response parsing (we need only an error's `Code`, read here).
//!
//! Every request is signed when it is sent (a retry is signed again) and valid for
//! [`SIGNATURE_LIFETIME`]. The signed headers are `host`, `content-type` and `cache-control`, so
//! a store keeps exactly what was signed. Cache-Control is what the built-in server answers:
//! `no-cache` for playlists (a CDN in front of the bucket asks again), a day for segments and
//! keys (their content never changes under a name within a stream).
//!
//! Settings ([`S3Settings`], the element's `s3-*` properties) come first, then the environment
//! variables the AWS CLI and SDKs read: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`; `AWS_REGION`, then `AWS_DEFAULT_REGION` (else `us-east-1`);
//! `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL` (else AWS, `https://s3.REGION.amazonaws.com`).
//! A custom endpoint (MinIO, Ceph, s3s, ...) is addressed path-style
//! (`ENDPOINT/bucket/key`); AWS virtual-hosted-style (`bucket.s3.REGION.amazonaws.com/key`),
//! except for bucket names with dots, which no wildcard certificate covers.
//!
//! Secrets (the secret access key, the session token, the signature of a request) are never
//! logged nor put into an error: logs and errors name an object by its `s3://bucket/key`, never
//! by the signed URL.

use std::time::Duration;

use rusty_s3::actions::{DeleteObject, PutObject, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use super::location::{is_s3, redact_location};
use super::store::{FileKind, Store, StoreError};
use super::upload::{HttpStore, Request, Response, TlsSetupError, content_type};

/// How long a signed request stays valid (`X-Amz-Expires`).
pub const SIGNATURE_LIFETIME: Duration = Duration::from_secs(300);
/// The region when none is set (what the AWS CLI uses for S3 without one).
pub const DEFAULT_REGION: &str = "us-east-1";

/// Cache-Control stored with an object of this kind.
pub fn cache_control(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Playlist => "no-cache",
        FileKind::Segment | FileKind::Init | FileKind::Part => "public, max-age=86400",
        FileKind::Key => "private, max-age=86400",
    }
}

/// What the element's properties say; `None` (or empty) is not set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Settings")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(redact_location))
            .finish()
    }
}

/// Why the S3 output cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3SetupError {
    #[error(
        "no S3 credentials: set the s3-access-key-id and s3-secret-access-key properties, or the \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables"
    )]
    NoCredentials,
    /// One half of a key pair (`given` is set, `missing` is not).
    #[error("{given} is set but {missing} is not")]
    HalfCredentials {
        given: &'static str,
        missing: &'static str,
    },
    #[error("S3 endpoint '{endpoint}': {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Where credentials came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Properties,
    Environment,
}

/// The resolved S3 configuration.
pub struct S3Config {
    /// Custom endpoint (path-style), or None for AWS.
    endpoint: Option<url::Url>,
    region: String,
    credentials: Credentials,
    credentials_from: Source,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_ref().map(url::Url::as_str))
            .field("region", &self.region)
            .field("credentials_from", &self.credentials_from)
            .finish_non_exhaustive()
    }
}

/// A setting or variable with something in it.
fn set(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl S3Config {
    /// Settings first, then the environment as `env` reads it (`std::env::var` in the element).
    pub fn resolve(
        settings: &S3Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Config, S3SetupError> {
        let env = |name: &str| set(env(name));
        let key = set(settings.access_key_id.clone());
        let secret = set(settings.secret_access_key.clone());
        let (credentials, credentials_from) = match (key, secret) {
            (Some(k), Some(s)) => (
                credentials(k, s, set(settings.session_token.clone())),
                Source::Properties,
            ),
            (Some(_), None) => {
                return Err(S3SetupError::HalfCredentials {
                    given: "s3-access-key-id",
                    missing: "s3-secret-access-key",
                });
            }
            (None, Some(_)) => {
                return Err(S3SetupError::HalfCredentials {
                    given: "s3-secret-access-key",
                    missing: "s3-access-key-id",
                });
            }
            (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) => (
                    credentials(k, s, env("AWS_SESSION_TOKEN")),
                    Source::Environment,
                ),
                (Some(_), None) => {
                    return Err(S3SetupError::HalfCredentials {
                        given: "AWS_ACCESS_KEY_ID",
                        missing: "AWS_SECRET_ACCESS_KEY",
                    });
                }
                (None, Some(_)) => {
                    return Err(S3SetupError::HalfCredentials {
                        given: "AWS_SECRET_ACCESS_KEY",
                        missing: "AWS_ACCESS_KEY_ID",
                    });
                }
                (None, None) => return Err(S3SetupError::NoCredentials),
            },
        };
        let region = set(settings.region.clone())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let endpoint = set(settings.endpoint.clone())
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .map(|e| parse_endpoint(e.trim()))
            .transpose()?;
        Ok(S3Config {
            endpoint,
            region,
            credentials,
            credentials_from,
        })
    }

    /// The bucket's URL base: path-style under a custom endpoint, else AWS.
    fn bucket(&self, name: &str) -> Result<Bucket, String> {
        let (endpoint, style) = match &self.endpoint {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => {
                let aws = format!("https://s3.{}.amazonaws.com", self.region);
                let url = url::Url::parse(&aws).map_err(|e| format!("region: {e}"))?;
                let style = if name.contains('.') {
                    UrlStyle::Path
                } else {
                    UrlStyle::VirtualHost
                };
                (url, style)
            }
        };
        Bucket::new(endpoint, style, name.to_owned(), self.region.clone())
            .map_err(|e| format!("bad bucket name: {e:?}"))
    }
}

/// Credentials with an optional session token.
fn credentials(key: String, secret: String, token: Option<String>) -> Credentials {
    match token {
        Some(t) => Credentials::new_with_token(key, secret, t),
        None => Credentials::new(key, secret),
    }
}

fn parse_endpoint(endpoint: &str) -> Result<url::Url, S3SetupError> {
    let bad = |reason: &str| S3SetupError::Endpoint {
        endpoint: redact_location(endpoint).into_owned(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not belong in the endpoint: use s3-access-key-id and \
             s3-secret-access-key",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an endpoint has no query or fragment"));
    }
    Ok(url)
}

/// `s3://bucket/key` split into bucket and key.
pub fn split_location(location: &str) -> Result<(&str, &str), StoreError> {
    let bad = |message: &str| StoreError::Location {
        location: redact_location(location).into_owned(),
        message: message.to_owned(),
    };
    if !is_s3(location) {
        return Err(bad("not an s3:// location"));
    }
    let (bucket, key) = location[5..]
        .split_once('/')
        .ok_or_else(|| bad("no object key after the bucket"))?;
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    if bucket.contains(['@', ':', '?', '#']) {
        return Err(bad(
            "a bucket name has no credentials, port or query: credentials are the s3-* \
             properties, the endpoint is s3-endpoint",
        ));
    }
    if key.is_empty() {
        return Err(bad("no object key after the bucket"));
    }
    Ok((bucket, key))
}

/// The `Code` and `Message` of an S3 error document, as plain bounded text.
pub fn error_document(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let element = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&close)?;
        let raw = text[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        Some(
            raw.chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect::<String>(),
        )
    };
    let code = element("Code").filter(|c| !c.is_empty())?;
    Some((code, element("Message").unwrap_or_default()))
}

/// Uploads `s3://` locations to an S3-compatible store; `http(s)://` ones (a playlist at an
/// origin beside segments in a bucket) go to the plain HTTP upload on the same connections.
pub struct S3Store {
    http: HttpStore,
    config: S3Config,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// `ca_file`: CA certificates to trust for an https endpoint besides the system's.
    pub fn new(
        config: S3Config,
        ca_file: Option<&std::path::Path>,
    ) -> Result<S3Store, S3SetupError> {
        log::debug!(
            "S3 output: endpoint {}, region {}, credentials from the {}{}",
            config.endpoint.as_ref().map_or_else(
                || format!("AWS (https://s3.{}.amazonaws.com)", config.region),
                |e| format!("{e} (path-style)")
            ),
            config.region,
            match config.credentials_from {
                Source::Properties => "s3-* properties",
                Source::Environment => "environment",
            },
            if config.credentials.token().is_some() {
                " with a session token"
            } else {
                ""
            }
        );
        Ok(S3Store {
            http: HttpStore::new(ca_file)?,
            config,
        })
    }

    /// The HTTP client underneath (its connection count).
    pub fn http(&self) -> &HttpStore {
        &self.http
    }

    /// Signs and sends one request for the object at `location`.
    fn send(
        &self,
        method: &'static str,
        location: &str,
        kind: FileKind,
        body: &[u8],
    ) -> Result<Response, StoreError> {
        let (bucket_name, key) = split_location(location)?;
        let bucket = self
            .config
            .bucket(bucket_name)
            .map_err(|message| StoreError::Location {
                location: redact_location(location).into_owned(),
                message,
            })?;
        let credentials = Some(&self.config.credentials);
        let (content_type, cache) = (content_type(kind, key), cache_control(kind));
        let (url, headers): (url::Url, &[(&str, &str)]) = if method == "PUT" {
            let mut action = PutObject::new(&bucket, credentials, key);
            action.headers_mut().insert("cache-control", cache);
            action.headers_mut().insert("content-type", content_type);
            (
                action.sign(SIGNATURE_LIFETIME),
                &[("cache-control", cache), ("content-type", content_type)],
            )
        } else {
            let action = DeleteObject::new(&bucket, credentials, key);
            (action.sign(SIGNATURE_LIFETIME), &[])
        };
        self.http.send(&Request {
            method,
            url: &url,
            shown: location,
            headers,
            body,
        })
    }

    fn check(method: &'static str, location: &str, r: &Response) -> Result<(), StoreError> {
        log::debug!(
            "upload: {method} {} answered HTTP {}",
            redact_location(location),
            r.status
        );
        match r.status {
            200..=299 => return Ok(()),
            // Already gone: what a DELETE wants.
            404 | 410 if method == "DELETE" => return Ok(()),
            _ => {}
        }
        let location = redact_location(location).into_owned();
        Err(match error_document(&r.body) {
            Some((code, message)) => StoreError::S3 {
                method,
                location,
                status: r.status,
                code,
                message,
            },
            None => StoreError::Http {
                method,
                location,
                status: r.status,
            },
        })
    }
}

impl Store for S3Store {
    fn put(&self, location: &str, kind: FileKind, data: &[u8]) -> Result<(), StoreError> {
        if !is_s3(location) {
            return self.http.put(location, kind, data);
        }
        let r = self.send("PUT", location, kind, data)?;
        S3Store::check("PUT", location, &r)
    }

    fn delete(&self, location: &str, kind: FileKind) -> Result<(), StoreError> {
        if !is_s3(location) {
            return self.http.delete(location, kind);
        }
        let r = self.send("DELETE", location, kind, &[])?;
        S3Store::check("DELETE", location, &r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn props(key: &str, secret: &str) -> S3Settings {
        S3Settings {
            access_key_id: Some(key.into()),
            secret_access_key: Some(secret.into()),
            ..S3Settings::default()
        }
    }

    #[test]
    fn properties_come_before_the_environment() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "ENVKEY"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envtoken"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ]);
        let c = S3Config::resolve(&props("PROPKEY", "propsecret"), &env).unwrap();
        assert_eq!(c.credentials.key(), "PROPKEY");
        assert_eq!(c.credentials.secret(), "propsecret");
        assert_eq!(c.credentials.token(), None, "no mixing of sources");
        assert_eq!(c.credentials_from, Source::Properties);
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.endpoint.unwrap().as_str(), "http://127.0.0.1:9000/");
        let c = S3Config::resolve(&S3Settings::default(), &env).unwrap();
        assert_eq!(c.credentials.key(), "ENVKEY");
        assert_eq!(c.credentials.token(), Some("envtoken"));
        assert_eq!(c.credentials_from, Source::Environment);
        let s3_endpoint = env_of(&[
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_ENDPOINT_URL", "http://a:1"),
            ("AWS_ENDPOINT_URL_S3", "http://b:2"),
        ]);
        let c = S3Config::resolve(&S3Settings::default(), s3_endpoint).unwrap();
        assert_eq!(c.region, "ap-south-1");
        assert_eq!(c.endpoint.unwrap().as_str(), "http://b:2/");
        let settings = S3Settings {
            region: Some("us-west-2".into()),
            endpoint: Some("https://minio.example:9000/s3".into()),
            session_token: Some("tok".into()),
            ..props("K", "S")
        };
        let c = S3Config::resolve(&settings, &env).unwrap();
        assert_eq!(c.region, "us-west-2");
        assert_eq!(c.credentials.token(), Some("tok"));
        let c = S3Config::resolve(&props("K", "S"), env_of(&[])).unwrap();
        assert_eq!(c.region, DEFAULT_REGION);
        assert!(c.endpoint.is_none());
    }

    #[test]
    fn missing_credentials_are_named() {
        assert_eq!(
            S3Config::resolve(&S3Settings::default(), env_of(&[])).unwrap_err(),
            S3SetupError::NoCredentials
        );
        let half = S3Settings {
            access_key_id: Some("K".into()),
            ..S3Settings::default()
        };
        assert!(matches!(
            S3Config::resolve(&half, env_of(&[])),
            Err(S3SetupError::HalfCredentials {
                missing: "s3-secret-access-key",
                ..
            })
        ));
        // Blank is unset.
        assert!(matches!(
            S3Config::resolve(
                &S3Settings::default(),
                env_of(&[("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", " ")])
            ),
            Err(S3SetupError::HalfCredentials {
                missing: "AWS_SECRET_ACCESS_KEY",
                ..
            })
        ));
    }

    #[test]
    fn endpoints_are_checked_without_showing_credentials() {
        for bad in [
            "ftp://h",
            "not a url",
            "http://u:pa55@h:9000",
            "http://h/?x=1",
        ] {
            let settings = S3Settings {
                endpoint: Some(bad.into()),
                ..props("K", "S")
            };
            let e = S3Config::resolve(&settings, env_of(&[])).unwrap_err();
            assert!(matches!(e, S3SetupError::Endpoint { .. }), "{bad}: {e:?}");
            assert!(!format!("{e} {e:?}").contains("pa55"), "{e}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_forms() {
        let settings = S3Settings {
            session_token: Some("t0ken".into()),
            ..props("K", "s3cret")
        };
        let c = S3Config::resolve(&settings, env_of(&[])).unwrap();
        let store = S3Store::new(c, None).unwrap();
        for text in [format!("{settings:?}"), format!("{store:?}")] {
            assert!(
                !text.contains("s3cret") && !text.contains("t0ken"),
                "{text}"
            );
        }
    }

    #[test]
    fn locations_split_into_bucket_and_key() {
        assert_eq!(
            split_location("s3://b/live/s1.ts").unwrap(),
            ("b", "live/s1.ts")
        );
        assert_eq!(split_location("S3://b/k").unwrap(), ("b", "k"));
        for bad in [
            "s3://b",
            "s3://b/",
            "s3:///k",
            "s3://u:pa55@b/k",
            "http://b/k",
        ] {
            let e = split_location(bad).unwrap_err();
            assert!(matches!(e, StoreError::Location { .. }), "{bad}");
            assert!(!e.to_string().contains("pa55"), "{e}");
        }
    }

    #[test]
    fn custom_endpoints_are_path_style_and_aws_virtual_hosted() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..props("K", "S")
        };
        let c = S3Config::resolve(&settings, env_of(&[])).unwrap();
        let b = c.bucket("media").unwrap();
        assert_eq!(
            b.object_url("live/a b.ts").as_str(),
            "http://127.0.0.1:9000/media/live/a%20b.ts"
        );
        let c =
            S3Config::resolve(&props("K", "S"), env_of(&[("AWS_REGION", "eu-north-1")])).unwrap();
        assert_eq!(
            c.bucket("media").unwrap().object_url("k").as_str(),
            "https://media.s3.eu-north-1.amazonaws.com/k"
        );
        assert_eq!(
            c.bucket("my.media").unwrap().object_url("k").as_str(),
            "https://s3.eu-north-1.amazonaws.com/my.media/k"
        );
    }

    #[test]
    fn error_documents_give_code_and_message() {
        let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>\
            <Message>The request signature we calculated does not match &amp; so on</Message>\
            <StringToSign>AWS4-HMAC-SHA256...</StringToSign></Error>";
        assert_eq!(
            error_document(body),
            Some((
                "SignatureDoesNotMatch".into(),
                "The request signature we calculated does not match & so on".into()
            ))
        );
        assert_eq!(error_document(b"<html>nope</html>"), None);
        assert_eq!(error_document(b"\xff\xfe"), None);
    }

    /// One request to a local server answering `answer`; what the server got.
    fn one_request(
        answer: &'static str,
        f: impl FnOnce(&S3Store, &str) -> Result<(), StoreError>,
    ) -> (Result<(), StoreError>, String) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let settings = S3Settings {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            session_token: Some("t0ken".into()),
            ..props("AKID", "s3cret")
        };
        let store = S3Store::new(S3Config::resolve(&settings, env_of(&[])).unwrap(), None).unwrap();
        let r = f(&store, "s3://media/live/p.m3u8");
        (r, h.join().unwrap())
    }

    #[test]
    fn puts_are_signed_with_their_headers() {
        let (r, got) = one_request("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", |s, loc| {
            s.put(loc, FileKind::Playlist, b"#EXTM3U\n")
        });
        r.unwrap();
        assert!(got.starts_with("PUT /media/live/p.m3u8?"), "{got}");
        let line = got.lines().next().unwrap();
        for p in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKID%2F",
            "%2Fus-east-1%2Fs3%2Faws4_request",
            "X-Amz-Expires=300",
            "X-Amz-Security-Token=t0ken",
            "X-Amz-SignedHeaders=cache-control%3Bcontent-type%3Bhost",
            "X-Amz-Signature=",
        ] {
            assert!(line.contains(p), "{p} not in {line}");
        }
        assert!(got.contains("\r\ncache-control: no-cache\r\n"), "{got}");
        assert!(got.contains("\r\ncontent-type: application/vnd.apple.mpegurl\r\n"));
        assert!(got.contains("\r\nContent-Length: 8\r\n"));
        assert!(!got.contains("s3cret"));
    }

    #[test]
    fn refusals_carry_the_s3_error_code_and_no_signature() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                   <Message>The request signature we calculated does not match</Message></Error>";
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{doc}",
                doc.len()
            )
            .into_boxed_str(),
        );
        let (r, _) = one_request(answer, |s, loc| s.put(loc, FileKind::Segment, b"x"));
        let e = r.unwrap_err();
        assert!(
            matches!(&e, StoreError::S3 { status: 403, code, .. } if code == "SignatureDoesNotMatch"),
            "{e:?}"
        );
        assert!(!e.retryable());
        let text = format!("{e} {e:?}");
        assert!(text.contains("s3://media/live/p.m3u8"), "{text}");
        assert!(!text.contains("X-Amz") && !text.contains("t0ken"), "{text}");
        // A 5xx is retried; a DELETE of a missing object is done.
        let (r, _) = one_request(
            "HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n",
            |s, loc| s.put(loc, FileKind::Segment, b"x"),
        );
        assert!(r.unwrap_err().retryable());
        let (r, got) = one_request(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            |s, loc| s.delete(loc, FileKind::Segment),
        );
        r.unwrap();
        assert!(got.starts_with("DELETE /media/live/p.m3u8?"), "{got}");
    }
}
