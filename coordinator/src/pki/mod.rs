//! Provisioning: the federation's CA, the coordinator's server certificate, and one kit per
//! participant (client certificate whose common name is the participant id, CA certificate, Helm
//! values), written to disk. How certificates are made and read is `cairn_identity`'s; this
//! module decides where they go.
//!
//! A participant's key is born at its site: each site makes its key and a signing request
//! (`cairn-participant request`), and [`sign_request`] turns the request into a kit without a key,
//! for the participants the host allows. Only when asked ([`ProvisionRequest::with_keys`], for
//! local testing and the quickstart) does [`provision`] make the participants' keys itself, and
//! the host then holds every participant's key.
//!
//! Layout written under the output directory:
//! `ca/ca.pem`, `ca/ca-key.pem` (keep secret: it mints identities), `ca/crl.pem` (once
//! [`revoke`] revoked a certificate), `coordinator/{cert,key,ca}.pem`,
//! `participants/<id>/{cert,ca}.pem` (and `key.pem` with keys made here), and
//! `participants/<id>/replaced/<serial>/` for a certificate a new one replaced.
//! Running `provision` again on the same directory reuses the CA and adds only missing kits.

use crate::Error;
use cairn_identity::{Authority, COORDINATOR_UNIT, RevocationList, check_participant_id};
use serde::Serialize;
use serde_saphyr::{Commented, LitStr};
use std::path::{Path, PathBuf};

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
        check_participant_id(id)?;
        if organisation.is_empty() {
            return Err(Error::EmptyOrganisation { id: id.to_string() });
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
    /// The participants of the federation: with [`with_keys`](Self::with_keys), each gets a
    /// kit; without, they are only reported back as awaiting their sites' requests.
    pub participants: Vec<ParticipantSpec>,
    /// Make each participant's private key here and write full kits (for local testing and
    /// the quickstart): the host then holds every participant's key. Without it, no
    /// participant key is made here; each site makes its own and sends a signing request.
    pub with_keys: bool,
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
    /// Participants without a kit, whose sites are to send a signing request (without
    /// [`ProvisionRequest::with_keys`]).
    pub awaiting_requests: Vec<ParticipantSpec>,
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
fn load_ca(ca_dir: &Path) -> Result<Authority, Error> {
    let (cert_path, key_path) = (ca_dir.join("ca.pem"), ca_dir.join("ca-key.pem"));
    Ok(Authority::from_pem(
        &read_file(&cert_path)?,
        &read_file(&key_path)?,
    )?)
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
    /// The participant ids this signing may issue a certificate for; a request for any other is
    /// refused, and so is every request when it is empty.
    pub allowed: Vec<String>,
    /// Issue a certificate for an id whose kit already holds one; the old certificate (and key,
    /// if the kit held one) moves to `participants/<id>/replaced/<serial>/`.
    pub replace: bool,
}

/// Signs a participant's certificate signing request: the private key never left the
/// participant's site. The request's signature must verify, its key must be ECDSA P-256 (the
/// participant signs secure-aggregation messages with it), and its common name must be a valid
/// participant id that [`SignRequest::allowed`] names. The certificate's subject is rebuilt from
/// those (id, organisation, `participant` unit) whatever else the request asks for. Writes
/// `cert.pem`, `ca.pem` and the Helm values (without the key) into the kit directory and returns
/// it; a kit that already holds a certificate is replaced only with [`SignRequest::replace`].
pub fn sign_request(request: &SignRequest) -> Result<PathBuf, Error> {
    if request.allowed.is_empty() {
        return Err(Error::NothingAllowed);
    }
    let ca = load_ca(&request.out_dir.join("ca"))?;
    // Signed before the checks below so that they see the id as the certificate will carry it;
    // nothing is written unless they pass.
    let signed = ca.sign_request(&request.csr_pem, request.validity_days)?;
    if !request.allowed.contains(&signed.id) {
        return Err(Error::NotAllowed {
            id: signed.id,
            allowed: request.allowed.clone(),
        });
    }
    let dir = request.out_dir.join("participants").join(&signed.id);
    let paths = KitPaths::in_dir(&dir);
    if paths.cert.exists() {
        if !request.replace {
            return Err(Error::KitExists { dir, id: signed.id });
        }
        set_aside(&dir)?;
    }
    write_file(&paths.cert, &signed.cert_pem, false)?;
    write_file(&paths.ca, ca.cert_pem(), false)?;
    let values = helm_values(
        &signed.id,
        &request.server_name,
        &signed.cert_pem,
        None,
        ca.cert_pem(),
    )?;
    write_file(&dir.join("values.yaml"), &values, false)?;
    Ok(dir)
}

/// Moves a kit's files (certificate, key if any, CA, Helm values) to `replaced/<serial>/` in the
/// kit, so that a new certificate can take their place and the old one can still be revoked
/// (`revoke --cert <kit>/replaced/<serial>/cert.pem`).
fn set_aside(dir: &Path) -> Result<(), Error> {
    let paths = KitPaths::in_dir(dir);
    let der = cairn_identity::certificate_der(&read_file(&paths.cert)?, "cert.pem")?;
    let aside = dir.join("replaced").join(cairn_identity::serial_of(&der)?);
    std::fs::create_dir_all(&aside).map_err(|source| Error::Io {
        what: format!("creating {}", aside.display()),
        source,
    })?;
    for name in ["cert.pem", "key.pem", "ca.pem", "values.yaml"] {
        let from = dir.join(name);
        if from.exists() {
            let to = aside.join(name);
            std::fs::rename(&from, &to).map_err(|source| Error::Io {
                what: format!("moving {} to {}", from.display(), to.display()),
                source,
            })?;
        }
    }
    Ok(())
}

/// Which certificate to revoke.
#[derive(Debug, Clone)]
pub enum Revocation {
    /// The certificate in participant `id`'s kit (`participants/<id>/cert.pem`).
    Participant(String),
    /// The certificate (PEM) in this file.
    Certificate(PathBuf),
    /// None: the list is signed again as it is, with a new next update.
    Renew,
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The revocation list written (`ca/crl.pem`).
    pub crl: PathBuf,
    /// The certificate it added; `None` for [`Revocation::Renew`].
    pub certificate: Option<RevokedCertificate>,
    /// How many certificates the list now revokes.
    pub n_revoked: usize,
    /// The list's CRL number.
    pub number: u64,
}

/// A certificate [`revoke`] added to the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// The participant id the certificate names.
    pub id: String,
    /// Its serial number (lowercase hex).
    pub serial: String,
}

