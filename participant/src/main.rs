//! `cairn-participant`: the command line of a participant. `join` runs one organisation's
//! participant; `simulate` runs many virtual participants in one process, each with its own
//! certificate, connection and data partition, through the same code as `join`.

use anyhow::Context;
use cairn_participant::client::{self, ClientOptions, Kit};
use cairn_participant::data::{LocalData, Partition};
use cairn_participant::policy::{Partners, Policy};
use cairn_participant::task::presets::{self, Preset};
use cairn_participant::task::{Backend, Task};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Cairn participant: trains the federation's model on this organisation's private data and
/// sends only masked model updates to the coordinator (secure aggregation), over mutual TLS.
/// It only dials out.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a federation as one participant.
    Join {
        /// This participant's kit directory: key.pem from `request`, with the cert.pem and
        /// ca.pem that the host's `cairn-coordinator sign` returned (or a whole kit from
        /// `cairn-coordinator provision --with-keys`).
        #[arg(long)]
        kit: PathBuf,
        /// Which partition of the data this participant keeps, 0-based (with --partitions).
        #[arg(long, default_value_t = 0)]
        partition_index: usize,
        /// Into how many partitions the data is split (1: use it all).
        #[arg(long, default_value_t = 1)]
        partitions: usize,
        /// After a job ends, stay and wait for the coordinator's next job (for a coordinator
        /// running FederatedJobs one after another) instead of exiting; a job that does not
        /// list this participant is waited out too.
        #[arg(long)]
        keep_going: bool,
        /// File where this site keeps the last round record it countersigned in each job: a
        /// coordinator that later shows a history forking from it (rounds rewritten, dropped
        /// or reordered) is refused. Keep it on storage that outlives the process (default:
        /// history.json in the kit directory).
        #[arg(long, value_name = "FILE")]
        history: Option<PathBuf>,
        // Last, because its site policy opens its own heading in --help.
        #[command(flatten)]
        common: Common,
    },
    /// Make this site's key and a certificate signing request for the federation CA: the host
    /// signs the request for this id (`cairn-coordinator sign --participant ID`) and sends back
    /// cert.pem, ca.pem and values.yaml; the key never leaves this site.
    Request {
        /// This participant's id (1-63 lowercase letters, digits or '-').
        #[arg(long, value_parser = participant_id)]
        id: String,
        /// Organisation name for the certificate (default: the id).
        #[arg(long)]
        organisation: Option<String>,
        /// Kit directory to create (key.pem and request.csr go there).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print this site's line for its partners' `--partners` files: its id and its certificate's
    /// fingerprint, to be exchanged out of band (the coordinator relays certificates, so a site
    /// that pins its partners' fingerprints does not have to trust it or the CA's host).
    Fingerprint {
        /// This participant's kit directory (cert.pem).
        #[arg(long)]
        kit: PathBuf,
    },
    /// Write a built-in network's initial parameters to a safetensors file (PyTorch names and
    /// layouts), for a job's `model: {initial: FILE}`. Seeded: the same flags give the same file.
    /// With --parameters instead, a model of that many zeros for `simulate --synthetic`.
    InitModel {
        /// Network: mlp (McMahan et al. 2017's 2NN) or cnn (their CNN).
        #[arg(long, value_parser = Preset::parse, required_unless_present = "parameters")]
        model: Option<Preset>,
        /// The images it takes: mnist (28x28) or digits (8x8), one channel, ten classes.
        #[arg(long, value_parser = presets::dataset_image, required_unless_present = "parameters")]
        dataset: Option<[usize; 3]>,
        /// Write a synthetic model of this many parameters (one tensor of zeros) instead.
        #[arg(long, conflicts_with_all = ["model", "dataset"])]
        parameters: Option<usize>,
        /// Seed of the initial values.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// File to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run N participants in one process, each with its own kit, mTLS connection and data
    /// partition (for development and scale tests).
    Simulate {
        /// Number of participants.
        #[arg(long)]
        participants: usize,
        /// Train nothing: each site moves every parameter of the job's model, whatever its
        /// layout, by a small seeded random step, so the coordinator can be measured alone
        /// (--data and --model are not used; `init-model --parameters N` makes a model).
        #[arg(long)]
        synthetic: bool,
        /// Directory holding one kit per participant (`<dir>/<id>/`), as `provision` writes
        /// under `participants/`; the first N ids in name order are used.
        #[arg(long)]
        kits: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Coordinator URL.
    #[arg(long, default_value = "https://localhost:7443")]
    coordinator: String,
    /// Name to check the coordinator's certificate against (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Directory with gzip IDX files: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
    /// t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (required but with
    /// `simulate --synthetic`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Network this participant trains: mlp or cnn (its layout must be the job's model file's:
    /// `init-model` makes that file).
    #[arg(long, default_value = "mlp", value_parser = Preset::parse)]
    model: Preset,
    /// How partitions are cut: iid, dirichlet:ALPHA (label skew), shards:K (McMahan et al.'s
    /// pathological non-IID: label-sorted shards, K per participant) or none.
    #[arg(long, default_value = "iid", value_parser = Partition::parse_scheme)]
    partition: cairn_participant::data::partition::Scheme,
    /// Seed of the partitioning; every participant of a federation must use the same.
    #[arg(long, default_value_t = 0)]
    partition_seed: u64,
    /// Compute backend: cpu (burn's flex), tch (LibTorch), wgpu or cuda; all but cpu need the
    /// build feature of the same name.
    #[arg(long, default_value = "cpu", value_parser = Backend::parse)]
    backend: Backend,
    /// CPU threads that training computes with, shared by every participant of this process
    /// (default: one per core the process may use, which honours a container's CPU limit).
    #[arg(long, env = "CAIRN_THREADS")]
    threads: Option<usize>,
    /// Give up after this many failed connection attempts in a row (default: retry forever).
    #[arg(long)]
    max_attempts: Option<u32>,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// This site's rules for taking part in a round, checked before it trains; the coordinator
/// cannot change them. A round that breaks one is refused and logged with the rule, and this
/// participant sends nothing for it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Site policy")]
struct PolicyArgs {
    /// Take part in rounds that ask for the update or the evaluation in the clear (default:
    /// refuse them, since the coordinator would then see this site's update or metrics).
    #[arg(long)]
    allow_plaintext: bool,
    /// Refuse securely aggregated rounds with fewer participants: with n, the coordinator and
    /// n - 2 colluding participants learn the last one's update, so set this above the largest
    /// coalition you fear plus one.
    #[arg(long, default_value_t = 3, value_parser = at_least_3)]
    min_participants: usize,
    /// Refuse rounds whose graph gives each participant fewer neighbours.
    #[arg(long, default_value_t = 2, value_parser = at_least_2)]
    min_neighbours: usize,
    /// Refuse rounds whose threshold is below this fraction of the neighbours (0.5 to 1); a
    /// higher one tolerates more colluding neighbours, fewer dropouts.
    #[arg(long, default_value_t = 0.5, value_parser = threshold_fraction)]
    min_threshold: f64,
    /// File of the partners this site aggregates with, agreed out of band: one per line, `ID`
    /// or `ID sha256:HEX` to pin the certificate (`cairn-participant fingerprint` prints a
    /// site's line). Rounds naming anyone else are refused (default: anyone the federation CA
    /// certified).
    #[arg(long)]
    partners: Option<PathBuf>,
    /// Take part in at most this many attempts of one round. Each attempt draws a fresh
    /// neighbourhood graph, so a coordinator that fails attempts on purpose until the graph
    /// suits it gets this many draws and no more.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    max_round_attempts: u32,
    /// The federation CA's revocation list (ca/crl.pem from `cairn-coordinator revoke`):
    /// neighbours whose certificate is on it are refused. It must be signed by the kit's CA
    /// and not past its next update.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// This site's differential-privacy budget in the job: epsilon at --privacy-delta, by the
    /// site's own accounting of every noised update it sends. Rounds without noise are then
    /// refused, and so is a round that would take the site past the budget (default: no
    /// budget; noise only when the job asks for it).
    #[arg(long, value_name = "EPSILON", value_parser = positive)]
    max_epsilon: Option<f64>,
    /// Delta of this site's differential-privacy budget.
    #[arg(long, default_value_t = 1e-5, value_parser = privacy_delta)]
    privacy_delta: f64,
}

impl PolicyArgs {
    fn policy(&self, kit: &Kit) -> anyhow::Result<Policy> {
        Ok(Policy {
            revocations: self
                .crl
                .as_deref()
                .map(|path| kit.revocations(path))
                .transpose()?,
            allow_plaintext: self.allow_plaintext,
            min_participants: self.min_participants,
            min_neighbours: self.min_neighbours,
            min_threshold: self.min_threshold,
            partners: self.partners.as_deref().map(Partners::load).transpose()?,
            max_round_attempts: self.max_round_attempts,
            max_epsilon: self.max_epsilon,
            privacy_delta: self.privacy_delta,
        })
    }
}

fn positive(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("expected a finite number > 0".into()),
    }
}

fn privacy_delta(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 0.1 => Ok(x),
        _ => Err("expected a number in (0, 0.1]".into()),
    }
}

fn at_least(value: &str, least: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= least => Ok(n),
        _ => Err(format!("expected a whole number of at least {least}")),
    }
}

