//! The participant's identity in secure aggregation: it signs its advertised keys and the
//! survivor set with the private key of its mTLS certificate ([`KitSigner`]), and checks its
//! neighbours' signatures against their certificates, each verified against the federation CA
//! and required to name the participant it claims to be ([`FederationVerifier`]). The
//! coordinator relays certificates and signatures but cannot forge either.

use crate::Error;
use cairn_secagg::protocol::{Signer, Verifier};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::collections::BTreeMap;

fn identity_error(subject: impl Into<String>, reason: String) -> Error {
    Error::Identity {
        subject: subject.into(),
        reason,
    }
}

/// Signs with the kit's private key (ECDSA P-256, as `provision` creates it).
pub struct KitSigner {
    key: EcdsaKeyPair,
    random: SystemRandom,
}

impl std::fmt::Debug for KitSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KitSigner { .. }")
    }
}

impl KitSigner {
    /// The signer for a PKCS#8 PEM private key (`key.pem` of a kit).
    pub fn from_pem(key_pem: &str) -> Result<KitSigner, Error> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| identity_error("key.pem", format!("is not a PKCS#8 private key: {e}")))?;
        let random = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &random,
        )
        .map_err(|e| identity_error("key.pem", format!("is not an ECDSA P-256 key: {e}")))?;
        Ok(KitSigner { key, random })
    }
}

impl Signer for KitSigner {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        // Invariant: signing with a valid P-256 key and the system RNG does not fail.
        self.key
            .sign(&self.random, message)
            .expect("ECDSA signing")
            .as_ref()
            .to_vec()
    }
}

/// Verifies neighbours' signatures with their certificates, each checked against the CA.
#[derive(Debug)]
pub struct FederationVerifier {
    certificates: BTreeMap<u32, CertificateDer<'static>>,
}

impl FederationVerifier {
    /// Checks every `(index, expected participant id, certificate)`: the certificate must chain
    /// to the federation CA (`ca_pem`), be valid now, be meant for client authentication, and
    /// carry the expected id as its common name. Any failure is an error that names the index.
    pub fn new(
        ca_pem: &str,
        peers: Vec<(u32, String, Vec<u8>)>,
    ) -> Result<FederationVerifier, Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut certificates = BTreeMap::new();
        for (index, expected_id, der) in peers {
            let subject = || format!("certificate of participant {index}");
            let identity = cairn_identity::verify_participant_certificate(ca_pem, &der, now)
                .map_err(|e| match e {
                    cairn_identity::Error::UnusableCertificate { reason } => {
                        identity_error(subject(), reason)
                    }
                    other => identity_error(subject(), other.to_string()),
                })?;
            if identity.id != expected_id {
                return Err(identity_error(
                    subject(),
                    format!("names {:?}, expected {expected_id:?}", identity.id),
                ));
            }
            let der = CertificateDer::from(der);
            certificates.insert(index, der.into_owned());
        }
        Ok(FederationVerifier { certificates })
    }
}

impl Verifier for FederationVerifier {
    fn verify(&self, participant: u32, message: &[u8], signature: &[u8]) -> bool {
        let Some(der) = self.certificates.get(&participant) else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return false;
        };
        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_identity::{Authority, Issued};
    use cairn_secagg::protocol::{ParticipantMachine, ProtocolError, RoundConfig};

    const IDS: [&str; 3] = ["alpha", "bravo", "charlie"];

    /// A federation's CA and its participants' kits, in memory.
    struct Federation {
        ca: Authority,
        kits: Vec<Issued>,
        server: Issued,
    }

    fn federation() -> Federation {
        let ca = Authority::generate("test", 1).unwrap();
        let kits = IDS
            .iter()
            .map(|id| ca.issue_participant(id, id, 1).unwrap())
            .collect();
        let server = ca.issue_server(&["localhost".into()], 1).unwrap();
        Federation { ca, kits, server }
    }

    fn der(pem: &str) -> Vec<u8> {
        cairn_identity::certificate_der(pem, "test").unwrap()
    }

    impl Federation {
        fn cert_der(&self, id: &str) -> Vec<u8> {
            let index = IDS.iter().position(|i| *i == id).unwrap();
            der(&self.kits[index].cert_pem)
        }

        fn signer(&self, id: &str) -> KitSigner {
            let index = IDS.iter().position(|i| *i == id).unwrap();
            KitSigner::from_pem(&self.kits[index].key_pem).unwrap()
        }

        fn verifier(&self) -> FederationVerifier {
            let peers = IDS
                .iter()
                .enumerate()
                .map(|(i, id)| (i as u32, id.to_string(), self.cert_der(id)))
                .collect();
            FederationVerifier::new(self.ca.cert_pem(), peers).unwrap()
        }
    }

    #[test]
    fn kit_signatures_verify_against_the_signers_certificate_only() {
        let federation = federation();
        let verifier = federation.verifier();
        let signature = federation.signer("alpha").sign(b"job|1|keys");
        assert!(verifier.verify(0, b"job|1|keys", &signature));
        assert!(
            !verifier.verify(0, b"job|2|keys", &signature),
            "another message"
        );
        assert!(
            !verifier.verify(1, b"job|1|keys", &signature),
            "another participant's certificate"
        );
        assert!(
            !verifier.verify(9, b"job|1|keys", &signature),
            "an unknown participant"
        );
    }

    #[test]
    fn certificates_from_another_ca_of_another_identity_or_for_servers_are_refused() {
        let (ours, theirs) = (federation(), federation());
        let ca = ours.ca.cert_pem();
        let err = FederationVerifier::new(ca, vec![(0, "alpha".into(), theirs.cert_der("alpha"))])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("participant 0 is not from the federation CA"),
            "{err}"
        );
        let err = FederationVerifier::new(ca, vec![(1, "bravo".into(), ours.cert_der("alpha"))])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("names \"alpha\", expected \"bravo\""),
            "{err}"
        );
        let server = der(&ours.server.cert_pem);
        let err = FederationVerifier::new(ca, vec![(0, "localhost".into(), server)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("participant 0 is not from the federation CA"),
            "a server certificate is not for client authentication: {err}"
        );
        assert!(KitSigner::from_pem("not a key").is_err());
    }

    #[test]
    fn advertisements_signed_with_kit_keys_pass_the_protocol_check_and_substitutions_do_not() {
        let federation = federation();
        let verifier = federation.verifier();
        let config = RoundConfig {
            job: "job".into(),
            round: 1,
            context: [0; 32],
            n_participants: 3,
            threshold: 2,
            degree: 2,
            vector_len: 8,
            min_survivors: 0,
        };
        let (mut machines, ads): (Vec<ParticipantMachine>, Vec<_>) = IDS
            .iter()
            .enumerate()
            .map(|(i, id)| {
                ParticipantMachine::new(config.clone(), i as u32, &federation.signer(id))
            })
            .unzip();
        let mut substituted = ads.clone();
        substituted[2].channel_public = [9u8; 32];
        let nonces: Vec<_> = machines
            .iter_mut()
            .enumerate()
            .map(|(i, machine)| {
                let shown = if i == 1 { &substituted } else { &ads };
                machine.on_advertisements(shown.clone()).unwrap()
            })
            .collect();
        assert_eq!(
            machines[0]
                .on_nonces(nonces.clone(), &verifier)
                .unwrap()
                .len(),
            2
        );
        let err = machines[1].on_nonces(nonces, &verifier).unwrap_err();
        assert_eq!(err, ProtocolError::BadAdvertisement { from: 2 });
    }
}
