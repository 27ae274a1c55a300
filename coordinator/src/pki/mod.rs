//! Provisioning: the federation's CA, the coordinator's server certificate, and one kit per
//! participant (client certificate whose common name is the participant id, private key, CA
//! certificate). Also reading an identity back out of a verified certificate.
//!
//! Layout written under the output directory:
//! `ca/ca.pem`, `ca/ca-key.pem` (keep secret: it mints identities),
//! `coordinator/{cert,key,ca}.pem`, `participants/<id>/{cert,key,ca}.pem`.
//! Running `provision` again on the same directory reuses the CA and adds only missing kits.

use crate::Error;
use crate::config::is_valid_name;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Organisational unit that marks a participant certificate.
pub const PARTICIPANT_UNIT: &str = "participant";
/// Organisational unit of the coordinator's certificate.
pub const COORDINATOR_UNIT: &str = "coordinator";

/// A participant to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantSpec {
    /// Identity; becomes the certificate's common name.
    pub id: String,
    /// Organisation name; becomes the certificate's organisation.
    pub organisation: String,
}

impl ParticipantSpec {
    /// Parses `id` or `id=Organisation Name`.
    pub fn parse(text: &str) -> Result<ParticipantSpec, Error> {
        let (id, organisation) = match text.split_once('=') {
            Some((id, org)) => (id.trim(), org.trim()),
            None => (text.trim(), text.trim()),
        };
        if !is_valid_name(id) {
            return Err(Error::Provision(format!(
                "participant id {id:?} is invalid; expected 1-63 lowercase letters, digits or '-'"
            )));
        }
        if organisation.is_empty() {
            return Err(Error::Provision(format!(
                "participant {id:?} has an empty organisation"
            )));
        }
        Ok(ParticipantSpec {
            id: id.to_string(),
            organisation: organisation.to_string(),
        })
    }
}

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    /// Output directory.
    pub out_dir: PathBuf,
    /// Federation name, in the CA's common name.
    pub federation: String,
    /// DNS names and IP addresses the coordinator is reached at (server certificate SANs).
    pub server_names: Vec<String>,
    /// Participants to create kits for.
    pub participants: Vec<ParticipantSpec>,
    /// Validity of new certificates, in days.
    pub validity_days: u32,
}

/// What `provision` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Whether a new CA was created (false: an existing one was reused).
    pub created_ca: bool,
    /// Whether the coordinator's certificate was written.
    pub created_server: bool,
    /// Kits written.
    pub created_kits: Vec<PathBuf>,
    /// Kits that already existed and were left alone.
    pub kept_kits: Vec<PathBuf>,
}

/// Paths of a kit directory's files.
#[derive(Debug, Clone)]
pub struct KitPaths {
    /// Certificate.
    pub cert: PathBuf,
    /// Private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Federation CA certificate.
    pub ca: PathBuf,
}

impl KitPaths {
    /// The files of the kit in `dir`.
    pub fn in_dir(dir: &Path) -> KitPaths {
        KitPaths {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        }
    }
}

fn provision_error(what: &str, e: rcgen::Error) -> Error {
    Error::Provision(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Backdated an hour so that a peer whose clock is slightly behind accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())
                .and_then(|()| file.sync_all())
        })
        .map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
}

fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

/// The federation CA in `ca_dir` (`ca.pem`, `ca-key.pem`), ready to sign.
fn load_ca(ca_dir: &Path) -> Result<(Issuer<'static, KeyPair>, String), Error> {
    let (ca_cert_path, ca_key_path) = (ca_dir.join("ca.pem"), ca_dir.join("ca-key.pem"));
    let ca_pem = read_file(&ca_cert_path)?;
    let key = KeyPair::from_pem(&read_file(&ca_key_path)?)
        .map_err(|e| provision_error(&format!("reading CA key {}", ca_key_path.display()), e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| {
        provision_error(
            &format!("reading CA certificate {}", ca_cert_path.display()),
            e,
        )
    })?;
    Ok((issuer, ca_pem))
}

/// The parameters of a participant certificate for `id` of `organisation`.
fn participant_params(
    id: &str,
    organisation: &str,
    validity_days: u32,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| provision_error(&format!("certificate of {id}"), e))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, id);
    params
        .distinguished_name
        .push(DnType::OrganizationName, organisation);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, PARTICIPANT_UNIT);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, validity_days);
    Ok(params)
}

