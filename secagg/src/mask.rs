//! Masking (Bonawitz et al. 2017, §4; Bell et al. 2020, §3): participant `u` sends
//!
//! `y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u), v > u} PRG(s_uv) − Σ_{v ∈ N(u), v < u} PRG(s_uv)  (mod 2^32)`
//!
//! where `b_u` is its self-mask seed and `s_uv` the secret it agreed with neighbour `v`. Summed
//! over all participants the pairwise masks cancel. When `v` drops out after the keys were
//! shared, the survivors' sum still holds their masks with `v`; the coordinator removes them with
//! `v`'s masking key, reconstructed from shares. The self masks of survivors are removed with
//! their reconstructed seeds. Every PRG key is derived with HKDF from the secret and the
//! session id (a hash of all of the round's public keys), so no mask repeats across rounds.

use crate::crypto::hkdf;
use crate::prg::{PrgKey, Sign, apply_mask, apply_masks};
use ring::digest::{Context, SHA256};

/// Binds every mask of a round to that round's public keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(pub [u8; 32]);

impl SessionId {
    /// SHA-256 over the job, the round and every participant's (index, public keys), each
    /// length-prefixed, in index order: the same on every honest party, and different whenever a
    /// key, the round or the job differs.
    pub fn derive(job: &str, round: u64, public_keys: &[(u32, [u8; 32], [u8; 32])]) -> SessionId {
        let mut hash = Context::new(&SHA256);
        hash.update(b"cairn-secagg session v1");
        hash.update(&(job.len() as u64).to_be_bytes());
        hash.update(job.as_bytes());
        hash.update(&round.to_be_bytes());
        let mut keys = public_keys.to_vec();
        keys.sort_by_key(|k| k.0);
        for (index, channel_key, mask_key) in keys {
            hash.update(&index.to_be_bytes());
            hash.update(&channel_key);
            hash.update(&mask_key);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(hash.finish().as_ref());
        SessionId(id)
    }
}

/// PRG key of `participant`'s self mask.
pub fn self_mask_key(seed: &[u8; 32], session: &SessionId, participant: u32) -> PrgKey {
    hkdf(
        seed,
        &session.0,
        &[b"cairn self mask", &participant.to_be_bytes()],
    )
}

/// PRG key of the pairwise mask between `a` and `b` (the same for both, whatever the order).
pub fn pairwise_mask_key(shared_secret: &[u8; 32], session: &SessionId, a: u32, b: u32) -> PrgKey {
    let (low, high) = (a.min(b), a.max(b));
    hkdf(
        shared_secret,
        &session.0,
        &[
            b"cairn pairwise mask",
            &low.to_be_bytes(),
            &high.to_be_bytes(),
        ],
    )
}

/// The sign with which `me` applies its pairwise mask with `neighbour`.
fn pairwise_sign(me: u32, neighbour: u32) -> Sign {
    if neighbour > me {
        Sign::Add
    } else {
        Sign::Subtract
    }
}

/// Masks `me`'s quantised input in place: adds its self mask and, for each neighbour with the
/// secret agreed with it, the pairwise mask with its sign.
pub fn mask_input(
    input: &mut [u32],
    me: u32,
    self_seed: &[u8; 32],
    neighbour_secrets: &[(u32, [u8; 32])],
    session: &SessionId,
) {
    let mut masks = Vec::with_capacity(1 + neighbour_secrets.len());
    masks.push((self_mask_key(self_seed, session, me), Sign::Add));
    for (neighbour, secret) in neighbour_secrets {
        masks.push((
            pairwise_mask_key(secret, session, me, *neighbour),
            pairwise_sign(me, *neighbour),
        ));
    }
    // On the calling thread, but tile by tile: the input is read and written once, not once per
    // mask.
    apply_masks(input, &masks);
}

/// The PRG key and sign that remove a survivor's self mask from the sum, given its reconstructed
/// seed: for callers that remove many masks in one pass.
pub fn self_mask_removal(survivor: u32, seed: &[u8; 32], session: &SessionId) -> (PrgKey, Sign) {
    (self_mask_key(seed, session, survivor), Sign::Subtract)
}

/// Removes a survivor's self mask from the sum, given its reconstructed seed.
pub fn remove_self_mask(sum: &mut [u32], survivor: u32, seed: &[u8; 32], session: &SessionId) {
    let (key, sign) = self_mask_removal(survivor, seed, session);
    apply_mask(sum, &key, sign);
}

/// The PRG key and sign that remove from the sum the pairwise mask that `survivor` added for its
/// dropped neighbour `dropped`, given their agreed secret (which the coordinator computes from
/// `dropped`'s reconstructed masking key and `survivor`'s public key).
pub fn pairwise_mask_removal(
    survivor: u32,
    dropped: u32,
    secret: &[u8; 32],
    session: &SessionId,
) -> (PrgKey, Sign) {
    let key = pairwise_mask_key(secret, session, survivor, dropped);
    let undo = match pairwise_sign(survivor, dropped) {
        Sign::Add => Sign::Subtract,
        Sign::Subtract => Sign::Add,
    };
    (key, undo)
}

/// Removes from the sum the pairwise mask that `survivor` added for its dropped neighbour
/// `dropped` (see [`pairwise_mask_removal`]).
pub fn remove_pairwise_mask(
    sum: &mut [u32],
    survivor: u32,
    dropped: u32,
    secret: &[u8; 32],
    session: &SessionId,
) {
    let (key, sign) = pairwise_mask_removal(survivor, dropped, secret, session);
    apply_mask(sum, &key, sign);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{agree, generate_key_pair, random_bytes};
    use crate::graph::Graph;
    use proptest::prelude::{prop_assert_eq, proptest};
    use x25519_dalek::StaticSecret;

    struct Party {
        mask_secret: StaticSecret,
        mask_public: [u8; 32],
        self_seed: [u8; 32],
        input: Vec<u32>,
    }

    /// Runs masking and unmasking for `n` parties on `graph`, where `dropped` parties never send
    /// their masked input; returns (unmasked sum, exact sum of the survivors' inputs).
    fn run(n: u32, graph: &Graph, dropped: &[u32], d: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let parties: Vec<Party> = (0..n)
            .map(|i| {
                let (mask_secret, mask_public) = generate_key_pair();
                let input = (0..d)
                    .map(|j| {
                        (seed as u32)
                            .wrapping_mul(31)
                            .wrapping_add(i * 1000 + j as u32)
                    })
                    .collect();
                Party {
                    mask_secret,
                    mask_public,
                    self_seed: random_bytes(),
                    input,
                }
            })
            .collect();
        let keys: Vec<(u32, [u8; 32], [u8; 32])> = parties
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.mask_public, p.mask_public))
            .collect();
        let session = SessionId::derive("job", seed, &keys);
        let survivors: Vec<u32> = (0..n).filter(|i| !dropped.contains(i)).collect();
        let mut sum = vec![0u32; d];
        let mut exact = vec![0u32; d];
        for &u in &survivors {
            let party = &parties[u as usize];
            let secrets: Vec<(u32, [u8; 32])> = graph
                .neighbours(u)
                .iter()
                .map(|&v| {
                    (
                        v,
                        agree(&party.mask_secret, &parties[v as usize].mask_public, v).unwrap(),
                    )
                })
                .collect();
            let mut masked = party.input.clone();
            mask_input(&mut masked, u, &party.self_seed, &secrets, &session);
            for j in 0..d {
                sum[j] = sum[j].wrapping_add(masked[j]);
                exact[j] = exact[j].wrapping_add(party.input[j]);
            }
        }
        // The coordinator's side, with the secrets it would reconstruct from shares.
        for &u in &survivors {
            remove_self_mask(&mut sum, u, &parties[u as usize].self_seed, &session);
        }
        for &v in dropped {
            for &u in graph.neighbours(v).iter().filter(|u| survivors.contains(u)) {
                let secret = agree(
                    &parties[v as usize].mask_secret,
                    &parties[u as usize].mask_public,
                    u,
                )
                .unwrap();
                remove_pairwise_mask(&mut sum, u, v, &secret, &session);
            }
        }
        (sum, exact)
    }

    #[test]
    fn without_dropouts_pairwise_masks_cancel() {
        let (sum, exact) = run(5, &Graph::complete(5), &[], 100, 1);
        assert_eq!(sum, exact);
    }

    #[test]
    fn the_session_id_changes_with_every_public_input() {
        let keys = [(0, [1u8; 32], [2u8; 32]), (1, [3u8; 32], [4u8; 32])];
        let base = SessionId::derive("job", 1, &keys);
        assert_eq!(
            base,
            SessionId::derive("job", 1, &[keys[1], keys[0]]),
            "order of arrival does not matter"
        );
        assert_ne!(base, SessionId::derive("job", 2, &keys));
        assert_ne!(base, SessionId::derive("other", 1, &keys));
        assert_ne!(
            base,
            SessionId::derive("job", 1, &[keys[0], (1, [3u8; 32], [5u8; 32])])
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_session_id_and_mask_keys_are_the_pinned_derivations() {
        // Computed by an independent reimplementation (testdata/derivations.py): every party
        // must derive these exact bytes, whatever its build.
        let keys = [(1, [3u8; 32], [4u8; 32]), (0, [1u8; 32], [2u8; 32])];
        let session = SessionId::derive("job", 1, &keys);
        assert_eq!(
            hex(&session.0),
            "392890f05b9d14cebfd855d284721f6a653b9505c8fa690cbfff9b2d9918c669"
        );
        assert_eq!(
            hex(&self_mask_key(&[9; 32], &session, 5)),
            "c625b99d4141f0eb86e57d7b035b32b6"
        );
        assert_eq!(
            hex(&pairwise_mask_key(&[8; 32], &session, 5, 2)),
            "e38a830071644284bdadbf93a86807ff"
        );
        assert_eq!(
            pairwise_mask_key(&[8; 32], &session, 2, 5),
            pairwise_mask_key(&[8; 32], &session, 5, 2)
        );
    }

    #[test]
    fn a_masked_input_reveals_nothing_obvious() {
        let (secret, _) = generate_key_pair();
        let (_, peer_public) = generate_key_pair();
        let shared = agree(&secret, &peer_public, 1).unwrap();
        let session = SessionId([7; 32]);
        let mut masked = vec![0u32; 1000];
        mask_input(&mut masked, 0, &[1; 32], &[(1, shared)], &session);
        // An all-zero input masks to values spread over the whole range.
        assert!(masked.iter().filter(|&&v| v > u32::MAX / 2).count() > 400);
    }

    proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn the_unmasked_sum_equals_the_survivors_exact_sum(
            n in 3u32..12,
            degree in 2u32..8,
            dropout_bits in 0u32..4096,
            d in 1usize..300,
            seed in 0u64..1000,
        ) {
            let graph = Graph::regular(n, degree, [seed as u8; 32]).unwrap();
            // Drop any subset except everyone.
            let dropped: Vec<u32> = (0..n).filter(|i| dropout_bits & (1 << i) != 0).take(n as usize - 1).collect();
            let (sum, exact) = run(n, &graph, &dropped, d, seed);
            prop_assert_eq!(sum, exact);
        }
    }
}