/// The federation's revocation list file in the federation directory `out_dir`.
pub fn crl_path(out_dir: &Path) -> PathBuf {
    out_dir.join("ca").join("crl.pem")
}

/// Reads the revocation list at `path`, verifies it against the CA certificate `ca_pem` and
/// requires it current (not past its next update); an error names the file and what was
/// expected of it.
pub fn load_revocations(path: &Path, ca_pem: &str) -> Result<RevocationList, Error> {
    read_revocations(path, ca_pem)?
        .current()
        .map_err(|source| Error::RevocationList {
            path: path.to_path_buf(),
            source,
        })
}

/// The revocation list at `path`, verified against `ca_pem`, current or not.
fn read_revocations(path: &Path, ca_pem: &str) -> Result<RevocationList, Error> {
    RevocationList::from_pem(&read_file(path)?, ca_pem).map_err(|source| Error::RevocationList {
        path: path.to_path_buf(),
        source,
    })
}

/// Revokes a certificate of the federation CA in the federation directory `out_dir`: adds its
/// serial number to `ca/crl.pem` (made on first use, otherwise verified, extended and signed
/// again with a larger CRL number), valid for `validity_days`. Parties that read the list
/// (`serve --crl`, `join --crl`) then refuse the certificate. [`Revocation::Renew`] signs the
/// list again as it is, for a list near or past its next update.
pub fn revoke(out_dir: &Path, what: &Revocation, validity_days: u32) -> Result<Revoked, Error> {
    let ca = load_ca(&out_dir.join("ca"))?;
    let cert_path = match what {
        Revocation::Participant(id) => {
            let path = KitPaths::in_dir(&out_dir.join("participants").join(id)).cert;
            if !path.exists() {
                return Err(Error::NoCertificate {
                    path,
                    id: id.clone(),
                });
            }
            Some(path)
        }
        Revocation::Certificate(path) => Some(path.clone()),
        Revocation::Renew => None,
    };
    let der = match &cert_path {
        Some(path) => Some(cairn_identity::certificate_der(
            &read_file(path)?,
            &path.display().to_string(),
        )?),
        None => None,
    };
    let crl = crl_path(out_dir);
    let previous = match crl.exists() {
        true => Some(read_revocations(&crl, ca.cert_pem())?),
        false if der.is_none() => return Err(Error::NoRevocationList { path: crl }),
        false => None,
    };
    let certificates: Vec<&[u8]> = der.iter().map(Vec::as_slice).collect();
    let pem = ca.revoke(previous.as_ref(), &certificates, validity_days)?;
    crate::store::write_atomically(&crl, pem.as_bytes())?;
    let list = RevocationList::from_pem(&pem, ca.cert_pem())?;
    let certificate = match &der {
        Some(der) => Some(RevokedCertificate {
            id: cairn_identity::identity_of(der)?.id,
            serial: cairn_identity::serial_of(der)?,
        }),
        None => None,
    };
    Ok(Revoked {
        crl,
        certificate,
        n_revoked: list.serials().len(),
        number: list.number(),
    })
}

