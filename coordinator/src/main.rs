//! `cairn-coordinator`: the command line of the coordinator. `provision` creates the federation's
//! CA and the coordinator's certificate, `sign` signs a participant's certificate request for an
//! allowed id, `revoke` adds a certificate to the CA's revocation list; `serve` runs a job from a job file over mutual-TLS gRPC, with the monitoring
//! API next to it (or, with `--kubernetes`, the namespace's FederatedJobs); `status` reads that API.

use anyhow::Context;
use cairn_coordinator::api::client::{ApiClient, Shown};
use cairn_coordinator::api::{ADMIN_TOKEN_FILE, ApiOptions, ApiTokens, VIEWER_TOKEN_FILE};
use cairn_coordinator::config::JobSpec;
use cairn_coordinator::operator::{self, OperatorOptions};
use cairn_coordinator::pki::{self, ParticipantSpec, ProvisionRequest};
use cairn_coordinator::{Coordinator, ServeOptions, ServerTls};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Cairn coordinator: schedules federated training rounds and aggregates the participants'
/// updates by secure aggregation (it learns only their sum). Participants dial in over mutual
/// TLS with certificates from `provision`.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the federation CA and the coordinator's server certificate. Participants' keys are
    /// born at their sites: each site runs `cairn-participant request` and sends its request,
    /// which `sign` turns into its kit; `provision` prints those steps for each `--participant`.
    /// With `--with-keys` it writes full kits instead (for local testing and the quickstart: the
    /// host then holds every participant's key). Re-running on the same directory reuses the CA
    /// and only adds what is missing.
    Provision(ProvisionArgs),
    /// Run a job: wait for participants, run its rounds, write the final model. With
    /// `--kubernetes`, run the namespace's FederatedJob resources instead, one at a time.
    Serve(ServeArgs),
    /// Sign a participant's certificate signing request (from `cairn-participant request`) with
    /// the federation CA, so that its key never leaves its site. Only for the ids that
    /// `--participant` or `--job` allow; a request for any other id is refused. Writes cert.pem,
    /// ca.pem and the Helm values into <federation>/participants/<id>/ to send back.
    Sign(SignArgs),
    /// Revoke a participant's certificate: add its serial number to the federation CA's
    /// revocation list <federation>/ca/crl.pem (made on first use, signed again each time).
    /// Give that file to `serve --crl` and to every site's `join --crl`; they then refuse the
    /// certificate. The list states its next update; `--renew` signs it again before then.
    Revoke(RevokeArgs),
    /// Print the FederatedJob CustomResourceDefinition (YAML); its spec is the job file's schema.
    Crd,
    /// Print a running coordinator's job and round table from its monitoring API.
    Status(StatusArgs),
    /// Check a state directory's history: the hash chain of its round records (each names the
    /// previous record's hash, the job definition's and the model it started from), every kept
    /// checkpoint against its record, the participants' countersignatures (with --ca, each
    /// against the federation CA), and the final model against its provenance file. Prints
    /// each round's contributors and signers; exits non-zero naming the first broken link.
    /// Needs no key.
    Audit(AuditArgs),
}

