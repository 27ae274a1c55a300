//! The participant's side of secure aggregation on the wire: it drives `cairn_secagg`'s
//! [`ParticipantMachine`] with the coordinator's messages and answers with its own. Its update
//! leaves only as a masked vector. Anything the coordinator sends that the protocol does not
//! allow (a substituted key or certificate, shares that do not decrypt, inconsistent survivor
//! sets, a threshold below a strict majority) aborts this participant's part of the round, and
//! nothing more is revealed.

use super::Kit;
use super::identity::FederationVerifier;
use cairn_proto::transfer::split_words;
use cairn_proto::v1::coordinator_message::Body as Inbound;
use cairn_proto::v1::participant_message::Body as Outbound;
use cairn_proto::v1::{self, ParticipantMessage, TensorSpec};
use cairn_secagg::protocol::{
    Advertisement, EncryptedShares, ParticipantMachine, RoundConfig, SurvivorSignature,
};
use cairn_secagg::quantize::UpdateEncoding;

/// Why this participant stops taking part in a round's secure aggregation.
pub(super) type Abort = String;

/// One round's secure aggregation in progress.
pub(super) struct SecureRound {
    round: u64,
    attempt: u32,
    roster: Vec<String>,
    machine: ParticipantMachine,
    /// The encoded update, until it is masked.
    input: Option<Vec<u32>>,
    verifier: Option<FederationVerifier>,
    kit: Kit,
}

fn message(body: Outbound) -> ParticipantMessage {
    ParticipantMessage { body: Some(body) }
}

impl SecureRound {
    /// Starts after training: checks the coordinator's setup, encodes the update (`delta` is
    /// `local - global`) and returns the signed advertisement to send.
    #[allow(clippy::too_many_arguments)] // One round's public setup and one update.
    pub(super) fn start(
        kit: &Kit,
        job: &str,
        me: &str,
        round: u64,
        setup: &v1::SecureAggregation,
        delta: &[f32],
        n_examples: u64,
        mean_loss: f64,
    ) -> Result<(SecureRound, ParticipantMessage), Abort> {
        let index = setup
            .participants
            .iter()
            .position(|id| id == me)
            .ok_or_else(|| format!("{me:?} is not in the round's participant list"))?;
        let encoding = UpdateEncoding::new(setup.clip, setup.quantization_levels, setup.max_weight)
            .map_err(|e| format!("setup refused: {e}"))?;
        let config = RoundConfig::derive(
            job,
            round,
            setup.attempt,
            &setup.participants,
            setup.degree,
            setup.threshold as usize,
            UpdateEncoding::vector_len(delta.len()),
        )
        .map_err(|e| format!("setup refused: {e}"))?;
        let (machine, ad) = ParticipantMachine::new(config, index as u32, kit.signer.as_ref());
        let advertisement = v1::Advertisement {
            round,
            attempt: setup.attempt,
            index: ad.from,
            channel_public: ad.channel_public.to_vec(),
            mask_public: ad.mask_public.to_vec(),
            signature: ad.signature,
            certificate: kit.certificate_der.clone(),
        };
        let secure = SecureRound {
            round,
            attempt: setup.attempt,
            roster: setup.participants.clone(),
            machine,
            input: Some(encoding.encode(delta, n_examples, mean_loss)),
            verifier: None,
            kit: kit.clone(),
        };
        Ok((secure, message(Outbound::Advertisement(advertisement))))
    }

    /// Round and attempt this is for.
    pub(super) fn round(&self) -> (u64, u32) {
        (self.round, self.attempt)
    }

    /// Whether a coordinator message belongs to this round and attempt.
    pub(super) fn is_for(&self, round: u64, attempt: u32) -> bool {
        (round, attempt) == (self.round, self.attempt)
    }