/// Creates (or reuses) the CA and writes the server certificate and the participant kits.
pub fn provision(request: &ProvisionRequest) -> Result<ProvisionReport, Error> {
    let Some(server_name) = request.server_names.first() else {
        return Err(cairn_identity::Error::NoServerName.into());
    };
    if request.validity_days == 0 {
        return Err(Error::Validity {
            days: request.validity_days,
        });
    }
    let mut report = ProvisionReport::default();
    let ca_dir = request.out_dir.join("ca");
    let (ca_cert_path, ca_key_path) = (ca_dir.join("ca.pem"), ca_dir.join("ca-key.pem"));
    let ca = if ca_cert_path.exists() && ca_key_path.exists() {
        load_ca(&ca_dir)?
    } else {
        let ca = Authority::generate(&request.federation, request.validity_days)?;
        write_file(&ca_key_path, &ca.key_pem(), true)?;
        write_file(&ca_cert_path, ca.cert_pem(), false)?;
        report.created_ca = true;
        ca
    };

    let server_dir = request.out_dir.join(COORDINATOR_UNIT);
    if !KitPaths::in_dir(&server_dir).cert.exists() {
        let issued = ca.issue_server(&request.server_names, request.validity_days)?;
        write_kit(&server_dir, &issued, ca.cert_pem())?;
        report.created_server = true;
    }

    for participant in &request.participants {
        let dir = request.out_dir.join("participants").join(&participant.id);
        if KitPaths::in_dir(&dir).cert.exists() {
            report.kept_kits.push(dir);
            continue;
        }
        if !request.with_keys {
            report.awaiting_requests.push(participant.clone());
            continue;
        }
        let issued = ca.issue_participant(
            &participant.id,
            &participant.organisation,
            request.validity_days,
        )?;
        write_kit(&dir, &issued, ca.cert_pem())?;
        let values = helm_values(
            &participant.id,
            server_name,
            &issued.cert_pem,
            Some(&issued.key_pem),
            ca.cert_pem(),
        )?;
        // It holds the private key: as secret as key.pem.
        write_file(&dir.join("values.yaml"), &values, true)?;
        report.created_kits.push(dir);
    }
    Ok(report)
}

/// A kit's `values.yaml`: what `charts/participant` reads (its values.yaml documents each field).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HelmValues<'a> {
    participant_id: &'a str,
    coordinator: HelmCoordinator,
    data: HelmData,
    kit: HelmKit<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HelmCoordinator {
    address: Commented<String>,
    server_name: String,
}

#[derive(Serialize)]
struct HelmData {
    source: Commented<&'static str>,
    pvc: HelmClaim,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HelmClaim {
    claim_name: String,
}

#[derive(Serialize)]
struct HelmKit<'a> {
    cert: LitStr<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<LitStr<'a>>,
    ca: LitStr<'a>,
}

/// The Helm values that install this participant with `charts/participant`: its id, the
/// coordinator's address and the kit inline (without the key when the participant made its own:
/// then `--set-file kit.key=key.pem` adds it at install). The data source is a placeholder to
/// adapt.
fn helm_values(
    id: &str,
    server_name: &str,
    cert: &str,
    key: Option<&str>,
    ca: &str,
) -> Result<String, Error> {
    let host = if server_name.contains(':') {
        format!("[{server_name}]")
    } else {
        server_name.to_string()
    };
    let values = HelmValues {
        participant_id: id,
        coordinator: HelmCoordinator {
            address: Commented(
                format!("https://{host}:7443"),
                "the coordinator's gRPC endpoint".into(),
            ),
            server_name: server_name.to_string(),
        },
        data: HelmData {
            source: Commented(
                "pvc",
                "or hostPath / initContainer (see the chart's values.yaml)".into(),
            ),
            pvc: HelmClaim {
                claim_name: format!("{id}-data"),
            },
        },
        kit: HelmKit {
            cert: LitStr(cert),
            key: key.map(LitStr),
            ca: LitStr(ca),
        },
    };
    let body = serde_saphyr::to_string(&values).map_err(|source| Error::HelmValues {
        id: id.to_string(),
        source,
    })?;
    let key_note = match key {
        Some(_) => "# This file holds the participant's private key: keep it as secret as key.pem.",
        None => "# The key stays at the participant's site: add it with --set-file kit.key=key.pem",
    };
    Ok(format!(
        "# Helm values for participant {id}: helm install {id} charts/participant -f values.yaml\n\
         {key_note}\n{body}"
    ))
}

