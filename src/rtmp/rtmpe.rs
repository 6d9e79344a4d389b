//! RTMPE, both sides: the encrypted handshake of type 6 (C0 = 6) as librtmp implements it, and
//! the RC4 streams that carry everything after it.
//!
//! C1 is a Flash Player 9 digest packet (see [`super::handshake`]) that also carries the client's
//! Diffie-Hellman public key (1024-bit group, generator 2) at an offset derived from the packet
//! itself; S1 carries ours the same way and is signed as in the digest handshake, S2 is signed
//! with C1's digest. Both sides compute the shared secret; the RC4 key for the client's bytes is
//! HMAC-SHA256(secret, server's public key)[..16], for the server's bytes HMAC-SHA256(secret,
//! client's public key)[..16]; both key streams are advanced by 1536 bytes before the first
//! encrypted byte (librtmp's `InitRC4Encryption` and the end of its `HandShake`). C2 and S2 are
//! not encrypted.
//!
//! Type 8 is the same handshake with the 32-byte signatures of S2 and C2 additionally
//! encrypted, each 8-byte block with XTEA (32 cycles, the block's two words little-endian) under
//! one of 16 fixed keys, chosen by the byte of the signing key at the block's start modulo 15
//! (librtmp's `rtmpe8_sig`, its "FP10" handshake). A server answers S0 = 8 when the client asks
//! for it (C0 = 8) or, as librtmp's server does, when C0 = 6 comes with a C1 version of 128.x
//! (librtmp and ffmpeg send it and both take an answer of 8). Type 9 (Blowfish) is not offered.
//!
//! The client half ([`Client`]) is what rsrtmpsink's `rtmpe://` and `rtmpte://` use.
//!
//! Specifications: none published for RTMPE; the group is RFC 2409 §6.2 (Second Oakley Group),
//! HMAC RFC 2104, RC4 as in every implementation of it (the algorithm is public domain).

use num_bigint::BigUint;

use super::handshake::{
    PACKET_SIZE, digest_offset, find_client_digest, sign_s2, sign_server_packet,
};

/// RFC 2409 §6.2: the 1024-bit MODP group librtmp uses (generator 2).
const P1024: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF";
const KEY_LEN: usize = 128;
/// C0's version for RTMPE with the type-6 handshake.
pub const RTMPE_VERSION: u8 = 6;
/// C0's version for RTMPE whose handshake signatures are XTEA-encrypted (type 8).
pub const RTMPE_XTEA_VERSION: u8 = 8;

/// Whether a C0 version asks for RTMPE this module serves (type 6 or 8).
pub fn is_rtmpe(version: u8) -> bool {
    version == RTMPE_VERSION || version == RTMPE_XTEA_VERSION
}

/// The 16 XTEA keys of the type-8 handshake (librtmp's `rtmpe8_keys`; only the first 15 are
/// ever chosen).
const XTEA_KEYS: [[u32; 4]; 16] = [
    [0xbff034b2, 0x11d9081f, 0xccdfb795, 0x748de732],
    [0x086a5eb6, 0x1743090e, 0x6ef05ab8, 0xfe5a39e2],
    [0x7b10956f, 0x76ce0521, 0x2388a73a, 0x440149a1],
    [0xa943f317, 0xebf11bb2, 0xa691a5ee, 0x17f36339],
    [0x7a30e00a, 0xb529e22c, 0xa087aea5, 0xc0cb79ac],
    [0xbdce0c23, 0x2febdeff, 0x1cfaae16, 0x1123239d],
    [0x55dd3f7b, 0x77e7e62e, 0x9bb8c499, 0xc9481ee4],
    [0x407bb6b4, 0x71e89136, 0xa7aebf55, 0xca33b839],
    [0xfcf6bdc3, 0xb63c3697, 0x7ce4f825, 0x04d959b2],
    [0x28e091fd, 0x41954c4c, 0x7fb7db00, 0xe3a066f8],
    [0x57845b76, 0x4f251b03, 0x46d45bcd, 0xa2c30d29],
    [0x0acceef8, 0xda55b546, 0x03473452, 0x5863713b],
    [0xb82075dc, 0xa75f1fee, 0xd84268e8, 0xa72a44cc],
    [0x07cf6e9e, 0xa16d7b25, 0x9fa7ae6c, 0xd92f5629],
    [0xfeb1eae4, 0x8c8c3ce1, 0x4e0064a7, 0x6a387c2a],
    [0x893a9427, 0xcc3013a2, 0xf106385b, 0xa829f927],
];

