//! Revocation: the federation CA's certificate revocation list (RFC 5280, section 5). The CA
//! makes and re-signs it ([`Authority::revoke`]); both roles read it back verified
//! ([`RevocationList::from_pem`]: signed by the federation CA and naming it as issuer, or
//! refused) and ask whether a certificate is on it ([`RevocationList::check`]). The list is a
//! file that reaches each party out of band, so it is hostile input until its signature
//! verifies. rcgen writes it and x509-parser reads it and checks its signature (with ring).

use crate::{Authority, Error, identity_of, rcgen_error};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

/// A certificate revocation list of the federation CA, read and verified against the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Each revoked serial number (big-endian, without leading zero bytes), with the Unix time
    /// at which it was revoked.
    revoked: BTreeMap<Vec<u8>, i64>,
    /// The list's CRL number: each list the CA signs has a larger one than the last.
    number: u64,
    /// The Unix time of the list's next update, after which it is stale; `None`: it states none.
    next_update: Option<i64>,
}

/// A serial number as written in the certificate (DER INTEGER contents, possibly with a leading
/// zero byte), reduced to the form in which two serials compare equal.
fn canonical_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

/// A serial number in lowercase hex, as `openssl x509 -serial` shows it.
fn hex(serial: &[u8]) -> String {
    if serial.is_empty() {
        return "00".into();
    }
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

fn unusable(reason: impl Into<String>) -> Error {
    Error::UnusableRevocationList {
        reason: reason.into(),
    }
}

/// A certificate (DER) parsed; `what` says which one in the error ("", "of the CA", ...).
fn parse<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, Error> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| Error::UnusableCertificate {
            reason: format!("{what}cannot be parsed: {e}"),
        })
}

/// The serial number of a certificate (DER), in lowercase hex.
pub fn serial_of(certificate: &[u8]) -> Result<String, Error> {
    let cert = parse(certificate, "")?;
    Ok(hex(&canonical_serial(cert.raw_serial())))
}

impl RevocationList {
    /// Reads a revocation list (PEM, `-----BEGIN X509 CRL-----`) and verifies it against the
    /// federation CA (`ca_pem`): it must name the CA as its issuer and carry the CA's signature.
    /// A list from another CA, altered, or malformed is refused with what was expected.
    pub fn from_pem(crl_pem: &str, ca_pem: &str) -> Result<RevocationList, Error> {
        let der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).map_err(|e| {
            unusable(format!(
                "holds no PEM block \"X509 CRL\" ({e}); expected one from `cairn-coordinator revoke`"
            ))
        })?;
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| unusable(format!("cannot be parsed as a revocation list: {e}")))?;
        let ca_der = crate::certificate_der(ca_pem, "the CA certificate")?;
        let ca = parse(&ca_der, "of the CA ")?;
        if crl.issuer().as_raw() != ca.subject().as_raw() {
            return Err(unusable(format!(
                "is issued by \"{}\"; expected the federation CA \"{}\"",
                crl.issuer(),
                ca.subject()
            )));
        }
        crl.verify_signature(ca.public_key()).map_err(|e| {
            unusable(format!(
                "is not signed by the federation CA \"{}\" ({e}); expected a list signed with its key",
                ca.subject()
            ))
        })?;
        let number = match crl.crl_number() {
            None => 0,
            Some(number) => u64::try_from(number)
                .map_err(|_| unusable(format!("has CRL number {number}, beyond 64 bits")))?,
        };
        let revoked = crl
            .iter_revoked_certificates()
            .map(|entry| {
                (
                    canonical_serial(entry.raw_serial()),
                    entry.revocation_date.timestamp(),
                )
            })
            .collect();
        let next_update = crl.next_update().map(|at| at.timestamp());
        Ok(RevocationList {
            revoked,
            number,
            next_update,
        })
    }

    /// The list while it is current: a list past its next update is refused, so that a party
    /// handed an old list (which may lack later revocations) says so instead of trusting it.
    /// The CA signs it again with `cairn-coordinator revoke --renew`.
    pub fn current(self) -> Result<RevocationList, Error> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        match self.next_update {
            Some(next) if next < now => {
                let at = OffsetDateTime::from_unix_timestamp(next)
                    .map_or_else(|_| next.to_string(), |at| at.to_string());
                Err(unusable(format!(
                    "number {} expired at its next update, {at}; expected a current list: the host signs it again with `cairn-coordinator revoke --renew`",
                    self.number
                )))
            }
            _ => Ok(self),
        }
    }

    /// The list's CRL number (0 when it has none).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The revoked serial numbers, in lowercase hex.
    pub fn serials(&self) -> Vec<String> {
        self.revoked.keys().map(|serial| hex(serial)).collect()
    }

    /// The serial number (hex) of the certificate (DER) when it is on the list.
    fn contains(&self, certificate: &[u8]) -> Result<Option<String>, Error> {
        let cert = parse(certificate, "")?;
        let serial = canonical_serial(cert.raw_serial());
        Ok(self.revoked.contains_key(&serial).then(|| hex(&serial)))
    }

    /// `Ok` unless the certificate (DER, one the federation CA issued) is revoked: then
    /// [`Error::Revoked`] names whose it is and its serial number.
    pub fn check(&self, certificate: &[u8]) -> Result<(), Error> {
        let Some(serial) = self.contains(certificate)? else {
            return Ok(());
        };
        let id = identity_of(certificate).map_or_else(|_| "?".into(), |identity| identity.id);
        Err(Error::Revoked { id, serial })
    }
}

