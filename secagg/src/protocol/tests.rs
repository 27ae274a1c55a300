//! In-memory protocol tests: participant machines and the coordinator machine wired together,
//! with dropouts in every phase and a dishonest coordinator altering messages between them.

use super::*;
use crate::graph::Graph;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::collections::BTreeMap;

/// Identity keys of the federation, standing in for certificate keys checked against the CA.
struct Identities {
    keys: Vec<Ed25519KeyPair>,
}

struct IdentitySigner<'a>(&'a Ed25519KeyPair);

impl Signer for IdentitySigner<'_> {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }
}

impl Verifier for Identities {
    fn verify(&self, participant: u32, message: &[u8], signature: &[u8]) -> bool {
        let Some(key) = self.keys.get(participant as usize) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, key.public_key().as_ref())
            .verify(message, signature)
            .is_ok()
    }
}

impl Identities {
    fn new(n: u32) -> Identities {
        let rng = ring::rand::SystemRandom::new();
        let keys = (0..n)
            .map(|_| {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
            })
            .collect();
        Identities { keys }
    }

    fn signer(&self, i: u32) -> IdentitySigner<'_> {
        IdentitySigner(&self.keys[i as usize])
    }
}

fn config(n: u32, threshold: usize, degree: u32, round: u64) -> RoundConfig {
    RoundConfig {
        job: "job".into(),
        round,
        context: [0; 32],
        n_participants: n,
        threshold,
        degree,
        vector_len: 64,
        min_survivors: 0,
    }
}

/// The nonces `parties` reveal.
fn nonces_of(parties: &[ParticipantMachine]) -> Vec<GraphNonce> {
    parties.iter().map(ParticipantMachine::nonce).collect()
}

/// The graph that `nonces` draw for `cfg`.
fn drawn(cfg: &RoundConfig, nonces: &[GraphNonce]) -> Graph {
    let nonces = nonces.iter().map(|n| (n.from, n.nonce)).collect();
    cfg.graph(cfg.graph_seed(&nonces)).unwrap()
}

/// Rounds 1 and 2 for `party`: shown `ads`, it reveals its nonce; shown `nonces`, it shares.
fn share(
    party: &mut ParticipantMachine,
    ads: Vec<Advertisement>,
    nonces: &[GraphNonce],
    verifier: &dyn Verifier,
) -> Result<Vec<EncryptedShares>, ProtocolError> {
    party.on_advertisements(ads)?;
    party.on_nonces(nonces.to_vec(), verifier)
}

fn input(i: u32) -> Vec<u32> {
    (0..64).map(|j| i * 100 + j).collect()
}

/// Who stops answering, and after which phase (0: never advertises ... 4: never reveals).
type Dropouts = BTreeMap<u32, u8>;

/// What a round produced: the unmasked sum, the survivors, and the exact sum of their inputs.
type Outcome = (Vec<u32>, Vec<u32>, Vec<u32>);

/// What [`run_altering_reveals`] produced, and who revealed a share that was set aside.
type Checked = (Outcome, Vec<u32>);

/// Runs a whole honest round.
fn run(
    n: u32,
    threshold: usize,
    degree: u32,
    dropouts: &Dropouts,
) -> Result<Outcome, ProtocolError> {
    run_altering_reveals(n, threshold, degree, dropouts, |_| {}).map(|(outcome, bad)| {
        assert!(bad.is_empty(), "honest revealers set aside: {bad:?}");
        outcome
    })
}

/// Runs a round in which `alter` may change each revealed share set on its way to the
/// coordinator.
fn run_altering_reveals(
    n: u32,
    threshold: usize,
    degree: u32,
    dropouts: &Dropouts,
    mut alter: impl FnMut(&mut Reveal),
) -> Result<Checked, ProtocolError> {
    let ids = Identities::new(n);
    let cfg = config(n, threshold, degree, 1);
    let answers = |i: u32, phase: u8| dropouts.get(&i).is_none_or(|&p| p > phase);
    let mut coordinator = CoordinatorMachine::new(cfg.clone());
    let mut parties = BTreeMap::new();
    for i in 0..n {
        let (machine, ad) = ParticipantMachine::new(cfg.clone(), i, &ids.signer(i));
        if answers(i, 0) {
            coordinator.on_advertisement(i, ad)?;
            parties.insert(i, machine);
        }
    }
    let ads = coordinator.close_advertisements()?;
    for (&i, party) in parties.iter_mut() {
        coordinator.on_nonce(i, party.on_advertisements(ads.clone())?)?;
    }
    let nonces = coordinator.close_nonces()?;
    for (&i, party) in parties.iter_mut() {
        let shares = party.on_nonces(nonces.clone(), &ids)?;
        if answers(i, 1) {
            coordinator.on_shares(i, shares)?;
        }
    }
    let mut routed = coordinator.close_shares()?;
    for (&i, party) in parties.iter_mut() {
        if let Some(mail) = routed.remove(&i) {
            let masked = party.on_shares(mail, &input(i))?;
            if answers(i, 2) {
                coordinator.on_masked_input(masked)?;
            }
        }
    }
    let survivors = coordinator.close_masked_inputs()?;
    for &i in &survivors {
        let signature = parties
            .get_mut(&i)
            .unwrap()
            .on_survivors(survivors.clone(), &ids.signer(i))?;
        if answers(i, 3) {
            coordinator.on_signature(signature)?;
        }
    }
    let signatures = coordinator.close_signatures()?;
    for signature in &signatures {
        let i = signature.from;
        let mut reveal = parties
            .get_mut(&i)
            .unwrap()
            .on_signatures(signatures.clone(), &ids)?;
        alter(&mut reveal);
        if answers(i, 4) {
            coordinator.on_reveal(reveal)?;
        }
    }
    let unmasked = coordinator.finish()?;
    let (sum, survivors) = (unmasked.sum, unmasked.survivors);
    let mut exact = vec![0u32; 64];
    for &i in &survivors {
        for (e, v) in exact.iter_mut().zip(input(i)) {
            *e = e.wrapping_add(v);
        }
    }
    Ok(((sum, survivors, exact), unmasked.bad_revealers))
}

