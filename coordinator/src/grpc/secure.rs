//! Secure aggregation on the wire: participants' SecAgg+ messages checked for form and turned
//! into round events, and the round machine's messages turned into protobuf. Whether a message
//! is allowed at this point of the protocol is the round machine's business; this module only
//! refuses what is malformed (wrong key or share sizes, a masked input of the wrong length),
//! by the checks of `cairn_proto::secagg`, which the participant shares.

use crate::round::{SecureMessage, SecureOutbound, SecureSetup};
use cairn_proto::secagg::{WireError, checked_certificate};
use cairn_proto::transfer::{Assembler, TransferError};
use cairn_proto::v1::coordinator_message::Body as Outbound;
use cairn_proto::v1::{self, MaskedInputHeader};

/// Why a participant's secure-aggregation message is refused as malformed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Malformed {
    /// A field has the wrong size or form.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A masked input's transfer cannot be received as announced.
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

/// `(round, attempt, message)` from an advertisement; its certificate must be there (the
/// session compares it with the one it authenticated with).
pub(super) fn advertisement(ad: v1::Advertisement) -> Result<(u64, u32, SecureMessage), Malformed> {
    let (round, attempt) = (ad.round, ad.attempt);
    let (advertisement, certificate) = ad.into_parts()?;
    let certificate = checked_certificate(certificate)?;
    Ok((
        round,
        attempt,
        SecureMessage::Advertisement(advertisement, certificate),
    ))
}

/// `(round, attempt, message)` from a graph nonce; the sender is the session's participant,
/// whatever index the message names.
pub(super) fn graph_nonce(nonce: v1::GraphNonce) -> Result<(u64, u32, SecureMessage), Malformed> {
    let (round, attempt) = (nonce.round, nonce.attempt);
    let nonce = nonce.into_nonce()?;
    Ok((round, attempt, SecureMessage::Nonce(nonce.nonce)))
}

/// `(round, attempt, message)` from encrypted shares.
pub(super) fn encrypted_shares(
    shares: v1::EncryptedShares,
) -> Result<(u64, u32, SecureMessage), Malformed> {
    let (round, attempt) = (shares.round, shares.attempt);
    let list = shares.into_shares()?;
    Ok((round, attempt, SecureMessage::Shares(list)))
}

/// `(round, attempt, message)` from a survivor signature; the signer is the session's
/// participant, whatever index the message names.
pub(super) fn survivor_signature(
    signature: v1::SurvivorSignature,
) -> Result<(u64, u32, SecureMessage), Malformed> {
    let (round, attempt) = (signature.round, signature.attempt);
    let signature = cairn_secagg::protocol::SurvivorSignature::try_from(signature)?;
    Ok((
        round,
        attempt,
        SecureMessage::Signature(signature.signature),
    ))
}

/// `(round, attempt, message)` from a reveal.
pub(super) fn reveal(reveal: v1::Reveal) -> Result<(u64, u32, SecureMessage), Malformed> {
    let (round, attempt) = (reveal.round, reveal.attempt);
    let (self_mask_shares, mask_key_shares) = reveal.into_shares()?;
    Ok((
        round,
        attempt,
        SecureMessage::Reveal {
            self_mask_shares,
            mask_key_shares,
        },
    ))
}

/// A masked input being received.
pub(super) struct PendingMasked {
    pub(super) round: u64,
    pub(super) attempt: u32,
    pub(super) assembler: Assembler,
}

/// Starts receiving a masked input of `expected_len` values.
pub(super) fn start_masked(
    header: MaskedInputHeader,
    expected_len: usize,
) -> Result<PendingMasked, Malformed> {
    let (round, attempt) = (header.round, header.attempt);
    let transfer = header.checked_transfer(expected_len)?;
    let what = format!("masked input for round {round}");
    let assembler = Assembler::new(transfer, what, Some(expected_len as u64))?;
    Ok(PendingMasked {
        round,
        attempt,
        assembler,
    })
}

/// The wire form of a round's setup.
pub(super) fn setup(setup: &SecureSetup) -> v1::SecureAggregation {
    v1::SecureAggregation {
        attempt: setup.attempt,
        participants: setup.roster.clone(),
        degree: setup.degree,
        threshold: setup.threshold,
        clip: setup.clip,
        quantization_levels: setup.levels,
        max_weight: setup.max_weight,
        privacy: setup.privacy.map(|privacy| v1::DifferentialPrivacy {
            clip_norm: privacy.clip_norm(),
            noise_multiplier: privacy.noise_multiplier(),
            min_contributors: privacy.min_contributors(),
        }),
    }
}

/// The wire form of a message to one participant.
pub(super) fn outbound(round: u64, attempt: u32, message: &SecureOutbound) -> Outbound {
    match message {
        SecureOutbound::Advertisements(all) => Outbound::Advertisements(v1::Advertisements {
            round,
            attempt,
            advertisements: all
                .iter()
                .map(|ad| v1::Advertisement::new(round, attempt, ad, Vec::new()))
                .collect(),
        }),
        SecureOutbound::Nonces {
            nonces,
            certificates,
            certified,
        } => {
            // A certificate is most of these bytes, and only the recipient's neighbourhood's
            // are checked.
            let certificates = certified
                .iter()
                .filter_map(|i| certificates.get(i).map(|der| (*i, der.clone())))
                .collect();
            Outbound::GraphNonces(v1::GraphNonces::new(round, attempt, nonces, certificates))
        }
        SecureOutbound::Shares(shares) => {
            Outbound::Shares(v1::EncryptedShares::new(round, attempt, shares))
        }
        SecureOutbound::Survivors(survivors) => Outbound::Survivors(v1::Survivors {
            round,
            attempt,
            survivors: survivors.to_vec(),
        }),
        SecureOutbound::Signatures(signatures) => {
            Outbound::SurvivorSignatures(v1::SurvivorSignatures::new(round, attempt, signatures))
        }
    }
}