impl Authority {
    /// A new revocation list (PEM) with every entry of `previous` and the `certificates` (DER)
    /// added, numbered one past `previous`, valid for `validity_days`. Each certificate must be
    /// one this CA issued; one already on the list keeps its first revocation time.
    pub fn revoke(
        &self,
        previous: Option<&RevocationList>,
        certificates: &[&[u8]],
        validity_days: u32,
    ) -> Result<String, Error> {
        let now = OffsetDateTime::now_utc();
        let next_update = now + Duration::days(i64::from(validity_days.max(1)));
        self.sign_list(previous, certificates, now, next_update)
    }

    /// [`Authority::revoke`] at the time `now`, stating `next_update`.
    fn sign_list(
        &self,
        previous: Option<&RevocationList>,
        certificates: &[&[u8]],
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, Error> {
        let ca_der = crate::certificate_der(self.cert_pem(), "the CA certificate")?;
        let ca = parse(&ca_der, "of the CA ")?;
        let mut revoked = previous
            .map(|list| list.revoked.clone())
            .unwrap_or_default();
        for der in certificates {
            let cert = parse(der, "to revoke ")?;
            if cert.issuer().as_raw() != ca.subject().as_raw()
                || cert.verify_signature(Some(ca.public_key())).is_err()
            {
                return Err(Error::UnusableCertificate {
                    reason: format!(
                        "of \"{}\" (serial {}) was not issued by this federation's CA \"{}\"; only its own certificates can be revoked",
                        cert.subject(),
                        hex(&canonical_serial(cert.raw_serial())),
                        ca.subject()
                    ),
                });
            }
            revoked
                .entry(canonical_serial(cert.raw_serial()))
                .or_insert(now.unix_timestamp());
        }
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at)| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(*at)
                        .map_err(|e| unusable(format!("revocation time {at}: {e}")))?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let number = previous.map_or(1, |list| list.number + 1);
        let params = CertificateRevocationListParams {
            // Backdated a little, like the certificates, for peers whose clocks lag.
            this_update: now - Duration::hours(1),
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(rcgen_error("signing the revocation list"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        crate::certificate_der(pem, "test").unwrap()
    }

    #[test]
    fn a_revoked_certificate_is_listed_and_the_list_grows_and_verifies() {
        let ca = Authority::generate("test", 1).unwrap();
        let alpha = der(&ca.issue_participant("alpha", "Alpha", 1).unwrap().cert_pem);
        let bravo = der(&ca.issue_participant("bravo", "Bravo", 1).unwrap().cert_pem);
        let first = ca.revoke(None, &[&alpha], 30).unwrap();
        let list = RevocationList::from_pem(&first, ca.cert_pem()).unwrap();
        assert_eq!(list.number(), 1);
        assert_eq!(list.serials(), vec![serial_of(&alpha).unwrap()]);
        let err = list.check(&alpha).unwrap_err();
        assert!(
            matches!(&err, Error::Revoked { id, serial } if id == "alpha" && *serial == serial_of(&alpha).unwrap()),
            "{err}"
        );
        assert!(list.check(&bravo).is_ok());

        let second = ca.revoke(Some(&list), &[&bravo, &alpha], 30).unwrap();
        let grown = RevocationList::from_pem(&second, ca.cert_pem()).unwrap();
        assert_eq!(grown.number(), 2);
        assert_eq!(grown.serials().len(), 2);
        assert!(grown.check(&bravo).is_err() && grown.check(&alpha).is_err());
        let serial = raw_serial(&alpha);
        assert_eq!(
            grown.revoked[&serial], list.revoked[&serial],
            "a certificate revoked again keeps its first revocation time"
        );
    }

    #[test]
    fn a_list_past_its_next_update_is_refused_until_signed_again() {
        let ca = Authority::generate("test", 1).unwrap();
        let alpha = der(&ca.issue_participant("alpha", "Alpha", 1).unwrap().cert_pem);
        let then = OffsetDateTime::now_utc() - Duration::days(10);
        let stale = ca
            .sign_list(None, &[&alpha], then, then + Duration::days(1))
            .unwrap();
        let list = RevocationList::from_pem(&stale, ca.cert_pem()).unwrap();
        let err = list.clone().current().unwrap_err().to_string();
        assert!(
            err.contains("number 1 expired at its next update") && err.contains("revoke --renew"),
            "{err}"
        );
        let renewed = ca.revoke(Some(&list), &[], 30).unwrap();
        let list = RevocationList::from_pem(&renewed, ca.cert_pem()).unwrap();
        let list = list.current().unwrap();
        assert_eq!(list.number(), 2);
        assert!(list.check(&alpha).is_err(), "renewing keeps every entry");
    }

    fn raw_serial(der: &[u8]) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        canonical_serial(cert.raw_serial())
    }

    #[test]
    fn certificates_get_distinct_serials_even_for_one_key() {
        let ca = Authority::generate("test", 1).unwrap();
        let (_, request) = crate::certificate_request("delta", "Delta").unwrap();
        let first = der(&ca.sign_request(&request, 1).unwrap().cert_pem);
        let second = der(&ca.sign_request(&request, 1).unwrap().cert_pem);
        assert_ne!(serial_of(&first).unwrap(), serial_of(&second).unwrap());
        let list = RevocationList::from_pem(&ca.revoke(None, &[&first], 1).unwrap(), ca.cert_pem())
            .unwrap();
        assert!(list.check(&first).is_err());
        assert!(
            list.check(&second).is_ok(),
            "a renewal is not revoked with the old certificate"
        );
    }

    #[test]
    fn lists_of_another_ca_altered_or_malformed_are_refused() {
        let ca = Authority::generate("test", 1).unwrap();
        // Same name, other key: only the signature tells them apart.
        let impostor = Authority::generate("test", 1).unwrap();
        let other = Authority::generate("other", 1).unwrap();
        let alpha = der(&ca.issue_participant("alpha", "Alpha", 1).unwrap().cert_pem);
        let stranger = der(&impostor
            .issue_participant("alpha", "Alpha", 1)
            .unwrap()
            .cert_pem);

        let forged = impostor.revoke(None, &[&stranger], 30).unwrap();
        let err = RevocationList::from_pem(&forged, ca.cert_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not signed by the federation CA"), "{err}");
        let foreign = other
            .revoke(
                None,
                &[&der(&other
                    .issue_participant("a", "A", 1)
                    .unwrap()
                    .cert_pem)],
                30,
            )
            .unwrap();
        let err = RevocationList::from_pem(&foreign, ca.cert_pem())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is issued by \"CN=other federation CA")
                && err.contains("expected the federation CA \"CN=test federation CA"),
            "{err}"
        );
        for garbage in ["", "not a list", ca.cert_pem()] {
            let err = RevocationList::from_pem(garbage, ca.cert_pem())
                .unwrap_err()
                .to_string();
            assert!(err.contains("holds no PEM block \"X509 CRL\""), "{err}");
        }
        let genuine = ca.revoke(None, &[&alpha], 30).unwrap();
        let mut altered = der_of_list(&genuine);
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let altered = pem::encode(&pem::Pem::new("X509 CRL", altered));
        let err = RevocationList::from_pem(&altered, ca.cert_pem())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not signed by the federation CA"), "{err}");
        let body = "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n";
        let err = RevocationList::from_pem(body, ca.cert_pem())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot be parsed as a revocation list"),
            "{err}"
        );

        let err = ca.revoke(None, &[&stranger], 30).unwrap_err().to_string();
        assert!(
            err.contains("was not issued by this federation's CA"),
            "{err}"
        );
    }

    fn der_of_list(pem: &str) -> Vec<u8> {
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
