//! The crate's TLS clients (rsrtmpsink, rtspsrc2): their trust anchors (the system's CA
//! certificates, read once per process with rustls-native-certs, the store GStreamer's GIO-based
//! TLS elements trust too, and extra CAs from a PEM file) and their certificate verifier, which
//! honours `tls-validation-flags` ([`TlsValidation`], GTlsCertificateFlags' vocabulary).
//!
//! Specifications: RFC 5280 §6 (certification path validation, done by rustls/webpki against
//! these anchors), §4.1.2.5 (validity); RFC 6125 §6 (the server's identity); RFC 7468 (PEM);
//! X.690 §8.1 (the DER of a pinned certificate's validity).
//!
//! Each flag relaxes only its own check. webpki stops at the first problem it finds (the validity
//! of a certificate before its issuer), so [`client_config`]'s verifier looks for every problem:
//! a validity period that misses the current time is noted and the chain is checked again at the
//! end of the period it missed; the name is checked on its own. A certificate is accepted when
//! none of its problems is one the flags check. A problem that stops the chain check other than
//! an unknown issuer (an unsupported or insecure signature algorithm, a malformed certificate, a
//! wrong key purpose) leaves the issuer unverified, so it is also an unknown CA. No revocation
//! lists are consulted: `revoked` never fails.
//!
//! A certificate given as its own CA file is pinned ([`client_config_pinning`]): webpki refuses a
//! self-signed certificate that is also a CA (as `openssl req -x509` makes them) as a server's
//! own (`CaUsedAsEndEntity`), where GnuTLS, and so rtspsrc, trust it. A pinned certificate is
//! trusted as its own issuer; its name and validity period are still checked as the flags ask.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

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

/// Which certificate problems fail a connection: one field per GTlsCertificateFlags bit.
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
    /// Every problem fails (`validate-all`).
    pub const ALL: TlsValidation = TlsValidation {
        unknown_ca: true,
        bad_identity: true,
        not_activated: true,
        expired: true,
        revoked: true,
        insecure: true,
        generic_error: true,
    };

    fn checks(self, problem: Problem) -> bool {
        match problem {
            Problem::UnknownCa => self.unknown_ca,
            Problem::BadIdentity => self.bad_identity,
            Problem::NotActivated => self.not_activated,
            Problem::Expired => self.expired,
            Problem::Revoked => self.revoked,
            Problem::Insecure => self.insecure,
            Problem::Generic => self.generic_error,
        }
    }
}

/// A certificate problem, as the flag that relaxes it names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    UnknownCa,
    BadIdentity,
    NotActivated,
    Expired,
    Revoked,
    Insecure,
    Generic,
}

impl Problem {
    fn of(e: &CertificateError) -> Problem {
        use CertificateError as E;
        match e {
            E::UnknownIssuer => Problem::UnknownCa,
            E::NotValidForName | E::NotValidForNameContext { .. } => Problem::BadIdentity,
            E::NotValidYet | E::NotValidYetContext { .. } => Problem::NotActivated,
            E::Expired | E::ExpiredContext { .. } => Problem::Expired,
            E::Revoked => Problem::Revoked,
            E::UnsupportedSignatureAlgorithmContext { .. }
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => Problem::Insecure,
            _ => Problem::Generic,
        }
    }
}

/// Validity periods the chain is checked against at most: the current time, then the ends of
/// the periods it missed.
const MAX_CHAIN_CHECKS: usize = 4;

/// Why a TLS client configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration (TLS 1.2 and 1.3, ring) trusting `roots`, whose verifier fails a
/// certificate with a problem `validation` checks and forgives the others.
pub fn client_config(
    roots: Arc<RootCertStore>,
    validation: TlsValidation,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    client_config_pinning(roots, Vec::new(), validation)
}

/// As [`client_config`], and a server presenting one of the `pinned` certificates as its own
/// is trusted as its issuer (see the module's documentation).
pub fn client_config_pinning(
    roots: Arc<RootCertStore>,
    pinned: Vec<CertificateDer<'static>>,
    validation: TlsValidation,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Verifier {
        roots,
        pinned,
        provider: provider.clone(),
        validation,
    });
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// A handshake failure as a user reads it: rustls's reason, with the unknown issuer (the
/// usual failure: a self-signed certificate or a private CA) spelled out.
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "invalid peer certificate: certificate signed by an unknown issuer".into()
        }
        e => e.to_string(),
    }
}

/// The rustls error inside an I/O error of a rustls stream, if that is what it is.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref()
}

#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    /// Server certificates trusted as their own issuers.
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    validation: TlsValidation,
}

impl Verifier {
    /// Every problem of the certificate for `server_name` at `now`, each with rustls's error.
    fn problems(
        &self,
        end_entity: &CertificateDer<'_>,
        cert: &ParsedCertificate<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<Vec<(Problem, CertificateError)>, rustls::Error> {
        let mut found = if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            pinned_problems(end_entity, now)
        } else {
            self.chain_problems(cert, intermediates, now)?
        };
        match rustls::client::verify_server_name(cert, server_name) {
            Ok(()) => {}
            Err(rustls::Error::InvalidCertificate(e)) => found.push((Problem::of(&e), e)),
            Err(e) => return Err(e),
        }
        Ok(found)
    }