/// Writes a certificate, its key (owner-only) and the CA certificate into the kit `dir`.
fn write_kit(dir: &Path, issued: &cairn_identity::Issued, ca_pem: &str) -> Result<(), Error> {
    let paths = KitPaths::in_dir(dir);
    write_file(&paths.key, &issued.key_pem, true)?;
    write_file(&paths.ca, ca_pem, false)?;
    write_file(&paths.cert, &issued.cert_pem, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_identity::{CertificateIdentity, identity_of};
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn request(dir: &Path, ids: &[&str]) -> ProvisionRequest {
        ProvisionRequest {
            out_dir: dir.to_path_buf(),
            federation: "test".into(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            participants: ids
                .iter()
                .map(|id| ParticipantSpec::parse(id).unwrap())
                .collect(),
            with_keys: true,
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
        let (key, csr_pem) = cairn_identity::certificate_request("delta", "Delta Lab").unwrap();
        let sign = |csr_pem: &str| {
            sign_request(&SignRequest {
                out_dir: dir.path().to_path_buf(),
                csr_pem: csr_pem.to_string(),
                server_name: "fl.example.org".into(),
                validity_days: 30,
                allowed: vec!["delta".into(), "echo".into()],
                replace: false,
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
            (
                csr_pem.clone(),
                "already holds a certificate for delta; pass --replace",
            ),
            (tamper(&csr_pem), "not a valid, correctly signed"),
            (
                cairn_identity::certificate_request("Bad_Id", "x")
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

    #[test]
    fn without_keys_no_participant_key_is_made_at_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let keyless = ProvisionRequest {
            with_keys: false,
            ..request(dir.path(), &["alpha=Alpha Hospital", "beta"])
        };
        let report = provision(&keyless).unwrap();
        assert!(report.created_ca && report.created_server);
        assert!(report.created_kits.is_empty() && report.kept_kits.is_empty());
        let ids: Vec<&str> = report
            .awaiting_requests
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(ids, ["alpha", "beta"]);
        assert!(!dir.path().join("participants").exists());
        assert!(
            KitPaths::in_dir(&dir.path().join("coordinator"))
                .key
                .exists()
        );

        // With keys when asked: full kits, each with its key.
        let report = provision(&request(dir.path(), &["alpha", "beta"])).unwrap();
        assert!(!report.created_ca && report.awaiting_requests.is_empty());
        assert_eq!(report.created_kits.len(), 2);
        for kit in &report.created_kits {
            let key = std::fs::read_to_string(KitPaths::in_dir(kit).key).unwrap();
            assert!(key.contains("BEGIN PRIVATE KEY"), "{}", kit.display());
        }
    }

    fn sign_as(
        dir: &Path,
        csr_pem: &str,
        allowed: &[&str],
        replace: bool,
    ) -> Result<PathBuf, Error> {
        sign_request(&SignRequest {
            out_dir: dir.to_path_buf(),
            csr_pem: csr_pem.to_string(),
            server_name: "localhost".into(),
            validity_days: 30,
            allowed: allowed.iter().map(|id| id.to_string()).collect(),
            replace,
        })
    }

    #[test]
    fn sign_refuses_ids_outside_its_allow_list_and_replaces_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        provision(&ProvisionRequest {
            with_keys: false,
            ..request(dir.path(), &["alpha"])
        })
        .unwrap();
        let (_, csr) = cairn_identity::certificate_request("mallory", "Mallory").unwrap();
        let err = sign_as(dir.path(), &csr, &["alpha", "bravo"], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("request is for participant \"mallory\"; allowed: alpha, bravo"),
            "{err}"
        );
        let err = sign_as(dir.path(), &csr, &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--participant ID") && err.contains("--job FILE"),
            "{err}"
        );
        assert!(!dir.path().join("participants/mallory").exists());

        let (_, first) = cairn_identity::certificate_request("alpha", "Alpha").unwrap();
        let kit = sign_as(dir.path(), &first, &["alpha"], false).unwrap();
        let old = std::fs::read_to_string(kit.join("cert.pem")).unwrap();
        let (_, second) = cairn_identity::certificate_request("alpha", "Alpha").unwrap();
        let err = sign_as(dir.path(), &second, &["alpha"], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already holds a certificate for alpha"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(kit.join("cert.pem")).unwrap(), old);
        sign_as(dir.path(), &second, &["alpha"], true).unwrap();
        let new = std::fs::read_to_string(kit.join("cert.pem")).unwrap();
        assert_ne!(new, old);
        let old_serial =
            cairn_identity::serial_of(&cairn_identity::certificate_der(&old, "old").unwrap())
                .unwrap();
        let aside = kit.join("replaced").join(&old_serial).join("cert.pem");
        assert_eq!(
            std::fs::read_to_string(aside).unwrap(),
            old,
            "the replaced certificate is kept, to be revoked"
        );
    }

    #[test]
    fn revoke_lists_the_serial_in_a_list_that_verifies_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        provision(&request(dir.path(), &["alpha", "bravo"])).unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
        let alpha = der_of(&dir.path().join("participants/alpha/cert.pem"));
        let bravo = der_of(&dir.path().join("participants/bravo/cert.pem"));

        let revoked = revoke(dir.path(), &Revocation::Participant("alpha".into()), 30).unwrap();
        assert_eq!(revoked.crl, dir.path().join("ca/crl.pem"));
        let certificate = revoked.certificate.unwrap();
        assert_eq!((certificate.id.as_str(), revoked.n_revoked), ("alpha", 1));
        assert_eq!(
            certificate.serial,
            cairn_identity::serial_of(&alpha).unwrap()
        );
        let list = load_revocations(&revoked.crl, &ca_pem).unwrap();
        assert_eq!(list.serials(), std::slice::from_ref(&certificate.serial));
        assert!(list.check(&alpha).is_err() && list.check(&bravo).is_ok());

        let by_file = Revocation::Certificate(dir.path().join("participants/bravo/cert.pem"));
        let revoked = revoke(dir.path(), &by_file, 30).unwrap();
        assert_eq!(revoked.n_revoked, 2);
        let list = load_revocations(&revoked.crl, &ca_pem).unwrap();
        assert_eq!(list.number(), 2);
        assert!(list.check(&bravo).is_err() && list.check(&alpha).is_err());

        let err = revoke(dir.path(), &Revocation::Participant("zulu".into()), 30)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds no certificate of participant \"zulu\""),
            "{err}"
        );
        let renewed = revoke(dir.path(), &Revocation::Renew, 30).unwrap();
        assert_eq!(
            (renewed.certificate, renewed.n_revoked, renewed.number),
            (None, 2, 3)
        );
        let list = load_revocations(&renewed.crl, &ca_pem).unwrap();
        assert!(list.check(&bravo).is_err() && list.check(&alpha).is_err());
    }

    #[test]
    fn renewing_needs_a_list() {
        let dir = tempfile::tempdir().unwrap();
        provision(&request(dir.path(), &["alpha"])).unwrap();
        let err = revoke(dir.path(), &Revocation::Renew, 30)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("there is no revocation list at") && err.contains("--participant ID"),
            "{err}"
        );
    }

    #[test]
    fn a_revocation_list_of_another_ca_is_refused_naming_the_file() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        provision(&request(ours.path(), &["alpha"])).unwrap();
        provision(&request(theirs.path(), &["alpha"])).unwrap();
        let theirs_crl = revoke(theirs.path(), &Revocation::Participant("alpha".into()), 30)
            .unwrap()
            .crl;
        let ca_pem = std::fs::read_to_string(ours.path().join("ca/ca.pem")).unwrap();
        let err = load_revocations(&theirs_crl, &ca_pem)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("revocation list {}: ", theirs_crl.display()))
                && err.contains("is not signed by the federation CA"),
            "{err}"
        );
        // Nor does `revoke` extend a list that is not its CA's, or revoke another CA's
        // certificate.
        std::fs::copy(&theirs_crl, crl_path(ours.path())).unwrap();
        let err = revoke(ours.path(), &Revocation::Participant("alpha".into()), 30)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not signed by the federation CA"), "{err}");
        std::fs::remove_file(crl_path(ours.path())).unwrap();
        let foreign = Revocation::Certificate(theirs.path().join("participants/alpha/cert.pem"));
        let err = revoke(ours.path(), &foreign, 30).unwrap_err().to_string();
        assert!(
            err.contains("was not issued by this federation's CA"),
            "{err}"
        );
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