#[test]
fn without_dropouts_the_coordinator_learns_exactly_the_sum() {
    let (sum, survivors, exact) = run(5, 3, 4, &Dropouts::new()).unwrap();
    assert_eq!(survivors, vec![0, 1, 2, 3, 4]);
    assert_eq!(sum, exact);
}

#[test]
fn dropouts_in_every_phase_still_give_the_survivors_sum() {
    // 0 never advertises, 1 never shares, 2 never sends its masked input, 3 never signs,
    // 4 never reveals: the sum covers exactly the participants whose masked input arrived.
    let dropouts = Dropouts::from([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
    let (sum, survivors, exact) = run(10, 4, 9, &dropouts).unwrap();
    assert_eq!(survivors, vec![3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(sum, exact);
}

#[test]
fn a_sparse_neighbourhood_graph_works_with_dropouts() {
    let dropouts = Dropouts::from([(3, 2), (11, 2), (17, 1)]);
    let (sum, survivors, exact) = run(20, 4, 8, &dropouts).unwrap();
    assert_eq!(survivors.len(), 17);
    assert_eq!(sum, exact);
}

#[test]
fn too_few_survivors_fail_the_round_cleanly() {
    let dropouts = Dropouts::from([(0, 2), (1, 2), (2, 2)]);
    let err = run(5, 3, 4, &dropouts).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::BelowThreshold {
                what: "masked inputs",
                remaining: 2,
                threshold: 3
            }
        ),
        "{err}"
    );
}

/// Three participants after round 0, for the tampering tests.
struct Setup {
    ids: Identities,
    cfg: RoundConfig,
    parties: Vec<ParticipantMachine>,
    ads: Vec<Advertisement>,
    nonces: Vec<GraphNonce>,
}

fn setup(n: u32, round: u64) -> Setup {
    let ids = Identities::new(n);
    let cfg = config(n, 2, n - 1, round);
    let (parties, ads): (Vec<_>, _) = (0..n)
        .map(|i| ParticipantMachine::new(cfg.clone(), i, &ids.signer(i)))
        .unzip();
    let nonces = nonces_of(&parties);
    Setup {
        ids,
        cfg,
        parties,
        ads,
        nonces,
    }
}

#[test]
fn a_coordinator_that_substitutes_a_public_key_is_caught() {
    let mut s = setup(3, 1);
    let mut ads = s.ads.clone();
    ads[1].mask_public = crate::crypto::generate_key_pair().1;
    let err = share(&mut s.parties[0], ads, &s.nonces, &s.ids).unwrap_err();
    assert_eq!(err, ProtocolError::BadAdvertisement { from: 1 });
    // Having aborted, the participant takes nothing more.
    assert!(matches!(
        s.parties[0].on_shares(vec![], &input(0)),
        Err(ProtocolError::WrongPhase { .. })
    ));
    // Substituting the participant's own keys with another validly signed set is caught too.
    let (_, other_keys) = ParticipantMachine::new(s.cfg.clone(), 2, &s.ids.signer(2));
    let mut ads = s.ads.clone();
    ads[2] = other_keys;
    let err = s.parties[2].on_advertisements(ads).unwrap_err();
    assert_eq!(err, ProtocolError::OwnKeysSubstituted { participant: 2 });
    // As is leaving its advertisement out, or showing another participant's twice.
    let mut s = setup(3, 1);
    let err = s.parties[2]
        .on_advertisements(s.ads[..2].to_vec())
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::OwnAdvertisementMissing { participant: 2 }
    );
    let mut ads = s.ads.clone();
    ads[2] = s.ads[1].clone();
    let err = s.parties[1].on_advertisements(ads).unwrap_err();
    assert_eq!(err, ProtocolError::DuplicateAdvertisement { from: 1 });
}

#[test]
fn an_advertisement_replayed_from_an_earlier_round_is_caught() {
    let earlier = setup(3, 1);
    let mut now = setup(3, 2);
    // Same identities, so the signature is genuine, but it covers round 1; replayed with the
    // nonce revealed then.
    let (then, replayed) = ParticipantMachine::new(earlier.cfg.clone(), 1, &now.ids.signer(1));
    let mut ads = now.ads.clone();
    ads[1] = replayed;
    let mut nonces = now.nonces.clone();
    nonces[1] = then.nonce();
    let err = share(&mut now.parties[0], ads, &nonces, &now.ids).unwrap_err();
    assert_eq!(err, ProtocolError::BadAdvertisement { from: 1 });
}

#[test]
fn a_coordinator_that_withholds_alters_or_adds_a_nonce_is_caught() {
    let s = setup(4, 1);
    let fresh = || {
        let mut s = setup(4, 1);
        s.parties[0].on_advertisements(s.ads.clone()).unwrap();
        s
    };
    // Leaving an advertiser's nonce out would let the coordinator choose among graphs.
    let mut t = fresh();
    let err = t.parties[0]
        .on_nonces(t.nonces[..3].to_vec(), &t.ids)
        .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::MissingNonces {
            participants: vec![3]
        }
    );
    // Having aborted, it takes nothing more.
    assert!(matches!(
        t.parties[0].on_nonces(t.nonces.clone(), &t.ids),
        Err(ProtocolError::WrongPhase { .. })
    ));
    let mut t = fresh();
    let mut nonces = t.nonces.clone();
    nonces[2].nonce[31] ^= 1;
    assert_eq!(
        t.parties[0].on_nonces(nonces, &t.ids).unwrap_err(),
        ProtocolError::NonceMismatch { from: 2 }
    );
    let mut t = fresh();
    let mut nonces = t.nonces.clone();
    nonces.push(t.nonces[1].clone());
    assert_eq!(
        t.parties[0].on_nonces(nonces, &t.ids).unwrap_err(),
        ProtocolError::DuplicateNonce { from: 1 }
    );
    // A participant left out of the advertisements has no nonce to add.
    let mut t = setup(4, 1);
    t.parties[0].on_advertisements(t.ads[..3].to_vec()).unwrap();
    assert_eq!(
        t.parties[0]
            .on_nonces(t.nonces.clone(), &t.ids)
            .unwrap_err(),
        ProtocolError::NonceFromUnadvertised { from: 3 }
    );
    // Nonces before the advertisements are out of order.
    let mut t = setup(4, 1);
    assert!(matches!(
        t.parties[0].on_nonces(s.nonces.clone(), &t.ids),
        Err(ProtocolError::WrongPhase { .. })
    ));
}

