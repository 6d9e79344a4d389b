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
//! not encrypted. Type 8 (the signature additionally XTEA/Blowfish-encrypted) is not offered.
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
    #[error("RTMPE C0 carries version {0}, only type 6 is offered")]
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
}

/// Answers C0+C1 (1537 bytes); `random` fills S1 and S2 and (its first 128 bytes) is our private
/// key.
pub fn server_answer(c0c1: &[u8], random: &[u8; PACKET_SIZE]) -> Result<Answer, RtmpeError> {
    let v = c0c1.first().copied().unwrap_or(0);
    if v != RTMPE_VERSION || c0c1.len() < 1 + PACKET_SIZE {
        return Err(RtmpeError::Version(v));
    }
    let c1: [u8; PACKET_SIZE] = c0c1[1..1 + PACKET_SIZE].try_into().expect("length checked");
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
    debug_assert_eq!(digest_offset(&s1, scheme), digest_offset(random, scheme));

    let key = |public: &[u8]| super::handshake::hmac_sha256(&secret, &[public]);
    let mut from_client = Rc4::new(&key(&ours)[..16]);
    let mut to_client = Rc4::new(&key(client_pub)[..16]);
    let mut skip = [0u8; PACKET_SIZE];
    from_client.apply(&mut skip);
    to_client.apply(&mut skip);

    let mut s0s1s2 = Vec::with_capacity(1 + 2 * PACKET_SIZE);
    s0s1s2.push(RTMPE_VERSION);
    s0s1s2.extend_from_slice(&s1);
    s0s1s2.extend_from_slice(&s2);
    Ok(Answer {
        s0s1s2,
        from_client,
        to_client,
        scheme,
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
        if v != RTMPE_VERSION || s0s1s2.len() < 1 + 2 * PACKET_SIZE {
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
        Ok(ClientKeys {
            c2,
            to_server,
            from_server,
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
