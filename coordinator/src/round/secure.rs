//! Secure aggregation inside a round (SecAgg+): after training, the selected participants go
//! through AdvertiseKeys → DrawGraph → ShareKeys → CollectMasked → ConsistencyCheck → Unmask,
//! each phase
//! ending when every participant still in the protocol has answered or its deadline passed. The
//! protocol itself is `cairn_secagg`'s [`CoordinatorMachine`]; this module maps participant ids
//! to protocol indices, keeps who is expected in each phase, and turns the unmasked sum into the
//! [`UpdateSum`] the strategy needs, or, when the round's evaluation runs the same phases, into
//! the evaluation's [`Totals`]. No individual input exists here, masked or not: each piece of a
//! masked input is added to the machine's running sum as it arrives and set aside on disk
//! ([`InFlight`]) only until the input is complete, so that one that breaks off is subtracted
//! back out before the survivor set is drawn.

use super::inflight::InFlight;
use super::{Dropout, ParticipantId, Phase};
use crate::config::SecureAggregationSpec;
use crate::strategy::UpdateSum;
use cairn_proto::metrics::{EvaluationEncoding, Metric, MetricError, Totals};
use cairn_proto::transfer::Piece;
use cairn_secagg::privacy::{DistributedDp, Ledger};
use cairn_secagg::protocol::{
    Advertisement, CoordinatorMachine, EncryptedShares, GraphNonce, Reveal, RoundConfig,
    SurvivorSignature, Unmasked, advertisement_message, neighbourhood_size, threshold_for,
};
use cairn_secagg::quantize::UpdateEncoding;
use cairn_secagg::shamir::Share;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Why secure aggregation refused a participant's message or failed a round attempt. These are
/// outcomes, not failures of the coordinator: the round machine records them as the reason a
/// participant left the round or an attempt failed, and the job goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// A message or a phase's end came after the protocol had ended.
    #[error("secure aggregation is over")]
    Over,
    /// The selected participants cannot form a neighbourhood graph or a round configuration.
    #[error("secure aggregation cannot start: {0}")]
    CannotStart(#[source] cairn_secagg::Error),
    /// A participant's advertisement is not signed by the key of the certificate it sent.
    #[error("its advertisement's signature does not verify with its certificate")]
    BadSignature,
    /// A message of another phase than the current one.
    #[error("{message} arrived during {phase}; expected {expected}")]
    OutOfPhase {
        /// The message's kind.
        message: &'static str,
        /// The current phase.
        phase: &'static str,
        /// The message the phase waits for.
        expected: &'static str,
    },
    /// The protocol machine refused a message or could not close a phase.
    #[error(transparent)]
    Protocol(#[from] cairn_secagg::protocol::ProtocolError),
    /// A phase outside secure aggregation was to be closed as one of its phases.
    #[error("{phase} is not a secure aggregation phase")]
    NotSecurePhase {
        /// The phase.
        phase: &'static str,
    },
    /// The unmasked sum cannot be decoded from its quantised form.
    #[error(transparent)]
    Decode(cairn_secagg::Error),
    /// The unmasked evaluation sum is not one honest evaluations give.
    #[error(transparent)]
    DecodeEvaluation(MetricError),
    /// The decoded sum is no usable sum of updates (no weight, a bad loss, a non-finite value).
    #[error("the unmasked sum is unusable: {0}")]
    UnusableSum(#[source] crate::Error),
    /// A masked input's pieces could not be set aside on disk, or read back to take it out.
    #[error("masked input pieces could not be kept on disk: {0}")]
    Spill(#[source] std::io::Error),
}

/// What the round machine needs to run secure aggregation.
#[derive(Debug, Clone)]
pub struct SecureSettings {
    /// Job name, bound into every signature.
    pub job: String,
    /// The job's `secure_aggregation:` block.
    pub spec: SecureAggregationSpec,
    /// How updates are encoded (checked for every listed participant).
    pub encoding: UpdateEncoding,
    /// Differential privacy, when the job has it: updates are then encoded by its mechanism.
    pub privacy: Option<PrivacySettings>,
}

/// A job's differential privacy: the mechanism every update goes through and the budget the
/// job stops at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacySettings {
    /// The distributed discrete Gaussian, for the job's model.
    pub mechanism: DistributedDp,
    /// `δ` of the guarantee.
    pub delta: f64,
    /// The `ε` no round may take the job past.
    pub epsilon_budget: f64,
}

impl PrivacySettings {
    /// `ε` at the job's `δ` once `rounds` rounds are released (each costs the same, since the
    /// mechanism's parameters are the job's).
    pub fn epsilon_after(&self, rounds: u64) -> f64 {
        Ledger::after(&self.mechanism, rounds).epsilon(self.delta)
    }
}

/// The public setup of one round's secure aggregation, sent with the training instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureSetup {
    /// Attempt of the round.
    pub attempt: u32,
    /// Selected participants; a participant's protocol index is its position.
    pub roster: Vec<ParticipantId>,
    /// Degree of the neighbourhood graph.
    pub degree: u32,
    /// Shares that reconstruct a secret.
    pub threshold: u32,
    /// Clipping bound of a delta value.
    pub clip: f32,
    /// Quantisation levels.
    pub levels: u32,
    /// Weight cap.
    pub max_weight: u32,
    /// Differential privacy's noise, for a training round of a job that has it.
    pub privacy: Option<DistributedDp>,
}

/// A secure-aggregation message from a participant, already decoded and checked for form.
#[derive(Debug, Clone, PartialEq)]
pub enum SecureMessage {
    /// Its signed keys and nonce commitment, and its certificate (DER).
    Advertisement(Advertisement, Vec<u8>),
    /// Its revealed graph nonce.
    Nonce([u8; 32]),
    /// Its encrypted shares, one per neighbour.
    Shares(Vec<EncryptedShares>),
    /// The next piece of its masked input, checked against its transfer header's hashes.
    MaskedInput(Piece<u32>),
    /// Its signature over the survivor set.
    Signature(Vec<u8>),
    /// Its revealed shares: (owner, share) of survivors' self-mask seeds and of dropped
    /// participants' mask keys.
    Reveal {
        /// Self-mask seed shares.
        self_mask_shares: Vec<(u32, Share)>,
        /// Mask-key shares.
        mask_key_shares: Vec<(u32, Share)>,
    },
}

impl SecureMessage {
    fn name(&self) -> &'static str {
        match self {
            SecureMessage::Advertisement(..) => "advertisement",
            SecureMessage::Nonce(_) => "graph nonce",
            SecureMessage::Shares(_) => "encrypted shares",
            SecureMessage::MaskedInput(_) => "masked input",
            SecureMessage::Signature(_) => "survivor signature",
            SecureMessage::Reveal { .. } => "reveal",
        }
    }
}

