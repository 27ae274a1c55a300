//! The coordinator's side of the protocol: it routes ciphertext it cannot read, adds masked
//! inputs into one running sum (keeping none of them), and removes the masks with the secrets it
//! reconstructs from what the survivors reveal.

use super::{
    Advertisement, EncryptedShares, GraphNonce, MaskedInput, ProtocolError, Reveal, RoundConfig,
    SurvivorSignature, Unmasked, check_nonce, require_every_nonce,
};
use crate::crypto::agree;
use crate::graph::Graph;
use crate::mask::{SessionId, pairwise_mask_removal, self_mask_removal};
use crate::prg::{PrgKey, Sign, apply_masks_parallel};
use crate::shamir::{self, Share};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use x25519_dalek::StaticSecret;

/// Where the coordinator is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingAdvertisements,
    AwaitingNonces,
    AwaitingShares,
    AwaitingMaskedInputs,
    AwaitingSignatures,
    AwaitingReveals,
    Done,
}

/// The coordinator's protocol state for one round.
#[derive(Debug)]
pub struct CoordinatorMachine {
    config: RoundConfig,
    phase: Phase,
    advertisements: BTreeMap<u32, Advertisement>,
    nonces: BTreeMap<u32, [u8; 32]>,
    /// The neighbourhood graph, once the nonces have drawn it.
    graph: Option<Graph>,
    /// Ciphertexts to route, by receiver.
    mailboxes: BTreeMap<u32, Vec<EncryptedShares>>,
    /// Who sent shares (U2), and to whom.
    shared: BTreeMap<u32, BTreeSet<u32>>,
    sum: Vec<u32>,
    /// Masked inputs partly added into `sum`, by sender: how many values are in.
    arriving: BTreeMap<u32, usize>,
    survivors: BTreeSet<u32>,
    signatures: BTreeMap<u32, SurvivorSignature>,
    /// Revealed shares by owner, each with its revealer.
    self_mask_shares: BTreeMap<u32, Vec<(u32, Share)>>,
    mask_key_shares: BTreeMap<u32, Vec<(u32, Share)>>,
    revealed: BTreeSet<u32>,
}

impl CoordinatorMachine {
    /// A machine for one round.
    pub fn new(config: RoundConfig) -> CoordinatorMachine {
        let sum = vec![0; config.vector_len];
        CoordinatorMachine {
            config,
            phase: Phase::AwaitingAdvertisements,
            advertisements: BTreeMap::new(),
            nonces: BTreeMap::new(),
            graph: None,
            mailboxes: BTreeMap::new(),
            shared: BTreeMap::new(),
            sum,
            arriving: BTreeMap::new(),
            survivors: BTreeSet::new(),
            signatures: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            revealed: BTreeSet::new(),
        }
    }

    /// Refuses `message` unless the machine is in `phase`, the one that takes it.
    fn require_phase(&self, phase: Phase, message: &'static str) -> Result<(), ProtocolError> {
        if self.phase != phase {
            return Err(ProtocolError::WrongPhase {
                message,
                state: phase_name(self.phase),
            });
        }
        Ok(())
    }

    /// Refuses to go on with fewer than the threshold of `what`.
    fn require_threshold(&self, what: &'static str, remaining: usize) -> Result<(), ProtocolError> {
        if remaining < self.config.threshold {
            return Err(ProtocolError::BelowThreshold {
                what,
                remaining,
                threshold: self.config.threshold,
            });
        }
        Ok(())
    }

