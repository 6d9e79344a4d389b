//! AES-128 segment encryption as HLS defines it (RFC 8216 5.2): AES-128-CBC over the whole
//! segment with PKCS#7 padding, a 16-byte key served as a file, an IV per segment.
//!
//! Specifications: RFC 8216 §4.3.2.4 (EXT-X-KEY METHOD=AES-128, IV), §5.1 (key files), §5.2 (IV);
//! AES-128 (FIPS 197) in CBC mode (NIST SP 800-38A) with PKCS#7 padding (RFC 5652 §6.3).

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use rand::RngExt;

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;

/// A fresh random key.
pub fn random_key() -> [u8; 16] {
    rand::rng().random()
}

/// A fresh random IV.
pub fn random_iv() -> [u8; 16] {
    rand::rng().random()
}

/// Encrypts a whole segment.
pub fn encrypt_segment(key: &[u8; 16], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
    Aes128CbcEnc::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockDecryptMut, block_padding::Pkcs7};

    type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// NIST SP 800-38A F.2.1, CBC-AES128 first block (then PKCS#7 adds a whole padding block).
    #[test]
    fn matches_the_nist_vector() {
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let plain = hex("6bc1bee22e409f96e93d7e117393172a");
        let out = encrypt_segment(&key, &iv, &plain);
        assert_eq!(out.len(), 32);
        assert_eq!(out[..16], hex("7649abac8119b246cee98e9b12e9197d")[..]);
    }

    #[test]
    fn round_trips_with_padding() {
        let key = random_key();
        let iv = random_iv();
        assert_ne!(key, random_key());
        for len in [0usize, 1, 15, 16, 17, 188 * 7] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let enc = encrypt_segment(&key, &iv, &plain);
            assert_eq!(enc.len(), (len / 16 + 1) * 16);
            let dec = Aes128CbcDec::new(&key.into(), &iv.into())
                .decrypt_padded_vec_mut::<Pkcs7>(&enc)
                .unwrap();
            assert_eq!(dec, plain);
        }
    }
}