/// XTEA encryption of one block (v0, v1), 32 cycles.
fn xtea(mut v0: u32, mut v1: u32, k: &[u32; 4]) -> (u32, u32) {
    const DELTA: u32 = 0x9e37_79b9;
    let mut sum = 0u32;
    for _ in 0..32 {
        v0 = v0.wrapping_add(
            (((v1 << 4) ^ (v1 >> 5)).wrapping_add(v1)) ^ sum.wrapping_add(k[(sum & 3) as usize]),
        );
        sum = sum.wrapping_add(DELTA);
        v1 = v1.wrapping_add(
            (((v0 << 4) ^ (v0 >> 5)).wrapping_add(v0))
                ^ sum.wrapping_add(k[((sum >> 11) & 3) as usize]),
        );
    }
    (v0, v1)
}

/// Type 8: encrypts a handshake signature in place, block by block, the key of each block
/// chosen by the byte of `signing_key` (the HMAC key the signature was made with) at the
/// block's offset.
pub fn encrypt_signature_type8(sig: &mut [u8], signing_key: &[u8; 32]) {
    for (i, block) in sig.chunks_exact_mut(8).enumerate() {
        let key = &XTEA_KEYS[usize::from(signing_key[i * 8] % 15)];
        let v0 = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let v1 = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
        let (v0, v1) = xtea(v0, v1, key);
        block[..4].copy_from_slice(&v0.to_le_bytes());
        block[4..].copy_from_slice(&v1.to_le_bytes());
    }
}

fn prime() -> BigUint {
    BigUint::parse_bytes(P1024.as_bytes(), 16).expect("the RFC 2409 prime parses")
}

/// RC4 (the key-scheduling and output algorithms).
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    pub fn new(key: &[u8]) -> Rc4 {
        let mut s = [0u8; 256];
        for (i, v) in s.iter_mut().enumerate() {
            *v = i as u8;
        }
        let mut j = 0u8;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, usize::from(j));
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// Encrypts or decrypts in place.
    pub fn apply(&mut self, data: &mut [u8]) {
        for b in data {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[usize::from(self.i)]);
            self.s.swap(usize::from(self.i), usize::from(self.j));
            let k = self.s[usize::from(
                self.s[usize::from(self.i)].wrapping_add(self.s[usize::from(self.j)]),
            )];
            *b ^= k;
        }
    }
}

/// No key material in debug output.
impl std::fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4(..)")
    }
}

/// Where the Diffie-Hellman public key of a packet is for digest `scheme` 0 (librtmp's
/// `GetDHOffset1`: bytes 1532..1536, in 772..1532) or 1 (`GetDHOffset2`: bytes 768..772, in
/// 8..768): never overlapping the digest's region or the offset bytes.
pub fn dh_offset(packet: &[u8; PACKET_SIZE], scheme: u8) -> usize {
    let (at, base) = if scheme == 0 { (1532, 772) } else { (768, 8) };
    let sum: usize = packet[at..at + 4].iter().map(|&b| usize::from(b)).sum();
    sum % 632 + base
}

/// A type-6 C0+C1 the server cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmpeError {
    #[error("RTMPE C0 carries version {0}, only types 6 and 8 are offered")]
    Version(u8),
    #[error("RTMPE C1 carries no valid Flash Player digest")]
    NoDigest,
    #[error("RTMPE client public key out of range (1 < y < p-1)")]
    BadPublicKey,
}

