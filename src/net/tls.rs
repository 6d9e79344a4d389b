//! The crate's TLS clients (rsrtmpsink, rtspsrc2): their trust anchors (the system's CA
//! certificates, read once per process with rustls-native-certs, the store GStreamer's GIO-based
//! TLS elements trust too, and extra CAs from a PEM file) and their certificate verifier, which
//! fails on the problems `tls-validation-flags` names.
//!
//! Specifications: RFC 5280 §6 (certification path validation, done by rustls/webpki against
//! these anchors); RFC 7468 (PEM).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be opened or read.
    #[error("cannot read CA file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM section of the file is malformed.
    #[error("bad CA file {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of the file is not one rustls can use as a trust anchor.
    #[error("bad CA certificate in {}: {source}", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The file holds no certificate.
    #[error("no certificate in CA file {}", path.display())]
    Empty { path: PathBuf },
}

static SYSTEM_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // A certificate of the system's store that rustls cannot use is left out.
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    log::debug!(
        "system CA store: {added} certificates, {ignored} unusable, {} errors",
        loaded.errors.len()
    );
    for e in &loaded.errors {
        log::debug!("system CA store: {e}");
    }
    Arc::new(roots)
});

/// The system's CA certificates, loaded on first use and shared by every caller.
pub fn system_roots() -> Arc<RootCertStore> {
    SYSTEM_ROOTS.clone()
}

/// The system's CA certificates plus those of the PEM file `ca_file`, if any. A file that cannot
/// be read, is malformed, or holds no certificate is an error (a wrong path is no silent
/// fallback to the system store).
pub fn roots_with_ca_file(ca_file: Option<&Path>) -> Result<RootCertStore, CaFileError> {
    let mut roots = RootCertStore::clone(&SYSTEM_ROOTS);
    let Some(path) = ca_file else {
        return Ok(roots);
    };
    for cert in ca_file_certificates(path)? {
        roots.add(cert).map_err(|source| CaFileError::Certificate {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The certificates of the PEM file `path`: at least one.
pub fn ca_file_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_owned(),
        });
    }
    log::debug!("{} CA certificates from {}", certs.len(), path.display());
    Ok(certs)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> CaFileError {
    let path = path.to_owned();
    match e {
        rustls::pki_types::pem::Error::Io(source) => CaFileError::Read { path, source },
        source => CaFileError::Pem { path, source },
    }
}

/// Which certificate problems are errors (GTlsCertificateFlags' vocabulary, as the elements'
/// `tls-validation-flags` name them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsValidation {
    pub unknown_ca: bool,
    pub bad_identity: bool,
    pub not_activated: bool,
    pub expired: bool,
    pub revoked: bool,
    pub insecure: bool,
    pub generic_error: bool,
}

impl TlsValidation {
    pub const ALL: TlsValidation = TlsValidation {
        unknown_ca: true,
        bad_identity: true,
        not_activated: true,
        expired: true,
        revoked: true,
        insecure: true,
        generic_error: true,
    };
}

/// Why a TLS client configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration trusting `roots`: problems `validation` does not ask about are
/// forgiven, the rest are errors.
pub fn client_config(
    roots: Arc<RootCertStore>,
    validation: TlsValidation,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    verifier::client_config(roots, Vec::new(), validation)
}

/// As [`client_config`], and a server presenting one of the `pinned` certificates as its own
/// is trusted: a self-signed certificate given as its own CA file (webpki refuses one that is
/// also a CA, as `openssl req -x509` makes them, as a server's: `CaUsedAsEndEntity`, where
/// GnuTLS, and so rtspsrc, trust it). Its name and validity period are still checked as
/// `validation` asks.
pub fn client_config_pinning(
    roots: Arc<RootCertStore>,
    pinned: Vec<CertificateDer<'static>>,
    validation: TlsValidation,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    verifier::client_config(roots, pinned, validation)
}

/// A handshake failure as a user reads it: rustls's reason, with the unknown issuer (the
/// usual failure: a self-signed certificate or a private CA) spelled out.
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "invalid peer certificate: certificate signed by an unknown issuer".into()
        }
        e => e.to_string(),
    }
}

/// The rustls error inside an I/O error of a rustls stream, if that is what it is.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref()
}

mod verifier {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

    use super::{ConfigError, TlsValidation};

