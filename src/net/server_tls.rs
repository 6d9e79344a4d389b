//! The certificate of the crate's TLS servers (rtspserversink's RTSPS): a PEM certificate chain
//! and its private key, from files or from memory (what a GTlsCertificate's `certificate-pem` and
//! `private-key-pem` hold), made into a rustls server configuration.
//!
//! Specifications: RFC 7468 (PEM); RFC 5958 (PKCS #8) and RFC 5915 (EC private keys); RFC 8446
//! and RFC 5246 (TLS 1.3 and 1.2, done by rustls with ring). Every error names where the PEM came
//! from and what is wrong with it.

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

/// The newest TLS version a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMaxVersion {
    /// TLS 1.2 only: for clients that fail on TLS 1.3 (librtmp with GnuTLS, `rtmps://`).
    Tls12,
    /// TLS 1.2 and 1.3.
    #[default]
    Tls13,
}

impl std::str::FromStr for TlsMaxVersion {
    type Err = String;

    /// `1.2` or `1.3`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "1.2" => Ok(Self::Tls12),
            "1.3" => Ok(Self::Tls13),
            other => Err(format!("TLS version '{other}': 1.2 or 1.3")),
        }
    }
}

/// A TLS 1.2/1.3 server configuration (ring, no client certificates) presenting the certificate
/// chain of `cert` (leaf first) with the private key of `key`.
pub fn server_config(
    cert: Pem<'_>,
    key: Pem<'_>,
) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
    server_config_max(cert, key, TlsMaxVersion::Tls13)
}