    /// Takes one participant's advertisement (its signature is checked by the participants, who
    /// hold the federation CA; the coordinator is not trusted to).
    pub fn on_advertisement(
        &mut self,
        from: u32,
        advertisement: Advertisement,
    ) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingAdvertisements, "advertisement")?;
        if from >= self.config.n_participants {
            return Err(ProtocolError::UnknownParticipant {
                message: "advertisement",
                participant: from,
                n_participants: self.config.n_participants,
            });
        }
        if advertisement.from != from {
            return Err(ProtocolError::AdvertisementSenderMismatch {
                received_from: from,
                claimed: advertisement.from,
            });
        }
        if self.advertisements.insert(from, advertisement).is_some() {
            return Err(ProtocolError::DuplicateAdvertisement { from });
        }
        Ok(())
    }

    /// Ends round 0: the advertisements to show every participant.
    pub fn close_advertisements(&mut self) -> Result<Vec<Advertisement>, ProtocolError> {
        self.require_phase(Phase::AwaitingAdvertisements, "end of advertisements")?;
        self.require_threshold("advertisements", self.advertisements.len())?;
        self.phase = Phase::AwaitingNonces;
        Ok(self.advertisements.values().cloned().collect())
    }

    /// Takes participant `from`'s revealed graph nonce, checked against the commitment it
    /// advertised, so that a participant that reveals another is named.
    pub fn on_nonce(&mut self, from: u32, nonce: GraphNonce) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingNonces, "graph nonce")?;
        if nonce.from != from {
            return Err(ProtocolError::NonceSenderMismatch {
                received_from: from,
                claimed: nonce.from,
            });
        }
        check_nonce(&self.config, &self.advertisements, &nonce)?;
        if self.nonces.insert(from, nonce.nonce).is_some() {
            return Err(ProtocolError::DuplicateNonce { from });
        }
        Ok(())
    }

    /// Ends round 1: draws the graph from every advertiser's nonce and returns the nonces to
    /// show every participant. Without every advertiser's nonce there is no graph: an advertiser
    /// that withholds its nonce fails the attempt, and the next draws again with fresh keys.
    pub fn close_nonces(&mut self) -> Result<Vec<GraphNonce>, ProtocolError> {
        self.require_phase(Phase::AwaitingNonces, "end of graph nonces")?;
        require_every_nonce(&self.advertisements, &self.nonces)?;
        self.graph = Some(self.config.graph(self.config.graph_seed(&self.nonces))?);
        self.phase = Phase::AwaitingShares;
        Ok(self
            .nonces
            .iter()
            .map(|(&from, &nonce)| GraphNonce { from, nonce })
            .collect())
    }

    /// The neighbourhood graph, once the nonces have drawn it.
    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// Whether `a` and `b` neighbour each other in the drawn graph (never before it is drawn).
    fn are_neighbours(&self, a: u32, b: u32) -> bool {
        self.graph
            .as_ref()
            .is_some_and(|graph| graph.are_neighbours(a, b))
    }

    /// Takes the encrypted shares participant `from` sends its neighbours.
    pub fn on_shares(
        &mut self,
        from: u32,
        shares: Vec<EncryptedShares>,
    ) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingShares, "shares")?;
        if !self.advertisements.contains_key(&from) {
            return Err(ProtocolError::SharesFromUnadvertised { from });
        }
        if self.shared.contains_key(&from) {
            return Err(ProtocolError::SharesSentTwice { from });
        }
        let mut receivers = BTreeSet::new();
        for message in &shares {
            let to = message.to;
            if message.from != from {
                return Err(ProtocolError::SharesSenderMismatch {
                    received_from: from,
                    claimed: message.from,
                });
            }
            if !self.advertisements.contains_key(&to) {
                return Err(ProtocolError::SharesToUnadvertised { from, to });
            }
            if !self.are_neighbours(from, to) {
                return Err(ProtocolError::ShareToNonNeighbour { from, to });
            }
            if !receivers.insert(to) {
                return Err(ProtocolError::DuplicateShares { from, to });
            }
        }
        for message in shares {
            self.mailboxes.entry(message.to).or_default().push(message);
        }
        self.shared.insert(from, receivers);
        Ok(())
    }

    /// Ends round 1: for each participant that shared (U2), the ciphertexts addressed to it from
    /// other members of U2.
    pub fn close_shares(&mut self) -> Result<BTreeMap<u32, Vec<EncryptedShares>>, ProtocolError> {
        self.require_phase(Phase::AwaitingShares, "end of shares")?;
        self.require_threshold("participants that shared keys", self.shared.len())?;
        self.phase = Phase::AwaitingMaskedInputs;
        let mut routed = BTreeMap::new();
        for &receiver in self.shared.keys() {
            let mail = self.mailboxes.remove(&receiver).unwrap_or_default();
            routed.insert(
                receiver,
                mail.into_iter()
                    .filter(|m| self.shared.contains_key(&m.from))
                    .collect(),
            );
        }
        self.mailboxes.clear();
        Ok(routed)
    }

    /// Adds one whole masked input to the sum; the vector is dropped.
    pub fn on_masked_input(&mut self, input: MaskedInput) -> Result<(), ProtocolError> {
        self.add_masked(input.from, 0, &input.values)?;
        self.complete_masked(input.from)
    }

    /// Adds the next piece of `from`'s masked input, starting at value `offset`, into the sum
    /// as it arrives. Whoever feeds pieces keeps them until [`CoordinatorMachine::complete_masked`]
    /// (a file will do), so that an input that breaks off can be taken back out with
    /// [`CoordinatorMachine::subtract_masked`]: the survivors' sum must not hold part of a
    /// dropped participant's input, whose masks would then never cancel.
    pub fn add_masked(
        &mut self,
        from: u32,
        offset: usize,
        values: &[u32],
    ) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingMaskedInputs, "masked input")?;
        if !self.shared.contains_key(&from) {
            return Err(ProtocolError::MaskedInputWithoutShares { from });
        }
        if self.survivors.contains(&from) {
            return Err(ProtocolError::DuplicateMaskedInput { from });
        }
        let expected = self.arriving.get(&from).copied().unwrap_or(0);
        if offset != expected {
            return Err(ProtocolError::MaskedPieceOutOfOrder {
                from,
                offset,
                expected,
            });
        }
        let end = offset + values.len();
        if end > self.config.vector_len {
            return Err(ProtocolError::WrongLength {
                from,
                actual: end,
                expected: self.config.vector_len,
            });
        }
        add_parallel(&mut self.sum[offset..end], values);
        self.arriving.insert(from, end);
        Ok(())
    }

    /// Ends `from`'s masked input: all of it is in the sum, and it is a survivor.
    pub fn complete_masked(&mut self, from: u32) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingMaskedInputs, "masked input")?;
        let added = self.arriving.get(&from).copied().unwrap_or(0);
        if added != self.config.vector_len {
            return Err(ProtocolError::WrongLength {
                from,
                actual: added,
                expected: self.config.vector_len,
            });
        }
        self.arriving.remove(&from);
        self.survivors.insert(from);
        Ok(())
    }

    /// Subtracts a piece that [`CoordinatorMachine::add_masked`] added for `from`, whose input
    /// broke off; once every piece is out, [`CoordinatorMachine::abandon_masked`] forgets it.
    pub fn subtract_masked(
        &mut self,
        from: u32,
        offset: usize,
        values: &[u32],
    ) -> Result<(), ProtocolError> {
        let added = self.arriving.get(&from).copied().unwrap_or(0);
        let end = offset + values.len();
        if end > added {
            return Err(ProtocolError::WrongLength {
                from,
                actual: end,
                expected: added,
            });
        }
        sub_parallel(&mut self.sum[offset..end], values);
        Ok(())
    }

    /// Forgets the broken-off input of `from`, whose pieces were all subtracted.
    pub fn abandon_masked(&mut self, from: u32) {
        self.arriving.remove(&from);
    }

    /// Ends round 2: the survivor set (U3) to show every survivor.
    pub fn close_masked_inputs(&mut self) -> Result<Vec<u32>, ProtocolError> {
        self.require_phase(Phase::AwaitingMaskedInputs, "end of masked inputs")?;
        if let Some(&from) = self.arriving.keys().next() {
            return Err(ProtocolError::PartialMaskedInput { from });
        }
        self.require_threshold("masked inputs", self.survivors.len())?;
        if self.survivors.len() < self.config.min_survivors {
            return Err(ProtocolError::BelowThreshold {
                what: "masked inputs (differential privacy's min_contributors)",
                remaining: self.survivors.len(),
                threshold: self.config.min_survivors,
            });
        }
        self.phase = Phase::AwaitingSignatures;
        Ok(self.survivors.iter().copied().collect())
    }

    /// Takes a survivor's signature over the survivor set.
    pub fn on_signature(&mut self, signature: SurvivorSignature) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingSignatures, "survivor signature")?;
        let from = signature.from;
        if !self.survivors.contains(&from) {
            return Err(ProtocolError::SignatureFromNonSurvivor { from });
        }
        if self.signatures.insert(from, signature).is_some() {
            return Err(ProtocolError::DuplicateSignature { from });
        }
        Ok(())
    }

    /// Ends round 3: the signatures to show every signer.
    pub fn close_signatures(&mut self) -> Result<Vec<SurvivorSignature>, ProtocolError> {
        self.require_phase(Phase::AwaitingSignatures, "end of signatures")?;
        self.require_threshold("survivor signatures", self.signatures.len())?;
        self.phase = Phase::AwaitingReveals;
        Ok(self.signatures.values().cloned().collect())
    }

    /// Takes a signer's revealed shares.
    pub fn on_reveal(&mut self, reveal: Reveal) -> Result<(), ProtocolError> {
        self.require_phase(Phase::AwaitingReveals, "revealed shares")?;
        let from = reveal.from;
        if !self.signatures.contains_key(&from) {
            return Err(ProtocolError::RevealFromNonSigner { from });
        }
        if self.revealed.contains(&from) {
            return Err(ProtocolError::DuplicateReveal { from });
        }
        // Everything is checked before anything is kept, so that a reveal refused halfway
        // leaves no share behind.
        let mut owners = BTreeSet::new();
        for (owner, share) in &reveal.self_mask_shares {
            if !self.survivors.contains(owner) {
                return Err(ProtocolError::SelfMaskShareOfNonSurvivor {
                    from,
                    owner: *owner,
                });
            }
            self.check_share(from, *owner, share, &mut owners)?;
        }
        for (owner, share) in &reveal.mask_key_shares {
            if self.survivors.contains(owner) {
                return Err(ProtocolError::MaskKeyShareOfSurvivor {
                    from,
                    owner: *owner,
                });
            }
            if !self.shared.contains_key(owner) {
                return Err(ProtocolError::MaskKeyShareOfNonSharer {
                    from,
                    owner: *owner,
                });
            }
            self.check_share(from, *owner, share, &mut owners)?;
        }
        self.revealed.insert(from);
        for (owner, share) in reveal.self_mask_shares {
            self.self_mask_shares
                .entry(owner)
                .or_default()
                .push((from, share));
        }
        for (owner, share) in reveal.mask_key_shares {
            self.mask_key_shares
                .entry(owner)
                .or_default()
                .push((from, share));
        }
        Ok(())
    }

    /// Checks that `from` holds a share of `owner`'s secrets and that `share` carries the
    /// identifier `owner` gave it (its 1-based place among the neighbours `owner` shared with),
    /// once per owner.
    fn check_share(
        &self,
        from: u32,
        owner: u32,
        share: &Share,
        owners: &mut BTreeSet<u32>,
    ) -> Result<(), ProtocolError> {
        if !owners.insert(owner) {
            return Err(ProtocolError::DuplicateShare { from, owner });
        }
        let holders = self.shared.get(&owner);
        if !holders.is_some_and(|to| to.contains(&from)) {
            return Err(ProtocolError::ShareNotHeld { from, owner });
        }
        // `owner` numbered its shares in the order of its graph neighbours that advertised keys.
        let expected = self
            .graph
            .iter()
            .flat_map(|graph| graph.neighbours(owner))
            .filter(|v| self.advertisements.contains_key(v))
            .position(|&v| v == from)
            .and_then(|p| u8::try_from(p + 1).ok())
            .ok_or(ProtocolError::ShareNotHeld { from, owner })?;
        if share.id() != expected {
            return Err(ProtocolError::ShareIndex {
                from,
                owner,
                found: share.id(),
                expected,
            });
        }
        Ok(())
    }

    /// Ends round 4: reconstructs the survivors' self-mask seeds and the dropped participants'
    /// mask keys, removes every mask, and returns the sum of the survivors' inputs and who they
    /// are. Each secret is checked before it is used: a mask key against the public key its
    /// owner advertised, a self-mask seed by the shares beyond the threshold agreeing with the
    /// first `t`; a share that does not fit is set aside when the others rebuild a checked
    /// secret without it, and its revealer is named in the result. The work is spread over
    /// rayon's thread pool (every core by default).
    pub fn finish(mut self) -> Result<Unmasked, ProtocolError> {
        self.require_phase(Phase::AwaitingReveals, "end of reveals")?;
        self.phase = Phase::Done;
        let keys: Vec<(u32, [u8; 32], [u8; 32])> = self
            .advertisements
            .values()
            .map(|ad| (ad.from, ad.channel_public, ad.mask_public))
            .collect();
        let session = SessionId::derive(&self.config.job, self.config.round, &keys);
        let threshold = self.config.threshold;
        let advertisements = &self.advertisements;
        let survivors: Vec<u32> = self.survivors.iter().copied().collect();
        let dropped: Vec<u32> = self
            .shared
            .keys()
            .copied()
            .filter(|v| !self.survivors.contains(v))
            .collect();
        // Reconstructions and key agreements are independent of each other, so they run on every
        // core too; errors are still reported in the order of survivors, then dropped
        // participants, so the outcome does not depend on scheduling.
        let shares_of = |shares: &BTreeMap<u32, Vec<(u32, Share)>>, owner: u32| {
            shares.get(&owner).cloned().unwrap_or_default()
        };
        let seeds: Vec<_> = survivors
            .par_iter()
            .map(|&u| {
                reconstruct_checked(u, &shares_of(&self.self_mask_shares, u), threshold, None)
            })
            .collect();
        let mask_keys: Vec<_> = dropped
            .par_iter()
            .map(|&v| {
                let advertised = advertisements[&v].mask_public;
                let matches = move |secret: &[u8; 32]| {
                    x25519_dalek::PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
                        == advertised
                };
                reconstruct_checked(
                    v,
                    &shares_of(&self.mask_key_shares, v),
                    threshold,
                    Some(&matches),
                )
            })
            .collect();
        let mut bad_revealers = BTreeSet::new();
        let seeds: Vec<Result<[u8; 32], ProtocolError>> = seeds
            .into_iter()
            .map(|r| {
                r.map(|(secret, bad)| {
                    bad_revealers.extend(bad);
                    secret
                })
            })
            .collect();
        let mask_keys: Vec<Result<StaticSecret, ProtocolError>> = mask_keys
            .into_iter()
            .map(|r| {
                r.map(|(secret, bad)| {
                    bad_revealers.extend(bad);
                    StaticSecret::from(secret)
                })
            })
            .collect();
        // Survivors masked with v exactly when v's shares reached them: v shared with them.
        let pairs: Vec<(usize, &StaticSecret, u32)> = dropped
            .iter()
            .zip(&mask_keys)
            .enumerate()
            .filter_map(|(i, (v, key))| key.as_ref().ok().map(|secret| (i, v, secret)))
            .flat_map(|(i, v, secret)| {
                self.shared[v]
                    .iter()
                    .filter(|u| self.survivors.contains(u))
                    .map(move |&u| (i, secret, u))
            })
            .collect();
        let pairwise: Vec<_> = pairs
            .par_iter()
            .map(|&(i, secret, u)| {
                agree(secret, &self.advertisements[&u].mask_public, u)
                    .map(|shared| pairwise_mask_removal(u, dropped[i], &shared, &session))
                    .map_err(ProtocolError::from)
            })
            .collect();
        let mut masks: Vec<(PrgKey, Sign)> = Vec::with_capacity(seeds.len() + pairwise.len());
        for (&u, seed) in survivors.iter().zip(seeds) {
            masks.push(self_mask_removal(u, &seed?, &session));
        }
        let mut pairwise = pairs.iter().map(|&(i, _, _)| i).zip(pairwise).peekable();
        for (i, key) in mask_keys.iter().enumerate() {
            if let Err(error) = key {
                return Err(error.clone());
            }
            while let Some((_, removal)) = pairwise.next_if(|(owner, _)| *owner == i) {
                masks.push(removal?);
            }
        }
        let mut sum = std::mem::take(&mut self.sum);
        // One pass over the sum, its tiles spread over rayon's pool, each tile taking every mask.
        apply_masks_parallel(&mut sum, &masks);
        Ok(Unmasked {
            sum,
            survivors,
            bad_revealers: bad_revealers.into_iter().collect(),
        })
    }
}

