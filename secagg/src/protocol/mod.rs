//! The two role state machines of SecAgg+ (Bonawitz et al. 2017, Fig. 4 and its active-adversary
//! variant; Bell et al. 2020 for the neighbourhoods), sans-I/O: each method takes what the other
//! side sent and returns what to send next, or the reason to abort. A driver moves messages and
//! decides when a phase's deadline has passed; these machines hold no socket and read no clock.
//!
//! Rounds of the protocol:
//! 0. **AdvertiseKeys**: each participant sends two fresh X25519 public keys (channel, mask) and
//!    a commitment to a fresh graph nonce, signed with its identity key over (job, round, index,
//!    keys, commitment).
//! 1. **DrawGraph**: each finds its own advertisement unchanged among everyone's and reveals its
//!    nonce; the neighbourhood graph is drawn from all advertisers' nonces (see [`RoundConfig::graph_seed`]),
//!    so neither the coordinator nor any coalition can choose it (see below).
//! 2. **ShareKeys**: each checks every nonce against its commitment, verifies its neighbours'
//!    advertisements, derives the session id from all of them, and sends each neighbour,
//!    encrypted under their pairwise channel key with (job, round, sender, receiver) as
//!    associated data, a share of its self-mask seed and of its mask key.
//! 3. **CollectMasked**: each masks its quantised input with its self mask and the pairwise masks
//!    of the neighbours whose shares it received; the coordinator adds the masked inputs.
//! 4. **ConsistencyCheck**: each signs the survivor set it is shown.
//! 5. **Unmask**: each verifies that at least `t` of its neighbourhood (itself included) signed
//!    the survivor set it saw, then reveals,
//!    for each neighbour whose shares it holds, the self-mask share if that neighbour survived or
//!    the mask-key share if it dropped out, never both, and only once.
//!
//! Why the graph is drawn this way: a graph derived from the round's public setup alone could be
//! ground by whoever writes the setup (the coordinator tries rosters and attempt numbers until a
//! target's neighbours are its colluders), and one derived from the advertised keys by whoever
//! advertises last. Here every advertiser commits to its nonce before anyone's is revealed, and
//! the seed covers the nonce of every advertiser the coordinator listed, so one honest nonce
//! makes the graph uniformly random. What is left to a cheating party is to abort (withhold a
//! nonce, or fail the attempt) and draw again with fresh keys, which the participant's policy
//! bounds per round: `a` draws make a bad neighbourhood at most `a` times as likely as one.

mod coordinator;
mod participant;

pub use coordinator::CoordinatorMachine;
pub use participant::ParticipantMachine;

use crate::graph::Graph;
use crate::shamir::Share;
use std::collections::BTreeMap;

/// Public parameters of one round, the same for every party.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundConfig {
    /// Job name (bound into every signature, session id and associated data).
    pub job: String,
    /// Round number.
    pub round: u64,
    /// Digest of the rest of the round's public setup (attempt, roster, graph degree, threshold,
    /// vector length), bound into every signature and every share's associated data: a party
    /// shown another setup than its neighbours cannot be made to accept their messages.
    pub context: [u8; 32],
    /// Number of participants selected; they are indexed `0..n_participants`.
    pub n_participants: u32,
    /// Shares needed to reconstruct a secret (Shamir threshold `t`).
    pub threshold: usize,
    /// Degree of the neighbourhood graph, drawn once the nonces are revealed (see
    /// [`RoundConfig::graph`]); the complete graph when it is at least `n - 1`.
    pub degree: u32,
    /// Values per input vector.
    pub vector_len: usize,
    /// Fewest survivors whose inputs a participant lets the coordinator unmask, beyond the
    /// threshold: under differential privacy, the sites whose noise the guarantee counts on
    /// ([`RoundConfig::with_privacy`]); 0 otherwise.
    pub min_survivors: usize,
}

