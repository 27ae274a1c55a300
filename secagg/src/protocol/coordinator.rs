//! The coordinator's side of the protocol: it routes ciphertext it cannot read, adds masked
//! inputs into one running sum (keeping none of them), and removes the masks with the secrets it
//! reconstructs from what the survivors reveal.

use super::{
    Advertisement, EncryptedShares, MaskedInput, ProtocolError, Reveal, RoundConfig,
    SurvivorSignature,
};
use crate::crypto::agree;
use crate::mask::{SessionId, pairwise_mask_removal, self_mask_removal};
use crate::prg::{PrgKey, Sign, apply_masks_parallel};
use crate::shamir::{self, Share};
use std::collections::{BTreeMap, BTreeSet};
use x25519_dalek::StaticSecret;

/// Where the coordinator is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingAdvertisements,
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
    /// Ciphertexts to route, by receiver.
    mailboxes: BTreeMap<u32, Vec<EncryptedShares>>,
    /// Who sent shares (U2), and to whom.
    shared: BTreeMap<u32, BTreeSet<u32>>,
    sum: Vec<u32>,
    survivors: BTreeSet<u32>,
    signatures: BTreeMap<u32, SurvivorSignature>,
    self_mask_shares: BTreeMap<u32, Vec<Share>>,
    mask_key_shares: BTreeMap<u32, Vec<Share>>,
    revealed: BTreeSet<u32>,
    /// Cores to spread the arithmetic over.
    threads: usize,
}