/// A participant's certificate signing request, to be signed by the federation CA.
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// The federation directory `provision` wrote (with `ca/`); the kit goes to
    /// `participants/<id>/`.
    pub out_dir: PathBuf,
    /// The request (PEM), from `cairn-participant request`.
    pub csr_pem: String,
    /// Name participants dial the coordinator at (for the kit's Helm values).
    pub server_name: String,
    /// Validity of the certificate, in days.
    pub validity_days: u32,
}

/// Signs a participant's certificate signing request: the private key never left the
/// participant's site. The request's signature must verify, its key must be ECDSA P-256 (the
/// participant signs secure-aggregation messages with it), and its common name must be a valid
/// participant id. The certificate's subject is rebuilt from those (id, organisation,
/// `participant` unit) whatever else the request asks for. Writes `cert.pem`, `ca.pem` and the
/// Helm values (without the key) into the kit directory and returns it; an existing kit is
/// never replaced.
pub fn sign_request(request: &SignRequest) -> Result<PathBuf, Error> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&request.csr_pem).map_err(|e| {
        Error::Provision(format!(
            "certificate signing request is not a valid, correctly signed PEM request: {e}"
        ))
    })?;
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(Error::Provision(
            "certificate signing request's key is not ECDSA P-256; expected one from `cairn-participant request`".into(),
        ));
    }
    let subject = &csr.params.distinguished_name;
    let text = |kind: DnType| subject.get(&kind).map(dn_text).unwrap_or_default();
    let id = text(DnType::CommonName);
    if !crate::config::is_valid_name(&id) {
        return Err(Error::Provision(format!(
            "certificate signing request names participant {id:?}; expected 1-63 lowercase letters, digits or '-'"
        )));
    }
    let organisation = match text(DnType::OrganizationName) {
        o if o.is_empty() => id.clone(),
        o => o,
    };
    let dir = request.out_dir.join("participants").join(&id);
    if KitPaths::in_dir(&dir).cert.exists() {
        return Err(Error::Provision(format!(
            "{} already holds a certificate for {id}; remove it first to issue a new one",
            dir.display()
        )));
    }
    let (issuer, ca_pem) = load_ca(&request.out_dir.join("ca"))?;
    let mut signed = csr;
    signed.params = participant_params(&id, &organisation, request.validity_days)?;
    let cert = signed
        .signed_by(&issuer)
        .map_err(|e| provision_error(&format!("signing the certificate of {id}"), e))?;
    let paths = KitPaths::in_dir(&dir);
    write_file(&paths.cert, &cert.pem(), false)?;
    write_file(&paths.ca, &ca_pem, false)?;
    let values = helm_values(&id, &request.server_name, &cert.pem(), None, &ca_pem);
    write_file(&dir.join("values.yaml"), &values, false)?;
    Ok(dir)
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

/// Creates (or reuses) the CA and writes the server certificate and the participant kits.
pub fn provision(request: &ProvisionRequest) -> Result<ProvisionReport, Error> {
    if request.server_names.is_empty() {
        return Err(Error::Provision(
            "no server name given; pass the DNS names or IP addresses participants dial (e.g. --server-name localhost)"
                .into(),
        ));
    }
    if request.validity_days == 0 {
        return Err(Error::Provision(
            "validity of 0 days; expected at least 1".into(),
        ));
    }
    let mut report = ProvisionReport::default();
    let ca_dir = request.out_dir.join("ca");
    let (ca_cert_path, ca_key_path) = (ca_dir.join("ca.pem"), ca_dir.join("ca-key.pem"));
    let (issuer, ca_pem) = if ca_cert_path.exists() && ca_key_path.exists() {
        load_ca(&ca_dir)?
    } else {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| provision_error("CA", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{} federation CA", request.federation),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Cairn");
        validity(&mut params, request.validity_days.max(3650));
        let key = KeyPair::generate().map_err(|e| provision_error("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| provision_error("CA certificate", e))?;
        write_file(&ca_key_path, &key.serialize_pem(), true)?;
        write_file(&ca_cert_path, &cert.pem(), false)?;
        report.created_ca = true;
        (Issuer::new(params, key), cert.pem())
    };

    let server_dir = request.out_dir.join(COORDINATOR_UNIT);
    if !KitPaths::in_dir(&server_dir).cert.exists() {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| provision_error("server certificate", e))?;
        for name in &request.server_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(name) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e| provision_error(&format!("server name {name:?}"), e))?,
                ),
                Err(_) => {
                    return Err(Error::Provision(format!(
                        "server name {name:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.')"
                    )));
                }
            };
            params.subject_alt_names.push(san);
        }
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, request.server_names[0].clone());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, COORDINATOR_UNIT);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, request.validity_days);
        write_leaf(&server_dir, &params, &issuer, &ca_pem)?;
        report.created_server = true;
    }

    for participant in &request.participants {
        let dir = request.out_dir.join("participants").join(&participant.id);
        if KitPaths::in_dir(&dir).cert.exists() {
            report.kept_kits.push(dir);
            continue;
        }
        let params = participant_params(
            &participant.id,
            &participant.organisation,
            request.validity_days,
        )?;
        write_leaf(&dir, &params, &issuer, &ca_pem)?;
        let paths = KitPaths::in_dir(&dir);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| Error::Io {
                what: format!("reading {}", path.display()),
                source,
            })
        };
        let values = helm_values(
            &participant.id,
            &request.server_names[0],
            &read(&paths.cert)?,
            Some(&read(&paths.key)?),
            &ca_pem,
        );
        // It holds the private key: as secret as key.pem.
        write_file(&dir.join("values.yaml"), &values, true)?;
        report.created_kits.push(dir);
    }
    Ok(report)
}

