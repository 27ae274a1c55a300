//! The participant's side of the protocol.

use super::{
    Advertisement, EncryptedShares, GraphNonce, MaskedInput, ProtocolError, Reveal, RoundConfig,
    Signer, SurvivorSignature, Verifier, advertisement_message, channel_key, check_nonce,
    nonce_commitment, require_every_nonce, shares_associated_data, survivors_message,
};
use crate::crypto::{agree, generate_key_pair, open, random_bytes, seal};
use crate::graph::Graph;
use crate::mask::{SessionId, mask_input};
use crate::shamir::{self, SHARE_BYTES, Share};
use std::collections::BTreeMap;
use x25519_dalek::StaticSecret;

/// Where the participant is; each state says what it waits for.
enum State {
    /// Sent its advertisement; waits for everyone's.
    AwaitingAdvertisements,
    /// Revealed its graph nonce; waits for everyone's.
    AwaitingNonces {
        advertisements: BTreeMap<u32, Advertisement>,
    },
    /// Sent its encrypted shares; waits for the shares addressed to it.
    AwaitingShares {
        advertisements: BTreeMap<u32, Advertisement>,
        session: SessionId,
        self_seed: [u8; 32],
        graph_seed: [u8; 32],
    },
    /// Sent its masked input; waits for the survivor set.
    AwaitingSurvivors { held: BTreeMap<u32, (Share, Share)> },
    /// Signed the survivor set; waits for the others' signatures.
    AwaitingSignatures {
        held: BTreeMap<u32, (Share, Share)>,
        survivors: Vec<u32>,
    },
    /// Revealed its shares, or aborted: nothing more leaves this participant.
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingAdvertisements => "awaiting advertisements",
            State::AwaitingNonces { .. } => "awaiting graph nonces",
            State::AwaitingShares { .. } => "awaiting shares",
            State::AwaitingSurvivors { .. } => "awaiting the survivor set",
            State::AwaitingSignatures { .. } => "awaiting survivor signatures",
            State::Done => "done",
        }
    }
}

/// One participant's protocol state for one round. Keys are fresh for every machine.
pub struct ParticipantMachine {
    config: RoundConfig,
    me: u32,
    channel_secret: StaticSecret,
    mask_secret: StaticSecret,
    nonce: [u8; 32],
    advertisement: Advertisement,
    /// The neighbourhood graph, once the nonces have drawn it.
    graph: Option<Graph>,
    state: State,
}

impl std::fmt::Debug for ParticipantMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantMachine")
            .field("me", &self.me)
            .field("state", &self.state.name())
            .finish()
    }
}

impl ParticipantMachine {
    /// Starts participant `me`'s round: fresh key pairs and graph nonce, and the signed
    /// advertisement to send.
    pub fn new(
        config: RoundConfig,
        me: u32,
        signer: &dyn Signer,
    ) -> (ParticipantMachine, Advertisement) {
        let (channel_secret, channel_public) = generate_key_pair();
        let (mask_secret, mask_public) = generate_key_pair();
        let nonce: [u8; 32] = random_bytes();
        let mut advertisement = Advertisement {
            from: me,
            channel_public,
            mask_public,
            nonce_commitment: nonce_commitment(&config, me, &nonce),
            signature: Vec::new(),
        };
        advertisement.signature = signer.sign(&advertisement_message(&config, &advertisement));
        let machine = ParticipantMachine {
            config,
            me,
            channel_secret,
            mask_secret,
            nonce,
            advertisement: advertisement.clone(),
            graph: None,
            state: State::AwaitingAdvertisements,
        };
        (machine, advertisement)
    }

    /// The participants whose signatures this one checks: its neighbours and itself. Their keys
    /// are the only ones it uses (key agreement, masks) and their signatures on the survivor set
    /// the only ones it counts, as in SecAgg+ (Bell et al. 2020, §3); its own signature counts
    /// among the `t`. Everyone else's keys enter only the session id, a public hash: a
    /// substituted one there reveals nothing, and if it gives neighbours different session ids,
    /// their shares fail to decrypt and they abort before masking. Checking `k + 1` signatures
    /// instead of `n` keeps a participant's work independent of the federation's size. Until the
    /// nonces have drawn the graph, the neighbourhood is this participant alone.
    pub fn neighbourhood(&self) -> std::collections::BTreeSet<u32> {
        let mut set: std::collections::BTreeSet<u32> = self
            .graph
            .iter()
            .flat_map(|graph| graph.neighbours(self.me).iter().copied())
            .collect();
        set.insert(self.me);
        set
    }

