//! The participant's side of secure aggregation on the wire: it drives `cairn_secagg`'s
//! [`ParticipantMachine`] with the coordinator's messages and answers with its own. Its update,
//! and its evaluation of a new global model, leave only as masked vectors. Anything the coordinator sends that the protocol does not
//! allow (a substituted key or certificate, shares that do not decrypt, inconsistent survivor
//! sets, a threshold below a strict majority) aborts this participant's part of the round, and
//! nothing more is revealed.

use super::identity::FederationVerifier;
use super::{Kit, Trained};
use crate::policy::Policy;
use cairn_proto::metrics::{EvaluationEncoding, Totals};
use cairn_proto::secagg::WireError;
use cairn_proto::v1::coordinator_message::Body as Inbound;
use cairn_proto::v1::participant_message::Body as Outbound;
use cairn_proto::v1::{self, ParticipantMessage};
use cairn_secagg::privacy::DistributedDp;
use cairn_secagg::protocol::{ParticipantMachine, ProtocolError, RoundConfig};
use cairn_secagg::quantize::UpdateEncoding;

/// Why this participant stops taking part in a round's secure aggregation.
#[derive(Debug, thiserror::Error)]
pub(super) enum Abort {
    /// The round's participant list does not name this participant.
    #[error("{id:?} is not in the round's participant list")]
    NotListed {
        /// This participant's id.
        id: String,
    },
    /// The coordinator's setup (encoding, graph, threshold) is not one the protocol allows.
    #[error("setup refused: {0}")]
    Setup(#[source] cairn_secagg::Error),
    /// A certificate names an index outside the roster.
    #[error("certificate for unknown participant {index}, the roster has {roster}")]
    UnknownParticipant {
        /// The index it names.
        index: u32,
        /// Participants in the roster.
        roster: usize,
    },
    /// A message is malformed on the wire.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A neighbour's certificate is not the federation's for it.
    #[error(transparent)]
    Identity(#[from] crate::Error),
    /// The protocol machine refused a message (substituted keys, shares that do not decrypt,
    /// survivor sets not signed by enough neighbours...).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A message arrived at a point of the protocol this participant is past or not yet at.
    #[error("{0}")]
    OutOfOrder(&'static str),
    /// A neighbour broke this site's policy (a certificate other than the one pinned).
    #[error("refused by this site's policy: {0}")]
    Policy(#[from] crate::policy::Refusal),
    /// The message is not one of secure aggregation.
    #[error("not a secure aggregation message")]
    NotSecure,
}

/// What a site puts into a round's secure sum.
pub(super) enum Contribution<'a> {
    /// Its update, to quantise with the round's encoding.
    Update(Trained<'a>),
    /// Its update, already clipped and noised by the round's differential privacy
    /// ([`DistributedDp::encode`]).
    Noised(DistributedDp, Vec<u32>),
}

impl Contribution<'_> {
    /// The differential privacy the contribution carries, if any.
    pub(super) fn privacy(&self) -> Option<DistributedDp> {
        match self {
            Contribution::Update(_) => None,
            Contribution::Noised(mechanism, _) => Some(*mechanism),
        }
    }
}

/// Who runs a secure aggregation, and for which round.
pub(super) struct Site<'a> {
    /// This participant's kit (its signing key and certificate).
    pub(super) kit: &'a Kit,
    /// This site's policy.
    pub(super) policy: &'a Policy,
    /// The job's name.
    pub(super) job: &'a str,
    /// This participant's id.
    pub(super) me: &'a str,
    /// The round.
    pub(super) round: u64,
}

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
    policy: Policy,
}

fn message(body: Outbound) -> ParticipantMessage {
    ParticipantMessage { body: Some(body) }
}

/// What answering one coordinator message gives: messages to send, and whether this
/// participant's part of the round is over.
type Answer = (Vec<ParticipantMessage>, bool);

impl SecureRound {
    /// Starts after training: checks the coordinator's setup, encodes the update (`delta` is
    /// `local - global`) and returns the signed advertisement to send.
    pub(super) fn for_update(
        site: Site<'_>,
        setup: &v1::SecureAggregation,
        contribution: Contribution<'_>,
    ) -> Result<(SecureRound, ParticipantMessage), Abort> {
        match contribution {
            Contribution::Update(Trained {
                delta,
                weight,
                mean_loss,
            }) => {
                let encoding =
                    UpdateEncoding::new(setup.clip, setup.quantization_levels, setup.max_weight)
                        .map_err(Abort::Setup)?;
                let input = encoding.encode(delta, weight, mean_loss);
                SecureRound::start(site, setup, None, input)
            }
            Contribution::Noised(mechanism, input) => {
                SecureRound::start(site, setup, Some(&mechanism), input)
            }
        }
    }

    /// Starts after evaluating a new global model: encodes the evaluation's sums and returns
    /// the signed advertisement to send.
    pub(super) fn for_evaluation(
        site: Site<'_>,
        setup: &v1::SecureAggregation,
        totals: &Totals,
    ) -> Result<(SecureRound, ParticipantMessage), Abort> {
        let encoding = EvaluationEncoding::new(setup.max_weight, setup.quantization_levels)
            .map_err(|e| Abort::Setup(cairn_secagg::Error::Quantization(e.to_string())))?;
        SecureRound::start(site, setup, None, encoding.encode(totals))
    }