    /// Takes the coordinator's next message; returns what to send and whether this participant's
    /// part is over.
    pub(super) fn on_message(
        &mut self,
        body: Inbound,
    ) -> Result<(Vec<ParticipantMessage>, bool), Abort> {
        let (round, attempt) = (self.round, self.attempt);
        match body {
            Inbound::Advertisements(list) => {
                let mut ads = Vec::with_capacity(list.advertisements.len());
                let mut peers = Vec::new();
                // Only the neighbourhood's signatures are checked (see
                // `ParticipantMachine::neighbourhood`), so only its certificates are verified.
                let checked = self.machine.neighbourhood();
                for ad in list.advertisements {
                    let id = self.roster.get(ad.index as usize).ok_or_else(|| {
                        format!("advertisement for unknown participant {}", ad.index)
                    })?;
                    let key = |bytes: &[u8]| -> Result<[u8; 32], Abort> {
                        bytes.try_into().map_err(|_| {
                            format!("participant {}'s advertised key is not 32 bytes", ad.index)
                        })
                    };
                    ads.push(Advertisement {
                        from: ad.index,
                        channel_public: key(&ad.channel_public)?,
                        mask_public: key(&ad.mask_public)?,
                        signature: ad.signature,
                    });
                    if checked.contains(&ad.index) {
                        peers.push((ad.index, id.clone(), ad.certificate));
                    }
                }
                let verifier =
                    FederationVerifier::new(&self.kit.ca_pem, peers).map_err(|e| e.to_string())?;
                let shares = self
                    .machine
                    .on_advertisements(ads, &verifier)
                    .map_err(|e| e.to_string())?;
                self.verifier = Some(verifier);
                let shares = v1::EncryptedShares {
                    round,
                    attempt,
                    shares: shares
                        .into_iter()
                        .map(|s| v1::EncryptedShare {
                            from: s.from,
                            to: s.to,
                            ciphertext: s.ciphertext,
                        })
                        .collect(),
                };
                Ok((vec![message(Outbound::Shares(shares))], false))
            }
            Inbound::Shares(list) => {
                let shares = list
                    .shares
                    .into_iter()
                    .map(|s| EncryptedShares {
                        from: s.from,
                        to: s.to,
                        ciphertext: s.ciphertext,
                    })
                    .collect();
                let input = self
                    .input
                    .take()
                    .ok_or("shares arrived twice; the input is already masked")?;
                let masked = self
                    .machine
                    .on_shares(shares, &input)
                    .map_err(|e| e.to_string())?;
                let layout = [TensorSpec {
                    name: "masked_input".into(),
                    shape: vec![masked.values.len() as u64],
                }];
                let (transfer, chunks) = split_words(round, &layout, &masked.values);
                let mut out = vec![message(Outbound::MaskedInput(v1::MaskedInputHeader {
                    round,
                    attempt,
                    transfer: Some(transfer),
                }))];
                out.extend(chunks.into_iter().map(|c| message(Outbound::Chunk(c))));
                Ok((out, false))
            }
            Inbound::Survivors(list) => {
                let signature = self
                    .machine
                    .on_survivors(list.survivors, self.kit.signer.as_ref())
                    .map_err(|e| e.to_string())?;
                let signature = v1::SurvivorSignature {
                    round,
                    attempt,
                    index: signature.from,
                    signature: signature.signature,
                };
                Ok((vec![message(Outbound::SurvivorSignature(signature))], false))
            }
            Inbound::SurvivorSignatures(list) => {
                let verifier = self
                    .verifier
                    .as_ref()
                    .ok_or("survivor signatures arrived before the advertisements")?;
                let signatures = list
                    .signatures
                    .into_iter()
                    .map(|s| SurvivorSignature {
                        from: s.index,
                        signature: s.signature,
                    })
                    .collect();
                let reveal = self
                    .machine
                    .on_signatures(signatures, verifier)
                    .map_err(|e| e.to_string())?;
                let wire = |shares: Vec<(u32, cairn_secagg::shamir::Share)>| {
                    shares
                        .into_iter()
                        .map(|(owner, share)| v1::RevealedShare {
                            owner,
                            share: share.as_bytes().to_vec(),
                        })
                        .collect()
                };
                let reveal = v1::Reveal {
                    round,
                    attempt,
                    self_mask_shares: wire(reveal.self_mask_shares),
                    mask_key_shares: wire(reveal.mask_key_shares),
                };
                Ok((vec![message(Outbound::Reveal(reveal))], true))
            }
            _ => Err("not a secure aggregation message".into()),
        }
    }
}

/// Round and attempt a coordinator's secure-aggregation message names, if it is one.
pub(super) fn round_of(body: &Inbound) -> Option<(u64, u32)> {
    match body {
        Inbound::Advertisements(m) => Some((m.round, m.attempt)),
        Inbound::Shares(m) => Some((m.round, m.attempt)),
        Inbound::Survivors(m) => Some((m.round, m.attempt)),
        Inbound::SurvivorSignatures(m) => Some((m.round, m.attempt)),
        _ => None,
    }
}