#[test]
fn neighbours_shown_different_commitments_of_a_colluder_cannot_open_each_others_shares() {
    // Participant 2 colludes: it signs a second advertisement with the same keys and another
    // nonce commitment, so the session id is the same for everyone but 0 and 1 draw different
    // graphs. The graph seed in the shares' associated data makes each abort before masking.
    let mut s = setup(3, 1);
    let other_nonce = [0x77; 32];
    let mut twin = s.ads[2].clone();
    twin.nonce_commitment = nonce_commitment(&s.cfg, 2, &other_nonce);
    twin.signature = s.ids.signer(2).sign(&advertisement_message(&s.cfg, &twin));
    let mut ads_for_one = s.ads.clone();
    ads_for_one[2] = twin;
    let mut nonces_for_one = s.nonces.clone();
    nonces_for_one[2].nonce = other_nonce;
    let from_zero = share(&mut s.parties[0], s.ads.clone(), &s.nonces, &s.ids).unwrap();
    share(&mut s.parties[1], ads_for_one, &nonces_for_one, &s.ids).unwrap();
    let for_one: Vec<EncryptedShares> = from_zero.into_iter().filter(|m| m.to == 1).collect();
    assert_eq!(
        s.parties[1].on_shares(for_one, &input(1)).unwrap_err(),
        ProtocolError::UndecryptableShares { from: 0 }
    );
}

#[test]
fn tampered_or_misaddressed_shares_are_caught() {
    let mut s = setup(3, 1);
    let shares: Vec<Vec<EncryptedShares>> = s
        .parties
        .iter_mut()
        .map(|p| share(p, s.ads.clone(), &s.nonces, &s.ids).unwrap())
        .collect();
    let mut for_zero: Vec<EncryptedShares> = shares
        .iter()
        .flatten()
        .filter(|m| m.to == 0)
        .cloned()
        .collect();
    for_zero[0].ciphertext[20] ^= 1;
    let from = for_zero[0].from;
    assert_eq!(
        s.parties[0].on_shares(for_zero, &input(0)).unwrap_err(),
        ProtocolError::UndecryptableShares { from }
    );
    // Shares meant for participant 2, relabelled as for participant 1, do not decrypt there.
    let mut relabelled: Vec<EncryptedShares> =
        shares[0].iter().filter(|m| m.to == 2).cloned().collect();
    relabelled[0].to = 1;
    assert_eq!(
        s.parties[1].on_shares(relabelled, &input(1)).unwrap_err(),
        ProtocolError::UndecryptableShares { from: 0 }
    );
}