// The options of `audit`; its help text is on the `Command` variant.
#[derive(Debug, Args)]
struct AuditArgs {
    /// The state directory to check (as given to `serve --state-dir`).
    #[arg(long)]
    state_dir: PathBuf,
    /// The federation CA's certificate (ca.pem in any kit): every countersignature is then
    /// checked to come from a participant certificate of this CA and to cover its record.
    /// Without it, countersignatures are only matched to the records they name.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

// The options of `provision`; its help text is on the `Command` variant.
#[derive(Debug, Args)]
struct ProvisionArgs {
    /// Directory to write into (ca/, coordinator/, participants/<id>/).
    #[arg(long, default_value = "federation")]
    out: PathBuf,
    /// Name of the federation, shown in the CA's name.
    #[arg(long, default_value = "cairn")]
    federation: String,
    /// DNS name or IP address participants use to reach the coordinator; repeat for several.
    #[arg(long = "server-name", required = true)]
    server_names: Vec<String>,
    /// A participant of the federation, as `id` or `id=Organisation`; repeat for several.
    /// Without `--with-keys`, `provision` prints the commands that make its kit with its key at
    /// its site.
    #[arg(long = "participant", required_if_eq("with_keys", "true"))]
    participants: Vec<String>,
    /// Also make each participant's private key here and write full kits
    /// (participants/<id>/{cert,key,ca}.pem): for local testing and the quickstart only, since
    /// the host then holds every participant's key.
    #[arg(long)]
    with_keys: bool,
    /// Validity of the new certificates, in days.
    #[arg(long, default_value_t = 365)]
    validity_days: u32,
}

// The options of `serve`; its help text is on the `Command` variant.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Job file (YAML); see examples/jobs/ for annotated examples.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    job: Option<PathBuf>,
    /// Durable state: checkpoints, round records and the final model. Restarted with the same
    /// job and directory, the coordinator resumes after the last committed round. With
    /// `--kubernetes`, each FederatedJob gets `<state-dir>/<name>-<uid>`.
    #[arg(long)]
    state_dir: PathBuf,
    /// Run as the FederatedJob operator (in a pod, or with a kubeconfig): elect a leader among
    /// replicas on a Lease, run the namespace's FederatedJobs one at a time, write their
    /// status and Events; a deleted FederatedJob is stopped before it goes.
    #[arg(long)]
    kubernetes: bool,
    /// Namespace of the FederatedJobs (default: the pod's, or the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE", requires = "kubernetes")]
    namespace: Option<String>,
    /// This replica's name in the Lease and in Events (default: the host name).
    #[arg(long, env = "POD_NAME", requires = "kubernetes")]
    identity: Option<String>,
    /// Name of the Lease the replicas elect a leader on.
    #[arg(long, default_value = "cairn-coordinator", requires = "kubernetes")]
    lease_name: String,
    /// Seconds a lease lasts without renewal; a standby replica takes over within that long.
    #[arg(long, default_value_t = 15, requires = "kubernetes")]
    lease_duration_s: u64,
    /// The coordinator's TLS directory from `provision` (cert.pem, key.pem, ca.pem).
    #[arg(long)]
    tls: PathBuf,
    /// The federation CA's revocation list (<federation>/ca/crl.pem, from `revoke`): sessions
    /// with a certificate on it are refused. It must be signed by the CA in --tls and not be
    /// past its next update (`revoke --renew` signs it again).
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Address to listen on for participants.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// Seconds between heartbeats; a participant silent for three intervals is dropped.
    #[arg(long, default_value_t = 10)]
    heartbeat_s: u64,
    /// Checkpoints of the global model to keep (one per committed round).
    #[arg(long, default_value_t = 3)]
    keep_checkpoints: usize,
    /// Address of the monitoring API (dashboard, REST, live events, Prometheus metrics).
    #[arg(long, default_value = "127.0.0.1:9464")]
    api_listen: SocketAddr,
    /// The API's bearer tokens: one `<role> <token>` per line, role `admin` or `viewer`
    /// (at least 16 characters each). Without it, the state directory's tokens are used, made
    /// at the first start: a bare admin token in `<state-dir>/api-token` and a bare viewer token
    /// in `<state-dir>/api-token-viewer` (Prometheus' `credentials_file` reads it as it is).
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Seconds the monitoring API keeps serving after the job ended (not with
    /// `--kubernetes`, where the next job needs the address).
    #[arg(long, default_value_t = 0, conflicts_with = "kubernetes")]
    api_linger_s: u64,
    /// Do not serve the monitoring API.
    #[arg(long, conflicts_with_all = ["api_listen", "api_token_file", "api_linger_s"])]
    no_api: bool,
}

// The options of `sign`; its help text is on the `Command` variant.
#[derive(Debug, Args)]
struct SignArgs {
    /// The federation directory from `provision` (holding ca/).
    #[arg(long)]
    federation: PathBuf,
    /// The request file.
    #[arg(long)]
    csr: PathBuf,
    /// Name participants dial the coordinator at (for the Helm values).
    #[arg(long)]
    server_name: String,
    /// A participant id this signing may issue a certificate for; repeat for several. At least
    /// one of --participant and --job is required.
    #[arg(long = "participant", value_name = "ID")]
    participants: Vec<String>,
    /// A job file whose participants this signing may issue certificates for.
    #[arg(long, value_name = "FILE")]
    job: Option<PathBuf>,
    /// Issue a certificate for an id whose kit already holds one. The old certificate moves
    /// to participants/<id>/replaced/<serial>/ and keeps working until `revoke --cert` revokes
    /// it.
    #[arg(long)]
    replace: bool,
    /// Validity of the certificate, in days.
    #[arg(long, default_value_t = 365)]
    validity_days: u32,
}

// The options of `revoke`; its help text is on the `Command` variant.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(false)))]
struct RevokeArgs {
    /// The federation directory from `provision` (holding ca/).
    #[arg(long)]
    federation: PathBuf,
    /// The participant whose current certificate (participants/<ID>/cert.pem) to revoke.
    #[arg(long, value_name = "ID", group = "what")]
    participant: Option<String>,
    /// A certificate file (PEM) of the federation CA to revoke, such as one `sign --replace`
    /// set aside.
    #[arg(long, value_name = "FILE", group = "what")]
    cert: Option<PathBuf>,
    /// Revoke nothing new: sign the list again as it is, with a new next update. Parties
    /// refuse a list past its next update, so renew it before then.
    #[arg(long, group = "what")]
    renew: bool,
    /// Days until the list's next update, as it states; after it, `serve --crl` and
    /// `join --crl` refuse to start with the list.
    #[arg(long, default_value_t = 365)]
    validity_days: u32,
}

// The options of `status`; its help text is on the `Command` variant.
#[derive(Debug, Args)]
struct StatusArgs {
    /// The API's address.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    api: String,
    /// File holding the bearer token (a bare token, or a `<role> <token>` line), such as
    /// `<state-dir>/api-token`.
    #[arg(long)]
    token_file: PathBuf,
    /// Keep following the live stream, one line per change, until the job ends.
    #[arg(long)]
    watch: bool,
    /// Show the last this many committed rounds of the round table.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Show every committed round (a long job's table runs to thousands of lines).
    #[arg(long, conflicts_with = "limit")]
    all: bool,
}

/// The token in a token file: the last field of its first line that is not a comment.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
        .with_context(|| format!("token file {} holds no token", path.display()))
}

