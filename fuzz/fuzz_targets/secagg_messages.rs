//! Feeds arbitrary bytes, decoded as the secure-aggregation messages of the wire protocol, to
//! both role machines: whatever the coordinator relays reaches a participant's machine, whatever
//! a participant sends reaches the coordinator's. Bad keys, shares, ciphertexts, indices and
//! survivor sets are refused with an error, never a panic. Messages pass through
//! `cairn_proto::secagg`'s checked conversions first, as they do in both roles.

#![no_main]

use cairn_proto::secagg::checked_certificate;
use cairn_proto::v1::{
    CoordinatorMessage, ParticipantMessage, coordinator_message, participant_message,
};
use cairn_secagg::protocol::{
    CoordinatorMachine, MaskedInput, ParticipantMachine, RoundConfig, Signer, SurvivorSignature,
    Verifier,
};
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

fn config() -> RoundConfig {
    let roster: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    RoundConfig::derive("fuzz", 1, 1, &roster, 3, 2, 8).expect("valid setup")
}

fn to_participant(data: &[u8]) {
    let Ok(message) = CoordinatorMessage::decode(data) else {
        return;
    };
    let (mut machine, _) = ParticipantMachine::new(config(), 0, &AcceptAll);
    let input = vec![7u32; 8];
    // The checked conversions both roles use: what they refuse never reaches a machine.
    match message.body {
        Some(coordinator_message::Body::Advertisements(list)) => {
            let ads: Result<Vec<_>, _> = list
                .advertisements
                .into_iter()
                .map(|ad| ad.into_parts().map(|(ad, _certificate)| ad))
                .collect();
            if let Ok(ads) = ads {
                let _ = machine.on_advertisements(ads);
            }
        }
        Some(coordinator_message::Body::GraphNonces(list)) => {
            if let Ok((nonces, _certificates)) = list.into_parts() {
                let _ = machine.on_nonces(nonces, &AcceptAll);
            }
        }
        Some(coordinator_message::Body::Shares(list)) => {
            if let Ok(shares) = list.into_shares() {
                let _ = machine.on_shares(shares, &input);
            }
        }
        Some(coordinator_message::Body::Survivors(list)) => {
            let _ = machine.on_survivors(list.survivors, &AcceptAll);
        }
        Some(coordinator_message::Body::SurvivorSignatures(list)) => {
            if let Ok(signatures) = list.into_signatures() {
                let _ = machine.on_signatures(signatures, &AcceptAll);
            }
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
            if let Ok((advertisement, certificate)) = ad.into_parts()
                && checked_certificate(certificate).is_ok()
            {
                let _ = machine.on_advertisement(advertisement.from, advertisement);
                let _ = machine.close_advertisements();
            }
        }
        Some(participant_message::Body::GraphNonce(nonce)) => {
            if let Ok(nonce) = nonce.into_nonce() {
                let _ = machine.on_nonce(nonce.from, nonce);
                let _ = machine.close_nonces();
            }
        }
        Some(participant_message::Body::Shares(list)) => {
            let from = list.attempt % 4;
            if let Ok(shares) = list.into_shares() {
                let _ = machine.on_shares(from, shares);
            }
        }
        Some(participant_message::Body::Reveal(reveal)) => {
            let from = (reveal.round % 4) as u32;
            if let Ok(reveal) = reveal.into_reveal(from) {
                let _ = machine.on_reveal(reveal);
                let _ = machine.finish();
            }
        }
        Some(participant_message::Body::SurvivorSignature(s)) => {
            if let Ok(signature) = SurvivorSignature::try_from(s) {
                let _ = machine.on_signature(signature);
            }
        }
        Some(participant_message::Body::MaskedInput(header)) => {
            let from = header.attempt;
            // The header's own check first, as the coordinator's session makes it; the values
            // fed to the machine come from the header's bytes, since no chunks follow here.
            let values: Vec<u32> = header
                .transfer
                .as_ref()
                .map(|t| t.sha256.iter().map(|&b| u32::from(b)).collect())
                .unwrap_or_default();
            let _ = header.checked_transfer(8);
            let _ = machine.on_masked_input(MaskedInput { from, values });
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    to_participant(data);
    to_coordinator(data);
});