/// The server's answer to a type-6 C0+C1 and the RC4 streams after the handshake.
pub struct Answer {
    /// S0 (6), S1 (with our public key, signed), S2 (signed with C1's digest).
    pub s0s1s2: Vec<u8>,
    /// Decrypts what the client sends after C2.
    pub from_client: Rc4,
    /// Encrypts what we send after S2.
    pub to_client: Rc4,
    /// The digest scheme C1 used.
    pub scheme: u8,
    /// The handshake type answered (S0): 6, or 8 (signatures XTEA-encrypted).
    pub version: u8,
}

/// Answers C0+C1 (1537 bytes); `random` fills S1 and S2 and (its first 128 bytes) is our private
/// key.
pub fn server_answer(c0c1: &[u8], random: &[u8; PACKET_SIZE]) -> Result<Answer, RtmpeError> {
    let v = c0c1.first().copied().unwrap_or(0);
    if !is_rtmpe(v) || c0c1.len() < 1 + PACKET_SIZE {
        return Err(RtmpeError::Version(v));
    }
    let c1: [u8; PACKET_SIZE] = c0c1[1..1 + PACKET_SIZE].try_into().expect("length checked");
    // As librtmp's server: a client of version 128.x takes type 8 (librtmp, ffmpeg).
    let version = if v == RTMPE_XTEA_VERSION || c1[4] == 128 {
        RTMPE_XTEA_VERSION
    } else {
        RTMPE_VERSION
    };
    let (scheme, digest_at) = find_client_digest(&c1).ok_or(RtmpeError::NoDigest)?;
    let p = prime();
    let client_at = dh_offset(&c1, scheme);
    let client_pub = &c1[client_at..client_at + KEY_LEN];
    let y = BigUint::from_bytes_be(client_pub);
    let one = BigUint::from(1u32);
    if y <= one || y >= &p - &one {
        return Err(RtmpeError::BadPublicKey);
    }
    let x = BigUint::from_bytes_be(&random[..KEY_LEN]);
    let ours = left_pad(&BigUint::from(2u32).modpow(&x, &p));
    let secret = left_pad(&y.modpow(&x, &p));

    let mut s1 = *random;
    s1[4..8].copy_from_slice(&[3, 5, 1, 1]);
    let at = dh_offset(&s1, scheme);
    s1[at..at + KEY_LEN].copy_from_slice(&ours);
    sign_server_packet(&mut s1, scheme);
    let mut s2 = [0u8; PACKET_SIZE];
    for (d, s) in s2.iter_mut().zip(random.iter().rev()) {
        *d = *s;
    }
    sign_s2(&mut s2, &c1[digest_at..digest_at + 32]);
    if version == RTMPE_XTEA_VERSION {
        let mut fms = FMS_KEY_OPEN.to_vec();
        fms.extend_from_slice(&KEY_TAIL);
        let signing_key = super::handshake::hmac_sha256(&fms, &[&c1[digest_at..digest_at + 32]]);
        encrypt_signature_type8(&mut s2[PACKET_SIZE - 32..], &signing_key);
    }
    debug_assert_eq!(digest_offset(&s1, scheme), digest_offset(random, scheme));

    let key = |public: &[u8]| super::handshake::hmac_sha256(&secret, &[public]);
    let mut from_client = Rc4::new(&key(&ours)[..16]);
    let mut to_client = Rc4::new(&key(client_pub)[..16]);
    let mut skip = [0u8; PACKET_SIZE];
    from_client.apply(&mut skip);
    to_client.apply(&mut skip);

    let mut s0s1s2 = Vec::with_capacity(1 + 2 * PACKET_SIZE);
    s0s1s2.push(version);
    s0s1s2.extend_from_slice(&s1);
    s0s1s2.extend_from_slice(&s2);
    Ok(Answer {
        s0s1s2,
        from_client,
        to_client,
        scheme,
        version,
    })
}

