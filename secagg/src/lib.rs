//! `cairn-secagg`: the mathematics of secure aggregation (SecAgg+, Bell et al., CCS 2020, on
//! Bonawitz et al., CCS 2017), with no I/O and no clock. Participants clip and quantise their
//! updates ([`quantize`]), add a self mask and pairwise masks expanded by a PRG ([`prg`],
//! [`mask`]) from keys agreed over X25519 ([`crypto`]) with their neighbours ([`graph`]), and
//! Shamir-share the secrets needed to remove the masks of participants who drop out
//! ([`shamir`]). Under differential privacy, a site clips, rounds and noises its update before
//! masking it ([`privacy`]). The coordinator only ever sees masked vectors and their sum.
//!
//! The primitives come from kept libraries (x25519-dalek, ring, aes/ctr, vsss-rs); what is
//! written here is the protocol's own arithmetic, which is the heart of the product.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly by design.

pub mod crypto;
pub mod graph;
pub mod mask;
pub mod prg;
pub mod privacy;
pub mod protocol;
pub mod quantize;
pub mod shamir;

/// Everything that can go wrong in secure aggregation's arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The quantisation settings could let the sum wrap around the modulus.
    #[error(
        "{n_participants} participants x {levels} quantisation levels could wrap the 2^32 modulus; use at most {max_participants} participants or fewer levels"
    )]
    SumCouldWrap {
        /// Participants whose values are summed.
        n_participants: u64,
        /// Quantisation levels per value.
        levels: u64,
        /// The most participants these levels allow.
        max_participants: u64,
    },
    /// A quantisation setting is out of range.
    #[error("quantisation: {0}")]
    Quantization(String),
    /// A differential-privacy setting is out of range, or noise could not be drawn.
    #[error("differential privacy: {0}")]
    Privacy(String),
    /// Shamir sharing parameters or shares are invalid.
    #[error("secret sharing: {0}")]
    Sharing(String),
    /// A neighbourhood graph cannot be built with these parameters.
    #[error("neighbourhood graph: {0}")]
    Graph(String),
    /// A peer's public key gives a non-contributory (all-zero) shared secret: a small-order point.
    #[error("public key of participant {0} is a small-order point; key agreement refused")]
    NonContributoryKey(u32),
    /// A ciphertext failed authentication (tampered, or for another sender, receiver or round).
    #[error("ciphertext does not authenticate for its associated data")]
    Decryption,
    /// A decoded sum that no `n` honest inputs can produce: some participant's masked input was
    /// out of range (shifted values, a wrapped weight).
    #[error(
        "the sum's {what} is {value}, while {n_participants} honest inputs give {min}..={max}: a masked input was out of range"
    )]
    OutOfRange {
        /// Which part of the sum (`value 17`, `weight`, `loss`).
        what: String,
        /// The sum found.
        value: u64,
        /// The least honest inputs give.
        min: u64,
        /// The most honest inputs give.
        max: u64,
        /// Inputs in the sum.
        n_participants: u64,
    },
    /// Vectors of different lengths were combined.
    #[error("vector has {actual} values, expected {expected}")]
    Length {
        /// Values given.
        actual: usize,
        /// Values expected.
        expected: usize,
    },
}