/// [`server_config`] offering TLS versions up to `max`.
pub fn server_config_max(
    cert: Pem<'_>,
    key: Pem<'_>,
    max: TlsMaxVersion,
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
    let mut private_key = PrivateKeyDer::from_pem_slice(key.text).map_err(|e| match e {
        pem::Error::NoItemsFound => ServerTlsError::NoKey {
            origin: key.origin.to_owned(),
        },
        e => bad_pem(key.origin, e),
    })?;
    if let PrivateKeyDer::Pkcs8(der) = &private_key
        && let Some(fixed) = without_leading_zero(der.secret_pkcs8_der())
    {
        private_key = PrivateKeyDer::Pkcs8(fixed.into());
    }
    let unusable = |source| ServerTlsError::Unusable {
        cert: cert.origin.to_owned(),
        key: key.origin.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // with_single_cert checks that the key is the certificate's.
    let versions: &[&'static rustls::SupportedProtocolVersion] = match max {
        TlsMaxVersion::Tls12 => &[&rustls::version::TLS12],
        TlsMaxVersion::Tls13 => rustls::DEFAULT_VERSIONS,
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
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
    server_config_from_files_max(cert, key, TlsMaxVersion::Tls13)
}

/// [`server_config_from_files`] offering TLS versions up to `max`.
pub fn server_config_from_files_max(
    cert: &Path,
    key: Option<&Path>,
    max: TlsMaxVersion,
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
    server_config_max(
        Pem {
            origin: &cert_origin,
            text: &cert_text,
        },
        Pem {
            origin: &key_origin,
            text: &key_text,
        },
        max,
    )
}

/// A PKCS #8 EC key whose private key (RFC 5915: an octet string of the curve's length) GnuTLS
/// wrote with a leading zero byte, as an INTEGER would have it when the top bit is set: that is
/// what GTlsCertificate's `private-key-pem` gives for about half of all P-256 keys, and ring
/// refuses the extra byte. Returns the key without it; None for any other key.
fn without_leading_zero(pkcs8: &[u8]) -> Option<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    // PrivateKeyInfo: version, algorithm, privateKey (an octet string holding ECPrivateKey:
    // version 1, privateKey, [0] parameters, [1] publicKey), [0] attributes.
    let (info, _) = der(pkcs8, SEQUENCE)?;
    let (_, rest) = der(info, INTEGER)?;
    let (_, rest) = der(rest, SEQUENCE)?;
    let head = &info[..info.len() - rest.len()];
    let (wrapped, attributes) = der(rest, OCTET_STRING)?;
    let (ec_key, _) = der(wrapped, SEQUENCE)?;
    let (version, rest) = der(ec_key, INTEGER)?;
    let (secret, after) = der(rest, OCTET_STRING)?;
    if version != [1] || secret.len() < 2 || secret[0] != 0 || secret[1] & 0x80 == 0 {
        return None;
    }
    let mut ec = Vec::new();
    put(&mut ec, INTEGER, &[1])?;
    put(&mut ec, OCTET_STRING, &secret[1..])?;
    ec.extend_from_slice(after);
    let mut wrapped = Vec::new();
    put(&mut wrapped, SEQUENCE, &ec)?;
    let mut info = head.to_vec();
    put(&mut info, OCTET_STRING, &wrapped)?;
    info.extend_from_slice(attributes);
    let mut out = Vec::new();
    put(&mut out, SEQUENCE, &info)?;
    Some(out)
}

/// The contents of the DER element of type `tag` at the start of `input`, and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if t != tag {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => (usize::from(*rest.first()?), &rest[1..]),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Appends a DER element whose length fits the two length bytes [`der`] reads (a shortened
/// key is shorter than the one read).
fn put(out: &mut Vec<u8>, tag: u8, contents: &[u8]) -> Option<()> {
    let len = u16::try_from(contents.len()).ok()?;
    out.push(tag);
    match u8::try_from(len) {
        Ok(short @ 0..=0x7f) => out.push(short),
        Ok(one) => out.extend_from_slice(&[0x81, one]),
        Err(_) => {
            out.push(0x82);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(contents);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn pem_of<'a>(origin: &'a str, text: &'a str) -> Pem<'a> {
        Pem {
            origin,
            text: text.as_bytes(),
        }
    }

    #[test]
    fn a_certificate_and_its_key_make_a_config() {
        let (cert, key) = generated("localhost");
        server_config(pem_of("c", &cert), pem_of("k", &key)).unwrap();
        // Both in one text, as GTlsCertificate's from_file takes them.
        let both = format!("{cert}{key}");
        server_config(pem_of("b", &both), pem_of("b", &both)).unwrap();
    }

    #[test]
    fn each_problem_is_named_with_its_origin() {
        let (cert, key) = generated("localhost");
        let (_, other_key) = generated("localhost");
        let err = server_config(pem_of("c.pem", &key), pem_of("k.pem", &key)).unwrap_err();
        assert!(matches!(err, ServerTlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("c.pem"), "{err}");
        let err = server_config(pem_of("c.pem", &cert), pem_of("k.pem", &cert)).unwrap_err();
        assert!(matches!(err, ServerTlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("k.pem"), "{err}");
        let truncated = &cert[..cert.len() / 2];
        let err = server_config(pem_of("c.pem", truncated), pem_of("k.pem", &key)).unwrap_err();
        assert!(matches!(err, ServerTlsError::Pem { .. }), "{err}");
        let err = server_config(pem_of("c.pem", &cert), pem_of("k.pem", &other_key)).unwrap_err();
        assert!(matches!(err, ServerTlsError::Unusable { .. }), "{err}");
        assert!(
            err.to_string().contains("c.pem") && err.to_string().contains("k.pem"),
            "{err}"
        );
    }

    /// A P-256 key whose top bit is set, as GnuTLS writes it (GTlsCertificate's
    /// `private-key-pem` of {RING_KEY}): `04 21 00 ...`, and its certificate.
    const GNUTLS_KEY: &str = concat!(
        "-----BEGIN PRIVATE KEY-----\n",
        "MIGUAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHoweAIBAQQhAOFe2RGWEy+T7OqE\n",
        "9qtWczzJHAMS8sOP3+tNNTdV4Jc9oAoGCCqGSM49AwEHoUQDQgAEMl0Pft/yF6Wx\n",
        "H199l3p9t0cZljjwW3mbpwoteyxZSeh0ycD0j/Yu8p4DDkshlswwg7CpvNBU5P3R\n",
        "ZuQ00JTv7Q==\n",
        "-----END PRIVATE KEY-----\n",
    );
    /// The same key as rcgen (ring) writes it: `04 20 ...`, no parameters.
    const RING_KEY: &str = concat!(
        "-----BEGIN PRIVATE KEY-----\n",
        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4V7ZEZYTL5Ps6oT2\n",
        "q1ZzPMkcAxLyw4/f6001N1Xglz2hRANCAAQyXQ9+3/IXpbEfX32Xen23RxmWOPBb\n",
        "eZunCi17LFlJ6HTJwPSP9i7yngMOSyGWzDCDsKm80FTk/dFm5DTQlO/t\n",
        "-----END PRIVATE KEY-----\n",
    );
    const CERT: &str = concat!(
        "-----BEGIN CERTIFICATE-----\n",
        "MIIBgDCCASWgAwIBAgIUdRc+iGZuVPcarKvkCAadhk8YmAswCgYIKoZIzj0EAwIw\n",
        "FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEzMDAyNTE0NloYDzIxMjYxMTA2\n",
        "MDI1MTQ2WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n",
        "PQMBBwNCAAQyXQ9+3/IXpbEfX32Xen23RxmWOPBbeZunCi17LFlJ6HTJwPSP9i7y\n",
        "ngMOSyGWzDCDsKm80FTk/dFm5DTQlO/to1MwUTAdBgNVHQ4EFgQUW94UAoa+LOR+\n",
        "5/qCZajwNCMNcLQwHwYDVR0jBBgwFoAUW94UAoa+LOR+5/qCZajwNCMNcLQwDwYD\n",
        "VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA1Esl0NUfofGuI7VPc6c3\n",
        "XyLcj47RW5B/uvy0+MCMvRUCIQCGyafxqG7z9MGIWxytl0sPRUA89TSSmaLSRqXQ\n",
        "b68TaA==\n",
        "-----END CERTIFICATE-----\n",
    );

    #[test]
    fn an_ec_key_with_gnutls_leading_zero_is_served() {
        let der = |text: &str| {
            PrivateKeyDer::from_pem_slice(text.as_bytes())
                .unwrap()
                .secret_der()
                .to_vec()
        };
        let fixed = without_leading_zero(&der(GNUTLS_KEY)).expect("the zero is removed");
        // Still with the curve's parameters, which ring's form leaves out.
        assert_eq!(fixed.len(), der(RING_KEY).len() + 12);
        assert_eq!(without_leading_zero(&fixed), None);
        assert_eq!(without_leading_zero(&der(RING_KEY)), None);
        server_config(pem_of("c", CERT), pem_of("k", GNUTLS_KEY)).unwrap();
        server_config(pem_of("c", CERT), pem_of("k", RING_KEY)).unwrap();
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
