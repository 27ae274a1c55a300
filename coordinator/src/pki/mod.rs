//! Provisioning: the federation's CA, the coordinator's server certificate, and one kit per
//! participant (client certificate whose common name is the participant id, private key, CA
//! certificate, Helm values), written to disk. How certificates are made and read is
//! `cairn_identity`'s; this module decides where they go.
//!
//! Layout written under the output directory:
//! `ca/ca.pem`, `ca/ca-key.pem` (keep secret: it mints identities),
//! `coordinator/{cert,key,ca}.pem`, `participants/<id>/{cert,key,ca}.pem`.
//! Running `provision` again on the same directory reuses the CA and adds only missing kits.

use crate::Error;
use cairn_identity::{Authority, COORDINATOR_UNIT, check_participant_id};
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
}

/// Signs a participant's certificate signing request: the private key never left the
/// participant's site. The request's signature must verify, its key must be ECDSA P-256 (the
/// participant signs secure-aggregation messages with it), and its common name must be a valid
/// participant id. The certificate's subject is rebuilt from those (id, organisation,
/// `participant` unit) whatever else the request asks for. Writes `cert.pem`, `ca.pem` and the
/// Helm values (without the key) into the kit directory and returns it; an existing kit is
/// never replaced.
pub fn sign_request(request: &SignRequest) -> Result<PathBuf, Error> {
    let ca = load_ca(&request.out_dir.join("ca"))?;
    let signed = ca.sign_request(&request.csr_pem, request.validity_days)?;
    let dir = request.out_dir.join("participants").join(&signed.id);
    let paths = KitPaths::in_dir(&dir);
    if paths.cert.exists() {
        return Err(Error::KitExists { dir, id: signed.id });
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