    /// The neighbourhood graph, once the nonces have drawn it.
    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// The nonce this participant reveals, for tests that play several rounds' worth of
    /// parties without a coordinator.
    #[cfg(test)]
    pub(super) fn nonce(&self) -> GraphNonce {
        GraphNonce {
            from: self.me,
            nonce: self.nonce,
        }
    }

    fn wrong_phase(&self, message: &'static str) -> ProtocolError {
        ProtocolError::WrongPhase {
            message,
            state: self.state.name(),
        }
    }

    /// Aborts: whatever the error, nothing more is revealed.
    fn abort<T>(&mut self, error: ProtocolError) -> Result<T, ProtocolError> {
        self.state = State::Done;
        Err(error)
    }

    /// Round 1: checks that the advertisements name participants of the round, once each, and
    /// include this participant's own unchanged, then reveals its graph nonce. Signatures are
    /// checked once the graph says whose count (see [`ParticipantMachine::on_nonces`]).
    pub fn on_advertisements(
        &mut self,
        advertisements: Vec<Advertisement>,
    ) -> Result<GraphNonce, ProtocolError> {
        if !matches!(self.state, State::AwaitingAdvertisements) {
            return Err(self.wrong_phase("advertisements"));
        }
        let mut by_sender = BTreeMap::new();
        for ad in advertisements {
            if ad.from >= self.config.n_participants {
                return self.abort(ProtocolError::UnknownParticipant {
                    message: "advertisement",
                    participant: ad.from,
                    n_participants: self.config.n_participants,
                });
            }
            let from = ad.from;
            if by_sender.insert(from, ad).is_some() {
                return self.abort(ProtocolError::DuplicateAdvertisement { from });
            }
        }
        match by_sender.get(&self.me) {
            None => {
                return self.abort(ProtocolError::OwnAdvertisementMissing {
                    participant: self.me,
                });
            }
            Some(own) if *own != self.advertisement => {
                return self.abort(ProtocolError::OwnKeysSubstituted {
                    participant: self.me,
                });
            }
            Some(_) => {}
        }
        self.state = State::AwaitingNonces {
            advertisements: by_sender,
        };
        Ok(GraphNonce {
            from: self.me,
            nonce: self.nonce,
        })
    }

    /// Round 2: checks that every advertiser revealed the nonce it committed to (and no one
    /// else revealed one), draws the graph from them, checks every neighbour's signature (see
    /// [`ParticipantMachine::neighbourhood`]), then shares this participant's secrets with its
    /// neighbours, encrypted.
    pub fn on_nonces(
        &mut self,
        nonces: Vec<GraphNonce>,
        verifier: &dyn Verifier,
    ) -> Result<Vec<EncryptedShares>, ProtocolError> {
        let State::AwaitingNonces { advertisements } = &self.state else {
            return Err(self.wrong_phase("graph nonces"));
        };
        let by_sender = advertisements.clone();
        let mut revealed = BTreeMap::new();
        for nonce in nonces {
            if let Err(error) = check_nonce(&self.config, &by_sender, &nonce) {
                return self.abort(error);
            }
            if revealed.insert(nonce.from, nonce.nonce).is_some() {
                return self.abort(ProtocolError::DuplicateNonce { from: nonce.from });
            }
        }
        if let Err(error) = require_every_nonce(&by_sender, &revealed) {
            return self.abort(error);
        }
        let graph_seed = self.config.graph_seed(&revealed);
        match self.config.graph(graph_seed) {
            Ok(graph) => self.graph = Some(graph),
            Err(error) => return self.abort(error.into()),
        }
        let neighbourhood = self.neighbourhood();
        for &from in &neighbourhood {
            if let Some(ad) = by_sender.get(&from)
                && !verifier.verify(
                    from,
                    &advertisement_message(&self.config, ad),
                    &ad.signature,
                )
            {
                return self.abort(ProtocolError::BadAdvertisement { from });
            }
        }
        let neighbours: Vec<u32> = neighbourhood
            .into_iter()
            .filter(|&v| v != self.me && by_sender.contains_key(&v))
            .collect();
        if neighbours.len() < self.config.threshold {
            return self.abort(ProtocolError::BelowThreshold {
                what: "advertised neighbours",
                remaining: neighbours.len(),
                threshold: self.config.threshold,
            });
        }
        let keys: Vec<(u32, [u8; 32], [u8; 32])> = by_sender
            .values()
            .map(|ad| (ad.from, ad.channel_public, ad.mask_public))
            .collect();
        let session = SessionId::derive(&self.config.job, self.config.round, &keys);
        let self_seed: [u8; 32] = random_bytes();
        // SecAgg+ shares among the neighbours only (Bell et al. 2020, §3): any `t` of them can
        // reconstruct, fewer learn nothing.
        let seed_shares = shamir::split(&self_seed, self.config.threshold, neighbours.len())?;
        let key_shares = shamir::split(
            &self.mask_secret.to_bytes(),
            self.config.threshold,
            neighbours.len(),
        )?;
        let mut out = Vec::with_capacity(neighbours.len());
        for ((holder, seed_share), key_share) in neighbours.iter().zip(seed_shares).zip(key_shares)
        {
            let peer = &by_sender[holder];
            let secret = agree(&self.channel_secret, &peer.channel_public, *holder)?;
            let key = channel_key(&secret, &session, self.me, *holder);
            let mut plaintext = seed_share.as_bytes().to_vec();
            plaintext.extend_from_slice(key_share.as_bytes());
            let data = shares_associated_data(&self.config, &graph_seed, self.me, *holder);
            out.push(EncryptedShares {
                from: self.me,
                to: *holder,
                ciphertext: seal(&key, &data, &plaintext),
            });
        }
        self.state = State::AwaitingShares {
            advertisements: by_sender,
            session,
            self_seed,
            graph_seed,
        };
        Ok(out)
    }