    /// The problems of the chain from `cert` to one of the roots.
    fn chain_problems(
        &self,
        cert: &ParsedCertificate<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Vec<(Problem, CertificateError)>, rustls::Error> {
        let algorithms = self.provider.signature_verification_algorithms.all;
        let mut found = Vec::new();
        let mut at = now;
        for _ in 0..MAX_CHAIN_CHECKS {
            let e = match rustls::client::verify_server_cert_signed_by_trust_anchor(
                cert,
                &self.roots,
                intermediates,
                at,
                algorithms,
            ) {
                Ok(()) => return Ok(found),
                Err(rustls::Error::InvalidCertificate(e)) => e,
                Err(e) => return Err(e),
            };
            let next = match &e {
                CertificateError::ExpiredContext { not_after, .. } => Some(*not_after),
                CertificateError::NotValidYetContext { not_before, .. } => Some(*not_before),
                _ => None,
            };
            found.push((Problem::of(&e), e));
            match next {
                Some(t) => at = t,
                None => break,
            }
        }
        // The chain did not verify: its issuer is not known to be trusted.
        if !found.iter().any(|(p, _)| *p == Problem::UnknownCa) {
            found.push((Problem::UnknownCa, CertificateError::UnknownIssuer));
        }
        Ok(found)
    }
}

/// The validity problems of a pinned certificate at `now` (its issuer is itself).
fn pinned_problems(der: &[u8], now: UnixTime) -> Vec<(Problem, CertificateError)> {
    let Some((not_before, not_after)) = validity(der) else {
        return vec![(Problem::Generic, CertificateError::BadEncoding)];
    };
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let mut found = Vec::new();
    if now < not_before {
        found.push((Problem::NotActivated, CertificateError::NotValidYet));
    }
    if now > not_after {
        found.push((Problem::Expired, CertificateError::Expired));
    }
    found
}

/// notBefore and notAfter of an X.509 certificate (RFC 5280 §4.1.2.5), in Unix seconds.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
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
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let problems = self.problems(end_entity, &cert, intermediates, server_name, now)?;
        if let Some((_, e)) = problems.iter().find(|(p, _)| self.validation.checks(*p)) {
            return Err(rustls::Error::InvalidCertificate(e.clone()));
        }
        if !problems.is_empty() {
            log::debug!(
                "certificate of {} accepted: the validation flags forgive {:?}",
                server_name.to_str(),
                problems.iter().map(|(p, _)| *p).collect::<Vec<_>>()
            );
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
        let (not_before, not_after) = validity(&der).unwrap();
        // Some time after 1990, valid for a while.
        assert!(not_before > 631_152_000, "{not_before}");
        assert!(not_after > not_before + 86_400, "{not_after}");
        for len in 0..der.len() {
            assert_eq!(validity(&der[..len]), None, "truncated at {len}");
        }
        let mut bytes = der.to_vec();
        for i in 0..bytes.len().min(400) {
            bytes[i] ^= 0xff;
            let _ = validity(&bytes);
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

/// The verifier against certificates made with rcgen: one problem per certificate, and each
/// flag relaxing only its own.
#[cfg(test)]
mod verifier_tests {
    use super::*;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, date_time_ymd,
    };

    /// A CA the test's roots trust.
    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        roots: Arc<RootCertStore>,
    }

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "verifier test CA");
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(cert.der().clone()).unwrap();
            Ca {
                issuer: Issuer::new(params, key),
                roots: Arc::new(roots),
            }
        }

        /// A certificate for `name`, valid now unless `edit` says otherwise, signed by this CA.
        fn sign(
            &self,
            name: &str,
            edit: impl FnOnce(&mut CertificateParams),
        ) -> CertificateDer<'static> {
            let params = leaf_params(name, edit);
            let key = KeyPair::generate().unwrap();
            params.signed_by(&key, &self.issuer).unwrap().der().clone()
        }
    }

    fn leaf_params(name: &str, edit: impl FnOnce(&mut CertificateParams)) -> CertificateParams {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2090, 1, 1);
        edit(&mut params);
        params
    }

    fn self_signed(
        name: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let params = leaf_params(name, edit);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn expired(p: &mut CertificateParams) {
        p.not_before = date_time_ymd(2000, 1, 1);
        p.not_after = date_time_ymd(2001, 1, 1);
    }

    fn not_yet_valid(p: &mut CertificateParams) {
        p.not_before = date_time_ymd(2090, 1, 1);
        p.not_after = date_time_ymd(2100, 1, 1);
    }

    const EVERY_PROBLEM: [Problem; 7] = [
        Problem::UnknownCa,
        Problem::BadIdentity,
        Problem::NotActivated,
        Problem::Expired,
        Problem::Revoked,
        Problem::Insecure,
        Problem::Generic,
    ];

    /// Every check but those of `relaxed`.
    fn relaxing(relaxed: &[Problem]) -> TlsValidation {
        let on = |p| !relaxed.contains(&p);
        TlsValidation {
            unknown_ca: on(Problem::UnknownCa),
            bad_identity: on(Problem::BadIdentity),
            not_activated: on(Problem::NotActivated),
            expired: on(Problem::Expired),
            revoked: on(Problem::Revoked),
            insecure: on(Problem::Insecure),
            generic_error: on(Problem::Generic),
        }
    }

    fn verify(
        roots: &Arc<RootCertStore>,
        cert: &CertificateDer<'_>,
        validation: TlsValidation,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = Verifier {
            roots: roots.clone(),
            pinned: Vec::new(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            validation,
        };
        let name = ServerName::try_from("localhost").unwrap();
        verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
    }

    /// `cert` is accepted exactly when every problem of `needs` is relaxed: checked with each
    /// flag relaxed alone, with `needs` relaxed, and with all but one of `needs` relaxed.
    fn assert_needs(
        what: &str,
        roots: &Arc<RootCertStore>,
        cert: &CertificateDer<'_>,
        needs: &[Problem],
    ) {
        let mut sets: Vec<Vec<Problem>> = EVERY_PROBLEM.iter().map(|p| vec![*p]).collect();
        sets.push(needs.to_vec());
        sets.push(EVERY_PROBLEM.to_vec());
        sets.push(Vec::new());
        for skip in needs {
            sets.push(needs.iter().copied().filter(|p| p != skip).collect());
        }
        for relaxed in sets {
            let accepted = needs.iter().all(|p| relaxed.contains(p));
            let r = verify(roots, cert, relaxing(&relaxed));
            assert_eq!(
                r.is_ok(),
                accepted,
                "{what} with {relaxed:?} relaxed: {r:?} (needs {needs:?})"
            );
        }
    }

    #[test]
    fn a_valid_certificate_passes_every_check() {
        let ca = Ca::new();
        assert_needs("valid", &ca.roots, &ca.sign("localhost", |_| {}), &[]);
        let ip = ca.sign("127.0.0.1", |_| {});
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let verifier = Verifier {
            roots: ca.roots.clone(),
            pinned: Vec::new(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            validation: TlsValidation::ALL,
        };
        verifier
            .verify_server_cert(&ip, &[], &name, &[], UnixTime::now())
            .expect("an IP address name");
    }

    #[test]
    fn each_flag_relaxes_only_its_own_problem() {
        let ca = Ca::new();
        let roots = &ca.roots;
        use Problem::*;
        assert_needs(
            "self-signed",
            roots,
            &self_signed("localhost", |_| {}),
            &[UnknownCa],
        );
        assert_needs(
            "wrong host",
            roots,
            &ca.sign("other.example", |_| {}),
            &[BadIdentity],
        );
        assert_needs("expired", roots, &ca.sign("localhost", expired), &[Expired]);
        assert_needs(
            "not yet valid",
            roots,
            &ca.sign("localhost", not_yet_valid),
            &[NotActivated],
        );
    }

    #[test]
    fn expired_self_signed_for_another_host_fails_every_single_relaxation() {
        let ca = Ca::new();
        use Problem::*;
        let cert = self_signed("other.example", expired);
        assert_needs(
            "expired, self-signed, wrong host",
            &ca.roots,
            &cert,
            &[Expired, UnknownCa, BadIdentity],
        );
        let e = verify(&ca.roots, &cert, relaxing(&[UnknownCa])).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{e:?}"
        );
        let e = verify(&ca.roots, &cert, relaxing(&[UnknownCa, Expired])).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{e:?}"
        );
        let cert = self_signed("other.example", not_yet_valid);
        assert_needs(
            "not yet valid, self-signed, wrong host",
            &ca.roots,
            &cert,
            &[NotActivated, UnknownCa, BadIdentity],
        );
    }

    /// A problem that stops the chain check also leaves the issuer unknown.
    #[test]
    fn an_unverifiable_chain_also_needs_unknown_ca() {
        let ca = Ca::new();
        use Problem::*;
        let client_only = ca.sign("localhost", |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
        });
        assert_needs(
            "client-auth only",
            &ca.roots,
            &client_only,
            &[Generic, UnknownCa],
        );

        // ecdsa-with-SHA256 relabelled ecdsa-with-SHA512 (RFC 5758 §3.2), which rustls does not
        // verify with a P-256 key.
        let mut der = ca.sign("localhost", |_| {}).to_vec();
        let sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let mut patched = 0;
        while let Some(i) = der.windows(sha256.len()).position(|w| w == sha256) {
            der[i + sha256.len() - 1] = 0x04;
            patched += 1;
        }
        assert_eq!(
            patched, 2,
            "the signature algorithm of the TBS and of the certificate"
        );
        let unsupported = CertificateDer::from(der);
        assert_needs(
            "unsupported algorithm",
            &ca.roots,
            &unsupported,
            &[Insecure, UnknownCa],
        );
    }
}