/// A secure-aggregation message to one participant.
#[derive(Debug, Clone, PartialEq)]
pub enum SecureOutbound {
    /// Everyone's advertisements.
    Advertisements(Arc<Vec<Advertisement>>),
    /// Everyone's graph nonces, with the certificates (DER) of the recipient's neighbourhood
    /// (`certified`), the only ones it checks.
    Nonces {
        /// Every advertiser's nonce.
        nonces: Arc<Vec<GraphNonce>>,
        /// Every advertiser's certificate, by index.
        certificates: Arc<BTreeMap<u32, Vec<u8>>>,
        /// Whose certificates go to this recipient.
        certified: BTreeSet<u32>,
    },
    /// The encrypted shares addressed to the recipient.
    Shares(Vec<EncryptedShares>),
    /// The survivor set.
    Survivors(Arc<Vec<u32>>),
    /// The survivors' signatures over it.
    Signatures(Arc<Vec<SurvivorSignature>>),
}

/// What closing a phase led to.
pub(super) enum Step {
    /// The next phase: these messages go out, and their recipients are expected to answer.
    Next(Vec<(ParticipantId, SecureOutbound)>),
    /// The protocol is complete.
    Done {
        /// The survivors' inputs summed, still quantised: [`Securing::updates`] or
        /// [`Securing::evaluations`] decodes it.
        sum: Vec<u32>,
        /// Whose updates are in it, sorted.
        contributors: Vec<ParticipantId>,
    },
}