/// The 32 bytes after the open parts of both Adobe keys.
const KEY_TAIL: [u8; 32] = [
    0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1, 0x02, 0x9e, 0x7e, 0x57,
    0x6e, 0xec, 0x5d, 0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36, 0xcf, 0xeb, 0x31, 0xae,
];
const FP_KEY_OPEN: &[u8] = b"Genuine Adobe Flash Player 001";
const FMS_KEY_OPEN: &[u8] = b"Genuine Adobe Flash Media Server 001";

/// The client half of the type-6 handshake: C0+C1 out, S0+S1+S2 in, C2 out.
pub struct Client {
    c1: Box<[u8; PACKET_SIZE]>,
    private: BigUint,
}

/// A server answer the client cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the server answered RTMPE with S0 version {0} (not an RTMPE server?)")]
    Version(u8),
    #[error("the server's S1 carries no valid Flash Media Server digest")]
    NoDigest,
    #[error("the server's public key is out of range")]
    BadPublicKey,
}

/// After the handshake: C2 to send and the RC4 streams.
pub struct ClientKeys {
    pub c2: Vec<u8>,
    /// Encrypts what we send after C2.
    pub to_server: Rc4,
    /// Decrypts what the server sends after S2.
    pub from_server: Rc4,
    /// The handshake type the server answered: 6, or 8 (C2's signature XTEA-encrypted).
    pub version: u8,
}

impl Client {
    /// `random` fills C1 (its last 128 bytes are the private key). Returns C0+C1.
    pub fn new(epoch_ms: u32, random: &[u8; PACKET_SIZE]) -> (Client, Vec<u8>) {
        let p = prime();
        let private = BigUint::from_bytes_be(&random[PACKET_SIZE - KEY_LEN..]);
        let public = left_pad(&BigUint::from(2u32).modpow(&private, &p));
        let mut c1 = Box::new(*random);
        c1[0..4].copy_from_slice(&epoch_ms.to_be_bytes());
        // Flash Player 9's version, as librtmp sends for RTMPE.
        c1[4..8].copy_from_slice(&[128, 0, 7, 2]);
        let at = dh_offset(&c1, 0);
        c1[at..at + KEY_LEN].copy_from_slice(&public);
        let off = digest_offset(&c1, 0);
        let d = super::handshake::hmac_sha256(FP_KEY_OPEN, &[&c1[..off], &c1[off + 32..]]);
        c1[off..off + 32].copy_from_slice(&d);
        let mut out = vec![RTMPE_VERSION];
        out.extend_from_slice(&c1[..]);
        (Client { c1, private }, out)
    }

