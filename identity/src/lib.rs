//! `cairn-identity`: who is who in a federation, the rules both roles depend on. A participant's
//! identity is the common name of a client certificate issued by the federation's CA and marked
//! with the [`PARTICIPANT_UNIT`]; the coordinator's certificate is marked with the
//! [`COORDINATOR_UNIT`]. This crate holds those rules once: what a valid participant id is
//! ([`check_participant_id`]), how the CA issues certificates ([`Authority`]), how a site makes
//! its own key and signing request ([`certificate_request`]), and how an identity is read back
//! out of a certificate ([`identity_of`]) or a signature checked against one
//! ([`verify_signature`]), and the CA's revocation list: made by [`Authority::revoke`], read back
//! verified by [`RevocationList::from_pem`]. Where certificates are written to disk is the
//! coordinator's provisioning; checking a chain during secure aggregation is the participant's.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly by design.

mod revocation;

pub use revocation::{RevocationList, serial_of};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// Organisational unit that marks a participant certificate.
pub const PARTICIPANT_UNIT: &str = "participant";
/// Organisational unit of the coordinator's certificate.
pub const COORDINATOR_UNIT: &str = "coordinator";

/// What a valid participant or job name is, in words, for error messages.
pub const NAME_RULE: &str =
    "1-63 lowercase letters, digits or '-', not starting or ending with '-'";

/// Everything that can go wrong with identities and certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A participant id does not follow [`NAME_RULE`].
    #[error("participant id {id:?} is invalid; expected {NAME_RULE}")]
    InvalidParticipantId {
        /// The id as given.
        id: String,
    },
    /// A server name is neither an IP address nor a DNS name.
    #[error(
        "server name {name:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.')"
    )]
    InvalidServerName {
        /// The name as given.
        name: String,
    },
    /// A certificate or key was asked for with no server name.
    #[error(
        "no server name given; pass the DNS names or IP addresses participants dial (e.g. --server-name localhost)"
    )]
    NoServerName,
    /// A certificate signing request cannot be used.
    #[error("certificate signing request {reason}")]
    UnusableRequest {
        /// What is wrong with it, and what was expected.
        reason: String,
    },
    /// A PEM text holds no certificate.
    #[error("{what} holds no usable certificate: {source}")]
    NotACertificate {
        /// Which text ("cert.pem", "the CA certificate").
        what: String,
        /// What the PEM reader found.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate cannot be parsed, or lacks what an identity needs.
    #[error("certificate {reason}")]
    UnusableCertificate {
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate revocation list cannot be used: malformed, or not the federation CA's.
    #[error("revocation list {reason}")]
    UnusableRevocationList {
        /// What is wrong with it, and what was expected.
        reason: String,
    },
    /// A certificate is on the federation's revocation list.
    #[error(
        "certificate of {id:?} (serial {serial}) is revoked by the federation's revocation list"
    )]
    Revoked {
        /// The participant id (common name) the certificate names.
        id: String,
        /// Its serial number, in lowercase hex.
        serial: String,
    },
    /// rcgen could not make or read a key, a certificate or a request.
    #[error("{what}: {source}")]
    Certificate {
        /// What was being made or read.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
}

/// Whether `name` is a valid participant or job name: a DNS label (lowercase letters, digits,
/// `-`, starting and ending with a letter or digit, at most 63 characters), so that it can name
/// a certificate, a Helm release and a Kubernetes object alike.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// `Ok` when `id` is a valid participant id ([`is_valid_name`]).
pub fn check_participant_id(id: &str) -> Result<(), Error> {
    if is_valid_name(id) {
        Ok(())
    } else {
        Err(Error::InvalidParticipantId { id: id.to_string() })
    }
}

fn rcgen_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |source| Error::Certificate { what, source }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Backdated an hour so that a peer whose clock is slightly behind accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// A fresh random serial number (16 bytes, the top bit clear so that it stays positive).
/// Without one, rcgen derives the serial from the public key, and two certificates for one key
/// (a renewal from the same request) would share it: revoking one would revoke both, and RFC
/// 5280 wants serials unique per CA.
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        Error::UnusableCertificate {
            reason: "serial number: the system's random generator failed".into(),
        }
    })?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A certificate and its freshly generated private key, both PEM (the key PKCS#8).
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key: as secret as the identity it proves.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A participant certificate issued for a signing request: the key stayed with the requester.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// The participant id the request named.
    pub id: String,
    /// Its organisation (the id when the request named none).
    pub organisation: String,
    /// The certificate (PEM).
    pub cert_pem: String,
}