/// The API options of `serve`: the token file's tokens, or the state directory's
/// ([`ApiTokens::of_state_dir`]).
fn api_options(
    listen: SocketAddr,
    token_file: Option<PathBuf>,
    state_dir: &std::path::Path,
) -> anyhow::Result<ApiOptions> {
    if let Some(path) = token_file {
        return Ok(ApiOptions {
            listen,
            tokens: ApiTokens::load(&path)?,
            linger: Duration::ZERO,
        });
    }
    let (tokens, token) = ApiTokens::of_state_dir(state_dir)?;
    eprintln!(
        "monitoring API tokens in {dir}/{ADMIN_TOKEN_FILE} (admin) and {dir}/{VIEWER_TOKEN_FILE} (viewer, for scrapers); dashboard: http://{listen}/#token={token}",
        dir = state_dir.display()
    );
    Ok(ApiOptions {
        listen,
        tokens,
        linger: Duration::ZERO,
    })
}

/// This machine's host name, the operator's default identity.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("cairn-coordinator-{}", std::process::id()))
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or Ctrl-C, logging which, and returns its
/// name. The handlers are installed when this is called, not when the future is first polled,
/// so a signal that arrives while the caller is still starting is not lost (nor fatal).
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        let signal = tokio::select! {
            _ = received(interrupt.as_mut()) => "Ctrl-C (SIGINT)",
            _ = received(term.as_mut()) => "SIGTERM",
        };
        #[cfg(not(unix))]
        let signal = {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        };
        tracing::info!("received {signal}; shutting down");
        signal
    }
}

/// Completes when `signal` is received; never without a handler.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Provision(args) => provision(args),
        Command::Serve(args) => serve(args).await,
        Command::Sign(args) => sign(args),
        Command::Revoke(args) => revoke(args),
        Command::Crd => {
            print!("{}", cairn_coordinator::operator::crd_yaml());
            Ok(())
        }
        Command::Status(args) => status(args).await,
        Command::Audit(args) => audit(&args),
    }
}

