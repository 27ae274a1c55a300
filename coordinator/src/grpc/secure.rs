//! Secure aggregation on the wire: participants' SecAgg+ messages checked for form and turned
//! into round events, and the round machine's messages turned into protobuf. Whether a message
//! is allowed at this point of the protocol is the round machine's business; this module only
//! refuses what is malformed (wrong key or share sizes, a masked input of the wrong length).

use crate::round::{SecureMessage, SecureOutbound, SecureSetup};
use cairn_proto::transfer::Assembler;
use cairn_proto::v1::coordinator_message::Body as Outbound;
use cairn_proto::v1::{self, MaskedInputHeader, TensorSpec};
use cairn_secagg::protocol::{Advertisement, EncryptedShares};
use cairn_secagg::shamir::Share;

/// Largest certificate a participant may advertise (DER); provisioned ones are under 1 kB.
const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Largest identity signature (DER-encoded ECDSA P-256 is at most 72 bytes).
const MAX_SIGNATURE_BYTES: usize = 512;
/// Largest encrypted share pair (nonce + two 33-byte shares + tag is 94 bytes).
const MAX_CIPHERTEXT_BYTES: usize = 1024;

/// The single tensor a masked input is sent as.
pub(super) fn masked_input_layout(len: usize) -> Vec<TensorSpec> {
    vec![TensorSpec {
        name: "masked_input".into(),
        shape: vec![len as u64],
    }]
}

fn key(bytes: &[u8], what: &str) -> Result<[u8; 32], String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} has {} bytes, expected 32", bytes.len()))
}

fn bounded<'a>(bytes: &'a [u8], what: &str, max: usize) -> Result<&'a [u8], String> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(format!(
            "{what} has {} bytes, expected 1..={max}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn shares(list: Vec<v1::RevealedShare>, what: &str) -> Result<Vec<(u32, Share)>, String> {
    list.into_iter()
        .map(|s| {
            Share::from_bytes(s.share.to_vec())
                .map(|share| (s.owner, share))
                .map_err(|e| format!("{what} of participant {}: {e}", s.owner))
        })
        .collect()
}

/// `(round, attempt, message)` from an advertisement.
pub(super) fn advertisement(ad: v1::Advertisement) -> Result<(u64, u32, SecureMessage), String> {
    let advertisement = Advertisement {
        from: ad.index,
        channel_public: key(&ad.channel_public, "advertisement's channel_public")?,
        mask_public: key(&ad.mask_public, "advertisement's mask_public")?,
        signature: bounded(
            &ad.signature,
            "advertisement's signature",
            MAX_SIGNATURE_BYTES,
        )?
        .to_vec(),
    };
    let certificate = bounded(
        &ad.certificate,
        "advertisement's certificate",
        MAX_CERTIFICATE_BYTES,
    )?
    .to_vec();
    Ok((
        ad.round,
        ad.attempt,
        SecureMessage::Advertisement(advertisement, certificate),
    ))
}

/// `(round, attempt, message)` from encrypted shares.
pub(super) fn encrypted_shares(
    shares: v1::EncryptedShares,
) -> Result<(u64, u32, SecureMessage), String> {
    let list = shares
        .shares
        .into_iter()
        .map(|s| {
            bounded(&s.ciphertext, "an encrypted share", MAX_CIPHERTEXT_BYTES)?;
            Ok(EncryptedShares {
                from: s.from,
                to: s.to,
                ciphertext: s.ciphertext.to_vec(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((shares.round, shares.attempt, SecureMessage::Shares(list)))
}

/// `(round, attempt, message)` from a survivor signature.
pub(super) fn survivor_signature(
    signature: v1::SurvivorSignature,
) -> Result<(u64, u32, SecureMessage), String> {
    let bytes = bounded(
        &signature.signature,
        "survivor signature",
        MAX_SIGNATURE_BYTES,
    )?;
    Ok((
        signature.round,
        signature.attempt,
        SecureMessage::Signature(bytes.to_vec()),
    ))
}

/// `(round, attempt, message)` from a reveal.
pub(super) fn reveal(reveal: v1::Reveal) -> Result<(u64, u32, SecureMessage), String> {
    Ok((
        reveal.round,
        reveal.attempt,
        SecureMessage::Reveal {
            self_mask_shares: shares(reveal.self_mask_shares, "revealed self-mask share")?,
            mask_key_shares: shares(reveal.mask_key_shares, "revealed mask-key share")?,
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
) -> Result<PendingMasked, String> {
    let transfer = header
        .transfer
        .ok_or("masked input header has no transfer header")?;
    if transfer.tensors != masked_input_layout(expected_len) {
        return Err(format!(
            "masked input must be one tensor \"masked_input\" of {expected_len} values"
        ));
    }
    if transfer.round != header.round {
        return Err(format!(
            "masked input header is for round {}, its transfer for round {}",
            header.round, transfer.round
        ));
    }
    let what = format!("masked input for round {}", header.round);
    let assembler =
        Assembler::new(transfer, what, Some(expected_len as u64)).map_err(|e| e.to_string())?;
    Ok(PendingMasked {
        round: header.round,
        attempt: header.attempt,
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
    }
}

/// The wire form of a message to one participant.
pub(super) fn outbound(round: u64, attempt: u32, message: &SecureOutbound) -> Outbound {
    match message {
        SecureOutbound::Advertisements { all, certified } => {
            Outbound::Advertisements(v1::Advertisements {
                round,
                attempt,
                advertisements: all
                    .iter()
                    .map(|(ad, certificate)| v1::Advertisement {
                        round,
                        attempt,
                        index: ad.from,
                        channel_public: ad.channel_public.to_vec(),
                        mask_public: ad.mask_public.to_vec(),
                        signature: ad.signature.clone(),
                        // A certificate is most of an advertisement's bytes, and only the
                        // recipient's neighbourhood's are checked.
                        certificate: match certified.contains(&ad.from) {
                            true => certificate.clone(),
                            false => Vec::new(),
                        },
                    })
                    .collect(),
            })
        }
        SecureOutbound::Shares(shares) => Outbound::Shares(v1::EncryptedShares {
            round,
            attempt,
            shares: shares
                .iter()
                .map(|s| v1::EncryptedShare {
                    from: s.from,
                    to: s.to,
                    ciphertext: s.ciphertext.clone(),
                })
                .collect(),
        }),
        SecureOutbound::Survivors(survivors) => Outbound::Survivors(v1::Survivors {
            round,
            attempt,
            survivors: survivors.to_vec(),
        }),
        SecureOutbound::Signatures(signatures) => {
            Outbound::SurvivorSignatures(v1::SurvivorSignatures {
                round,
                attempt,
                signatures: signatures
                    .iter()
                    .map(|s| v1::SurvivorSignature {
                        round,
                        attempt,
                        index: s.from,
                        signature: s.signature.clone(),
                    })
                    .collect(),
            })
        }
    }
}