    pub(super) fn client_config(
        roots: Arc<RootCertStore>,
        pinned: Vec<CertificateDer<'static>>,
        v: TlsValidation,
    ) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = if roots.is_empty() {
            None
        } else {
            Some(WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?)
        };
        let verifier = Arc::new(Verifier {
            inner,
            pinned,
            provider: provider.clone(),
            flags: v,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    #[derive(Debug)]
    struct Verifier {
        inner: Option<Arc<WebPkiServerVerifier>>,
        pinned: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
        flags: TlsValidation,
    }

    impl Verifier {
        /// A certificate the user pinned: its name and validity period as the flags ask.
        fn verify_pinned(
            &self,
            end_entity: &CertificateDer<'_>,
            server_name: &ServerName<'_>,
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let f = self.flags;
            if f.bad_identity {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&cert, server_name)?;
            }
            let (not_before, not_after) = validity(end_entity).ok_or(
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            )?;
            let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            if f.not_activated && now < not_before {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet,
                ));
            }
            if f.expired && now > not_after {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
            }
            Ok(ServerCertVerified::assertion())
        }
    }

    /// notBefore and notAfter of an X.509 certificate (RFC 5280 §4.1.2.5), in Unix seconds.
    pub(super) fn validity(der: &[u8]) -> Option<(i64, i64)> {
        let (_, cert, _) = tlv(der)?;
        let (_, mut tbs, _) = tlv(cert)?;
        // [0] version, when present; then serialNumber, signature, issuer.
        if tbs.first() == Some(&0xa0) {
            tbs = tlv(tbs)?.2;
        }
        for _ in 0..3 {
            tbs = tlv(tbs)?.2;
        }
        let (_, validity, _) = tlv(tbs)?;
        let (tag, before, rest) = tlv(validity)?;
        let not_before = time(tag, before)?;
        let (tag, after, _) = tlv(rest)?;
        Some((not_before, time(tag, after)?))
    }

    /// One DER element at the start of `input`: its tag, value and what follows (X.690 §8.1).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, r) = rest.split_at_checked(n)?;
            rest = r;
            bytes
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b))
        };
        let (value, rest) = rest.split_at_checked(len)?;
        Some((tag, value, rest))
    }

    /// A UTCTime or GeneralizedTime (RFC 5280 §4.1.2.5.1-2: UTC, with seconds) in Unix seconds.
    fn time(tag: u8, value: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
        let full = match tag {
            0x17 => {
                let yy: u8 = s.get(..2)?.parse().ok()?;
                format!("{}{s}", if yy >= 50 { "19" } else { "20" })
            }
            0x18 => s.to_owned(),
            _ => return None,
        };
        let t = chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S").ok()?;
        Some(t.and_utc().timestamp())
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let result = match &self.inner {
                Some(inner) => inner.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ),
                None => Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(_)
                    if self
                        .pinned
                        .iter()
                        .any(|p| p.as_ref() == end_entity.as_ref()) =>
                {
                    return self.verify_pinned(end_entity, server_name, now);
                }
                Err(rustls::Error::InvalidCertificate(e)) => e,
                Err(e) => return Err(e),
            };
            let f = self.flags;
            let forgiven = match &err {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => !f.unknown_ca,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => !f.bad_identity,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => !f.expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    !f.not_activated
                }
                CertificateError::Revoked => !f.revoked,
                _ => !f.generic_error,
            };
            if !forgiven {
                return Err(rustls::Error::InvalidCertificate(err));
            }
            // An unknown CA stops the verification before the name is looked at: check the
            // name here when it matters.
            if matches!(err, CertificateError::UnknownIssuer) && f.bad_identity {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&cert, server_name)?;
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("net-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// The first certificate of the system's bundle, as PEM.
    fn a_system_certificate() -> Option<String> {
        let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").ok()?;
        let end = "-----END CERTIFICATE-----";
        let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
        let stop = bundle[start..].find(end)? + start + end.len();
        Some(format!("{}\n", &bundle[start..stop]))
    }

    #[test]
    fn the_system_store_is_loaded_once_and_shared() {
        let a = system_roots();
        let b = system_roots();
        assert!(Arc::ptr_eq(&a, &b));
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            assert!(!a.is_empty(), "Debian's ca-certificates are installed");
        }
        let plus_nothing = roots_with_ca_file(None).unwrap();
        assert_eq!(plus_nothing.len(), a.len());
    }

    #[test]
    fn a_ca_file_adds_its_certificates() {
        let Some(pem) = a_system_certificate() else {
            eprintln!("no /etc/ssl/certs/ca-certificates.crt: skipped");
            return;
        };
        let path = temp_file("one.pem", pem.repeat(2).as_bytes());
        let roots = roots_with_ca_file(Some(&path)).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(roots.len(), system_roots().len() + 2);
    }

    #[test]
    fn the_validity_period_is_read_and_bad_der_is_no_panic() {
        let Some(pem) = a_system_certificate() else {
            eprintln!("no /etc/ssl/certs/ca-certificates.crt: skipped");
            return;
        };
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (not_before, not_after) = verifier::validity(&der).unwrap();
        // Some time after 1990, valid for a while.
        assert!(not_before > 631_152_000, "{not_before}");
        assert!(not_after > not_before + 86_400, "{not_after}");
        for len in 0..der.len() {
            assert_eq!(verifier::validity(&der[..len]), None, "truncated at {len}");
        }
        let mut bytes = der.to_vec();
        for i in 0..bytes.len().min(400) {
            bytes[i] ^= 0xff;
            let _ = verifier::validity(&bytes);
            bytes[i] ^= 0xff;
        }
    }

    #[test]
    fn unusable_ca_files_are_typed_errors() {
        let path = temp_file("empty.pem", b"not a certificate");
        let e = roots_with_ca_file(Some(&path)).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(e, CaFileError::Empty { .. }), "{e:?}");

        let e = roots_with_ca_file(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            matches!(&e, CaFileError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert!(e.to_string().contains("/nonexistent/ca.pem"));

        let path = temp_file(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIB!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = roots_with_ca_file(Some(&path)).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(e, CaFileError::Pem { .. } | CaFileError::Certificate { .. }),
            "{e:?}"
        );
    }
}