/// One round's secure aggregation in progress.
#[derive(Debug)]
pub(super) struct Securing {
    pub(super) selected: Vec<ParticipantId>,
    index: BTreeMap<ParticipantId, u32>,
    pub(super) phase: Phase,
    /// Who is expected to answer in this phase.
    pub(super) pending: BTreeSet<ParticipantId>,
    /// Who answered in this phase.
    answered: BTreeSet<ParticipantId>,
    machine: Option<CoordinatorMachine>,
    config: RoundConfig,
    certificates: BTreeMap<u32, Vec<u8>>,
    pub(super) dropouts: Vec<Dropout>,
    encoding: UpdateEncoding,
    /// The noise the inputs carry, when they are a training round's under differential privacy.
    privacy: Option<DistributedDp>,
    /// Masked inputs partly in the machine's sum.
    inflight: InFlight<u32>,
}

impl Securing {
    /// Starts secure aggregation among `selected` (sorted) of vectors of `vector_len` values
    /// (`UpdateEncoding::vector_len` for updates, `EvaluationEncoding::vector_len` for
    /// evaluations), noised by `privacy` when given (a training round of a job that has it).
    pub(super) fn start(
        settings: &SecureSettings,
        round: u64,
        attempt: u32,
        selected: Vec<ParticipantId>,
        vector_len: usize,
        privacy: Option<DistributedDp>,
    ) -> Result<(Securing, SecureSetup), SecureError> {
        let n = selected.len();
        let degree = settings.spec.degree(n);
        let neighbours = neighbourhood_size(n as u32, degree).map_err(SecureError::CannotStart)?;
        let threshold = threshold_for(neighbours, settings.spec.threshold);
        let config = RoundConfig::derive(
            &settings.job,
            round,
            attempt,
            &selected,
            degree,
            threshold,
            vector_len,
        )
        .map_err(SecureError::CannotStart)?;
        let config = match &privacy {
            Some(mechanism) => config.with_privacy(mechanism),
            None => config,
        };
        let setup = SecureSetup {
            attempt,
            roster: selected.clone(),
            degree,
            threshold: threshold as u32,
            // The encoding checked for every listed participant, whoever is selected.
            clip: settings.encoding.clip(),
            levels: settings.encoding.levels(),
            max_weight: settings.encoding.max_weight(),
            privacy,
        };
        let securing = Securing {
            index: selected
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i as u32))
                .collect(),
            pending: selected.iter().cloned().collect(),
            selected,
            phase: Phase::AdvertiseKeys,
            answered: BTreeSet::new(),
            machine: Some(CoordinatorMachine::new(config.clone())),
            config,
            certificates: BTreeMap::new(),
            dropouts: Vec::new(),
            encoding: settings.encoding,
            privacy,
            inflight: InFlight::default(),
        };
        Ok((securing, setup))
    }

    /// Takes `id`'s message for the current phase; `id` is pending. An error means `id` broke
    /// the protocol and leaves the round.
    pub(super) fn on_message(
        &mut self,
        id: &ParticipantId,
        message: SecureMessage,
    ) -> Result<(), SecureError> {
        let from = self.index[id];
        let machine = self.machine.as_mut().ok_or(SecureError::Over)?;
        let result = match (self.phase, message) {
            (Phase::AdvertiseKeys, SecureMessage::Advertisement(ad, certificate)) => {
                // The neighbours check this too, but they cannot tell a bad signature from a
                // coordinator's forgery and would abort the round for everyone: a participant
                // whose own signature fails is dropped here instead.
                let signed = advertisement_message(&self.config, &ad);
                if !cairn_identity::verify_signature(&certificate, &signed, &ad.signature) {
                    return Err(SecureError::BadSignature);
                }
                machine.on_advertisement(from, ad).map(|()| {
                    self.certificates.insert(from, certificate);
                })
            }
            (Phase::DrawGraph, SecureMessage::Nonce(nonce)) => {
                machine.on_nonce(from, GraphNonce { from, nonce })
            }
            (Phase::ShareKeys, SecureMessage::Shares(shares)) => machine.on_shares(from, shares),
            (Phase::CollectMasked, SecureMessage::MaskedInput(piece)) => {
                machine.add_masked(from, piece.offset, &piece.values)?;
                if let Err(error) = self.inflight.keep(id, &piece.values) {
                    machine.subtract_masked(from, piece.offset, &piece.values)?;
                    return Err(SecureError::Spill(error));
                }
                if !piece.last {
                    return Ok(());
                }
                machine
                    .complete_masked(from)
                    .map(|()| self.inflight.complete(id))
            }
            (Phase::ConsistencyCheck, SecureMessage::Signature(signature)) => {
                machine.on_signature(SurvivorSignature { from, signature })
            }
            (
                Phase::Unmask,
                SecureMessage::Reveal {
                    self_mask_shares,
                    mask_key_shares,
                },
            ) => machine.on_reveal(Reveal {
                from,
                self_mask_shares,
                mask_key_shares,
            }),
            (phase, message) => {
                return Err(SecureError::OutOfPhase {
                    message: message.name(),
                    phase: phase.name(),
                    expected: expected_in(phase),
                });
            }
        };
        result?;
        self.pending.remove(id);
        self.answered.insert(id.clone());
        Ok(())
    }

    /// How many answered in this phase.
    pub(super) fn answered(&self) -> usize {
        self.answered.len()
    }

    /// Ends the current phase (everyone answered or the deadline passed) and moves to the next.
    /// `connected` are the participants with a live session. An error fails the round.
    pub(super) fn close(
        &mut self,
        connected: &BTreeSet<ParticipantId>,
    ) -> Result<Step, SecureError> {
        let machine = self.machine.as_mut().ok_or(SecureError::Over)?;
        let id_of = |index: u32| self.selected[index as usize].clone();
        let messages: Vec<(ParticipantId, SecureOutbound)> = match self.phase {
            Phase::AdvertiseKeys => {
                let ads = Arc::new(machine.close_advertisements()?);
                ads.iter()
                    .map(|ad| (id_of(ad.from), SecureOutbound::Advertisements(ads.clone())))
                    .collect()
            }
            Phase::DrawGraph => {
                let nonces = Arc::new(machine.close_nonces()?);
                let graph = machine.graph().ok_or(SecureError::Over)?;
                let certificates = Arc::new(std::mem::take(&mut self.certificates));
                nonces
                    .iter()
                    .map(|nonce| {
                        let i = nonce.from;
                        let mut certified: BTreeSet<u32> =
                            graph.neighbours(i).iter().copied().collect();
                        certified.insert(i);
                        let outbound = SecureOutbound::Nonces {
                            nonces: nonces.clone(),
                            certificates: certificates.clone(),
                            certified,
                        };
                        (id_of(i), outbound)
                    })
                    .collect()
            }
            Phase::ShareKeys => machine
                .close_shares()?
                .into_iter()
                .map(|(i, mail)| (id_of(i), SecureOutbound::Shares(mail)))
                .collect(),
            Phase::CollectMasked => {
                // Dropped mid-input, cut off by the deadline or refused a piece: out of the sum.
                for id in self.inflight.incomplete() {
                    let from = self.index[&id];
                    let mut result = Ok(());
                    self.inflight
                        .take_back(&id, |offset, values| {
                            if result.is_ok() {
                                result = machine.subtract_masked(from, offset, values);
                            }
                        })
                        .map_err(SecureError::Spill)?;
                    result?;
                    machine.abandon_masked(from);
                }
                let survivors = Arc::new(machine.close_masked_inputs()?);
                survivors
                    .iter()
                    .map(|&i| (id_of(i), SecureOutbound::Survivors(survivors.clone())))
                    .collect()
            }
            Phase::ConsistencyCheck => {
                let signatures = Arc::new(machine.close_signatures()?);
                signatures
                    .iter()
                    .map(|s| {
                        (
                            id_of(s.from),
                            SecureOutbound::Signatures(signatures.clone()),
                        )
                    })
                    .collect()
            }
            Phase::Unmask => return self.finish(),
            Phase::Train | Phase::Evaluate => {
                return Err(SecureError::NotSecurePhase {
                    phase: self.phase.name(),
                });
            }
        };
        self.phase = match self.phase {
            Phase::AdvertiseKeys => Phase::DrawGraph,
            Phase::DrawGraph => Phase::ShareKeys,
            Phase::ShareKeys => Phase::CollectMasked,
            Phase::CollectMasked => Phase::ConsistencyCheck,
            _ => Phase::Unmask,
        };
        self.answered.clear();
        self.pending = messages
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| connected.contains(id))
            .collect();
        Ok(Step::Next(messages))
    }

    fn finish(&mut self) -> Result<Step, SecureError> {
        let machine = self.machine.take().ok_or(SecureError::Over)?;
        let Unmasked {
            sum,
            survivors,
            bad_revealers,
        } = machine.finish()?;
        for bad in bad_revealers {
            tracing::warn!(
                participant = %self.selected[bad as usize],
                "{} revealed a share that does not fit its neighbours'; it was set aside and the secret rebuilt without it",
                self.selected[bad as usize]
            );
        }
        let mut contributors: Vec<ParticipantId> = survivors
            .iter()
            .map(|&i| self.selected[i as usize].clone())
            .collect();
        contributors.sort();
        Ok(Step::Done { sum, contributors })
    }

    /// Decodes the unmasked sum of `n` updates into what the strategy needs.
    pub(super) fn updates(&self, sum: &[u32], n: usize) -> Result<UpdateSum, SecureError> {
        let decoded = match &self.privacy {
            Some(mechanism) => mechanism.decode(sum, n as u64),
            None => self.encoding.decode(sum, n as u64),
        }
        .map_err(SecureError::Decode)?;
        UpdateSum::from_totals(
            decoded.weighted_delta,
            decoded.weight,
            decoded.weighted_loss,
            n,
        )
        .map_err(SecureError::UnusableSum)
    }

    /// Decodes the unmasked sum of `n` evaluations of `metrics`, encoded with the job's weight
    /// cap and quantisation levels (which its settings were checked with for any listed count).
    pub(super) fn evaluations(
        &self,
        sum: &[u32],
        n: usize,
        metrics: &[Metric],
    ) -> Result<Totals, SecureError> {
        EvaluationEncoding::new(self.encoding.max_weight(), self.encoding.levels())
            .and_then(|encoding| encoding.decode(sum, n as u64, metrics))
            .map_err(SecureError::DecodeEvaluation)
    }
}

fn expected_in(phase: Phase) -> &'static str {
    match phase {
        Phase::AdvertiseKeys => "an advertisement",
        Phase::DrawGraph => "a graph nonce",
        Phase::ShareKeys => "encrypted shares",
        Phase::CollectMasked => "a masked input",
        Phase::ConsistencyCheck => "a survivor signature",
        Phase::Unmask => "a reveal",
        Phase::Train | Phase::Evaluate => "no secure aggregation message",
    }
}