impl RoundConfig {
    /// The configuration every party derives from the round's public setup: `roster` lists the
    /// selected participants' ids (a participant's index is its position), `degree` is the
    /// neighbourhood graph's degree (the complete graph when it is at least `n - 1`) and
    /// `threshold` the shares needed to reconstruct a secret. A threshold that is not a strict majority of the neighbourhood is refused: below it, a
    /// coordinator that shows two survivor sets could collect both shares of one participant.
    pub fn derive(
        job: &str,
        round: u64,
        attempt: u32,
        roster: &[String],
        degree: u32,
        threshold: usize,
        vector_len: usize,
    ) -> Result<RoundConfig, crate::Error> {
        let n = u32::try_from(roster.len()).map_err(|_| {
            crate::Error::Graph(format!("{} participants is too many", roster.len()))
        })?;
        let neighbours = neighbourhood_size(n, degree)?;
        if threshold <= neighbours / 2 || threshold > neighbours || threshold < 2 {
            return Err(crate::Error::Sharing(format!(
                "threshold {threshold} with {neighbours} neighbours; expected a strict majority of the neighbourhood ({}..={neighbours}) and at least 2",
                (neighbours / 2 + 1).max(2)
            )));
        }
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        // Version 3: since then the graph is drawn from the participants' nonces (version 2
        // made the graph's permutation the crate's own, see `graph::permutation`), so a build
        // that still derives another graph fails every signature check of its neighbours at
        // once rather than later and obscurely.
        hash.update(b"cairn secagg round setup v3");
        for part in [job.as_bytes(), &round.to_be_bytes(), &attempt.to_be_bytes()] {
            hash.update(&(part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.update(&(roster.len() as u64).to_be_bytes());
        for id in roster {
            hash.update(&(id.len() as u64).to_be_bytes());
            hash.update(id.as_bytes());
        }
        hash.update(&degree.to_be_bytes());
        hash.update(&(threshold as u64).to_be_bytes());
        hash.update(&(vector_len as u64).to_be_bytes());
        let mut context = [0u8; 32];
        context.copy_from_slice(hash.finish().as_ref());
        Ok(RoundConfig {
            job: job.to_string(),
            round,
            context,
            n_participants: n,
            threshold,
            degree,
            vector_len,
            min_survivors: 0,
        })
    }

    /// The configuration of a round whose inputs carry the noise of `privacy`: its parameters
    /// are bound into the context digest (a party shown other noise settings than its
    /// neighbours fails their signature checks, so no site is made to add less noise than its
    /// neighbours count on) and a survivor set smaller than its `min_contributors` is refused.
    pub fn with_privacy(mut self, privacy: &crate::privacy::DistributedDp) -> RoundConfig {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(b"cairn secagg differential privacy v1");
        hash.update(&self.context);
        hash.update(&privacy.clip_norm().to_bits().to_be_bytes());
        hash.update(&privacy.noise_multiplier().to_bits().to_be_bytes());
        hash.update(&privacy.min_contributors().to_be_bytes());
        self.context.copy_from_slice(hash.finish().as_ref());
        self.min_survivors = privacy.min_contributors() as usize;
        self
    }

    /// Fewest survivors a round can complete with: the threshold, or more under differential
    /// privacy.
    pub fn least_survivors(&self) -> usize {
        self.threshold.max(self.min_survivors)
    }

    /// The seed of the neighbourhood graph's permutation that `nonces` (every advertiser's
    /// revealed nonce, by index) give: SHA-256 of the label `cairn secagg graph seed v1`, the
    /// context digest and, by ascending index, each advertiser's index (4 bytes big-endian) and
    /// nonce. A hash of the whole list rather than, say, an XOR of the nonces: a colluder that
    /// copies an honest commitment cannot cancel that nonce out.
    pub fn graph_seed(&self, nonces: &BTreeMap<u32, [u8; 32]>) -> [u8; 32] {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(b"cairn secagg graph seed v1");
        hash.update(&self.context);
        for (index, nonce) in nonces {
            hash.update(&index.to_be_bytes());
            hash.update(nonce);
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(hash.finish().as_ref());
        seed
    }

    /// The neighbourhood graph that `seed` ([`RoundConfig::graph_seed`]) draws.
    pub fn graph(&self, seed: [u8; 32]) -> Result<Graph, crate::Error> {
        Graph::regular(self.n_participants, self.degree, seed)
    }
}

/// The commitment to participant `from`'s graph nonce that its advertisement carries: SHA-256
/// of the label `cairn secagg graph nonce v1`, the context digest, `from` (4 bytes big-endian)
/// and the nonce.
pub fn nonce_commitment(config: &RoundConfig, from: u32, nonce: &[u8; 32]) -> [u8; 32] {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    hash.update(b"cairn secagg graph nonce v1");
    hash.update(&config.context);
    hash.update(&from.to_be_bytes());
    hash.update(nonce);
    let mut commitment = [0u8; 32];
    commitment.copy_from_slice(hash.finish().as_ref());
    commitment
}

/// How many neighbours each of `n` participants has in a graph of `degree` (see
/// [`Graph::regular`]): `n - 1` for the complete graph, `degree + 1` when both are odd.
pub fn neighbourhood_size(n: u32, degree: u32) -> Result<usize, crate::Error> {
    Ok(Graph::regular(n, degree, [0; 32])?.neighbours(0).len())
}

/// The threshold for `neighbours` neighbours: the smallest count above `fraction` of them
/// (at least 2, at most all of them).
pub fn threshold_for(neighbours: usize, fraction: f64) -> usize {
    ((fraction * neighbours as f64).floor() as usize + 1).clamp(2, neighbours.max(2))
}

/// Checks that `nonce` comes from an advertiser and opens the commitment it advertised.
fn check_nonce(
    config: &RoundConfig,
    advertisements: &BTreeMap<u32, Advertisement>,
    nonce: &GraphNonce,
) -> Result<(), ProtocolError> {
    let from = nonce.from;
    let Some(ad) = advertisements.get(&from) else {
        return Err(ProtocolError::NonceFromUnadvertised { from });
    };
    if nonce_commitment(config, from, &nonce.nonce) != ad.nonce_commitment {
        return Err(ProtocolError::NonceMismatch { from });
    }
    Ok(())
}

/// Checks that every advertiser revealed its nonce: the graph is drawn from all of them or not
/// at all.
fn require_every_nonce(
    advertisements: &BTreeMap<u32, Advertisement>,
    nonces: &BTreeMap<u32, [u8; 32]>,
) -> Result<(), ProtocolError> {
    let missing: Vec<u32> = advertisements
        .keys()
        .copied()
        .filter(|from| !nonces.contains_key(from))
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(ProtocolError::MissingNonces {
            participants: missing,
        }),
    }
}

/// A participant's signed public keys (protocol round 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Sender.
    pub from: u32,
    /// Key for the encrypted channel to neighbours.
    pub channel_public: [u8; 32],
    /// Key for pairwise masks.
    pub mask_public: [u8; 32],
    /// Commitment to the sender's graph nonce ([`nonce_commitment`]).
    pub nonce_commitment: [u8; 32],
    /// Identity-key signature over [`advertisement_message`].
    pub signature: Vec<u8>,
}

/// A participant's revealed graph nonce (protocol round 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNonce {
    /// Sender.
    pub from: u32,
    /// The nonce its advertisement committed to.
    pub nonce: [u8; 32],
}

/// Shares from one participant for one neighbour, encrypted (protocol round 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedShares {
    /// Sender (the owner of the shared secrets).
    pub from: u32,
    /// Receiver (who will hold the shares).
    pub to: u32,
    /// Nonce and ChaCha20-Poly1305 ciphertext of the two shares.
    pub ciphertext: Vec<u8>,
}