/// Tells whether a reconstructed secret is the right one, where the secret can be checked by
/// itself (a mask key against its advertised public key).
type SecretCheck = dyn Fn(&[u8; 32]) -> bool + Sync;

/// Whether `shares` (at least `threshold`) lie on one polynomial whose secret passes `check`,
/// and that secret. Without a check, only shares beyond the threshold can vouch for it: any `t`
/// points of a polynomial of degree `t - 1` give the same secret, so the first `t - 1` with each
/// further share must give the secret of the first `t`.
fn consistent(shares: &[Share], threshold: usize, check: Option<&SecretCheck>) -> Option<[u8; 32]> {
    let secret = shamir::combine(shares.get(..threshold)?, threshold).ok()?;
    if check.is_some_and(|check| !check(&secret)) {
        return None;
    }
    let base = &shares[..threshold - 1];
    for extra in &shares[threshold..] {
        let mut subset = base.to_vec();
        subset.push(extra.clone());
        if shamir::combine(&subset, threshold).ok()? != secret {
            return None;
        }
    }
    Some(secret)
}

/// Rebuilds `owner`'s secret from its revealed `(revealer, share)` pairs, checked (see
/// [`consistent`]); when they do not agree, the one share whose removal leaves a confirmed
/// secret (by `check`, or by more than `t` agreeing shares) is set aside and its revealer
/// returned. Written here rather than taken from a library: verifiable secret sharing schemes
/// need commitments in the protocol, while this needs only the shares a round already has.
fn reconstruct_checked(
    owner: u32,
    revealed: &[(u32, Share)],
    threshold: usize,
    check: Option<&SecretCheck>,
) -> Result<([u8; 32], Option<u32>), ProtocolError> {
    let failed = |reason: String| ProtocolError::Reconstruction { owner, reason };
    if revealed.len() < threshold {
        return Err(failed(format!(
            "{} shares revealed, the threshold is {threshold}",
            revealed.len()
        )));
    }
    let shares: Vec<Share> = revealed.iter().map(|(_, share)| share.clone()).collect();
    if let Some(secret) = consistent(&shares, threshold, check) {
        return Ok((secret, None));
    }
    for (i, (revealer, _)) in revealed.iter().enumerate() {
        let mut rest = shares.clone();
        rest.remove(i);
        let confirmed = check.is_some() || rest.len() > threshold;
        if confirmed && let Some(secret) = consistent(&rest, threshold, check) {
            return Ok((secret, Some(*revealer)));
        }
    }
    Err(failed(format!(
        "the {} revealed shares do not agree, and no single one explains it",
        revealed.len()
    )))
}