/// The Helm values that install this participant with `charts/participant`: its id, the
/// coordinator's address and the kit inline (without the key when the participant made its own:
/// then `--set-file kit.key=key.pem` adds it at install). The data source is a placeholder to
/// adapt.
fn helm_values(id: &str, server_name: &str, cert: &str, key: Option<&str>, ca: &str) -> String {
    let block = |pem: &str| {
        pem.lines()
            .map(|line| format!("    {line}\n"))
            .collect::<String>()
    };
    let host = if server_name.contains(':') {
        format!("[{server_name}]")
    } else {
        server_name.to_string()
    };
    let (install, key) = match key {
        Some(key) => (
            "# This file holds the participant's private key: keep it as secret as key.pem.\n"
                .to_string(),
            format!("  key: |\n{}", block(key)),
        ),
        None => (
            "# The key stays at the participant's site: add it with --set-file kit.key=key.pem\n"
                .to_string(),
            String::new(),
        ),
    };
    format!(
        "# Helm values for participant {id}: helm install {id} charts/participant -f values.yaml\n\
         {install}\
         participantId: {id}\n\
         coordinator:\n  address: https://{host}:7443   # the coordinator's gRPC endpoint\n  serverName: {server_name}\n\
         data:\n  source: pvc                     # or hostPath / initContainer (see the chart's values.yaml)\n  pvc:\n    claimName: {id}-data\n\
         kit:\n  cert: |\n{}{key}  ca: |\n{}",
        block(cert),
        block(ca)
    )
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

fn write_leaf(
    dir: &Path,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
) -> Result<(), Error> {
    let key = KeyPair::generate().map_err(|e| provision_error("key", e))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| provision_error("signing", e))?;
    let paths = KitPaths::in_dir(dir);
    write_file(&paths.key, &key.serialize_pem(), true)?;
    write_file(&paths.ca, ca_pem, false)?;
    write_file(&paths.cert, &cert.pem(), false)
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

/// The identity in a verified client certificate (DER): its common name, its organisation, and
/// whether it is marked as a participant certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// Common name: the participant id.
    pub id: String,
    /// Organisation name (empty when absent).
    pub organisation: String,
    /// Organisational unit (`participant` for participant kits).
    pub unit: String,
}