    /// Checks the coordinator's setup for `input` and returns the signed advertisement to send.
    /// `privacy` is bound into the round's setup, and a survivor set smaller than it counts on
    /// is refused.
    fn start(
        site: Site<'_>,
        setup: &v1::SecureAggregation,
        privacy: Option<&DistributedDp>,
        input: Vec<u32>,
    ) -> Result<(SecureRound, ParticipantMessage), Abort> {
        let Site {
            kit,
            policy,
            job,
            me,
            round,
        } = site;
        let index = setup
            .participants
            .iter()
            .position(|id| id == me)
            .ok_or_else(|| Abort::NotListed { id: me.into() })?;
        let config = RoundConfig::derive(
            job,
            round,
            setup.attempt,
            &setup.participants,
            setup.degree,
            setup.threshold as usize,
            input.len(),
        )
        .map_err(Abort::Setup)?;
        let config = match privacy {
            Some(mechanism) => config.with_privacy(mechanism),
            None => config,
        };
        let (machine, ad) = ParticipantMachine::new(config, index as u32, kit.signer.as_ref());
        let advertisement =
            v1::Advertisement::new(round, setup.attempt, &ad, kit.certificate_der.clone());
        let secure = SecureRound {
            round,
            attempt: setup.attempt,
            roster: setup.participants.clone(),
            machine,
            input: Some(input),
            verifier: None,
            kit: kit.clone(),
            policy: policy.clone(),
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
    pub(super) fn on_message(&mut self, body: Inbound) -> Result<Answer, Abort> {
        match body {
            Inbound::Advertisements(list) => self.on_advertisements(list),
            Inbound::GraphNonces(list) => self.on_nonces(list),
            Inbound::Shares(list) => self.on_shares(list),
            Inbound::Survivors(list) => self.on_survivors(list),
            Inbound::SurvivorSignatures(list) => self.on_signatures(list),
            _ => Err(Abort::NotSecure),
        }
    }

    /// AdvertiseKeys -> DrawGraph: finds its own advertisement unchanged among everyone's and
    /// answers with its graph nonce.
    fn on_advertisements(&mut self, list: v1::Advertisements) -> Result<Answer, Abort> {
        let ads = list
            .advertisements
            .into_iter()
            .map(|ad| ad.into_parts().map(|(ad, _certificate)| ad))
            .collect::<Result<Vec<_>, _>>()?;
        let nonce = self.machine.on_advertisements(ads)?;
        let nonce = v1::GraphNonce::new(self.round, self.attempt, &nonce);
        Ok((vec![message(Outbound::GraphNonce(nonce))], false))
    }

    /// DrawGraph -> ShareKeys: verifies every certificate sent (the coordinator sends the
    /// neighbourhood's, the only ones the machine checks signatures with, see
    /// `ParticipantMachine::neighbourhood`), draws the graph from the nonces and answers with a
    /// share pair for each neighbour.
    fn on_nonces(&mut self, list: v1::GraphNonces) -> Result<Answer, Abort> {
        let (nonces, certificates) = list.into_parts()?;
        let mut peers = Vec::with_capacity(certificates.len());
        for (index, certificate) in certificates {
            let id = self
                .roster
                .get(index as usize)
                .ok_or(Abort::UnknownParticipant {
                    index,
                    roster: self.roster.len(),
                })?;
            self.policy.check_certificate(id, &certificate)?;
            peers.push((index, id.clone(), certificate));
        }
        let verifier = FederationVerifier::new(&self.kit.ca_pem, peers)?;
        let shares = self.machine.on_nonces(nonces, &verifier)?;
        self.verifier = Some(verifier);
        let shares = v1::EncryptedShares::new(self.round, self.attempt, &shares);
        Ok((vec![message(Outbound::Shares(shares))], false))
    }

    /// ShareKeys -> CollectMasked: masks the input with the shares received and answers with it.
    fn on_shares(&mut self, list: v1::EncryptedShares) -> Result<Answer, Abort> {
        let shares = list.into_shares()?;
        let input = self.input.take().ok_or(Abort::OutOfOrder(
            "shares arrived twice; the input is already masked",
        ))?;
        let masked = self.machine.on_shares(shares, &input)?;
        let (header, chunks) =
            v1::MaskedInputHeader::split(self.round, self.attempt, &masked.values);
        let mut out = vec![message(Outbound::MaskedInput(header))];
        out.extend(chunks.into_iter().map(|c| message(Outbound::Chunk(c))));
        Ok((out, false))
    }

    /// CollectMasked -> ConsistencyCheck: signs the survivor set.
    fn on_survivors(&mut self, list: v1::Survivors) -> Result<Answer, Abort> {
        let signature = self
            .machine
            .on_survivors(list.survivors, self.kit.signer.as_ref())?;
        let signature = v1::SurvivorSignature::new(self.round, self.attempt, &signature);
        Ok((vec![message(Outbound::SurvivorSignature(signature))], false))
    }

    /// ConsistencyCheck -> Unmask: checks the neighbourhood's signatures and reveals one share
    /// per neighbour; this participant's part is then over.
    fn on_signatures(&mut self, list: v1::SurvivorSignatures) -> Result<Answer, Abort> {
        let verifier = self.verifier.as_ref().ok_or(Abort::OutOfOrder(
            "survivor signatures arrived before the graph nonces",
        ))?;
        let reveal = self
            .machine
            .on_signatures(list.into_signatures()?, verifier)?;
        let reveal = v1::Reveal::new(self.round, self.attempt, &reveal);
        Ok((vec![message(Outbound::Reveal(reveal))], true))
    }
}