fn at_least_3(value: &str) -> Result<usize, String> {
    at_least(value, 3)
}

fn at_least_2(value: &str) -> Result<usize, String> {
    at_least(value, 2)
}

fn threshold_fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if (0.5..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a fraction from 0.5 to 1".into()),
    }
}

/// Parses `--id`: a participant id by the federation's rule.
fn participant_id(id: &str) -> Result<String, cairn_identity::Error> {
    cairn_identity::check_participant_id(id).map(|()| id.to_string())
}

fn options(
    common: &Common,
    kit_dir: &std::path::Path,
    label: String,
) -> anyhow::Result<ClientOptions> {
    let kit = Kit::load(kit_dir)?;
    let mut options = ClientOptions::new(common.coordinator.clone(), kit, label);
    options.server_name = common.server_name.clone();
    options.max_attempts = common.max_attempts;
    options.policy = common.policy.policy(&options.kit)?;
    Ok(options)
}

/// `--data`, which every command that trains on images needs.
fn data_dir(common: &Common) -> anyhow::Result<&std::path::Path> {
    common.data.as_deref().context(
        "--data DIR is required: the directory with MNIST's four gzip IDX files (train-images-idx3-ubyte.gz, ...)",
    )
}

/// Applies `--threads`, and says what training will run on.
fn set_threads(common: &Common) -> anyhow::Result<()> {
    if let Some(threads) = common.threads {
        cairn_participant::task::set_threads(threads)?;
    }
    tracing::info!(
        "training on backend {} with {} CPU threads",
        common.backend.name(),
        cairn_participant::task::threads()
    );
    Ok(())
}

