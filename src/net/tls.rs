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
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))?;
    let mut n = 0usize;
    for cert in certs {
        let cert = cert.map_err(|e| pem_error(path, e))?;
        roots.add(cert).map_err(|source| CaFileError::Certificate {
            path: path.to_owned(),
            source,
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(CaFileError::Empty {
            path: path.to_owned(),
        });
    }
    log::debug!("{n} CA certificates from {}", path.display());
    Ok(roots)
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
    verifier::client_config(roots, validation)
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
        provider: Arc<CryptoProvider>,
        flags: TlsValidation,
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