    /// Takes S0+S1+S2 (1 + 2 × 1536 bytes).
    pub fn finish(&self, s0s1s2: &[u8]) -> Result<ClientKeys, ClientError> {
        let v = s0s1s2.first().copied().unwrap_or(0);
        if !is_rtmpe(v) || s0s1s2.len() < 1 + 2 * PACKET_SIZE {
            return Err(ClientError::Version(v));
        }
        let s1: [u8; PACKET_SIZE] = s0s1s2[1..1 + PACKET_SIZE]
            .try_into()
            .expect("length checked");
        let (scheme, server_digest) = [0u8, 1]
            .into_iter()
            .find_map(|scheme| {
                let off = digest_offset(&s1, scheme);
                let d = super::handshake::hmac_sha256(FMS_KEY_OPEN, &[&s1[..off], &s1[off + 32..]]);
                (d == s1[off..off + 32]).then_some((scheme, d))
            })
            .ok_or(ClientError::NoDigest)?;
        let p = prime();
        let at = dh_offset(&s1, scheme);
        let server_pub = &s1[at..at + KEY_LEN];
        let y = BigUint::from_bytes_be(server_pub);
        let one = BigUint::from(1u32);
        if y <= one || y >= &p - &one {
            return Err(ClientError::BadPublicKey);
        }
        let secret = left_pad(&y.modpow(&self.private, &p));
        let ours_at = dh_offset(&self.c1, 0);
        let ours = &self.c1[ours_at..ours_at + KEY_LEN];
        let key = |public: &[u8]| super::handshake::hmac_sha256(&secret, &[public]);
        let mut to_server = Rc4::new(&key(server_pub)[..16]);
        let mut from_server = Rc4::new(&key(ours)[..16]);
        let mut skip = [0u8; PACKET_SIZE];
        to_server.apply(&mut skip);
        from_server.apply(&mut skip);
        // C2: S1 echoed with its last 32 bytes signed with a key derived from S1's digest (what
        // a Flash Player 9 sends and strict servers check).
        let mut full_fp = FP_KEY_OPEN.to_vec();
        full_fp.extend_from_slice(&KEY_TAIL);
        let mut c2 = s1.to_vec();
        let k = super::handshake::hmac_sha256(&full_fp, &[&server_digest]);
        let sig = super::handshake::hmac_sha256(&k, &[&c2[..PACKET_SIZE - 32]]);
        c2[PACKET_SIZE - 32..].copy_from_slice(&sig);
        if v == RTMPE_XTEA_VERSION {
            encrypt_signature_type8(&mut c2[PACKET_SIZE - 32..], &k);
        }
        Ok(ClientKeys {
            c2,
            to_server,
            from_server,
            version: v,
        })
    }
}

