//! Shamir secret sharing of 32-byte secrets (the self-mask seed and the masking key), `t`-of-`k`
//! over GF(256), byte by byte, with vsss-rs (constant-time GF(256) arithmetic, audited). Share
//! `i` (1-based) goes to a participant's `i`-th neighbour; any `t` shares reconstruct the secret
//! and fewer reveal nothing about it.

use crate::Error;
use crate::crypto::random_bytes;
use rand_core_for_vsss::{TryCryptoRng, TryRng};
use std::convert::Infallible;
use vsss_rs::Gf256;

/// Most shares GF(256) allows (share identifiers are the non-zero field elements).
pub const MAX_SHARES: usize = 255;

/// Bytes of one share of a 32-byte secret: its identifier, then one byte per secret byte.
pub const SHARE_BYTES: usize = 33;

/// One share: its identifier (1..=255) followed by one byte per secret byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share(Vec<u8>);

impl Share {
    /// The share's identifier: the 1-based position of the neighbour it was made for.
    pub fn id(&self) -> u8 {
        self.0[0]
    }

    /// The share as bytes (for encryption and the wire).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A share from bytes received; checks its shape only (its value is checked when combined).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Share, Error> {
        if bytes.len() != SHARE_BYTES || bytes[0] == 0 {
            return Err(Error::Sharing(format!(
                "a share has {} bytes with identifier {}; expected {SHARE_BYTES} bytes with identifier 1..=255",
                bytes.len(),
                bytes.first().copied().unwrap_or(0)
            )));
        }
        Ok(Share(bytes))
    }
}

/// The operating system's randomness, in the form vsss-rs asks for.
struct SystemRng;

impl TryRng for SystemRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(u32::from_le_bytes(random_bytes::<4>()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(u64::from_le_bytes(random_bytes::<8>()))
    }

    fn try_fill_bytes(&mut self, destination: &mut [u8]) -> Result<(), Infallible> {
        for chunk in destination.chunks_mut(32) {
            chunk.copy_from_slice(&random_bytes::<32>()[..chunk.len()]);
        }
        Ok(())
    }
}

impl TryCryptoRng for SystemRng {}

/// Splits `secret` into `n_shares` shares, any `threshold` of which reconstruct it.
pub fn split(secret: &[u8; 32], threshold: usize, n_shares: usize) -> Result<Vec<Share>, Error> {
    if !(2..=n_shares).contains(&threshold) || n_shares > MAX_SHARES {
        return Err(Error::Sharing(format!(
            "threshold {threshold} of {n_shares} shares; expected 2 <= threshold <= shares <= {MAX_SHARES}"
        )));
    }
    let shares = Gf256::split_bytes(threshold, n_shares, secret, SystemRng)
        .map_err(|e| Error::Sharing(format!("splitting failed: {e:?}")))?;
    Ok(shares.into_iter().map(Share).collect())
}

/// Reconstructs a secret from at least `threshold` distinct shares. With fewer shares the result
/// is a wrong secret, not an error: the caller must supply the threshold it shared with.
pub fn combine(shares: &[Share], threshold: usize) -> Result<[u8; 32], Error> {
    if threshold < 2 {
        return Err(Error::Sharing(format!(
            "threshold {threshold}; expected at least 2"
        )));
    }
    if shares.len() < threshold {
        return Err(Error::Sharing(format!(
            "{} shares given, the threshold is {threshold}",
            shares.len()
        )));
    }
    let mut ids: Vec<u8> = shares.iter().map(Share::id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Sharing(
            "two shares carry the same identifier".into(),
        ));
    }
    let raw: Vec<Vec<u8>> = shares.iter().map(|s| s.0.clone()).collect();
    let secret = Gf256::combine_bytes(raw)
        .map_err(|e| Error::Sharing(format!("combining failed: {e:?}")))?;
    secret.try_into().map_err(|s: Vec<u8>| {
        Error::Sharing(format!("reconstructed {} bytes, expected 32", s.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, prop_assert_ne, proptest};
    use rand::SeedableRng;
    use rand::seq::SliceRandom;

    #[test]
    fn bad_parameters_and_shares_are_refused() {
        assert!(split(&[1; 32], 1, 5).is_err());
        assert!(split(&[1; 32], 6, 5).is_err());
        assert!(split(&[1; 32], 2, 256).is_err());
        let shares = split(&[1; 32], 3, 5).unwrap();
        assert!(
            combine(&shares[..2], 3)
                .unwrap_err()
                .to_string()
                .contains("2 shares given")
        );
        let twice = vec![shares[0].clone(), shares[0].clone(), shares[1].clone()];
        assert!(combine(&twice, 3).is_err());
        assert!(Share::from_bytes(vec![0; 33]).is_err());
        assert!(Share::from_bytes(vec![1; 12]).is_err());
        assert_eq!(
            Share::from_bytes(shares[2].as_bytes().to_vec()).unwrap(),
            shares[2]
        );
    }

    fn share(hex: &str) -> Share {
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Share::from_bytes(bytes).unwrap()
    }

    #[test]
    fn shares_made_by_hand_reconstruct_the_pinned_secret() {
        // Shares travel between builds (a participant makes them, the coordinator combines
        // them), so the field (GF(256), AES polynomial) and the layout (identifier, then one byte
        // per secret byte) are part of the protocol. These were made by an independent
        // implementation (testdata/derivations.py) from the secret 00 01 .. 1f with, for byte i,
        // f(x) = i + (0x53 + i) x for t = 2 and f(x) = i + (0xca ^ i) x + (1 + 7i) x^2 for t = 3.
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let pair = [
            share("02a6a9a8afaab5b4b3beb1b0b7b2cdcccbd6d9d8dfdac5c4c3cec1c0c7c2fdfcfb"),
            share("03f5fdfdf9fdedede9e5edede9edadada9b5bdbdb9bdadada9a5adada9ad8d8d89"),
        ];
        assert_eq!(combine(&pair, 2).unwrap(), secret);
        let triple = [
            share("01cbc2c5dcd7eee1f8f38a8d849f96a9a0bbb2b54c475e5168637a7d740f061910"),
            share("041580ff71da629d1390443bae1e8b59cc0491eee249c73880038df2678d18fc69"),
            share("ff95e080debfb74f11c16505703a4fcabf3d4828cfaef00800d08eee9b2b5e8df8"),
        ];
        assert_eq!(combine(&triple, 3).unwrap(), secret);
    }

    proptest! {
        #[test]
        fn any_threshold_shares_reconstruct_and_fewer_do_not(
            secret in proptest::array::uniform32(0u8..),
            n in 2usize..30,
            threshold_fraction in 0.0f64..1.0,
            order_seed in 0u64..1000,
        ) {
            let threshold = 2 + ((n - 2) as f64 * threshold_fraction) as usize;
            let mut shares = split(&secret, threshold, n).unwrap();
            shares.shuffle(&mut rand_chacha::ChaCha20Rng::seed_from_u64(order_seed));
            prop_assert_eq!(combine(&shares[..threshold], threshold).unwrap(), secret);
            prop_assert_eq!(combine(&shares, threshold).unwrap(), secret);
            // t - 1 shares, combined as if they were enough, give something else (a single
            // share cannot be combined at all).
            match combine(&shares[..threshold - 1], threshold - 1) {
                Ok(wrong) => prop_assert_ne!(wrong, secret),
                Err(_) => prop_assert_eq!(threshold - 1, 1),
            }
            prop_assert!(combine(&[], 0).is_err());
        }
    }
}