    /// Round 3: takes the shares addressed to this participant and returns its masked input.
    pub fn on_shares(
        &mut self,
        shares: Vec<EncryptedShares>,
        input: &[u32],
    ) -> Result<MaskedInput, ProtocolError> {
        let State::AwaitingShares {
            advertisements,
            session,
            self_seed,
            graph_seed,
        } = &self.state
        else {
            return Err(self.wrong_phase("shares"));
        };
        let (advertisements, session, self_seed, graph_seed) =
            (advertisements.clone(), *session, *self_seed, *graph_seed);
        if input.len() != self.config.vector_len {
            return self.abort(ProtocolError::WrongLength {
                from: self.me,
                actual: input.len(),
                expected: self.config.vector_len,
            });
        }
        let mut held = BTreeMap::new();
        for message in shares {
            let from = message.from;
            if message.to != self.me {
                return self.abort(ProtocolError::SharesForAnotherReceiver {
                    from,
                    to: message.to,
                    receiver: self.me,
                });
            }
            if !self
                .graph
                .as_ref()
                .is_some_and(|graph| graph.are_neighbours(self.me, from))
            {
                return self.abort(ProtocolError::ShareFromNonNeighbour { from, to: self.me });
            }
            let Some(peer) = advertisements.get(&from) else {
                return self.abort(ProtocolError::SharesFromUnadvertised { from });
            };
            let secret = agree(&self.channel_secret, &peer.channel_public, from)?;
            let key = channel_key(&secret, &session, from, self.me);
            let data = shares_associated_data(&self.config, &graph_seed, from, self.me);
            let Ok(plaintext) = open(&key, &data, &message.ciphertext) else {
                return self.abort(ProtocolError::UndecryptableShares { from });
            };
            if plaintext.len() != 2 * SHARE_BYTES {
                return self.abort(ProtocolError::MalformedShares {
                    from,
                    reason: format!(
                        "{} bytes, expected {} (two shares)",
                        plaintext.len(),
                        2 * SHARE_BYTES
                    ),
                });
            }
            let (seed_share, key_share) = match (
                Share::from_bytes(plaintext[..SHARE_BYTES].to_vec()),
                Share::from_bytes(plaintext[SHARE_BYTES..].to_vec()),
            ) {
                (Ok(seed_share), Ok(key_share)) => (seed_share, key_share),
                (Err(error), _) | (_, Err(error)) => {
                    return self.abort(ProtocolError::MalformedShares {
                        from,
                        reason: error.to_string(),
                    });
                }
            };
            if held.insert(from, (seed_share, key_share)).is_some() {
                return self.abort(ProtocolError::DuplicateShares { from, to: self.me });
            }
        }
        if held.len() < self.config.threshold {
            return self.abort(ProtocolError::BelowThreshold {
                what: "neighbours that shared keys",
                remaining: held.len(),
                threshold: self.config.threshold,
            });
        }
        // Mask with exactly the neighbours whose shares arrived: the coordinator can unmask a
        // pairwise mask only for a neighbour whose mask key it can reconstruct.
        let mut pairwise = Vec::with_capacity(held.len());
        for &v in held.keys() {
            pairwise.push((
                v,
                agree(&self.mask_secret, &advertisements[&v].mask_public, v)?,
            ));
        }
        let mut values = input.to_vec();
        mask_input(&mut values, self.me, &self_seed, &pairwise, &session);
        self.state = State::AwaitingSurvivors { held };
        Ok(MaskedInput {
            from: self.me,
            values,
        })
    }