fn left_pad(n: &BigUint) -> [u8; KEY_LEN] {
    let b = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    let len = b.len().min(KEY_LEN);
    out[KEY_LEN - len..].copy_from_slice(&b[b.len() - len..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_client_and_our_server_agree() {
        let mut r = [0u8; PACKET_SIZE];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i * 17 + 1) as u8;
        }
        let (client, c0c1) = Client::new(1234, &r);
        let mut server = server_answer(&c0c1, &[0x42; PACKET_SIZE]).unwrap();
        let mut keys = client.finish(&server.s0s1s2).unwrap();
        assert_eq!(keys.c2.len(), PACKET_SIZE);
        let mut m = *b"publish";
        keys.to_server.apply(&mut m);
        server.from_client.apply(&mut m);
        assert_eq!(&m, b"publish");
        let mut m = *b"onStatus";
        server.to_client.apply(&mut m);
        keys.from_server.apply(&mut m);
        assert_eq!(&m, b"onStatus");
        let mut bad = server.s0s1s2.clone();
        bad[100] ^= 1;
        assert!(client.finish(&bad).is_err());
    }

    #[test]
    fn xtea_test_vector() {
        // The published XTEA vector (32 cycles; words big-endian there): key
        // 000102030405060708090a0b0c0d0e0f, plaintext 4142434445464748, ciphertext
        // 497df3d072612cb5.
        let k = [0x0001_0203, 0x0405_0607, 0x0809_0a0b, 0x0c0d_0e0f];
        assert_eq!(
            xtea(0x4142_4344, 0x4546_4748, &k),
            (0x497d_f3d0, 0x7261_2cb5)
        );
    }

    /// Type 8 both ways: a client of version 128.x (as librtmp and ffmpeg send) or C0 = 8 gets
    /// S0 = 8 and an S2 whose signature, checked as librtmp's client checks it (HMAC, then each
    /// block XTEA-encrypted with the key the HMAC key's byte chooses), is right; our client's C2
    /// is signed the same way; a C1 of another version still gets type 6.
    #[test]
    fn type_8_signatures_are_xtea_encrypted_both_ways() {
        let mut r = [0u8; PACKET_SIZE];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let (client, c0c1) = Client::new(99, &r);
        assert_eq!((c0c1[0], c0c1[5]), (6, 128));
        for c0 in [RTMPE_VERSION, RTMPE_XTEA_VERSION] {
            let mut c0c1 = c0c1.clone();
            c0c1[0] = c0;
            let a = server_answer(&c0c1, &[0x24; PACKET_SIZE]).unwrap();
            assert_eq!((a.version, a.s0s1s2[0]), (8, 8));
            let c1 = &c0c1[1..];
            let off = digest_offset(c1.try_into().unwrap(), 0);
            let mut fms = FMS_KEY_OPEN.to_vec();
            fms.extend_from_slice(&KEY_TAIL);
            let key = super::super::handshake::hmac_sha256(&fms, &[&c1[off..off + 32]]);
            let s2 = &a.s0s1s2[1 + PACKET_SIZE..];
            let mut sig = super::super::handshake::hmac_sha256(&key, &[&s2[..PACKET_SIZE - 32]]);
            assert_ne!(
                &sig[..],
                &s2[PACKET_SIZE - 32..],
                "not the type-6 signature"
            );
            encrypt_signature_type8(&mut sig, &key);
            assert_eq!(&sig[..], &s2[PACKET_SIZE - 32..]);

            let keys = client.finish(&a.s0s1s2).unwrap();
            assert_eq!(keys.version, 8);
            let s1 = &a.s0s1s2[1..1 + PACKET_SIZE];
            let scheme_off = [0u8, 1]
                .into_iter()
                .map(|sc| digest_offset(s1.try_into().unwrap(), sc))
                .find(|&o| {
                    super::super::handshake::hmac_sha256(FMS_KEY_OPEN, &[&s1[..o], &s1[o + 32..]])
                        == s1[o..o + 32]
                })
                .unwrap();
            let mut fp = FP_KEY_OPEN.to_vec();
            fp.extend_from_slice(&KEY_TAIL);
            let k = super::super::handshake::hmac_sha256(&fp, &[&s1[scheme_off..scheme_off + 32]]);
            let mut sig = super::super::handshake::hmac_sha256(&k, &[&keys.c2[..PACKET_SIZE - 32]]);
            encrypt_signature_type8(&mut sig, &k);
            assert_eq!(&sig[..], &keys.c2[PACKET_SIZE - 32..]);
        }
        // Version 9.x with C0 = 6: type 6, signatures as they are.
        let mut c0c1 = c0c1.clone();
        c0c1[5] = 9;
        let off = digest_offset(c0c1[1..].try_into().unwrap(), 0);
        let d = super::super::handshake::hmac_sha256(
            FP_KEY_OPEN,
            &[&c0c1[1..1 + off], &c0c1[1 + off + 32..]],
        );
        c0c1[1 + off..1 + off + 32].copy_from_slice(&d);
        let a = server_answer(&c0c1, &[0x24; PACKET_SIZE]).unwrap();
        assert_eq!((a.version, a.s0s1s2[0]), (6, 6));
        assert_eq!(client.finish(&a.s0s1s2).unwrap().version, 6);
    }

    /// Hostile type-8 openings: no digest, too short, type 9: refused, no panic.
    #[test]
    fn hostile_type_8_openings_are_refused() {
        let mut c0c1 = vec![8u8];
        c0c1.extend_from_slice(&[0x11; PACKET_SIZE]);
        assert!(matches!(
            server_answer(&c0c1, &[0; PACKET_SIZE]),
            Err(RtmpeError::NoDigest)
        ));
        assert!(matches!(
            server_answer(&c0c1[..100], &[0; PACKET_SIZE]),
            Err(RtmpeError::Version(8))
        ));
        c0c1[0] = 9;
        assert!(matches!(
            server_answer(&c0c1, &[0; PACKET_SIZE]),
            Err(RtmpeError::Version(9))
        ));
        let mut s = vec![8u8];
        s.extend_from_slice(&[0u8; 2 * PACKET_SIZE]);
        let (client, _) = Client::new(0, &[1; PACKET_SIZE]);
        assert!(client.finish(&s).is_err());
        assert!(client.finish(&s[..10]).is_err());
    }

    #[test]
    fn rc4_test_vectors() {
        // RFC 6229 §2, key 0x0102030405, keystream bytes 0..16.
        let mut ks = [0u8; 16];
        Rc4::new(&[1, 2, 3, 4, 5]).apply(&mut ks);
        assert_eq!(
            ks,
            [
                0xb2, 0x39, 0x63, 0x05, 0xf0, 0x3d, 0xc0, 0x27, 0xcc, 0xc3, 0x52, 0x4a, 0x0a, 0x11,
                0x18, 0xa8
            ]
        );
    }

    #[test]
    fn the_group_is_the_rfc_2409_prime() {
        let p = prime();
        assert_eq!(p.bits(), 1024);
        // Fermat: 2^(p-1) = 1 mod p.
        assert_eq!(
            BigUint::from(2u32).modpow(&(&p - 1u32), &p),
            BigUint::from(1u32)
        );
    }

    /// A client as librtmp builds it: C1 with a public key at the DH offset and a digest; the
    /// server's answer lets it derive the same RC4 keys.
    #[test]
    fn client_and_server_agree_on_the_keys() {
        let p = prime();
        let mut c1 = [0u8; PACKET_SIZE];
        for (i, b) in c1.iter_mut().enumerate() {
            *b = (i * 13 + 5) as u8;
        }
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let x = BigUint::from_bytes_be(&[0x5a; 128]);
        let client_pub = left_pad(&BigUint::from(2u32).modpow(&x, &p));
        let at = dh_offset(&c1, 0);
        c1[at..at + 128].copy_from_slice(&client_pub);
        // Sign C1 as a player (the FP key's open part).
        let off = digest_offset(&c1, 0);
        let d = super::super::handshake::hmac_sha256(
            b"Genuine Adobe Flash Player 001",
            &[&c1[..off], &c1[off + 32..]],
        );
        c1[off..off + 32].copy_from_slice(&d);
        let mut c0c1 = vec![6u8];
        c0c1.extend_from_slice(&c1);
        let mut random = [0u8; PACKET_SIZE];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        let mut a = server_answer(&c0c1, &random).unwrap();
        assert_eq!(a.s0s1s2[0], 6);
        assert_eq!(a.scheme, 0);
        let s1: [u8; PACKET_SIZE] = a.s0s1s2[1..1 + PACKET_SIZE].try_into().unwrap();
        let sat = dh_offset(&s1, 0);
        let server_pub = &s1[sat..sat + 128];
        let secret = left_pad(&BigUint::from_bytes_be(server_pub).modpow(&x, &p));
        // The client's keys (librtmp's InitRC4Encryption: out with the server's key).
        let key = |public: &[u8]| super::super::handshake::hmac_sha256(&secret, &[public]);
        let mut client_out = Rc4::new(&key(server_pub)[..16]);
        let mut client_in = Rc4::new(&key(&client_pub)[..16]);
        let mut skip = [0u8; PACKET_SIZE];
        client_out.apply(&mut skip);
        client_in.apply(&mut skip);
        let mut msg = *b"connect";
        client_out.apply(&mut msg);
        assert_ne!(&msg, b"connect");
        a.from_client.apply(&mut msg);
        assert_eq!(&msg, b"connect");
        let mut answer = *b"_result";
        a.to_client.apply(&mut answer);
        client_in.apply(&mut answer);
        assert_eq!(&answer, b"_result");
        // A plain C0 or a C1 without digest is refused.
        c0c1[0] = 3;
        assert_eq!(
            server_answer(&c0c1, &random).err(),
            Some(RtmpeError::Version(3))
        );
        c0c1[0] = 6;
        c0c1[off + 1] ^= 1;
        assert_eq!(
            server_answer(&c0c1, &random).err(),
            Some(RtmpeError::NoDigest)
        );
    }
}