/// `audit`: the chain's verdict and each round's contributors, signers and checkpoint.
fn audit(args: &AuditArgs) -> anyhow::Result<()> {
    use cairn_coordinator::store::audit::{Kept, audit};
    let ca = match &args.ca {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the federation CA {}", path.display()))?,
        ),
    };
    let audit = audit(&args.state_dir, ca.as_deref())?;
    println!(
        "job {} (definition sha256 {}): {} rounds, chain intact, head {}",
        audit.job,
        audit.job_sha256,
        audit.rounds.len(),
        match audit.chain_head_sha256.as_str() {
            "" => "(no round yet)",
            head => head,
        }
    );
    println!("initial model: {}", audit.initial_model.describe());
    println!(
        "countersignatures: {}",
        match audit.signatures_verified {
            true => "each verified against the federation CA",
            false => "matched to their records only (pass --ca to verify them)",
        }
    );
    println!("\nround  checkpoint  dropouts  contributors  countersigned by");
    for round in &audit.rounds {
        let outcome = &round.record.outcome;
        let signers = match round.signers.is_empty() {
            true => "(nobody)".to_string(),
            false => round.signers.join(", "),
        };
        println!(
            "{:>5}  {:<10}  {:>8}  {:<12}  {signers}",
            outcome.round,
            round.checkpoint.describe(),
            outcome.dropouts.len(),
            outcome.contributors.join(", "),
        );
    }
    println!(
        "\nfinal model: {}",
        match audit.final_model {
            Kept::Verified =>
                "verified: model.safetensors and model.provenance.json are the chain's last round",
            Kept::Absent => "not written yet",
        }
    );
    Ok(())
}

/// `provision`: the CA (made or reused), the server certificate, and either the missing kits
/// (`--with-keys`) or the steps that make them at the sites.
fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let ProvisionArgs {
        out,
        federation,
        server_names,
        participants,
        with_keys,
        validity_days,
    } = args;
    let participants = participants
        .iter()
        .map(|p| ParticipantSpec::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let request = ProvisionRequest {
        out_dir: out.clone(),
        federation,
        server_names,
        participants,
        with_keys,
        validity_days,
    };
    let report = pki::provision(&request)?;
    println!(
        "{} CA in {}",
        if report.created_ca {
            "created"
        } else {
            "reused"
        },
        out.join("ca").display()
    );
    if report.created_server {
        println!(
            "coordinator certificate in {}",
            out.join("coordinator").display()
        );
    }
    for kit in &report.created_kits {
        println!(
            "participant kit in {} (with its private key: send it over a secure channel)",
            kit.display()
        );
    }
    for kit in &report.kept_kits {
        println!("kept existing kit {}", kit.display());
    }
    if !report.awaiting_requests.is_empty() {
        println!(
            "{}",
            site_steps(&out, &request.server_names[0], &report.awaiting_requests)
        );
    }
    println!(
        "keep {} secret: it can mint identities",
        out.join("ca/ca-key.pem").display()
    );
    Ok(())
}

/// What the operator does next for participants without a kit: each site makes its own key and
/// request, and the host signs the request for that id.
fn site_steps(out: &std::path::Path, server_name: &str, awaiting: &[ParticipantSpec]) -> String {
    let mut steps = String::from(
        "participant keys are made at each site (pass --with-keys to make them here, for local testing):\n",
    );
    for participant in awaiting {
        let id = &participant.id;
        let organisation = match participant.organisation == *id {
            true => String::new(),
            false => format!(" --organisation {:?}", participant.organisation),
        };
        steps.push_str(&format!(
            "  {id}: at the site, `cairn-participant request --id {id}{organisation} --out {id}`, \
             which keeps key.pem there and writes {id}/request.csr to send to the host;\n    \
             then here, `cairn-coordinator sign --federation {} --csr request.csr --server-name {server_name} --participant {id}`, \
             and send back {}/{{cert.pem,ca.pem,values.yaml}}\n",
            out.display(),
            out.join("participants").join(id).display(),
        ));
    }
    steps.trim_end().to_string()
}

/// `serve`: one job from its file, or, with `--kubernetes`, the namespace's FederatedJobs.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.heartbeat_s >= 1,
        "--heartbeat-s is 0; expected at least 1 second"
    );
    let mut tls =
        ServerTls::from_dir(&args.tls).context("loading the coordinator's TLS directory")?;
    if let Some(crl) = &args.crl {
        tls = tls.with_revocations(crl)?;
    }
    let api = match args.no_api {
        true => None,
        false => Some(ApiOptions {
            linger: Duration::from_secs(args.api_linger_s),
            ..api_options(
                args.api_listen,
                args.api_token_file.clone(),
                &args.state_dir,
            )?
        }),
    };
    match args.job.clone().filter(|_| !args.kubernetes) {
        Some(job) => serve_job(&job, args, tls, api).await,
        None => serve_operator(args, tls, api).await,
    }
}

