//! Secure-aggregation messages between the wire (`cairn.v1`) and `cairn_secagg`'s protocol
//! types, in one place for both roles and the fuzz target. Decoding checks form only: keys of 32
//! bytes, signatures, certificates and ciphertexts non-empty and bounded, shares of the Shamir
//! size, a masked input of the one tensor its job expects. Whether a message is allowed at this
//! point of the protocol is the role machines' business. Enabled by the `secagg` feature.

use crate::transfer::{MASKED_INPUT_TENSOR, masked_input_layout, split_words};
use crate::v1;
use cairn_secagg::protocol::{
    Advertisement, EncryptedShares, GraphNonce, Reveal, SurvivorSignature,
};
use cairn_secagg::shamir::Share;

/// Bytes of an X25519 public key.
pub const KEY_BYTES: usize = 32;
/// Largest certificate a participant may advertise (DER); provisioned ones are under 1 kB.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Largest identity signature (DER-encoded ECDSA P-256 is at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;
/// Largest encrypted share pair (nonce + two 33-byte shares + tag is 94 bytes).
pub const MAX_CIPHERTEXT_BYTES: usize = 1024;

/// A secure-aggregation message that is malformed on the wire; the message names the message,
/// the field, what it holds and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A byte field has another size than the protocol fixes (an X25519 key).
    #[error("{message}'s {field} has {found} bytes, expected {expected}")]
    WrongSize {
        /// The message ("advertisement").
        message: &'static str,
        /// The field ("channel_public").
        field: &'static str,
        /// Bytes it holds.
        found: usize,
        /// Bytes the protocol fixes.
        expected: usize,
    },
    /// A byte field is empty or longer than its bound (a signature, certificate, ciphertext).
    #[error("{message}'s {field} has {found} bytes, expected 1..={max}")]
    OutOfBounds {
        /// The message ("survivor signature").
        message: &'static str,
        /// The field ("signature").
        field: &'static str,
        /// Bytes it holds.
        found: usize,
        /// Most bytes allowed.
        max: usize,
    },
    /// A revealed share does not have the shape of a Shamir share.
    #[error("revealed {kind} share of participant {owner}: {source}")]
    MalformedShare {
        /// Which secret it shares ("self-mask" or "mask-key").
        kind: &'static str,
        /// Whose secret it shares.
        owner: u32,
        /// What is wrong with it.
        #[source]
        source: cairn_secagg::Error,
    },
    /// A masked input header carries no transfer header.
    #[error("masked input header for round {round} has no transfer header")]
    NoTransfer {
        /// Round the masked input header names.
        round: u64,
    },
    /// A masked input is not the one tensor of the length the job's model gives.
    #[error(
        "masked input must be one tensor \"{MASKED_INPUT_TENSOR}\" of {expected} values, found [{found}]"
    )]
    MaskedInputLayout {
        /// Values the job's model gives a masked input.
        expected: usize,
        /// The tensors announced, as `name [shape]`.
        found: String,
    },
    /// A masked input header and its transfer header name different rounds.
    #[error("masked input header is for round {header}, its transfer for round {transfer}")]
    MaskedInputRound {
        /// Round of the masked input header.
        header: u64,
        /// Round of its transfer header.
        transfer: u64,
    },
}

/// Graph nonces and the certificates `(index, DER)` that came with them.
pub type NoncesAndCertificates = (Vec<GraphNonce>, Vec<(u32, Vec<u8>)>);

/// Revealed `(owner, share)` pairs: the self-mask seed shares, then the mask-key shares.
pub type RevealedShares = (Vec<(u32, Share)>, Vec<(u32, Share)>);

fn key(bytes: &[u8], message: &'static str, field: &'static str) -> Result<[u8; 32], WireError> {
    bytes.try_into().map_err(|_| WireError::WrongSize {
        message,
        field,
        found: bytes.len(),
        expected: KEY_BYTES,
    })
}