/// Values per piece of work when a masked input is added: below this, handing a piece to
/// another thread costs more than adding it.
const MIN_VALUES_PER_TASK: usize = 1 << 16;

/// `sum += values` modulo 2^32, long vectors in pieces over rayon's thread pool.
fn add_parallel(sum: &mut [u32], values: &[u32]) {
    combine_parallel(sum, values, u32::wrapping_add);
}

/// `sum -= values` modulo 2^32, as [`add_parallel`].
fn sub_parallel(sum: &mut [u32], values: &[u32]) {
    combine_parallel(sum, values, u32::wrapping_sub);
}

fn combine_parallel(sum: &mut [u32], values: &[u32], op: fn(u32, u32) -> u32) {
    sum.par_chunks_mut(MIN_VALUES_PER_TASK)
        .zip(values.par_chunks(MIN_VALUES_PER_TASK))
        .for_each(|(sum, values)| {
            for (sum, value) in sum.iter_mut().zip(values) {
                *sum = op(*sum, *value);
            }
        });
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::AwaitingAdvertisements => "awaiting advertisements",
        Phase::AwaitingNonces => "awaiting graph nonces",
        Phase::AwaitingShares => "awaiting shares",
        Phase::AwaitingMaskedInputs => "awaiting masked inputs",
        Phase::AwaitingSignatures => "awaiting survivor signatures",
        Phase::AwaitingReveals => "awaiting revealed shares",
        Phase::Done => "done",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subtracted_piece_leaves_the_sum_as_it_was() {
        let start: Vec<u32> = (0..1000u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let piece: Vec<u32> = (0..400u32).map(|i| u32::MAX - i * 7).collect();
        let mut sum = start.clone();
        add_parallel(&mut sum[100..500], &piece);
        assert_ne!(sum, start);
        sub_parallel(&mut sum[100..500], &piece);
        assert_eq!(sum, start);
    }

    #[test]
    fn parallel_addition_equals_sequential_addition() {
        for len in [0, 1, MIN_VALUES_PER_TASK * 2 + 3, MIN_VALUES_PER_TASK * 5] {
            let values: Vec<u32> = (0..len as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let start: Vec<u32> = (0..len as u32).map(|i| u32::MAX - i).collect();
            let expected: Vec<u32> = start
                .iter()
                .zip(&values)
                .map(|(a, b)| a.wrapping_add(*b))
                .collect();
            for threads in [1, 2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut sum = start.clone();
                pool.install(|| add_parallel(&mut sum, &values));
                assert_eq!(sum, expected, "len {len}, {threads} threads");
            }
        }
    }
}
