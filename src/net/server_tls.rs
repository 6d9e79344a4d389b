//! The certificate of the crate's TLS servers (rtspserversink's RTSPS): a PEM certificate chain
//! and its private key, from files or from memory (what a GTlsCertificate's `certificate-pem` and
//! `private-key-pem` hold), made into a rustls server configuration.
//!
//! Specifications: RFC 7468 (PEM); RFC 8446 and RFC 5246 (TLS 1.3 and 1.2, done by rustls with
//! ring). Every error names where the PEM came from and what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file cannot be opened or read.
    #[error("cannot read {origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// A PEM section is malformed.
    #[error("bad PEM in {origin}: {source}")]
    Pem {
        origin: String,
        #[source]
        source: pem::Error,
    },
    /// No `CERTIFICATE` section.
    #[error("no certificate (BEGIN CERTIFICATE) in {origin}")]
    NoCertificate { origin: String },
    /// No unencrypted private key section.
    #[error(
        "no private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY; encrypted keys are \
         not supported) in {origin}"
    )]
    NoKey { origin: String },
    /// rustls refuses the pair: a key of an unsupported type, or one that does not belong to the
    /// certificate.
    #[error("the certificate of {cert} with the key of {key} cannot be served: {source}")]
    Unusable {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
}

/// PEM text and where it came from (a description such as `certificate file /etc/cert.pem`,
/// named in errors).
#[derive(Debug, Clone, Copy)]
pub struct Pem<'a> {
    pub origin: &'a str,
    pub text: &'a [u8],
}

/// A TLS 1.2/1.3 server configuration (ring, no client certificates) presenting the certificate
/// chain of `cert` (leaf first) with the private key of `key`.
pub fn server_config(
    cert: Pem<'_>,
    key: Pem<'_>,
) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
    let bad_pem = |origin: &str, source| ServerTlsError::Pem {
        origin: origin.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_slice_iter(cert.text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(cert.origin, e))?;
    if chain.is_empty() {
        return Err(ServerTlsError::NoCertificate {
            origin: cert.origin.to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(key.text).map_err(|e| match e {
        pem::Error::NoItemsFound => ServerTlsError::NoKey {
            origin: key.origin.to_owned(),
        },
        e => bad_pem(key.origin, e),
    })?;
    let unusable = |source| ServerTlsError::Unusable {
        cert: cert.origin.to_owned(),
        key: key.origin.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // with_single_cert checks that the key is the certificate's.
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(unusable)?;
    Ok(Arc::new(config))
}

/// [`server_config`] from PEM files; without `key`, the key is read from the certificate's file.
pub fn server_config_from_files(
    cert: &Path,
    key: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
    let read = |origin: String, path: &Path| match std::fs::read(path) {
        Ok(text) => Ok((origin, text)),
        Err(source) => Err(ServerTlsError::Read { origin, source }),
    };
    let (cert_origin, cert_text) = read(format!("certificate file {}", cert.display()), cert)?;
    let (key_origin, key_text) = match key {
        Some(path) => read(format!("key file {}", path.display()), path)?,
        None => (cert_origin.clone(), cert_text.clone()),
    };
    server_config(
        Pem {
            origin: &cert_origin,
            text: &cert_text,
        },
        Pem {
            origin: &key_origin,
            text: &key_text,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn pem<'a>(origin: &'a str, text: &'a str) -> Pem<'a> {
        Pem {
            origin,
            text: text.as_bytes(),
        }
    }

    #[test]
    fn a_certificate_and_its_key_make_a_config() {
        let (cert, key) = generated("localhost");
        server_config(pem("c", &cert), pem("k", &key)).unwrap();
        // Both in one text, as GTlsCertificate's from_file takes them.
        let both = format!("{cert}{key}");
        server_config(pem("b", &both), pem("b", &both)).unwrap();
    }

    #[test]
    fn each_problem_is_named_with_its_origin() {
        let (cert, key) = generated("localhost");
        let (_, other_key) = generated("localhost");
        let err = server_config(pem("c.pem", &key), pem("k.pem", &key)).unwrap_err();
        assert!(matches!(err, ServerTlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("c.pem"), "{err}");
        let err = server_config(pem("c.pem", &cert), pem("k.pem", &cert)).unwrap_err();
        assert!(matches!(err, ServerTlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("k.pem"), "{err}");
        let truncated = &cert[..cert.len() / 2];
        let err = server_config(pem("c.pem", truncated), pem("k.pem", &key)).unwrap_err();
        assert!(matches!(err, ServerTlsError::Pem { .. }), "{err}");
        let err = server_config(pem("c.pem", &cert), pem("k.pem", &other_key)).unwrap_err();
        assert!(matches!(err, ServerTlsError::Unusable { .. }), "{err}");
        assert!(
            err.to_string().contains("c.pem") && err.to_string().contains("k.pem"),
            "{err}"
        );
    }

    #[test]
    fn files_are_read_and_a_missing_one_is_named() {
        let (cert, key) = generated("localhost");
        let dir = std::env::temp_dir().join(format!("server-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        server_config_from_files(&cert_path, Some(&key_path)).unwrap();
        let err = server_config_from_files(&cert_path, None).unwrap_err();
        assert!(matches!(err, ServerTlsError::NoKey { .. }), "{err}");
        let missing = dir.join("missing.pem");
        let err = server_config_from_files(&cert_path, Some(&missing)).unwrap_err();
        assert!(matches!(err, ServerTlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