fn bounded(
    bytes: Vec<u8>,
    message: &'static str,
    field: &'static str,
    max: usize,
) -> Result<Vec<u8>, WireError> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(WireError::OutOfBounds {
            message,
            field,
            found: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

fn revealed(
    list: Vec<v1::RevealedShare>,
    kind: &'static str,
) -> Result<Vec<(u32, Share)>, WireError> {
    list.into_iter()
        .map(|s| {
            Share::from_bytes(s.share)
                .map(|share| (s.owner, share))
                .map_err(|source| WireError::MalformedShare {
                    kind,
                    owner: s.owner,
                    source,
                })
        })
        .collect()
}

fn wire_shares(shares: &[(u32, Share)]) -> Vec<v1::RevealedShare> {
    shares
        .iter()
        .map(|(owner, share)| v1::RevealedShare {
            owner: *owner,
            share: share.as_bytes().to_vec(),
        })
        .collect()
}

impl v1::Advertisement {
    /// The wire form of `advertisement` for `round` and `attempt`, with `certificate` (DER; empty
    /// where the coordinator leaves it out for a participant outside the sender's neighbourhood).
    pub fn new(
        round: u64,
        attempt: u32,
        advertisement: &Advertisement,
        certificate: Vec<u8>,
    ) -> v1::Advertisement {
        v1::Advertisement {
            round,
            attempt,
            index: advertisement.from,
            channel_public: advertisement.channel_public.to_vec(),
            mask_public: advertisement.mask_public.to_vec(),
            signature: advertisement.signature.clone(),
            certificate,
            nonce_commitment: advertisement.nonce_commitment.to_vec(),
        }
    }

    /// The protocol's advertisement and the certificate that came with it, unchecked (it may be
    /// empty, see [`v1::Advertisement::new`]; [`checked_certificate`] bounds one that must be
    /// there).
    pub fn into_parts(self) -> Result<(Advertisement, Vec<u8>), WireError> {
        const MESSAGE: &str = "advertisement";
        let advertisement = Advertisement {
            from: self.index,
            channel_public: key(&self.channel_public, MESSAGE, "channel_public")?,
            mask_public: key(&self.mask_public, MESSAGE, "mask_public")?,
            nonce_commitment: key(&self.nonce_commitment, MESSAGE, "nonce_commitment")?,
            signature: bounded(self.signature, MESSAGE, "signature", MAX_SIGNATURE_BYTES)?,
        };
        Ok((advertisement, self.certificate))
    }
}

impl v1::GraphNonce {
    /// The wire form of `nonce` for `round` and `attempt`.
    pub fn new(round: u64, attempt: u32, nonce: &GraphNonce) -> v1::GraphNonce {
        v1::GraphNonce {
            round,
            attempt,
            index: nonce.from,
            nonce: nonce.nonce.to_vec(),
        }
    }

    /// The protocol's nonce, of 32 bytes.
    pub fn into_nonce(self) -> Result<GraphNonce, WireError> {
        Ok(GraphNonce {
            from: self.index,
            nonce: key(&self.nonce, "graph nonce", "nonce")?,
        })
    }
}

impl v1::GraphNonces {
    /// The wire form of every advertiser's `nonces` and the `certificates` (index, DER) of the
    /// receiver's neighbourhood.
    pub fn new(
        round: u64,
        attempt: u32,
        nonces: &[GraphNonce],
        certificates: Vec<(u32, Vec<u8>)>,
    ) -> v1::GraphNonces {
        v1::GraphNonces {
            round,
            attempt,
            nonces: nonces
                .iter()
                .map(|n| v1::GraphNonce::new(round, attempt, n))
                .collect(),
            certificates: certificates
                .into_iter()
                .map(|(index, certificate)| v1::PeerCertificate { index, certificate })
                .collect(),
        }
    }

    /// The nonces and the certificates (index, DER; each non-empty and bounded).
    pub fn into_parts(self) -> Result<NoncesAndCertificates, WireError> {
        let nonces = self
            .nonces
            .into_iter()
            .map(v1::GraphNonce::into_nonce)
            .collect::<Result<_, _>>()?;
        let certificates = self
            .certificates
            .into_iter()
            .map(|c| checked_certificate(c.certificate).map(|der| (c.index, der)))
            .collect::<Result<_, _>>()?;
        Ok((nonces, certificates))
    }
}

/// An advertised certificate that must be present: non-empty and at most
/// [`MAX_CERTIFICATE_BYTES`].
pub fn checked_certificate(certificate: Vec<u8>) -> Result<Vec<u8>, WireError> {
    bounded(
        certificate,
        "advertisement",
        "certificate",
        MAX_CERTIFICATE_BYTES,
    )
}

impl From<&EncryptedShares> for v1::EncryptedShare {
    fn from(shares: &EncryptedShares) -> v1::EncryptedShare {
        v1::EncryptedShare {
            from: shares.from,
            to: shares.to,
            ciphertext: shares.ciphertext.clone(),
        }
    }
}

impl TryFrom<v1::EncryptedShare> for EncryptedShares {
    type Error = WireError;

    fn try_from(share: v1::EncryptedShare) -> Result<EncryptedShares, WireError> {
        Ok(EncryptedShares {
            from: share.from,
            to: share.to,
            ciphertext: bounded(
                share.ciphertext,
                "encrypted share",
                "ciphertext",
                MAX_CIPHERTEXT_BYTES,
            )?,
        })
    }
}

impl v1::EncryptedShares {
    /// The wire form of `shares` for `round` and `attempt`.
    pub fn new(round: u64, attempt: u32, shares: &[EncryptedShares]) -> v1::EncryptedShares {
        v1::EncryptedShares {
            round,
            attempt,
            shares: shares.iter().map(v1::EncryptedShare::from).collect(),
        }
    }

    /// The protocol's encrypted shares, each checked.
    pub fn into_shares(self) -> Result<Vec<EncryptedShares>, WireError> {
        self.shares
            .into_iter()
            .map(EncryptedShares::try_from)
            .collect()
    }
}

impl v1::SurvivorSignature {
    /// The wire form of `signature` for `round` and `attempt`.
    pub fn new(round: u64, attempt: u32, signature: &SurvivorSignature) -> v1::SurvivorSignature {
        v1::SurvivorSignature {
            round,
            attempt,
            index: signature.from,
            signature: signature.signature.clone(),
        }
    }
}

impl TryFrom<v1::SurvivorSignature> for SurvivorSignature {
    type Error = WireError;

    fn try_from(signature: v1::SurvivorSignature) -> Result<SurvivorSignature, WireError> {
        Ok(SurvivorSignature {
            from: signature.index,
            signature: bounded(
                signature.signature,
                "survivor signature",
                "signature",
                MAX_SIGNATURE_BYTES,
            )?,
        })
    }
}

impl v1::SurvivorSignatures {
    /// The wire form of `signatures` for `round` and `attempt`.
    pub fn new(
        round: u64,
        attempt: u32,
        signatures: &[SurvivorSignature],
    ) -> v1::SurvivorSignatures {
        v1::SurvivorSignatures {
            round,
            attempt,
            signatures: signatures
                .iter()
                .map(|s| v1::SurvivorSignature::new(round, attempt, s))
                .collect(),
        }
    }

    /// The protocol's survivor signatures, each checked.
    pub fn into_signatures(self) -> Result<Vec<SurvivorSignature>, WireError> {
        self.signatures
            .into_iter()
            .map(SurvivorSignature::try_from)
            .collect()
    }
}

impl v1::Reveal {
    /// The wire form of `reveal` for `round` and `attempt` (the sender is the session's).
    pub fn new(round: u64, attempt: u32, reveal: &Reveal) -> v1::Reveal {
        v1::Reveal {
            round,
            attempt,
            self_mask_shares: wire_shares(&reveal.self_mask_shares),
            mask_key_shares: wire_shares(&reveal.mask_key_shares),
        }
    }

    /// The revealed `(owner, share)` pairs, self-mask seed shares first, then mask-key shares,
    /// every share checked for shape.
    pub fn into_shares(self) -> Result<RevealedShares, WireError> {
        Ok((
            revealed(self.self_mask_shares, "self-mask")?,
            revealed(self.mask_key_shares, "mask-key")?,
        ))
    }

    /// The protocol's reveal from participant `from` (whom the wire does not name: it is the
    /// session's participant), every share checked for shape.
    pub fn into_reveal(self, from: u32) -> Result<Reveal, WireError> {
        let (self_mask_shares, mask_key_shares) = self.into_shares()?;
        Ok(Reveal {
            from,
            self_mask_shares,
            mask_key_shares,
        })
    }
}

impl v1::MaskedInputHeader {
    /// A masked input's header and chunks for `round` and `attempt`.
    pub fn split(
        round: u64,
        attempt: u32,
        values: &[u32],
    ) -> (v1::MaskedInputHeader, Vec<v1::Chunk>) {
        let (transfer, chunks) = split_words(round, &masked_input_layout(values.len()), values);
        let header = v1::MaskedInputHeader {
            round,
            attempt,
            transfer: Some(transfer),
        };
        (header, chunks)
    }

    /// The transfer header of a masked input that must hold `expected_len` values, checked to
    /// be one tensor [`MASKED_INPUT_TENSOR`] of that length, for this header's round.
    pub fn checked_transfer(self, expected_len: usize) -> Result<v1::TransferHeader, WireError> {
        let transfer = self
            .transfer
            .ok_or(WireError::NoTransfer { round: self.round })?;
        if transfer.tensors != masked_input_layout(expected_len) {
            let found = transfer
                .tensors
                .iter()
                .map(|t| format!("{} {:?}", t.name, t.shape))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(WireError::MaskedInputLayout {
                expected: expected_len,
                found,
            });
        }
        if transfer.round != self.round {
            return Err(WireError::MaskedInputRound {
                header: self.round,
                transfer: transfer.round,
            });
        }
        Ok(transfer)
    }
}

/// Round and attempt a coordinator's secure-aggregation message names, if it is one.
pub fn round_of(body: &v1::coordinator_message::Body) -> Option<(u64, u32)> {
    use v1::coordinator_message::Body;
    match body {
        Body::Advertisements(m) => Some((m.round, m.attempt)),
        Body::GraphNonces(m) => Some((m.round, m.attempt)),
        Body::Shares(m) => Some((m.round, m.attempt)),
        Body::Survivors(m) => Some((m.round, m.attempt)),
        Body::SurvivorSignatures(m) => Some((m.round, m.attempt)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::Assembler;

    fn advertisement() -> Advertisement {
        Advertisement {
            from: 2,
            channel_public: [1; 32],
            mask_public: [2; 32],
            nonce_commitment: [4; 32],
            signature: vec![3; 70],
        }
    }

    #[test]
    fn an_advertisement_round_trips_and_a_short_key_is_named() {
        let wire = v1::Advertisement::new(4, 1, &advertisement(), vec![9; 10]);
        assert_eq!(
            wire.clone().into_parts().unwrap(),
            (advertisement(), vec![9; 10])
        );
        let short = v1::Advertisement {
            mask_public: vec![0; 31],
            ..wire.clone()
        };
        assert_eq!(
            short.into_parts().unwrap_err().to_string(),
            "advertisement's mask_public has 31 bytes, expected 32"
        );
        let unsigned = v1::Advertisement {
            signature: vec![],
            ..wire
        };
        assert_eq!(
            unsigned.into_parts().unwrap_err().to_string(),
            "advertisement's signature has 0 bytes, expected 1..=512"
        );
        assert!(checked_certificate(vec![]).is_err());
        assert!(checked_certificate(vec![0; MAX_CERTIFICATE_BYTES + 1]).is_err());
        assert_eq!(checked_certificate(vec![1; 5]).unwrap(), vec![1; 5]);
    }

    #[test]
    fn graph_nonces_round_trip_and_a_short_nonce_or_empty_certificate_is_named() {
        let nonces = [
            GraphNonce {
                from: 0,
                nonce: [5; 32],
            },
            GraphNonce {
                from: 3,
                nonce: [6; 32],
            },
        ];
        let wire = v1::GraphNonces::new(4, 1, &nonces, vec![(3, vec![9; 10])]);
        assert_eq!(
            wire.clone().into_parts().unwrap(),
            (nonces.to_vec(), vec![(3, vec![9; 10])])
        );
        let mut short = wire.clone();
        short.nonces[1].nonce.pop();
        assert_eq!(
            short.into_parts().unwrap_err().to_string(),
            "graph nonce's nonce has 31 bytes, expected 32"
        );
        let mut empty = wire;
        empty.certificates[0].certificate.clear();
        assert!(empty.into_parts().is_err());
        let own = v1::GraphNonce::new(4, 1, &nonces[0]);
        assert_eq!(own.into_nonce().unwrap(), nonces[0]);
    }

    #[test]
    fn shares_signatures_and_reveals_round_trip_and_malformed_ones_are_refused() {
        let shares = vec![EncryptedShares {
            from: 0,
            to: 1,
            ciphertext: vec![5; 94],
        }];
        let wire = v1::EncryptedShares::new(3, 2, &shares);
        assert_eq!((wire.round, wire.attempt), (3, 2));
        assert_eq!(wire.clone().into_shares().unwrap(), shares);
        let mut oversized = wire;
        oversized.shares[0].ciphertext = vec![0; MAX_CIPHERTEXT_BYTES + 1];
        assert_eq!(
            oversized.into_shares().unwrap_err().to_string(),
            "encrypted share's ciphertext has 1025 bytes, expected 1..=1024"
        );

        let signatures = vec![SurvivorSignature {
            from: 1,
            signature: vec![7; 64],
        }];
        let wire = v1::SurvivorSignatures::new(3, 2, &signatures);
        assert_eq!(wire.signatures[0].round, 3);
        assert_eq!(wire.into_signatures().unwrap(), signatures);

        let share = Share::from_bytes(vec![1; 33]).unwrap();
        let reveal = Reveal {
            from: 4,
            self_mask_shares: vec![(0, share.clone())],
            mask_key_shares: vec![(1, share)],
        };
        let wire = v1::Reveal::new(3, 2, &reveal);
        assert_eq!(wire.clone().into_reveal(4).unwrap(), reveal);
        let mut bad = wire;
        bad.mask_key_shares[0].share.truncate(5);
        let err = bad.into_reveal(4).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("revealed mask-key share of participant 1: "),
            "{err}"
        );
    }

    #[test]
    fn a_masked_input_round_trips_and_another_layout_or_round_is_refused() {
        let values: Vec<u32> = (0..10).collect();
        let (header, chunks) = v1::MaskedInputHeader::split(5, 1, &values);
        let transfer = header.clone().checked_transfer(10).unwrap();
        let mut assembler = Assembler::new(transfer, "masked input", Some(10)).unwrap();
        let mut received = None;
        for chunk in chunks {
            received = assembler.push_words(chunk).unwrap();
        }
        assert_eq!(received, Some(values));

        let err = header.clone().checked_transfer(11).unwrap_err();
        assert_eq!(
            err.to_string(),
            "masked input must be one tensor \"masked_input\" of 11 values, found [masked_input [10]]"
        );
        let other_round = v1::MaskedInputHeader {
            round: 6,
            ..header.clone()
        };
        assert_eq!(
            other_round.checked_transfer(10).unwrap_err(),
            WireError::MaskedInputRound {
                header: 6,
                transfer: 5
            }
        );
        let empty = v1::MaskedInputHeader {
            transfer: None,
            ..header
        };
        assert_eq!(
            empty.checked_transfer(10).unwrap_err(),
            WireError::NoTransfer { round: 5 }
        );
    }
}