/// A masked input (protocol round 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    /// Sender.
    pub from: u32,
    /// Quantised input plus masks, modulo 2^32.
    pub values: Vec<u32>,
}

/// A signature over the survivor set (protocol round 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurvivorSignature {
    /// Signer.
    pub from: u32,
    /// Identity-key signature over [`survivors_message`].
    pub signature: Vec<u8>,
}

/// The shares one participant reveals (protocol round 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reveal {
    /// Sender.
    pub from: u32,
    /// For each surviving neighbour (owner), the sender's share of its self-mask seed.
    pub self_mask_shares: Vec<(u32, Share)>,
    /// For each dropped neighbour (owner), the sender's share of its mask key.
    pub mask_key_shares: Vec<(u32, Share)>,
}

/// What unmasking gives: the sum of the survivors' inputs, who they are, and who revealed a
/// share that did not fit the others' (set aside, and the secret rebuilt without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmasked {
    /// Sum of the survivors' inputs, modulo 2^32.
    pub sum: Vec<u32>,
    /// The survivors, ascending.
    pub survivors: Vec<u32>,
    /// Participants that revealed a bad share, ascending.
    pub bad_revealers: Vec<u32>,
}

/// Signs with the participant's identity key (the key of its mTLS certificate).
pub trait Signer {
    /// A signature over `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// Verifies participants' identity signatures (against certificates checked against the
/// federation CA).
pub trait Verifier {
    /// Whether `signature` is `participant`'s signature over `message`.
    fn verify(&self, participant: u32, message: &[u8], signature: &[u8]) -> bool;
}

/// Why a party aborts the round. A participant that aborts reveals nothing more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message arrived in a phase that does not take it (replayed, or out of order).
    #[error("{message} arrived while {state}")]
    WrongPhase {
        /// What arrived.
        message: &'static str,
        /// What the machine was waiting for.
        state: &'static str,
    },
    /// An advertisement's signature does not verify: its keys were substituted, or it belongs to
    /// another job or round (a replay).
    #[error(
        "advertisement of participant {from} does not carry a valid signature (substituted keys or replayed from another round)"
    )]
    BadAdvertisement {
        /// Claimed sender.
        from: u32,
    },
    /// The coordinator showed this participant keys for itself that it did not advertise.
    #[error(
        "the advertisement shown for participant {participant} carries other keys than the ones it sent"
    )]
    OwnKeysSubstituted {
        /// The participant whose keys were substituted (the one reporting it).
        participant: u32,
    },
    /// The coordinator showed this participant the advertisements without its own.
    #[error("the advertisements shown to participant {participant} do not include its own")]
    OwnAdvertisementMissing {
        /// The participant left out (the one reporting it).
        participant: u32,
    },
    /// A message names a participant index beyond the round's roster.
    #[error(
        "{message} names participant {participant}, but the round has only participants 0..{n_participants}"
    )]
    UnknownParticipant {
        /// What named it.
        message: &'static str,
        /// The index named.
        participant: u32,
        /// Participants in the round.
        n_participants: u32,
    },
    /// An advertisement arrived on one participant's session but names another as its sender.
    #[error(
        "advertisement received from participant {received_from} names participant {claimed} as its sender"
    )]
    AdvertisementSenderMismatch {
        /// The participant whose session it arrived on.
        received_from: u32,
        /// The sender the advertisement names.
        claimed: u32,
    },
    /// A graph nonce arrived on one participant's session but names another as its sender.
    #[error(
        "graph nonce received from participant {received_from} names participant {claimed} as its sender"
    )]
    NonceSenderMismatch {
        /// The participant whose session it arrived on.
        received_from: u32,
        /// The sender the nonce names.
        claimed: u32,
    },
    /// A graph nonce from a participant whose advertisement was not part of the round.
    #[error("graph nonce from participant {from}, which did not advertise keys this round")]
    NonceFromUnadvertised {
        /// Sender.
        from: u32,
    },
    /// A second graph nonce from the same sender.
    #[error("duplicate graph nonce from participant {from}")]
    DuplicateNonce {
        /// Sender.
        from: u32,
    },
    /// A revealed nonce does not open the commitment its sender advertised.
    #[error("the graph nonce of participant {from} does not match the commitment it advertised")]
    NonceMismatch {
        /// Whose nonce.
        from: u32,
    },
    /// Advertisers revealed no nonce: the graph drawn without theirs would be one the others
    /// could choose, so it is not drawn at all.
    #[error(
        "participants {participants:?} advertised keys but revealed no graph nonce; the graph is drawn from every advertiser's nonce"
    )]
    MissingNonces {
        /// The advertisers without a nonce, ascending.
        participants: Vec<u32>,
    },
    /// Encrypted shares sent by one participant name another as their sender.
    #[error(
        "shares sent by participant {received_from} name participant {claimed} as their sender"
    )]
    SharesSenderMismatch {
        /// The participant who sent them.
        received_from: u32,
        /// The sender the shares name.
        claimed: u32,
    },
    /// Shares arrived from a participant whose advertisement was not part of the round.
    #[error("shares from participant {from}, which did not advertise keys this round")]
    SharesFromUnadvertised {
        /// Sender.
        from: u32,
    },
    /// Shares are addressed to a participant whose advertisement was not part of the round.
    #[error(
        "shares from participant {from} to participant {to}, which did not advertise keys this round"
    )]
    SharesToUnadvertised {
        /// Sender.
        from: u32,
        /// Receiver.
        to: u32,
    },
    /// Shares are addressed to a participant that is not the sender's neighbour.
    #[error("shares from participant {from} to participant {to}, which is not its neighbour")]
    ShareToNonNeighbour {
        /// Sender.
        from: u32,
        /// Receiver.
        to: u32,
    },
    /// A participant was handed shares from a participant that is not its neighbour.
    #[error(
        "participant {to} was handed shares from participant {from}, which is not its neighbour"
    )]
    ShareFromNonNeighbour {
        /// Sender.
        from: u32,
        /// Receiver (the one reporting it).
        to: u32,
    },
    /// A participant was handed shares addressed to another participant.
    #[error(
        "participant {receiver} was handed shares from participant {from} addressed to participant {to}"
    )]
    SharesForAnotherReceiver {
        /// Sender.
        from: u32,
        /// The receiver the shares name.
        to: u32,
        /// The participant they were handed to (the one reporting it).
        receiver: u32,
    },
    /// A masked input arrived from a participant that did not share its keys, so its masks
    /// could not be removed.
    #[error("masked input from participant {from}, which did not share its keys this round")]
    MaskedInputWithoutShares {
        /// Sender.
        from: u32,
    },
    /// A survivor-set signature arrived from a participant that is not in the survivor set.
    #[error("survivor set signature from participant {from}, which is not a survivor")]
    SignatureFromNonSurvivor {
        /// Signer.
        from: u32,
    },
    /// Revealed shares arrived from a participant that did not sign the survivor set.
    #[error("revealed shares from participant {from}, which did not sign the survivor set")]
    RevealFromNonSigner {
        /// Sender.
        from: u32,
    },
    /// A second advertisement from the same sender.
    #[error("duplicate advertisement from participant {from}")]
    DuplicateAdvertisement {
        /// Sender.
        from: u32,
    },
    /// Two sets of shares from the same sender for the same receiver.
    #[error("duplicate shares from participant {from} to participant {to}")]
    DuplicateShares {
        /// Sender.
        from: u32,
        /// Receiver.
        to: u32,
    },
    /// A second batch of shares from the same sender.
    #[error("participant {from} sent its shares twice")]
    SharesSentTwice {
        /// Sender.
        from: u32,
    },
    /// A piece of a masked input that does not start where the sender's previous piece ended.
    #[error(
        "piece of participant {from}'s masked input starts at value {offset}, expected {expected}"
    )]
    MaskedPieceOutOfOrder {
        /// Sender.
        from: u32,
        /// Where the piece starts.
        offset: usize,
        /// Where it must start.
        expected: usize,
    },
    /// Masked inputs were closed while part of one is still in the sum: whoever feeds pieces
    /// must take a broken-off input back out first.
    #[error(
        "participant {from}'s masked input is partly in the sum; it must be completed or taken back out before the survivor set is drawn"
    )]
    PartialMaskedInput {
        /// Sender.
        from: u32,
    },
    /// A second masked input from the same sender.
    #[error("duplicate masked input from participant {from}")]
    DuplicateMaskedInput {
        /// Sender.
        from: u32,
    },
    /// A second survivor-set signature from the same signer.
    #[error("duplicate survivor set signature from participant {from}")]
    DuplicateSignature {
        /// Signer.
        from: u32,
    },
    /// A second set of revealed shares from the same sender.
    #[error("duplicate revealed shares from participant {from}")]
    DuplicateReveal {
        /// Sender.
        from: u32,
    },
    /// Too few parties remain for the threshold.
    #[error("only {remaining} {what} remain, the threshold is {threshold}")]
    BelowThreshold {
        /// What was counted.
        what: &'static str,
        /// How many remain.
        remaining: usize,
        /// The threshold.
        threshold: usize,
    },
    /// Encrypted shares did not decrypt for their (job, round, sender, receiver).
    #[error(
        "shares from participant {from} do not decrypt (tampered, or for another round or receiver)"
    )]
    UndecryptableShares {
        /// Sender.
        from: u32,
    },
    /// Shares decrypted but are not two well-formed shares.
    #[error("shares from participant {from} are malformed: {reason}")]
    MalformedShares {
        /// Sender.
        from: u32,
        /// What is wrong with them.
        reason: String,
    },
    /// A survivor-set signature does not verify over the set this participant was shown: the
    /// coordinator showed different sets to different participants.
    #[error(
        "survivor set signature of participant {from} does not match the set shown here (inconsistent survivor sets)"
    )]
    InconsistentSurvivors {
        /// Signer.
        from: u32,
    },
    /// The survivor set lists a participant twice.
    #[error("the survivor set lists participant {participant} more than once")]
    DuplicateSurvivor {
        /// The participant listed twice.
        participant: u32,
    },
    /// The survivor set shown to a participant that sent its masked input leaves it out.
    #[error("the survivor set shown to participant {participant} leaves it out")]
    SurvivorSetWithoutSelf {
        /// The participant left out (the one reporting it).
        participant: u32,
    },
    /// An input or masked vector has the wrong length.
    #[error("vector from participant {from} has {actual} values, expected {expected}")]
    WrongLength {
        /// Sender.
        from: u32,
        /// Values received.
        actual: usize,
        /// Values expected.
        expected: usize,
    },
    /// Revealed shares carry a self-mask share of a participant that is not a survivor: with its
    /// mask-key shares, that would remove both of its masks.
    #[error(
        "participant {from} revealed a self-mask share of participant {owner}, which is not a survivor"
    )]
    SelfMaskShareOfNonSurvivor {
        /// Who revealed it.
        from: u32,
        /// Whose secret it is a share of.
        owner: u32,
    },
    /// Revealed shares carry a mask-key share of a survivor: with its self-mask shares, that
    /// would unmask its input alone.
    #[error("participant {from} revealed a mask-key share of participant {owner}, a survivor")]
    MaskKeyShareOfSurvivor {
        /// Who revealed it.
        from: u32,
        /// Whose secret it is a share of.
        owner: u32,
    },
    /// Revealed shares carry a mask-key share of a participant that never shared its keys.
    #[error(
        "participant {from} revealed a mask-key share of participant {owner}, which did not share its keys this round"
    )]
    MaskKeyShareOfNonSharer {
        /// Who revealed it.
        from: u32,
        /// Whose secret it is a share of.
        owner: u32,
    },
    /// A revealed share of `owner`'s secrets comes from a participant that does not hold one.
    #[error(
        "participant {from} revealed a share of participant {owner}'s secrets, which {owner} did not give it"
    )]
    ShareNotHeld {
        /// Who revealed it.
        from: u32,
        /// Whose secret it claims to be a share of.
        owner: u32,
    },
    /// A revealed share carries another identifier than the one made for its revealer.
    #[error(
        "participant {from} revealed share {found} of participant {owner}'s secrets; the share {owner} made for it is {expected}"
    )]
    ShareIndex {
        /// Who revealed it.
        from: u32,
        /// Whose secret.
        owner: u32,
        /// Identifier found.
        found: u8,
        /// Identifier of the share made for `from`.
        expected: u8,
    },
    /// A reveal carries two shares for one owner.
    #[error("participant {from} revealed two shares of participant {owner}'s secrets")]
    DuplicateShare {
        /// Who revealed them.
        from: u32,
        /// Whose secret.
        owner: u32,
    },
    /// Reconstructing a secret failed.
    #[error("reconstruction of participant {owner}'s secret failed: {reason}")]
    Reconstruction {
        /// Whose secret.
        owner: u32,
        /// Why.
        reason: String,
    },
    /// A cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] crate::Error),
}