/// `serve --job`: runs the job to its end; an error unless every round completed.
async fn serve_job(
    job: &std::path::Path,
    args: ServeArgs,
    tls: ServerTls,
    api: Option<ApiOptions>,
) -> anyhow::Result<()> {
    let options = ServeOptions {
        job: JobSpec::load(job)?,
        tls,
        state_dir: args.state_dir,
        listen: args.listen,
        heartbeat_interval: Duration::from_secs(args.heartbeat_s),
        keep_checkpoints: args.keep_checkpoints,
        api,
    };
    // Installed before the server starts, so that a SIGTERM during the start hands over too.
    let signal = shutdown_signal();
    let coordinator = Coordinator::start(options).await?;
    // On SIGTERM or Ctrl-C the job is handed over rather than ended: participants are told to
    // reconnect, and a coordinator started again on the same state directory resumes it.
    let stopper = coordinator.stopper();
    let signalled = tokio::spawn(async move {
        let signal = signal.await;
        stopper.hand_over(&format!("the coordinator received {signal}"));
    });
    let report = coordinator.wait().await?;
    if signalled.is_finished() {
        tracing::info!(
            "stopped after {} committed rounds ({}); start `serve` again with the same --state-dir to resume",
            report.rounds.len(),
            report.reason
        );
        return Ok(());
    }
    signalled.abort();
    anyhow::ensure!(report.succeeded, "job did not complete: {}", report.reason);
    Ok(())
}

/// `serve --kubernetes`: the operator, until SIGTERM or Ctrl-C.
async fn serve_operator(
    args: ServeArgs,
    tls: ServerTls,
    api: Option<ApiOptions>,
) -> anyhow::Result<()> {
    let client = operator::connect().await?;
    let options = OperatorOptions {
        namespace: args
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_string()),
        identity: args.identity.unwrap_or_else(host_name),
        lease_name: args.lease_name,
        lease_duration: Duration::from_secs(args.lease_duration_s),
        state_dir: args.state_dir,
        tls,
        listen: args.listen,
        heartbeat_interval: Duration::from_secs(args.heartbeat_s),
        keep_checkpoints: args.keep_checkpoints,
        api,
    };
    let signal = shutdown_signal();
    operator::run(client, options, async {
        signal.await;
    })
    .await?;
    Ok(())
}

/// `sign`: a participant's certificate from its signing request, for an allowed id.
fn sign(args: SignArgs) -> anyhow::Result<()> {
    let mut allowed = args.participants.clone();
    if let Some(job) = &args.job {
        allowed.extend(JobSpec::load(job)?.participants);
    }
    let csr_pem = std::fs::read_to_string(&args.csr)
        .with_context(|| format!("reading {}", args.csr.display()))?;
    let kit = pki::sign_request(&pki::SignRequest {
        out_dir: args.federation,
        csr_pem,
        server_name: args.server_name,
        validity_days: args.validity_days,
        allowed,
        replace: args.replace,
    })?;
    println!(
        "signed: {} holds cert.pem, ca.pem and values.yaml for the participant (its key stays at its site)",
        kit.display()
    );
    Ok(())
}

/// `revoke`: a certificate onto the federation's revocation list.
fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let what = match (args.participant, args.cert, args.renew) {
        (Some(id), _, _) => pki::Revocation::Participant(id),
        (None, Some(cert), _) => pki::Revocation::Certificate(cert),
        (None, None, true) => pki::Revocation::Renew,
        (None, None, false) => {
            anyhow::bail!("revoke: pass --participant ID, --cert FILE or --renew")
        }
    };
    let revoked = pki::revoke(&args.federation, &what, args.validity_days)?;
    let done = match &revoked.certificate {
        Some(certificate) => format!(
            "revoked the certificate of {} (serial {})",
            certificate.id, certificate.serial
        ),
        None => "signed the revocation list again".to_string(),
    };
    println!(
        "{done}; {} (number {}, next update in {} days) lists {} revoked certificate(s): \
         give it to `cairn-coordinator serve --crl` and to each site's `cairn-participant join --crl`",
        revoked.crl.display(),
        revoked.number,
        args.validity_days.max(1),
        revoked.n_revoked
    );
    Ok(())
}

/// `status`: the job and its rounds once, or followed live with `--watch`.
async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api, &read_token(&args.token_file)?);
    let shown = match args.all {
        true => Shown::All,
        false => Shown::Last(args.limit as usize),
    };
    if args.watch {
        client.watch(shown, |line| println!("{line}")).await?;
    } else {
        print!("{}", client.status(shown).await?);
    }
    Ok(())
}