fn task(
    common: &Common,
    data: &LocalData,
    index: usize,
    count: usize,
) -> anyhow::Result<Box<dyn Task>> {
    let partition = Partition {
        scheme: common.partition,
        index,
        count,
        seed: common.partition_seed,
    };
    let local = if count == 1 {
        data.clone()
    } else {
        data.partition(&partition)?
    };
    tracing::info!(
        "partition {index}/{count}: {} training and {} test examples",
        local.train.len(),
        local.test.len()
    );
    Ok(common.model.site(local, common.backend)?)
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
        Command::Request {
            id,
            organisation,
            out,
        } => {
            let key_path = out.join("key.pem");
            anyhow::ensure!(
                !key_path.exists(),
                "{} already exists; a new request would replace this site's key",
                key_path.display()
            );
            let (key, csr) =
                cairn_identity::certificate_request(&id, organisation.as_deref().unwrap_or(&id))?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::io::Write::write_all(
                &mut options
                    .open(&key_path)
                    .with_context(|| format!("writing {}", key_path.display()))?,
                key.as_bytes(),
            )?;
            let csr_path = out.join("request.csr");
            std::fs::write(&csr_path, csr)
                .with_context(|| format!("writing {}", csr_path.display()))?;
            println!(
                "key in {} (keep it here); send {} to the federation's host, who signs it for {id} (cairn-coordinator sign --participant {id}), and put the cert.pem and ca.pem it returns next to the key",
                key_path.display(),
                csr_path.display()
            );
        }
        Command::Fingerprint { kit } => {
            let path = kit.join("cert.pem");
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let der = cairn_identity::certificate_der(&pem, "cert.pem")
                .with_context(|| path.display().to_string())?;
            let identity = cairn_identity::identity_of(&der)?;
            println!("{} {}", identity.id, cairn_identity::fingerprint(&der));
        }
        Command::InitModel {
            model: None,
            parameters: Some(n),
            out,
            ..
        } => {
            anyhow::ensure!(n >= 1, "--parameters is 0; expected at least 1");
            cairn_participant::task::save_synthetic_model(n, &out)?;
            println!(
                "wrote a synthetic model of {n} parameters to {}; name it in the job as model: {{initial: {}}} and run its sites with simulate --synthetic",
                out.display(),
                out.display()
            );
        }
        Command::InitModel {
            model,
            dataset,
            seed,
            out,
            ..
        } => {
            let (Some(model), Some(dataset)) = (model, dataset) else {
                anyhow::bail!("init-model needs --model and --dataset, or --parameters");
            };
            model.save_initial(dataset, 10, seed, &out)?;
            println!(
                "wrote the initial {} for {}x{} images to {}; name it in the job as model: {{initial: {}}} (a relative path is read from the job file's directory)",
                model.name(),
                dataset[1],
                dataset[2],
                out.display(),
                out.display()
            );
        }
        Command::Join {
            kit,
            common,
            partition_index,
            partitions,
            keep_going,
            history,
        } => {
            set_threads(&common)?;
            let data = LocalData::load_idx(data_dir(&common)?)?;
            let label = kit
                .file_name()
                .map_or("participant".into(), |n| n.to_string_lossy().into_owned());
            let task = task(&common, &data, partition_index, partitions)?;
            let defaults = options(&common, &kit, label)?;
            let options = client::ClientOptions {
                keep_going,
                history: history.unwrap_or(defaults.history.clone()),
                ..defaults
            };
            let summary = client::run(options, task).await?;
            print_summary(&summary);
        }
        Command::Simulate {
            participants,
            synthetic,
            kits,
            common,
        } => {
            anyhow::ensure!(
                participants >= 1,
                "--participants is 0; expected at least 1"
            );
            let mut ids: Vec<String> = std::fs::read_dir(&kits)
                .with_context(|| format!("reading kits directory {}", kits.display()))?
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.path().join("cert.pem").exists())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            ids.sort();
            anyhow::ensure!(
                ids.len() >= participants,
                "{} holds {} kits, --participants asks for {participants}",
                kits.display(),
                ids.len()
            );
            let data = match synthetic {
                true => None,
                false => {
                    set_threads(&common)?;
                    Some(LocalData::load_idx(data_dir(&common)?)?)
                }
            };
            let mut clients = Vec::with_capacity(participants);
            for (index, id) in ids.iter().take(participants).enumerate() {
                let task: Box<dyn Task> = match &data {
                    None => Box::new(cairn_participant::task::Synthetic::new(index as u64)),
                    Some(data) => task(&common, data, index, participants)?,
                };
                clients.push((options(&common, &kits.join(id), id.clone())?, task));
            }
            let results = client::run_many(clients).await;
            let mut failures = 0;
            for (id, result) in ids.iter().zip(results) {
                match result {
                    Ok(summary) => println!(
                        "{id}: trained {} rounds, {} evaluations",
                        summary.rounds_trained, summary.evaluations
                    ),
                    Err(e) => {
                        failures += 1;
                        eprintln!("{id}: {e}");
                    }
                }
            }
            anyhow::ensure!(
                failures == 0,
                "{failures} of {participants} participants failed"
            );
        }
    }
    Ok(())
}

fn print_summary(summary: &client::RunSummary) {
    println!(
        "trained in {} rounds, {} evaluations; {}",
        summary.rounds_trained, summary.evaluations, summary.finish_reason
    );
    if let Some(evaluation) = &summary.last_evaluation {
        let metrics: Vec<String> = evaluation
            .finish()
            .into_iter()
            .filter_map(|(metric, value)| Some(format!("{} {:.4}", metric.name(), value?)))
            .collect();
        println!(
            "last global model on local test data: {} ({} examples)",
            metrics.join(", "),
            evaluation.n_examples
        );
    }
}