fn header(label: &[u8], config: &RoundConfig) -> Vec<u8> {
    let mut message = label.to_vec();
    message.extend_from_slice(&(config.job.len() as u64).to_be_bytes());
    message.extend_from_slice(config.job.as_bytes());
    message.extend_from_slice(&config.round.to_be_bytes());
    message.extend_from_slice(&config.context);
    message
}

/// What an advertisement's signature covers: (job, round, setup, sender, keys, nonce
/// commitment).
pub fn advertisement_message(config: &RoundConfig, advertisement: &Advertisement) -> Vec<u8> {
    let mut message = header(b"cairn secagg advertise v2", config);
    message.extend_from_slice(&advertisement.from.to_be_bytes());
    message.extend_from_slice(&advertisement.channel_public);
    message.extend_from_slice(&advertisement.mask_public);
    message.extend_from_slice(&advertisement.nonce_commitment);
    message
}

/// What a survivor-set signature covers: (job, round, the sorted survivor set).
pub fn survivors_message(config: &RoundConfig, survivors: &[u32]) -> Vec<u8> {
    let mut message = header(b"cairn secagg survivors v1", config);
    let mut sorted = survivors.to_vec();
    sorted.sort_unstable();
    for index in sorted {
        message.extend_from_slice(&index.to_be_bytes());
    }
    message
}

/// Associated data of the shares `from` sends `to`: (job, round, setup, graph seed, sender,
/// receiver). The session id covers every advertiser's keys but not its nonce commitment, and a
/// colluder can sign two advertisements that differ only there; with the graph seed in the
/// associated data, neighbours shown different commitments (so drawing different graphs) cannot
/// open each other's shares, and abort before masking.
fn shares_associated_data(
    config: &RoundConfig,
    graph_seed: &[u8; 32],
    from: u32,
    to: u32,
) -> Vec<u8> {
    let mut data = header(b"cairn secagg shares v2", config);
    data.extend_from_slice(graph_seed);
    data.extend_from_slice(&from.to_be_bytes());
    data.extend_from_slice(&to.to_be_bytes());
    data
}

/// The key of the channel from `from` to `to`, from their agreed channel secret.
fn channel_key(
    secret: &[u8; 32],
    session: &crate::mask::SessionId,
    from: u32,
    to: u32,
) -> [u8; 32] {
    crate::crypto::hkdf(
        secret,
        &session.0,
        &[b"cairn channel", &from.to_be_bytes(), &to.to_be_bytes()],
    )
}

#[cfg(test)]
mod tests;