    /// Round 4: signs the survivor set the coordinator shows.
    pub fn on_survivors(
        &mut self,
        survivors: Vec<u32>,
        signer: &dyn Signer,
    ) -> Result<SurvivorSignature, ProtocolError> {
        let State::AwaitingSurvivors { held } = &self.state else {
            return Err(self.wrong_phase("survivor set"));
        };
        let held = held.clone();
        let mut sorted = survivors.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            let participant = pair[0];
            return self.abort(ProtocolError::DuplicateSurvivor { participant });
        }
        if let Some(&participant) = sorted.last()
            && participant >= self.config.n_participants
        {
            return self.abort(ProtocolError::UnknownParticipant {
                message: "survivor set",
                participant,
                n_participants: self.config.n_participants,
            });
        }
        if !sorted.contains(&self.me) {
            return self.abort(ProtocolError::SurvivorSetWithoutSelf {
                participant: self.me,
            });
        }
        if sorted.len() < self.config.least_survivors() {
            return self.abort(ProtocolError::BelowThreshold {
                what: "survivors",
                remaining: sorted.len(),
                threshold: self.config.least_survivors(),
            });
        }
        let signature = signer.sign(&survivors_message(&self.config, &sorted));
        self.state = State::AwaitingSignatures {
            held,
            survivors: sorted,
        };
        Ok(SurvivorSignature {
            from: self.me,
            signature,
        })
    }

    /// Round 5: checks that at least `t` survivors of its neighbourhood (itself included) signed
    /// the same survivor set, then reveals,
    /// for each neighbour whose shares it holds, exactly one of its two shares.
    pub fn on_signatures(
        &mut self,
        signatures: Vec<SurvivorSignature>,
        verifier: &dyn Verifier,
    ) -> Result<Reveal, ProtocolError> {
        let State::AwaitingSignatures { held, survivors } = &self.state else {
            return Err(self.wrong_phase("survivor signatures"));
        };
        let (held, survivors) = (held.clone(), survivors.clone());
        let message = survivors_message(&self.config, &survivors);
        let checked = self.neighbourhood();
        let mut signers = std::collections::BTreeSet::new();
        for signature in &signatures {
            if !survivors.contains(&signature.from) {
                return self.abort(ProtocolError::SignatureFromNonSurvivor {
                    from: signature.from,
                });
            }
            if !checked.contains(&signature.from) {
                continue;
            }
            if !verifier.verify(signature.from, &message, &signature.signature) {
                return self.abort(ProtocolError::InconsistentSurvivors {
                    from: signature.from,
                });
            }
            if !signers.insert(signature.from) {
                return self.abort(ProtocolError::DuplicateSignature {
                    from: signature.from,
                });
            }
        }
        if signers.len() < self.config.threshold {
            return self.abort(ProtocolError::BelowThreshold {
                what: "survivor signatures",
                remaining: signers.len(),
                threshold: self.config.threshold,
            });
        }
        let mut reveal = Reveal {
            from: self.me,
            self_mask_shares: Vec::new(),
            mask_key_shares: Vec::new(),
        };
        for (owner, (seed_share, key_share)) in held {
            if survivors.contains(&owner) {
                reveal.self_mask_shares.push((owner, seed_share));
            } else {
                reveal.mask_key_shares.push((owner, key_share));
            }
        }
        self.state = State::Done;
        Ok(reveal)
    }
}