/// Runs three participants up to their survivor signatures.
fn signed(s: &mut Setup, survivor_views: [Vec<u32>; 3]) -> Vec<SurvivorSignature> {
    let shares: Vec<EncryptedShares> = s
        .parties
        .iter_mut()
        .flat_map(|p| share(p, s.ads.clone(), &s.nonces, &s.ids).unwrap())
        .collect();
    for (i, party) in s.parties.iter_mut().enumerate() {
        let mine = shares
            .iter()
            .filter(|m| m.to == i as u32)
            .cloned()
            .collect();
        party.on_shares(mine, &input(i as u32)).unwrap();
    }
    s.parties
        .iter_mut()
        .zip(survivor_views)
        .enumerate()
        .map(|(i, (party, view))| party.on_survivors(view, &s.ids.signer(i as u32)).unwrap())
        .collect()
}

#[test]
fn different_survivor_sets_shown_to_different_participants_are_caught() {
    let mut s = setup(3, 1);
    // Participant 0 is told that 2 dropped out; the others are told everyone survived. If 0
    // believed it, it would reveal 2's mask key while the others reveal 2's self-mask seed.
    let signatures = signed(&mut s, [vec![0, 1], vec![0, 1, 2], vec![0, 1, 2]]);
    let err = s.parties[0]
        .on_signatures(signatures.clone(), &s.ids)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::InconsistentSurvivors { .. }
                | ProtocolError::SignatureFromNonSurvivor { from: 2 }
        ),
        "{err}"
    );
    let err = s.parties[1].on_signatures(signatures, &s.ids).unwrap_err();
    assert_eq!(err, ProtocolError::InconsistentSurvivors { from: 0 });
}

#[test]
fn a_participant_never_reveals_twice_or_both_shares_of_one_neighbour() {
    let mut s = setup(3, 1);
    let signatures = signed(&mut s, [vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]]);
    let reveal = s.parties[0]
        .on_signatures(signatures.clone(), &s.ids)
        .unwrap();
    assert_eq!(reveal.self_mask_shares.len(), 2);
    assert!(
        reveal.mask_key_shares.is_empty(),
        "all survived: no mask key share may leave"
    );
    // Asked again (say, with another survivor set), it refuses: it has revealed already.
    assert!(matches!(
        s.parties[0].on_signatures(signatures, &s.ids),
        Err(ProtocolError::WrongPhase { .. })
    ));
}

/// `share` with its value bytes flipped, its identifier kept.
fn corrupted(share: &crate::shamir::Share) -> crate::shamir::Share {
    let mut bytes = share.as_bytes().to_vec();
    for byte in &mut bytes[1..] {
        *byte ^= 0x5a;
    }
    crate::shamir::Share::from_bytes(bytes).unwrap()
}

#[test]
fn a_bad_self_mask_share_is_set_aside_and_its_revealer_named() {
    // Seven participants, complete graph: six holders per owner, threshold 4, so the shares
    // beyond the threshold show which one does not fit.
    let ((sum, survivors, exact), bad) =
        run_altering_reveals(7, 4, 6, &Dropouts::new(), |reveal| {
            if reveal.from == 5 {
                let (_, share) = &mut reveal.self_mask_shares[0];
                *share = corrupted(share);
            }
        })
        .unwrap();
    assert_eq!(bad, vec![5]);
    assert_eq!(survivors.len(), 7);
    assert_eq!(sum, exact, "the sum is right without the bad share");
}