/// Reads the identity out of a certificate that TLS has already verified against the CA.
pub fn identity_of(der: &[u8]) -> Result<CertificateIdentity, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Identity(format!("client certificate cannot be parsed: {e}")))?;
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
        return Err(Error::Identity(
            "client certificate has no common name".into(),
        ));
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

    fn request(dir: &Path, ids: &[&str]) -> ProvisionRequest {
        ProvisionRequest {
            out_dir: dir.to_path_buf(),
            federation: "test".into(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            participants: ids
                .iter()
                .map(|id| ParticipantSpec::parse(id).unwrap())
                .collect(),
            validity_days: 30,
        }
    }

    fn der_of(pem_path: &Path) -> Vec<u8> {
        let pem = std::fs::read_to_string(pem_path).unwrap();
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }

    #[test]
    fn kits_carry_the_participant_identity_and_reuse_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let report = provision(&request(dir.path(), &["alpha=Alpha Hospital", "beta"])).unwrap();
        assert!(report.created_ca && report.created_server);
        assert_eq!(report.created_kits.len(), 2);
        let identity =
            identity_of(&der_of(&dir.path().join("participants/alpha/cert.pem"))).unwrap();
        assert_eq!(
            identity,
            CertificateIdentity {
                id: "alpha".into(),
                organisation: "Alpha Hospital".into(),
                unit: "participant".into()
            }
        );
        // The kit's Helm values parse and carry the kit exactly.
        let kit = dir.path().join("participants/alpha");
        let values: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(kit.join("values.yaml")).unwrap())
                .unwrap();
        assert_eq!(values["participantId"], "alpha");
        assert_eq!(values["coordinator"]["address"], "https://localhost:7443");
        for (field, file) in [("cert", "cert.pem"), ("key", "key.pem"), ("ca", "ca.pem")] {
            assert_eq!(
                values["kit"][field].as_str().unwrap(),
                std::fs::read_to_string(kit.join(file)).unwrap(),
                "{field}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(kit.join("values.yaml"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca_before = std::fs::read(dir.path().join("ca/ca.pem")).unwrap();
        let report = provision(&request(dir.path(), &["alpha", "gamma"])).unwrap();
        assert!(!report.created_ca && !report.created_server);
        assert_eq!(report.kept_kits.len(), 1);
        assert_eq!(report.created_kits.len(), 1);
        assert_eq!(
            std::fs::read(dir.path().join("ca/ca.pem")).unwrap(),
            ca_before
        );
        assert_eq!(
            std::fs::read(dir.path().join("participants/gamma/ca.pem")).unwrap(),
            ca_before
        );
    }

    /// `pem` with one base64 character in the middle of its body changed.
    fn tamper(pem: &str) -> String {
        let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
        let middle = lines.len() / 2;
        let line = &mut lines[middle];
        let at = line.len() / 2;
        let replacement = if &line[at..at + 1] == "A" { "B" } else { "A" };
        line.replace_range(at..at + 1, replacement);
        lines.join("\n") + "\n"
    }

    #[test]
    fn a_certificate_request_is_signed_without_the_key_leaving_its_site() {
        let dir = tempfile::tempdir().unwrap();
        provision(&request(dir.path(), &["alpha"])).unwrap();
        let (key, csr_pem) =
            cairn_participant::client::identity::certificate_request("delta", "Delta Lab").unwrap();
        let sign = |csr_pem: &str| {
            sign_request(&SignRequest {
                out_dir: dir.path().to_path_buf(),
                csr_pem: csr_pem.to_string(),
                server_name: "fl.example.org".into(),
                validity_days: 30,
            })
        };
        let kit = sign(&csr_pem).unwrap();
        assert_eq!(kit, dir.path().join("participants/delta"));
        assert_eq!(
            identity_of(&der_of(&kit.join("cert.pem"))).unwrap(),
            CertificateIdentity {
                id: "delta".into(),
                organisation: "Delta Lab".into(),
                unit: "participant".into()
            }
        );
        let values = std::fs::read_to_string(kit.join("values.yaml")).unwrap();
        assert!(values.contains("--set-file kit.key=key.pem") && !values.contains("PRIVATE KEY"));
        assert!(key.contains("BEGIN PRIVATE KEY"));
        // The certificate is for the request's key.
        let cert_der = der_of(&kit.join("cert.pem"));
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let key_pair = KeyPair::from_pem(&key).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key_pair.public_key_raw()
        );

        let refusals = [
            (csr_pem.clone(), "already holds a certificate for delta"),
            (tamper(&csr_pem), "not a valid, correctly signed"),
            (
                cairn_participant::client::identity::certificate_request("Bad_Id", "x")
                    .unwrap()
                    .1,
                "names participant \"Bad_Id\"",
            ),
        ];
        for (csr, expected) in refusals {
            let err = sign(&csr).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "echo");
        let csr = params.serialize_request(&p384).unwrap().pem().unwrap();
        let err = sign(&csr).unwrap_err().to_string();
        assert!(err.contains("not ECDSA P-256"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        provision(&request(dir.path(), &["alpha"])).unwrap();
        for key in [
            "ca/ca-key.pem",
            "participants/alpha/key.pem",
            "coordinator/key.pem",
        ] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(
            ParticipantSpec::parse("Alpha")
                .unwrap_err()
                .to_string()
                .contains("invalid")
        );
        assert!(ParticipantSpec::parse("alpha=").is_err());
        let dir = tempfile::tempdir().unwrap();
        let mut bad = request(dir.path(), &["alpha"]);
        bad.server_names.clear();
        assert!(
            provision(&bad)
                .unwrap_err()
                .to_string()
                .contains("--server-name")
        );
        let mut bad = request(dir.path(), &["alpha"]);
        bad.server_names = vec!["not a host!".into()];
        let err = provision(&bad).unwrap_err().to_string();
        assert!(
            err.contains("neither an IP address nor a DNS name"),
            "{err}"
        );
    }
}