/// The federation's certificate authority, ready to issue certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA for `federation`, valid for `validity_days` (at least ten years, so that it
    /// outlives the certificates it issues).
    pub fn generate(federation: &str, validity_days: u32) -> Result<Authority, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{federation} federation CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Cairn");
        validity(&mut params, validity_days.max(3650));
        let key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("CA certificate"))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA whose certificate and key are `cert_pem` and `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA's certificate (PEM): what every party trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM): whoever holds it mints identities.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A participant certificate for `id` of `organisation`, with a new key.
    pub fn issue_participant(
        &self,
        id: &str,
        organisation: &str,
        validity_days: u32,
    ) -> Result<Issued, Error> {
        self.issue(&participant_params(id, organisation, validity_days)?)
    }

    /// The coordinator's server certificate for `server_names` (DNS names or IP addresses; the
    /// first is also its common name), with a new key.
    pub fn issue_server(
        &self,
        server_names: &[String],
        validity_days: u32,
    ) -> Result<Issued, Error> {
        let first = server_names.first().ok_or(Error::NoServerName)?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(rcgen_error("server certificate"))?;
        for name in server_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(name) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(rcgen_error(format!("server name {name:?}")))?,
                ),
                Err(_) => return Err(Error::InvalidServerName { name: name.clone() }),
            };
            params.subject_alt_names.push(san);
        }
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.clone());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, COORDINATOR_UNIT);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        validity(&mut params, validity_days);
        self.issue(&params)
    }

    /// Signs a participant's certificate signing request: the private key never left the
    /// participant's site. The request's signature must verify, its key must be ECDSA P-256
    /// (the participant signs secure-aggregation messages with it), and its common name must be
    /// a valid participant id. The certificate's subject is rebuilt from those (id,
    /// organisation, participant unit) whatever else the request asks for.
    pub fn sign_request(&self, csr_pem: &str, validity_days: u32) -> Result<SignedRequest, Error> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::UnusableRequest {
                reason: format!("is not a valid, correctly signed PEM request: {e}"),
            }
        })?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::UnusableRequest {
                reason: "has a key that is not ECDSA P-256; expected one from `cairn-participant request`".into(),
            });
        }
        let subject = &csr.params.distinguished_name;
        let text = |kind: DnType| subject.get(&kind).map(dn_text).unwrap_or_default();
        let id = text(DnType::CommonName);
        if !is_valid_name(&id) {
            return Err(Error::UnusableRequest {
                reason: format!("names participant {id:?}; expected {NAME_RULE}"),
            });
        }
        let organisation = match text(DnType::OrganizationName) {
            o if o.is_empty() => id.clone(),
            o => o,
        };
        let mut signed = csr;
        signed.params = participant_params(&id, &organisation, validity_days)?;
        let cert = signed
            .signed_by(&self.issuer)
            .map_err(rcgen_error(format!("signing the certificate of {id}")))?;
        Ok(SignedRequest {
            id,
            organisation,
            cert_pem: cert.pem(),
        })
    }

    fn issue(&self, params: &CertificateParams) -> Result<Issued, Error> {
        let key = KeyPair::generate().map_err(rcgen_error("key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error("signing"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The parameters of a participant certificate for `id` of `organisation`.
fn participant_params(
    id: &str,
    organisation: &str,
    validity_days: u32,
) -> Result<CertificateParams, Error> {
    check_participant_id(id)?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(rcgen_error(format!("certificate of {id}")))?;
    params.distinguished_name = participant_name(id, organisation);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    validity(&mut params, validity_days);
    Ok(params)
}

/// The subject of participant `id`'s certificate.
fn participant_name(id: &str, organisation: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, id);
    name.push(DnType::OrganizationName, organisation);
    name.push(DnType::OrganizationalUnitName, PARTICIPANT_UNIT);
    name
}

fn dn_text(value: &rcgen::DnValue) -> String {
    match value {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        _ => String::new(),
    }
}

/// Whether `name` is a DNS name: dot-separated labels of 1-63 letters, digits or `-`, not
/// starting or ending with `-`, at most 253 characters in all.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a certificate signing request (PEM) for participant
/// `id` of `organisation`, for the federation CA to sign: the key never leaves this site.
pub fn certificate_request(id: &str, organisation: &str) -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_error("certificate request key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("certificate request"))?;
    params.distinguished_name = participant_name(id, organisation);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(rcgen_error("certificate request"))?;
    Ok((key.serialize_pem(), csr))
}

/// The DER bytes of the first certificate in `pem`; `what` names the text in the error.
pub fn certificate_der(pem: &str, what: &str) -> Result<Vec<u8>, Error> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|source| Error::NotACertificate {
            what: what.to_string(),
            source,
        })
}

/// Whether `signature` (ECDSA P-256, SHA-256, ASN.1) over `message` was made with the key of
/// `certificate` (DER).
pub fn verify_signature(certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(certificate) else {
        return false;
    };
    let point = cert.public_key().subject_public_key.data.as_ref();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature)
        .is_ok()
}

/// What a participant signs to countersign the record of `round` in the job named `job`, whose
/// line in `rounds.jsonl` has the SHA-256 `record_sha256`: a domain-separated statement that
/// names the job and the round, so that a signature is valid for that record of that job only.
/// The record itself names the job definition's digest and links to every record before it.
pub fn countersigned_message(job: &str, round: u64, record_sha256: &[u8]) -> Vec<u8> {
    let mut message = b"cairn round record countersignature v1\0".to_vec();
    message.extend_from_slice(&(job.len() as u64).to_be_bytes());
    message.extend_from_slice(job.as_bytes());
    message.extend_from_slice(&round.to_be_bytes());
    message.extend_from_slice(record_sha256);
    message
}

/// Checks a participant's certificate (DER) against the federation CA (`ca_pem`) as of `at`
/// (seconds since the Unix epoch): it chains to the CA, is valid then, is meant for client
/// authentication and is marked as a participant's. Returns the identity it names.
pub fn verify_participant_certificate(
    ca_pem: &str,
    der: &[u8],
    at: std::time::Duration,
) -> Result<CertificateIdentity, Error> {
    let unusable = |reason: String| Error::UnusableCertificate { reason };
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|source| {
        Error::NotACertificate {
            what: "the CA certificate".into(),
            source,
        }
    })?;
    let anchor = webpki::anchor_from_trusted_cert(&ca)
        .map_err(|e| unusable(format!("of the CA is unusable: {e}")))?;
    let der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| unusable(format!("cannot be parsed: {e}")))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        std::slice::from_ref(&anchor),
        &[],
        rustls_pki_types::UnixTime::since_unix_epoch(at),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| unusable(format!("is not from the federation CA: {e}")))?;
    let identity = identity_of(&der)?;
    if !identity.is_participant() {
        return Err(unusable(format!(
            "of {:?} is marked OU={:?}, expected OU={PARTICIPANT_UNIT:?}: the CA issued it to something other than a participant",
            identity.id, identity.unit
        )));
    }
    Ok(identity)
}

/// A certificate's fingerprint: `sha256:` and the lowercase hex SHA-256 of its DER, the form in
/// which sites exchange and pin each other's certificates (a participant's `--partners` file).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The identity in a certificate (DER): its common name, its organisation, and its
/// organisational unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// Common name: the participant id.
    pub id: String,
    /// Organisation name (empty when absent).
    pub organisation: String,
    /// Organisational unit ([`PARTICIPANT_UNIT`] for participant certificates).
    pub unit: String,
}

impl CertificateIdentity {
    /// Whether the certificate is marked as a participant's.
    pub fn is_participant(&self) -> bool {
        self.unit == PARTICIPANT_UNIT
    }
}

/// Reads the identity out of a certificate. It does not verify the certificate: call it on one
/// that TLS or webpki has already verified against the CA.
pub fn identity_of(der: &[u8]) -> Result<CertificateIdentity, Error> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::UnusableCertificate {
            reason: format!("cannot be parsed: {e}"),
        })?;
    let subject = cert.subject();
    let first =
        |attributes: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            attributes
                .next()
                .and_then(|a| a.as_str().ok())
                .unwrap_or_default()
                .to_string()
        };
    let id = first(&mut subject.iter_common_name());
    if id.is_empty() {
        return Err(Error::UnusableCertificate {
            reason: "has no common name".into(),
        });
    }
    Ok(CertificateIdentity {
        id,
        organisation: first(&mut subject.iter_organization()),
        unit: first(&mut subject.iter_organizational_unit()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        certificate_der(pem, "test").unwrap()
    }

    #[test]
    fn participant_ids_are_dns_labels() {
        for good in ["a", "alpha", "site-7", &"x".repeat(63)] {
            assert!(check_participant_id(good).is_ok(), "{good}");
        }
        for bad in ["", "Alpha", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            let err = check_participant_id(bad).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains(NAME_RULE),
                "{err}"
            );
        }
    }

    #[test]
    fn issued_certificates_carry_their_identity_and_verify_their_keys_signatures() {
        let ca = Authority::generate("test", 1).unwrap();
        let alpha = ca.issue_participant("alpha", "Alpha Hospital", 1).unwrap();
        let identity = identity_of(&der(&alpha.cert_pem)).unwrap();
        assert_eq!(
            identity,
            CertificateIdentity {
                id: "alpha".into(),
                organisation: "Alpha Hospital".into(),
                unit: PARTICIPANT_UNIT.into(),
            }
        );
        assert!(identity.is_participant());
        let server = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()], 1)
            .unwrap();
        let server_identity = identity_of(&der(&server.cert_pem)).unwrap();
        assert_eq!(server_identity.unit, COORDINATOR_UNIT);
        assert!(!server_identity.is_participant());

        let key = KeyPair::from_pem(&alpha.key_pem).unwrap();
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        let signature = signer.sign(&rng, b"message").unwrap();
        assert!(verify_signature(
            &der(&alpha.cert_pem),
            b"message",
            signature.as_ref()
        ));
        assert!(!verify_signature(
            &der(&alpha.cert_pem),
            b"other",
            signature.as_ref()
        ));
        assert!(!verify_signature(
            &der(&server.cert_pem),
            b"message",
            signature.as_ref()
        ));
        assert!(!verify_signature(
            b"not a certificate",
            b"message",
            signature.as_ref()
        ));

        // The CA survives a round trip through its PEM files.
        let reloaded = Authority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(reloaded.issue_participant("beta", "Beta", 1).is_ok());
    }

    #[test]
    fn bad_names_and_texts_are_refused_by_name() {
        let ca = Authority::generate("test", 1).unwrap();
        let err = ca.issue_participant("Bad_Id", "x", 1).unwrap_err();
        assert!(matches!(err, Error::InvalidParticipantId { ref id } if id == "Bad_Id"));
        let err = ca.issue_server(&["not a host!".into()], 1).unwrap_err();
        assert!(matches!(err, Error::InvalidServerName { ref name } if name == "not a host!"));
        assert!(matches!(ca.issue_server(&[], 1), Err(Error::NoServerName)));
        let err = certificate_der("not pem", "cert.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cert.pem holds no usable certificate"),
            "{err}"
        );
        let err = identity_of(b"garbage").unwrap_err().to_string();
        assert!(err.contains("cannot be parsed"), "{err}");
        assert!(Authority::from_pem("x", "y").is_err());
    }

    #[test]
    fn a_request_is_signed_with_its_own_key_and_a_rebuilt_subject() {
        let ca = Authority::generate("test", 1).unwrap();
        let (key, csr) = certificate_request("delta", "Delta Lab").unwrap();
        let signed = ca.sign_request(&csr, 1).unwrap();
        assert_eq!(
            (signed.id.as_str(), signed.organisation.as_str()),
            ("delta", "Delta Lab")
        );
        let cert_der = der(&signed.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            KeyPair::from_pem(&key).unwrap().public_key_raw()
        );
        assert!(identity_of(&cert_der).unwrap().is_participant());

        let (_, bad_id) = certificate_request("Bad_Id", "x").unwrap();
        let err = ca.sign_request(&bad_id, 1).unwrap_err().to_string();
        assert!(err.contains("names participant \"Bad_Id\""), "{err}");
        let err = ca.sign_request("garbage", 1).unwrap_err().to_string();
        assert!(err.contains("not a valid, correctly signed"), "{err}");
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "echo");
        let csr = params.serialize_request(&p384).unwrap().pem().unwrap();
        let err = ca.sign_request(&csr, 1).unwrap_err().to_string();
        assert!(err.contains("not ECDSA P-256"), "{err}");
    }
}