#[test]
fn a_bad_share_with_too_few_others_to_outvote_it_fails_the_round() {
    // Four participants, complete graph: three holders per owner, threshold 2. A bad share
    // among three shows, but two good ones cannot tell which of the three it is.
    let err = run_altering_reveals(4, 2, 3, &Dropouts::new(), |reveal| {
        if reveal.from == 1 {
            let (_, share) = &mut reveal.self_mask_shares[0];
            *share = corrupted(share);
        }
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the 3 revealed shares do not agree, and no single one explains it"),
        "{err}"
    );
}

#[test]
fn a_bad_mask_key_share_is_caught_against_the_advertised_key() {
    // Participant 0 drops after sharing its keys; its mask key is rebuilt from its neighbours'
    // shares and checked against the public key it advertised, so that one share beyond the
    // threshold is enough to find a bad one (four holders, threshold 3).
    let dropouts = Dropouts::from([(0, 2)]);
    let ((sum, _, exact), bad) = run_altering_reveals(5, 3, 4, &dropouts, |reveal| {
        if reveal.from == 2
            && let Some((_, share)) = reveal.mask_key_shares.first_mut()
        {
            *share = corrupted(share);
        }
    })
    .unwrap();
    assert_eq!(bad, vec![2]);
    assert_eq!(sum, exact);
}

#[test]
fn reveals_carry_only_the_shares_their_revealer_was_given() {
    // The share made for another holder, a second share of one owner.
    let err = run_altering_reveals(5, 3, 4, &Dropouts::new(), |reveal| {
        if reveal.from == 3 {
            let (_, share) = &mut reveal.self_mask_shares[0];
            let mut bytes = share.as_bytes().to_vec();
            bytes[0] = if bytes[0] == 1 { 2 } else { 1 };
            *share = crate::shamir::Share::from_bytes(bytes).unwrap();
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::ShareIndex { from: 3, .. }),
        "{err}"
    );
    let err = run_altering_reveals(5, 3, 4, &Dropouts::new(), |reveal| {
        if reveal.from == 3 {
            let first = reveal.self_mask_shares[0].clone();
            reveal.self_mask_shares.push(first);
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::DuplicateShare { from: 3, .. }),
        "{err}"
    );
}

#[test]
fn the_coordinator_refuses_a_mask_key_share_of_a_survivor() {
    // A survivor's mask-key share would let the coordinator, which also gets the survivor's
    // self-mask seed, unmask that survivor's input alone: it must refuse rather than hold both.
    let err = run_altering_reveals(4, 2, 3, &Dropouts::new(), |reveal| {
        if let Some(share) = reveal.self_mask_shares.pop() {
            reveal.mask_key_shares.push(share);
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::MaskKeyShareOfSurvivor { .. }),
        "{err}"
    );
}

#[test]
fn the_coordinator_machine_cannot_skip_a_phase() {
    let s = setup(3, 1);
    let mut coordinator = CoordinatorMachine::new(s.cfg.clone());
    for ad in &s.ads {
        coordinator.on_advertisement(ad.from, ad.clone()).unwrap();
    }
    assert!(matches!(
        coordinator.close_signatures(),
        Err(ProtocolError::WrongPhase { .. })
    ));
}

/// Records whose signatures a participant checks.
struct Counting<'a> {
    inner: &'a Identities,
    checked: std::cell::RefCell<std::collections::BTreeSet<u32>>,
}

impl Verifier for Counting<'_> {
    fn verify(&self, participant: u32, message: &[u8], signature: &[u8]) -> bool {
        self.checked.borrow_mut().insert(participant);
        self.inner.verify(participant, message, signature)
    }
}

#[test]
fn a_participant_checks_only_its_neighbourhood_and_a_substituted_stranger_still_fails_the_round() {
    let n = 20;
    let ids = Identities::new(n);
    let cfg = config(n, 5, 8, 1);
    let mut coordinator = CoordinatorMachine::new(cfg.clone());
    let mut parties: Vec<ParticipantMachine> = (0..n)
        .map(|i| {
            let (machine, ad) = ParticipantMachine::new(cfg.clone(), i, &ids.signer(i));
            coordinator.on_advertisement(i, ad).unwrap();
            machine
        })
        .collect();
    let ads = coordinator.close_advertisements().unwrap();
    let nonces = nonces_of(&parties);
    for nonce in &nonces {
        coordinator.on_nonce(nonce.from, nonce.clone()).unwrap();
    }
    assert_eq!(coordinator.close_nonces().unwrap(), nonces);
    let graph = drawn(&cfg, &nonces);
    assert_eq!(coordinator.graph(), Some(&graph));
    let mut neighbourhood: std::collections::BTreeSet<u32> =
        graph.neighbours(0).iter().copied().collect();
    neighbourhood.insert(0);
    assert_eq!(neighbourhood.len(), 9);
    let stranger = (0..n).find(|j| !neighbourhood.contains(j)).unwrap();

    // The coordinator shows participant 0 another key for a participant it does not check.
    let mut altered = ads.clone();
    altered[stranger as usize].mask_public = crate::crypto::generate_key_pair().1;
    let verifier = Counting {
        inner: &ids,
        checked: Default::default(),
    };
    let shares = share(&mut parties[0], altered, &nonces, &verifier).unwrap();
    assert_eq!(parties[0].neighbourhood(), neighbourhood);
    assert_eq!(
        *verifier.checked.borrow(),
        neighbourhood,
        "k + 1 signatures checked, not n"
    );
    coordinator.on_shares(0, shares).unwrap();
    for (i, party) in parties.iter_mut().enumerate().skip(1) {
        let shares = share(party, ads.clone(), &nonces, &ids).unwrap();
        coordinator.on_shares(i as u32, shares).unwrap();
    }
    // Participant 0's view of the session differs from its neighbours', so none of them can
    // open its shares, nor it theirs: each aborts before masking anything.
    let mut routed = coordinator.close_shares().unwrap();
    for &i in neighbourhood.iter().filter(|&&i| i != 0) {
        let mail = routed.remove(&i).unwrap();
        assert!(parties[i as usize].on_shares(mail, &input(i)).is_err());
    }
    // A substituted key of a neighbour is still caught.
    let (mut fresh, own) = ParticipantMachine::new(cfg.clone(), 0, &ids.signer(0));
    let mut forged = ads.clone();
    forged[0] = own;
    let mut nonces = nonces;
    nonces[0] = fresh.nonce();
    let graph = drawn(&cfg, &nonces);
    let neighbour = graph.neighbours(0)[0];
    forged[neighbour as usize].channel_public = crate::crypto::generate_key_pair().1;
    assert_eq!(
        share(&mut fresh, forged, &nonces, &ids).unwrap_err(),
        ProtocolError::BadAdvertisement { from: neighbour }
    );
}

/// Lower-case hex, for comparing derived values with the pinned ones.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// The pinned values below were computed by an independent reimplementation of these derivations
// (testdata/derivations.py). Every party of a round must derive exactly these bytes, whatever its
// build; a change here is a change of the protocol.

#[test]
fn the_round_setup_and_nonces_derive_the_pinned_context_seed_and_graph() {
    let roster: Vec<String> = (0..10).map(|i| format!("participant-{i}")).collect();
    let config = RoundConfig::derive("job", 7, 2, &roster, 4, 3, 1000).unwrap();
    assert_eq!(
        hex(&config.context),
        "076d345f4cd25dcaaa121058edbbbeba2cb3f58bcc855faa1d14a7aa2f692a9d"
    );
    let privacy = crate::privacy::DistributedDp::new(1.5, 0.75, 6, 1000).unwrap();
    assert_eq!(
        hex(&config.clone().with_privacy(&privacy).context),
        "d3d308734fde77b87190639ada07cca7916c6f1b0727231081ddbe0e3bd37ff8"
    );
    assert_eq!(
        hex(&nonce_commitment(&config, 3, &[3; 32])),
        "b59c0a3089dbc18c5c3d73bdc54cdb8fb38e3091ee6916ff603e682908d146e6"
    );
    // Participant 4 did not advertise: the seed covers the nine advertisers' nonces.
    let nonces: BTreeMap<u32, [u8; 32]> = (0..10u32)
        .filter(|&i| i != 4)
        .map(|i| (i, [i as u8; 32]))
        .collect();
    let seed = config.graph_seed(&nonces);
    assert_eq!(
        hex(&seed),
        "ec95e966e303ff763c5d1bae88318f6cb857e1129a7b5da8d27b43b7c0e89095"
    );
    let expected: [&[u32]; 10] = [
        &[1, 2, 4, 7],
        &[0, 4, 7, 8],
        &[0, 3, 4, 5],
        &[2, 4, 5, 9],
        &[0, 1, 2, 3],
        &[2, 3, 6, 9],
        &[5, 7, 8, 9],
        &[0, 1, 6, 8],
        &[1, 6, 7, 9],
        &[3, 5, 6, 8],
    ];
    let graph = config.graph(seed).unwrap();
    for (i, neighbours) in expected.iter().enumerate() {
        assert_eq!(graph.neighbours(i as u32), *neighbours, "participant {i}");
    }
    // Every nonce enters the seed.
    let mut other = nonces.clone();
    other.insert(9, [0; 32]);
    assert_ne!(config.graph_seed(&other), seed);
    other.remove(&9);
    assert_ne!(config.graph_seed(&other), seed);
    // Every part of the setup enters the context.
    let context = |job: &str, round, attempt, roster: &[String], degree, threshold, len| {
        RoundConfig::derive(job, round, attempt, roster, degree, threshold, len)
            .unwrap()
            .context
    };
    for other in [
        context("job2", 7, 2, &roster, 4, 3, 1000),
        context("job", 8, 2, &roster, 4, 3, 1000),
        context("job", 7, 3, &roster, 4, 3, 1000),
        context("job", 7, 2, &roster[1..], 4, 3, 1000),
        context("job", 7, 2, &roster, 5, 4, 1000),
        context("job", 7, 2, &roster, 4, 4, 1000),
        context("job", 7, 2, &roster, 4, 3, 1001),
    ] {
        assert_ne!(other, config.context);
    }
}

/// A configuration with a recognisable context, for the byte layouts.
fn layout_config() -> RoundConfig {
    RoundConfig {
        job: "job".into(),
        round: 7,
        context: [0xaa; 32],
        n_participants: 6,
        threshold: 3,
        degree: 5,
        vector_len: 8,
        min_survivors: 0,
    }
}

#[test]
fn signed_messages_and_associated_data_have_the_pinned_layout() {
    let config = layout_config();
    // "cairn secagg advertise v2", job length (8 bytes) and job, round (8 bytes), context,
    // sender (4 bytes), channel key, mask key, nonce commitment; not the signature.
    let advertisement = Advertisement {
        from: 2,
        channel_public: [1; 32],
        mask_public: [2; 32],
        nonce_commitment: [3; 32],
        signature: vec![9; 64],
    };
    assert_eq!(
        hex(&advertisement_message(&config, &advertisement)),
        "636169726e207365636167672061647665727469736520763200000000000000036a6f620000000000000007\
         aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa00000002\
         0101010101010101010101010101010101010101010101010101010101010101\
         0202020202020202020202020202020202020202020202020202020202020202\
         0303030303030303030303030303030303030303030303030303030303030303"
    );
    // The survivors in increasing order, however they were given.
    assert_eq!(
        hex(&survivors_message(&config, &[3, 0, 2])),
        "636169726e20736563616767207375727669766f727320763100000000000000036a6f620000000000000007\
         aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000000000000200000003"
    );
    // "cairn secagg shares v2", the header, graph seed, sender, receiver.
    assert_eq!(
        hex(&shares_associated_data(&config, &[0xbb; 32], 2, 5)),
        "636169726e207365636167672073686172657320763200000000000000036a6f620000000000000007\
         aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
         bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0000000200000005"
    );
}

#[test]
fn the_channel_key_is_the_pinned_derivation() {
    let keys = [(1, [3u8; 32], [4u8; 32]), (0, [1u8; 32], [2u8; 32])];
    let session = crate::mask::SessionId::derive("job", 1, &keys);
    assert_eq!(
        hex(&channel_key(&[7; 32], &session, 2, 5)),
        "f34e0c40970039c3ed6f5ca85ddfc901ee90d5188fbf80035d52d7f88cedc86b"
    );
    // Each direction has its own key.
    assert_ne!(
        channel_key(&[7; 32], &session, 2, 5),
        channel_key(&[7; 32], &session, 5, 2)
    );
}

#[test]
fn the_coordinator_names_each_misrouted_or_repeated_message_for_what_it_is() {
    let n = 12;
    let ids = Identities::new(n);
    let cfg = config(n, 3, 4, 1);
    let mut coordinator = CoordinatorMachine::new(cfg.clone());
    let mut parties: Vec<ParticipantMachine> = Vec::new();
    let mut ads = Vec::new();
    for i in 0..n {
        let (machine, ad) = ParticipantMachine::new(cfg.clone(), i, &ids.signer(i));
        parties.push(machine);
        ads.push(ad);
    }
    assert_eq!(
        coordinator.on_advertisement(n, ads[0].clone()),
        Err(ProtocolError::UnknownParticipant {
            message: "advertisement",
            participant: n,
            n_participants: n
        })
    );
    assert_eq!(
        coordinator.on_advertisement(1, ads[0].clone()),
        Err(ProtocolError::AdvertisementSenderMismatch {
            received_from: 1,
            claimed: 0
        })
    );
    // Everyone but the last participant advertises.
    for ad in &ads[..n as usize - 1] {
        coordinator.on_advertisement(ad.from, ad.clone()).unwrap();
    }
    assert_eq!(
        coordinator.on_advertisement(0, ads[0].clone()),
        Err(ProtocolError::DuplicateAdvertisement { from: 0 })
    );
    let shown = coordinator.close_advertisements().unwrap();
    let nonces: Vec<GraphNonce> = parties[..n as usize - 1]
        .iter_mut()
        .map(|p| p.on_advertisements(shown.clone()).unwrap())
        .collect();
    assert_eq!(
        coordinator.on_nonce(1, nonces[0].clone()),
        Err(ProtocolError::NonceSenderMismatch {
            received_from: 1,
            claimed: 0
        })
    );
    assert_eq!(
        coordinator.on_nonce(n - 1, parties[n as usize - 1].nonce()),
        Err(ProtocolError::NonceFromUnadvertised { from: n - 1 })
    );
    let mut other = nonces[2].clone();
    other.nonce[0] ^= 1;
    assert_eq!(
        coordinator.on_nonce(2, other),
        Err(ProtocolError::NonceMismatch { from: 2 })
    );
    for nonce in &nonces[1..] {
        coordinator.on_nonce(nonce.from, nonce.clone()).unwrap();
    }
    assert_eq!(
        coordinator.on_nonce(1, nonces[1].clone()),
        Err(ProtocolError::DuplicateNonce { from: 1 })
    );
    // Without participant 0's nonce there is no graph; with it, the one the nonces draw.
    let mut withheld = CoordinatorMachine::new(cfg.clone());
    for ad in &ads[..n as usize - 1] {
        withheld.on_advertisement(ad.from, ad.clone()).unwrap();
    }
    withheld.close_advertisements().unwrap();
    for nonce in &nonces[1..] {
        withheld.on_nonce(nonce.from, nonce.clone()).unwrap();
    }
    assert_eq!(
        withheld.close_nonces(),
        Err(ProtocolError::MissingNonces {
            participants: vec![0]
        })
    );
    coordinator.on_nonce(0, nonces[0].clone()).unwrap();
    assert_eq!(coordinator.close_nonces().unwrap(), nonces);
    let graph = drawn(&cfg, &nonces);
    let shares = parties[0].on_nonces(nonces.clone(), &ids).unwrap();
    let stranger = (1..n - 1).find(|&j| !graph.are_neighbours(0, j)).unwrap();
    let mut misaddressed = shares.clone();
    misaddressed[0].to = stranger;
    assert_eq!(
        coordinator.on_shares(0, misaddressed),
        Err(ProtocolError::ShareToNonNeighbour {
            from: 0,
            to: stranger
        })
    );
    let mut twice = shares.clone();
    twice.push(shares[0].clone());
    assert_eq!(
        coordinator.on_shares(0, twice),
        Err(ProtocolError::DuplicateShares {
            from: 0,
            to: shares[0].to
        })
    );
    assert_eq!(
        coordinator.on_shares(1, shares.clone()),
        Err(ProtocolError::SharesSenderMismatch {
            received_from: 1,
            claimed: 0
        })
    );
    assert_eq!(
        coordinator.on_shares(n - 1, vec![]),
        Err(ProtocolError::SharesFromUnadvertised { from: n - 1 })
    );
    coordinator.on_shares(0, shares.clone()).unwrap();
    assert_eq!(
        coordinator.on_shares(0, shares),
        Err(ProtocolError::SharesSentTwice { from: 0 })
    );
    for i in 1..n - 1 {
        let shares = parties[i as usize].on_nonces(nonces.clone(), &ids).unwrap();
        // The stranger (not 0's neighbour, so 0 still has enough) never gets its shares through.
        if i != stranger {
            coordinator.on_shares(i, shares).unwrap();
        }
    }
    let mut routed = coordinator.close_shares().unwrap();
    let masked = parties[0]
        .on_shares(routed.remove(&0).unwrap(), &input(0))
        .unwrap();
    coordinator.on_masked_input(masked.clone()).unwrap();
    assert_eq!(
        coordinator.on_masked_input(masked.clone()),
        Err(ProtocolError::DuplicateMaskedInput { from: 0 })
    );
    assert_eq!(
        coordinator.on_masked_input(MaskedInput {
            from: stranger,
            ..masked
        }),
        Err(ProtocolError::MaskedInputWithoutShares { from: stranger })
    );
}

#[test]
fn a_participant_names_what_is_wrong_with_a_survivor_set() {
    let mut s = setup(3, 1);
    let shares: Vec<EncryptedShares> = s
        .parties
        .iter_mut()
        .flat_map(|p| share(p, s.ads.clone(), &s.nonces, &s.ids).unwrap())
        .collect();
    let mine: Vec<EncryptedShares> = shares.iter().filter(|m| m.to == 0).cloned().collect();
    // Shares addressed to 1, handed to 0, are refused before any decryption.
    let theirs: Vec<EncryptedShares> = shares.iter().filter(|m| m.to == 1).cloned().collect();
    let mut other = setup(3, 1);
    let err = share(
        &mut other.parties[0],
        other.ads.clone(),
        &other.nonces,
        &other.ids,
    )
    .and_then(|_| other.parties[0].on_shares(theirs.clone(), &input(0)))
    .unwrap_err();
    assert_eq!(
        err,
        ProtocolError::SharesForAnotherReceiver {
            from: theirs[0].from,
            to: 1,
            receiver: 0
        }
    );
    s.parties[0].on_shares(mine, &input(0)).unwrap();
    let signer = s.ids.signer(0);
    let fresh = || {
        let mut s = setup(3, 1);
        let shares: Vec<EncryptedShares> = s
            .parties
            .iter_mut()
            .flat_map(|p| share(p, s.ads.clone(), &s.nonces, &s.ids).unwrap())
            .collect();
        let mine = shares.iter().filter(|m| m.to == 0).cloned().collect();
        s.parties[0].on_shares(mine, &input(0)).unwrap();
        s
    };
    assert_eq!(
        s.parties[0].on_survivors(vec![0, 2, 2], &signer),
        Err(ProtocolError::DuplicateSurvivor { participant: 2 })
    );
    let mut s = fresh();
    assert_eq!(
        s.parties[0].on_survivors(vec![0, 1, 3], &s.ids.signer(0)),
        Err(ProtocolError::UnknownParticipant {
            message: "survivor set",
            participant: 3,
            n_participants: 3
        })
    );
    let mut s = fresh();
    assert_eq!(
        s.parties[0].on_survivors(vec![1, 2], &s.ids.signer(0)),
        Err(ProtocolError::SurvivorSetWithoutSelf { participant: 0 })
    );
}

#[test]
fn error_messages_name_the_participants_involved() {
    assert_eq!(
        ProtocolError::ShareFromNonNeighbour { from: 3, to: 5 }.to_string(),
        "participant 5 was handed shares from participant 3, which is not its neighbour"
    );
    assert_eq!(
        ProtocolError::MaskKeyShareOfSurvivor { from: 2, owner: 4 }.to_string(),
        "participant 2 revealed a mask-key share of participant 4, a survivor"
    );
    assert_eq!(
        ProtocolError::DuplicateMaskedInput { from: 7 }.to_string(),
        "duplicate masked input from participant 7"
    );
}

#[test]
fn under_differential_privacy_a_participant_refuses_fewer_survivors_than_the_noise_counts_on() {
    let n = 3;
    let ids = Identities::new(n);
    let privacy = crate::privacy::DistributedDp::new(1.0, 1.0, 3, 62).unwrap();
    let plain = config(n, 2, n - 1, 1);
    let cfg = plain.clone().with_privacy(&privacy);
    assert_ne!(
        cfg.context, plain.context,
        "the noise settings are bound into the setup"
    );
    assert_eq!((cfg.min_survivors, cfg.least_survivors()), (3, 3));
    let (mut parties, ads): (Vec<_>, Vec<_>) = (0..n)
        .map(|i| ParticipantMachine::new(cfg.clone(), i, &ids.signer(i)))
        .unzip();
    let nonces = nonces_of(&parties);
    let shares: Vec<EncryptedShares> = parties
        .iter_mut()
        .flat_map(|p| share(p, ads.clone(), &nonces, &ids).unwrap())
        .collect();
    let mine = shares.iter().filter(|m| m.to == 0).cloned().collect();
    parties[0].on_shares(mine, &input(0)).unwrap();
    // Two survivors meet the threshold of 2 but not the 3 sites whose noise the guarantee needs.
    assert_eq!(
        parties[0].on_survivors(vec![0, 1], &ids.signer(0)),
        Err(ProtocolError::BelowThreshold {
            what: "survivors",
            remaining: 2,
            threshold: 3
        })
    );
}
