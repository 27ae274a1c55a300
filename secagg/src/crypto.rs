//! Key agreement, key derivation and authenticated encryption for secure aggregation:
//! X25519 with static secrets from x25519-dalek (ring's X25519 keys cannot be reused for several
//! agreements nor imported, and SecAgg must do both: agree with every neighbour, and let the
//! survivors reconstruct a dropped participant's key), HKDF-SHA256 and ChaCha20-Poly1305 from
//! ring. Agreements with small-order points are refused (`was_contributory`).

use crate::Error;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};

/// Fresh random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Invariant: the OS random source does not fail on a working system; if it does, no key
    // can be made safely and stopping is the only sound choice.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    bytes
}

/// A fresh X25519 key pair: the secret and its public key's bytes.
pub fn generate_key_pair() -> (StaticSecret, [u8; 32]) {
    let secret = StaticSecret::from(random_bytes::<32>());
    let public = PublicKey::from(&secret).to_bytes();
    (secret, public)
}

/// The X25519 shared secret of `secret` and `peer`'s public key; `peer` names the peer in the
/// error when its key is a small-order point.
pub fn agree(secret: &StaticSecret, peer_public: &[u8; 32], peer: u32) -> Result<[u8; 32], Error> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(Error::NonContributoryKey(peer));
    }
    Ok(shared.to_bytes())
}

struct Length(usize);

impl KeyType for Length {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `N` bytes.
pub fn hkdf<const N: usize>(input_key: &[u8], salt: &[u8], info: &[&[u8]]) -> [u8; N] {
    let mut output = [0u8; N];
    Salt::new(HKDF_SHA256, salt)
        .extract(input_key)
        .expand(info, Length(N))
        // Invariant: N is a compile-time constant far below HKDF's 255 * 32 byte limit.
        .and_then(|okm| okm.fill(&mut output))
        .expect("HKDF output length is within its limit");
    output
}

/// Encrypts `plaintext` under `key` with ChaCha20-Poly1305, binding `associated_data`; the
/// random nonce is prepended to the ciphertext.
pub fn seal(key: &[u8; 32], associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
    // Invariant: a 32-byte key is exactly what ChaCha20-Poly1305 takes.
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let nonce = random_bytes::<NONCE_LEN>();
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(associated_data),
        &mut sealed,
    )
    .expect("plaintext far below ChaCha20-Poly1305's length limit");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    out
}

/// Decrypts what [`seal`] produced; fails unless `key` and `associated_data` are the ones it was
/// sealed with and nothing was altered.
pub fn open(key: &[u8; 32], associated_data: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
    if sealed.len() < NONCE_LEN {
        return Err(Error::Decryption);
    }
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Decryption)?;
    let mut buffer = ciphertext.to_vec();
    let plaintext = key
        .open_in_place(nonce, Aad::from(associated_data), &mut buffer)
        .map_err(|_| Error::Decryption)?;
    Ok(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `key = value` lines of a test vector file, grouped into blank-line separated cases.
    fn cases(text: &str) -> Vec<std::collections::HashMap<String, String>> {
        text.split("\n\n")
            .map(|block| {
                block
                    .lines()
                    .filter(|l| !l.starts_with('#') && l.contains('='))
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap();
                        (k.trim().to_string(), v.trim().to_string())
                    })
                    .collect()
            })
            .filter(|case: &std::collections::HashMap<_, _>| !case.is_empty())
            .collect()
    }

    fn array(text: &str) -> [u8; 32] {
        unhex(text).try_into().unwrap()
    }

    #[test]
    fn x25519_matches_rfc_7748() {
        let vectors = cases(include_str!("../testdata/rfc7748-x25519.txt"));
        assert_eq!(vectors.len(), 3);
        for case in vectors {
            let secret = StaticSecret::from(array(&case["scalar"]));
            let shared = secret.diffie_hellman(&PublicKey::from(array(&case["u"])));
            assert_eq!(shared.to_bytes().to_vec(), unhex(&case["output"]));
        }
    }

    #[test]
    fn hkdf_matches_rfc_5869() {
        let vectors = cases(include_str!("../testdata/rfc5869-hkdf-sha256.txt"));
        assert_eq!(vectors.len(), 2);
        for case in vectors {
            let okm: [u8; 42] = hkdf(
                &unhex(&case["ikm"]),
                &unhex(&case["salt"]),
                &[&unhex(&case["info"])],
            );
            assert_eq!(okm.to_vec(), unhex(&case["okm"]));
        }
    }

    #[test]
    fn agreement_is_symmetric_and_small_order_points_are_refused() {
        let (a, a_public) = generate_key_pair();
        let (b, b_public) = generate_key_pair();
        assert_eq!(
            agree(&a, &b_public, 1).unwrap(),
            agree(&b, &a_public, 0).unwrap()
        );
        // The identity point (u = 0) is of small order.
        assert_eq!(agree(&a, &[0u8; 32], 7), Err(Error::NonContributoryKey(7)));
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_associated_data() {
        let key = [5u8; 32];
        let sealed = seal(&key, b"job|3|alice|bob", b"share");
        assert_eq!(open(&key, b"job|3|alice|bob", &sealed).unwrap(), b"share");
        assert_eq!(
            open(&key, b"job|4|alice|bob", &sealed),
            Err(Error::Decryption),
            "replayed into another round"
        );
        assert_eq!(
            open(&[6u8; 32], b"job|3|alice|bob", &sealed),
            Err(Error::Decryption)
        );
        let mut tampered = sealed.clone();
        tampered[14] ^= 1;
        assert_eq!(
            open(&key, b"job|3|alice|bob", &tampered),
            Err(Error::Decryption)
        );
        assert_eq!(open(&key, b"", &[1, 2, 3]), Err(Error::Decryption));
    }
}
