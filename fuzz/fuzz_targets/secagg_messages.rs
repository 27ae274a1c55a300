//! Feeds arbitrary bytes, decoded as the secure-aggregation messages of the wire protocol, to
//! both role machines: whatever the coordinator relays reaches a participant's machine, whatever
//! a participant sends reaches the coordinator's. Bad keys, shares, ciphertexts, indices and
//! survivor sets are refused with an error, never a panic.

#![no_main]

use cairn_proto::v1::{
    CoordinatorMessage, ParticipantMessage, coordinator_message, participant_message,
};
use cairn_secagg::protocol::{
    Advertisement, CoordinatorMachine, EncryptedShares, MaskedInput, ParticipantMachine, Reveal,
    RoundConfig, Signer, SurvivorSignature, Verifier,
};
use cairn_secagg::shamir::Share;
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct AcceptAll;
impl Signer for AcceptAll {
    fn sign(&self, _: &[u8]) -> Vec<u8> {
        vec![1]
    }
}
impl Verifier for AcceptAll {
    fn verify(&self, _: u32, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

fn key(bytes: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    let n = bytes.len().min(32);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

fn config() -> RoundConfig {
    let roster: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    RoundConfig::derive("fuzz", 1, 1, &roster, 3, 2, 8).expect("valid setup")
}

fn shares(list: Vec<cairn_proto::v1::RevealedShare>) -> Vec<(u32, Share)> {
    list.into_iter()
        .filter_map(|s| {
            Share::from_bytes(s.share)
                .ok()
                .map(|share| (s.owner, share))
        })
        .collect()
}

fn to_participant(data: &[u8]) {
    let Ok(message) = CoordinatorMessage::decode(data) else {
        return;
    };
    let (mut machine, _) = ParticipantMachine::new(config(), 0, &AcceptAll);
    let input = vec![7u32; 8];
    match message.body {
        Some(coordinator_message::Body::Advertisements(list)) => {
            let ads = list
                .advertisements
                .into_iter()
                .map(|ad| Advertisement {
                    from: ad.index,
                    channel_public: key(&ad.channel_public),
                    mask_public: key(&ad.mask_public),
                    signature: ad.signature,
                })
                .collect();
            let _ = machine.on_advertisements(ads, &AcceptAll);
        }
        Some(coordinator_message::Body::Shares(list)) => {
            let shares = list
                .shares
                .into_iter()
                .map(|s| EncryptedShares {
                    from: s.from,
                    to: s.to,
                    ciphertext: s.ciphertext,
                })
                .collect();
            let _ = machine.on_shares(shares, &input);
        }
        Some(coordinator_message::Body::Survivors(list)) => {
            let _ = machine.on_survivors(list.survivors, &AcceptAll);
        }
        Some(coordinator_message::Body::SurvivorSignatures(list)) => {
            let signatures = list
                .signatures
                .into_iter()
                .map(|s| SurvivorSignature {
                    from: s.index,
                    signature: s.signature,
                })
                .collect();
            let _ = machine.on_signatures(signatures, &AcceptAll);
        }
        _ => {}
    }
}

fn to_coordinator(data: &[u8]) {
    let Ok(message) = ParticipantMessage::decode(data) else {
        return;
    };
    let mut machine = CoordinatorMachine::new(config());
    match message.body {
        Some(participant_message::Body::Advertisement(ad)) => {
            let advertisement = Advertisement {
                from: ad.index,
                channel_public: key(&ad.channel_public),
                mask_public: key(&ad.mask_public),
                signature: ad.signature,
            };
            let _ = machine.on_advertisement(ad.index, advertisement);
            let _ = machine.close_advertisements();
        }
        Some(participant_message::Body::Shares(list)) => {
            let shares = list
                .shares
                .into_iter()
                .map(|s| EncryptedShares {
                    from: s.from,
                    to: s.to,
                    ciphertext: s.ciphertext,
                })
                .collect();
            let from = list.attempt % 4;
            let _ = machine.on_shares(from, shares);
        }
        Some(participant_message::Body::Reveal(reveal)) => {
            let reveal = Reveal {
                from: (reveal.round % 4) as u32,
                self_mask_shares: shares(reveal.self_mask_shares),
                mask_key_shares: shares(reveal.mask_key_shares),
            };
            let _ = machine.on_reveal(reveal);
            let _ = machine.finish();
        }
        Some(participant_message::Body::SurvivorSignature(s)) => {
            let _ = machine.on_signature(SurvivorSignature {
                from: s.index,
                signature: s.signature,
            });
        }
        Some(participant_message::Body::MaskedInput(header)) => {
            let values = header
                .transfer
                .map(|t| t.sha256.iter().map(|&b| u32::from(b)).collect())
                .unwrap_or_default();
            let _ = machine.on_masked_input(MaskedInput {
                from: header.attempt,
                values,
            });
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    to_participant(data);
    to_coordinator(data);
});