impl CoordinatorMachine {
    /// A machine for one round.
    pub fn new(config: RoundConfig) -> CoordinatorMachine {
        let sum = vec![0; config.vector_len];
        CoordinatorMachine {
            config,
            phase: Phase::AwaitingAdvertisements,
            advertisements: BTreeMap::new(),
            mailboxes: BTreeMap::new(),
            shared: BTreeMap::new(),
            sum,
            survivors: BTreeSet::new(),
            signatures: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            revealed: BTreeSet::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn expect(&self, phase: Phase, message: &'static str) -> Result<(), ProtocolError> {
        if self.phase != phase {
            return Err(ProtocolError::WrongPhase {
                message,
                state: phase_name(self.phase),
            });
        }
        Ok(())
    }

    fn at_least(&self, what: &'static str, remaining: usize) -> Result<(), ProtocolError> {
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
        self.expect(Phase::AwaitingAdvertisements, "advertisement")?;
        if advertisement.from != from || from >= self.config.n_participants {
            return Err(ProtocolError::NotANeighbour {
                from: advertisement.from,
                to: from,
            });
        }
        if self.advertisements.insert(from, advertisement).is_some() {
            return Err(ProtocolError::Duplicate {
                message: "advertisement",
                from,
            });
        }
        Ok(())
    }

    /// Ends round 0: the advertisements to show every participant.
    pub fn close_advertisements(&mut self) -> Result<Vec<Advertisement>, ProtocolError> {
        self.expect(Phase::AwaitingAdvertisements, "end of advertisements")?;
        self.at_least("advertisements", self.advertisements.len())?;
        self.phase = Phase::AwaitingShares;
        Ok(self.advertisements.values().cloned().collect())
    }

    /// Takes the encrypted shares participant `from` sends its neighbours.
    pub fn on_shares(
        &mut self,
        from: u32,
        shares: Vec<EncryptedShares>,
    ) -> Result<(), ProtocolError> {
        self.expect(Phase::AwaitingShares, "shares")?;
        if !self.advertisements.contains_key(&from) {
            return Err(ProtocolError::NotANeighbour { from, to: from });
        }
        if self.shared.contains_key(&from) {
            return Err(ProtocolError::Duplicate {
                message: "shares",
                from,
            });
        }
        let mut receivers = BTreeSet::new();
        for message in &shares {
            let valid = message.from == from
                && self.advertisements.contains_key(&message.to)
                && self.config.graph.are_neighbours(from, message.to)
                && receivers.insert(message.to);
            if !valid {
                return Err(ProtocolError::NotANeighbour {
                    from: message.from,
                    to: message.to,
                });
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
        self.expect(Phase::AwaitingShares, "end of shares")?;
        self.at_least("participants that shared keys", self.shared.len())?;
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

    /// Adds one masked input to the sum; the vector is dropped.
    pub fn on_masked_input(&mut self, input: MaskedInput) -> Result<(), ProtocolError> {
        self.expect(Phase::AwaitingMaskedInputs, "masked input")?;
        let from = input.from;
        if !self.shared.contains_key(&from) {
            return Err(ProtocolError::NotANeighbour { from, to: from });
        }
        if input.values.len() != self.config.vector_len {
            return Err(ProtocolError::WrongLength {
                from,
                actual: input.values.len(),
                expected: self.config.vector_len,
            });
        }
        if !self.survivors.insert(from) {
            return Err(ProtocolError::Duplicate {
                message: "masked input",
                from,
            });
        }
        add_parallel(&mut self.sum, &input.values, self.threads);
        Ok(())
    }

    /// Ends round 2: the survivor set (U3) to show every survivor.
    pub fn close_masked_inputs(&mut self) -> Result<Vec<u32>, ProtocolError> {
        self.expect(Phase::AwaitingMaskedInputs, "end of masked inputs")?;
        self.at_least("masked inputs", self.survivors.len())?;
        self.phase = Phase::AwaitingSignatures;
        Ok(self.survivors.iter().copied().collect())
    }

    /// Takes a survivor's signature over the survivor set.
    pub fn on_signature(&mut self, signature: SurvivorSignature) -> Result<(), ProtocolError> {
        self.expect(Phase::AwaitingSignatures, "survivor signature")?;
        let from = signature.from;
        if !self.survivors.contains(&from) {
            return Err(ProtocolError::NotANeighbour { from, to: from });
        }
        if self.signatures.insert(from, signature).is_some() {
            return Err(ProtocolError::Duplicate {
                message: "survivor signature",
                from,
            });
        }
        Ok(())
    }

    /// Ends round 3: the signatures to show every signer.
    pub fn close_signatures(&mut self) -> Result<Vec<SurvivorSignature>, ProtocolError> {
        self.expect(Phase::AwaitingSignatures, "end of signatures")?;
        self.at_least("survivor signatures", self.signatures.len())?;
        self.phase = Phase::AwaitingReveals;
        Ok(self.signatures.values().cloned().collect())
    }

    /// Takes a signer's revealed shares.
    pub fn on_reveal(&mut self, reveal: Reveal) -> Result<(), ProtocolError> {
        self.expect(Phase::AwaitingReveals, "revealed shares")?;
        let from = reveal.from;
        if !self.signatures.contains_key(&from) {
            return Err(ProtocolError::NotANeighbour { from, to: from });
        }
        if !self.revealed.insert(from) {
            return Err(ProtocolError::Duplicate {
                message: "revealed shares",
                from,
            });
        }
        for (owner, share) in reveal.self_mask_shares {
            if !self.survivors.contains(&owner) {
                return Err(ProtocolError::BothShares { owner });
            }
            self.self_mask_shares.entry(owner).or_default().push(share);
        }
        for (owner, share) in reveal.mask_key_shares {
            if self.survivors.contains(&owner) || !self.shared.contains_key(&owner) {
                return Err(ProtocolError::BothShares { owner });
            }
            self.mask_key_shares.entry(owner).or_default().push(share);
        }
        Ok(())
    }

    /// Ends round 4: reconstructs the survivors' self-mask seeds and the dropped participants'
    /// mask keys, removes every mask, and returns the sum of the survivors' inputs and who they
    /// are. The work is spread over every core.
    pub fn finish(mut self) -> Result<(Vec<u32>, Vec<u32>), ProtocolError> {
        self.expect(Phase::AwaitingReveals, "end of reveals")?;
        self.phase = Phase::Done;
        let keys: Vec<(u32, [u8; 32], [u8; 32])> = self
            .advertisements
            .values()
            .map(|ad| (ad.from, ad.channel_public, ad.mask_public))
            .collect();
        let session = SessionId::derive(&self.config.job, self.config.round, &keys);
        let threshold = self.config.threshold;
        let reconstruct =
            |owner: u32, shares: Option<&Vec<Share>>| -> Result<[u8; 32], ProtocolError> {
                let shares = shares.map(Vec::as_slice).unwrap_or_default();
                shamir::combine(&shares[..shares.len().min(threshold)], threshold).map_err(|e| {
                    ProtocolError::Reconstruction {
                        owner,
                        reason: e.to_string(),
                    }
                })
            };
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
        let seeds = parallel_map(&survivors, self.threads, |&u| {
            reconstruct(u, self.self_mask_shares.get(&u))
        });
        let mask_keys = parallel_map(&dropped, self.threads, |&v| {
            reconstruct(v, self.mask_key_shares.get(&v)).map(StaticSecret::from)
        });
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
        let pairwise = parallel_map(&pairs, self.threads, |&(i, secret, u)| {
            agree(secret, &self.advertisements[&u].mask_public, u)
                .map(|shared| pairwise_mask_removal(u, dropped[i], &shared, &session))
                .map_err(ProtocolError::from)
        });
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
        // One pass over the sum on every core, each applying all masks to its own columns.
        apply_masks_parallel(&mut sum, &masks, self.threads);
        Ok((sum, survivors))
    }
}

/// Values below which adding a masked input is not worth another thread.
const MIN_VALUES_PER_THREAD: usize = 1 << 16;

/// `sum += values` modulo 2^32, over up to `threads` threads for long vectors.
fn add_parallel(sum: &mut [u32], values: &[u32], threads: usize) {
    let add = |sum: &mut [u32], values: &[u32]| {
        for (sum, value) in sum.iter_mut().zip(values) {
            *sum = sum.wrapping_add(*value);
        }
    };
    let threads = threads.min(sum.len() / MIN_VALUES_PER_THREAD).max(1);
    if threads == 1 {
        add(sum, values);
        return;
    }
    let per_thread = sum.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut ranges = sum.chunks_mut(per_thread).zip(values.chunks(per_thread));
        let first = ranges.next();
        for (sum, values) in ranges {
            scope.spawn(move || add(sum, values));
        }
        if let Some((sum, values)) = first {
            add(sum, values);
        }
    });
}

/// `f` over `items` on up to `threads` threads, the results in the order of `items`.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let per_thread = items.len().div_ceil(threads.max(1)).max(1);
    if per_thread >= items.len() {
        return items.iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::AwaitingAdvertisements => "awaiting advertisements",
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
    fn parallel_addition_equals_sequential_addition() {
        for len in [
            0,
            1,
            MIN_VALUES_PER_THREAD * 2 + 3,
            MIN_VALUES_PER_THREAD * 5,
        ] {
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
                let mut sum = start.clone();
                add_parallel(&mut sum, &values, threads);
                assert_eq!(sum, expected, "len {len}, {threads} threads");
            }
        }
    }

    #[test]
    fn parallel_map_keeps_the_order() {
        for len in [0, 1, 2, 7, 100] {
            let items: Vec<u32> = (0..len).collect();
            for threads in [1, 2, 3, 16] {
                let doubled = parallel_map(&items, threads, |&i| i * 2);
                assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
            }
        }
    }
}
