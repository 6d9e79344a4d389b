//! `tls-validation-flags` as the TLS clients' elements take it (GTlsCertificateFlags, as rtspsrc
//! and rtmp2sink do) and as the GStreamer-free verifier ([`crate::net::tls`]) reads it.

use crate::net::tls::TlsValidation;

/// The problems `flags` asks to be checked, one field per bit.
pub fn validation(flags: gio::TlsCertificateFlags) -> TlsValidation {
    let has = |bit| flags.contains(bit);
    TlsValidation {
        unknown_ca: has(gio::TlsCertificateFlags::UNKNOWN_CA),
        bad_identity: has(gio::TlsCertificateFlags::BAD_IDENTITY),
        not_activated: has(gio::TlsCertificateFlags::NOT_ACTIVATED),
        expired: has(gio::TlsCertificateFlags::EXPIRED),
        revoked: has(gio::TlsCertificateFlags::REVOKED),
        insecure: has(gio::TlsCertificateFlags::INSECURE),
        generic_error: has(gio::TlsCertificateFlags::GENERIC_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bit_is_its_own_check() {
        assert_eq!(
            validation(gio::TlsCertificateFlags::VALIDATE_ALL),
            TlsValidation::ALL
        );
        let none = validation(gio::TlsCertificateFlags::empty());
        assert!(!none.unknown_ca && !none.bad_identity && !none.expired);
        let v = validation(gio::TlsCertificateFlags::EXPIRED);
        assert_eq!(
            v,
            TlsValidation {
                unknown_ca: false,
                bad_identity: false,
                not_activated: false,
                expired: true,
                revoked: false,
                insecure: false,
                generic_error: false,
            }
        );
    }
}
