//! The job file (YAML): which model to start from, how to evaluate it, for how many rounds, with
//! whom. Every field is validated, and an error names the field, the value and what is allowed.
//! The same type is the spec of the `FederatedJob` Kubernetes resource.
//!
//! The coordinator knows tensors, not networks: the job names a safetensors file holding the
//! initial global model (`model: {initial: init.safetensors}`), whose tensors are the layout
//! every update must have. Which network those tensors belong to is the participants' business
//! (`cairn-participant init-model` writes such a file for its built-in networks). The job also
//! names the evaluation metrics (`metrics:`) and, for tabular data, the fixed statistics every
//! participant standardises its features with (`standardize:`).
//!
//! ```yaml
//! name: digits-demo
//! model: {initial: init.safetensors}   # relative to the job file's directory
//! metrics: [loss, accuracy]            # the default
//! standardize:                         # optional
//!   - {feature: age, mean: 54.4, std: 9.1}
//! rounds: 3
//! min_participants: 3
//! participants: [alpha, beta, gamma]
//! ```

use crate::Error;
use cairn_identity::{NAME_RULE, is_valid_name};
use cairn_proto::metrics::Metric;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A federated training job.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct JobSpec {
    /// Job name: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// The model to train, as its initial global model file.
    pub model: ModelSpec,
    /// Metrics every participant evaluates the global model with after each round, in this
    /// order: `loss`, `accuracy`, `roc_auc`, `mse`, `mae` (default `[loss, accuracy]`). The
    /// coordinator adds their sums across participants, so each is exact over all test sets.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<String>,
    /// Fixed statistics every participant standardises tabular features with,
    /// `(x - mean) / std`, so that all sites transform alike and none reveals its own
    /// statistics. The job's author agrees them with the sites (from a published reference, a
    /// registry's data dictionary). Empty (the default): features are used as they are.
    #[serde(default)]
    pub standardize: Vec<FeatureStatistics>,
    /// Rounds to run.
    pub rounds: u64,
    /// Fewest participants a round needs to start and to complete.
    pub min_participants: usize,
    /// Fraction of connected participants selected per round, in `(0, 1]` (at least
    /// `min_participants` are selected).
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Passes over local data per round.
    #[serde(default = "default_local_epochs")]
    pub local_epochs: u32,
    /// Local mini-batch size.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Local SGD learning rate.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// FedProx's `μ` (Li et al. 2020), in `[0, 1000]`: each site's local training minimises its
    /// loss plus `μ/2 ‖w - w_global‖²`, which keeps local models near the global one when
    /// sites' data differ. Default 0: plain local SGD (FedAvg).
    #[serde(default)]
    pub proximal_mu: f64,
    /// Seconds a participant has for each phase (training, evaluation) before it is dropped from
    /// the round.
    #[serde(default = "default_phase_deadline_s")]
    pub phase_deadline_s: u64,
    /// Attempts of one round (a round fails when too few participants finish it) before the job
    /// gives up.
    #[serde(default = "default_max_round_attempts")]
    pub max_round_attempts: u32,
    /// Participant ids allowed to join (each the identity in a participant's certificate).
    pub participants: Vec<String>,
    /// Seed of participant selection; each round's local-training seed sent to the participants
    /// is derived from it. (The initial model is the model file, not seeded here.)
    #[serde(default)]
    pub seed: u64,
    /// Secure aggregation (on unless disabled): the coordinator learns only the sum of the
    /// updates.
    #[serde(default)]
    pub secure_aggregation: SecureAggregationSpec,
    /// How the coordinator turns each round's average update into the next global model
    /// (default: FedAvg, the average added as it is).
    #[serde(default)]
    pub server_optimizer: ServerOptimizerSpec,
    /// Distributed differential privacy on the secure sum (off unless present; needs secure
    /// aggregation): each site clips and noises its update before masking it, and the job stops
    /// before a round would spend more than its budget.
    #[serde(default)]
    pub privacy: Option<PrivacySpec>,
}

/// The `privacy:` block of a job: the distributed discrete Gaussian (Kairouz, Liu and Steinke
/// 2021), accounted in Rényi DP (`cairn_secagg::privacy`). Every site clips its update to
/// `clip_norm` and adds its share of noise before masking; the sum of `min_contributors` sites'
/// noise has standard deviation `noise_multiplier` times one site's sensitivity. Each site
/// counts as one (updates are averaged, not weighted by examples) and no training loss is
/// reported. The guarantee is for one site's whole contribution (add or remove one site), over
/// every round it takes part in; the coordinator's choice of sites is not assumed random, so no
/// amplification by sampling is claimed.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PrivacySpec {
    /// The job stops, recorded, before a round would take `ε` past this (at `delta`).
    pub epsilon_budget: f64,
    /// `δ` of the `(ε, δ)` guarantee (default 1e-5), in `(0, 0.1]`.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Standard deviation of the summed noise over the sensitivity, in `[0.01, 1000]`.
    pub noise_multiplier: f64,
    /// L2 norm each site's delta (`local - global`) is clipped to (default 1).
    #[serde(default = "default_dp_clip_norm")]
    pub clip_norm: f32,
    /// Fewest sites whose noise must be in a released sum; each site adds `1/√m` of the noise
    /// and refuses to let a round with fewer survivors be unmasked. Omitted: `min_participants`.
    #[serde(default)]
    pub min_contributors: Option<u32>,
}

impl PrivacySpec {
    /// The mechanism for a model of `dim` parameters, the job's `min_participants` standing in
    /// for an omitted `min_contributors`.
    pub fn mechanism(
        &self,
        min_participants: usize,
        dim: usize,
    ) -> Result<cairn_secagg::privacy::DistributedDp, cairn_secagg::Error> {
        cairn_secagg::privacy::DistributedDp::new(
            self.clip_norm,
            self.noise_multiplier,
            self.min_contributors
                .unwrap_or(min_participants.min(u32::MAX as usize) as u32),
            dim,
        )
    }
}

/// A job field's value refused, with what is allowed.
fn invalid(
    field: &'static str,
    value: impl std::fmt::Display,
    expected: &str,
) -> Result<(), Error> {
    Err(Error::JobField {
        field,
        value: value.to_string(),
        expected: expected.to_string(),
    })
}

fn default_delta() -> f64 {
    1e-5
}
fn default_dp_clip_norm() -> f32 {
    1.0
}

/// The `server_optimizer:` block of a job: the server side of Reddi et al. 2021, "Adaptive
/// Federated Optimization" (Algorithm 2). Each round's average delta `Δ = sum / total weight`
/// is a pseudo-gradient, and the coordinator steps the global model along it.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServerOptimizerSpec {
    /// `fedavg` (default): `x + η Δ`. `fedavgm`: server momentum, `m = momentum · m + Δ`,
    /// `x + η m`. `fedadagrad`, `fedadam`, `fedyogi`: `m = β1 m + (1 - β1) Δ`, a second moment
    /// `v` (Adagrad: `v + Δ²`; Adam: `β2 v + (1 - β2) Δ²`; Yogi:
    /// `v - (1 - β2) Δ² sign(v - Δ²)`), and `x + η m / (√v + τ)`.
    #[serde(default)]
    pub algorithm: ServerAlgorithm,
    /// Server learning rate `η`, in `(0, 100]` (default 1.0: with `fedavg`, plain averaging;
    /// the adaptive ones want about 0.01 to 0.1).
    #[serde(default = "default_server_learning_rate")]
    pub learning_rate: f64,
    /// `fedavgm`'s momentum, in `[0, 1)` (default 0.9).
    #[serde(default = "default_beta1")]
    pub momentum: f64,
    /// First-moment decay of `fedadagrad`, `fedadam` and `fedyogi`, in `[0, 1)` (default 0.9).
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay of `fedadam` and `fedyogi`, in `[0, 1)` (default 0.99).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adaptivity `τ` of `fedadagrad`, `fedadam` and `fedyogi`, in `(0, 1]` (default 0.001);
    /// the second moment starts at `τ²`.
    #[serde(default = "default_tau")]
    pub tau: f64,
}

impl Default for ServerOptimizerSpec {
    fn default() -> Self {
        ServerOptimizerSpec {
            algorithm: ServerAlgorithm::default(),
            learning_rate: default_server_learning_rate(),
            momentum: default_beta1(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            tau: default_tau(),
        }
    }
}

impl ServerOptimizerSpec {
    /// The algorithm and the parameters it uses, as logs and `status` show them.
    pub fn describe(&self) -> String {
        let name = self.algorithm.name();
        let lr = self.learning_rate;
        match self.algorithm {
            ServerAlgorithm::FedAvg => format!("{name} (server learning rate {lr})"),
            ServerAlgorithm::FedAvgM => {
                format!(
                    "{name} (server learning rate {lr}, momentum {})",
                    self.momentum
                )
            }
            ServerAlgorithm::FedAdagrad => format!(
                "{name} (server learning rate {lr}, beta1 {}, tau {})",
                self.beta1, self.tau
            ),
            ServerAlgorithm::FedAdam | ServerAlgorithm::FedYogi => format!(
                "{name} (server learning rate {lr}, beta1 {}, beta2 {}, tau {})",
                self.beta1, self.beta2, self.tau
            ),
        }
    }
}

/// A server optimiser of [`ServerOptimizerSpec`].
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServerAlgorithm {
    /// Federated averaging (McMahan et al. 2017).
    #[default]
    FedAvg,
    /// FedAvg with server momentum (Hsu et al. 2019).
    FedAvgM,
    /// FedAdagrad (Reddi et al. 2021).
    FedAdagrad,
    /// FedAdam (Reddi et al. 2021).
    FedAdam,
    /// FedYogi (Reddi et al. 2021).
    FedYogi,
}

impl ServerAlgorithm {
    /// Every algorithm, in the order the job file's documentation lists them.
    pub const ALL: [ServerAlgorithm; 5] = [
        ServerAlgorithm::FedAvg,
        ServerAlgorithm::FedAvgM,
        ServerAlgorithm::FedAdagrad,
        ServerAlgorithm::FedAdam,
        ServerAlgorithm::FedYogi,
    ];

    /// The algorithm of a job-file name (`fedadam`), if there is one.
    pub fn parse(name: &str) -> Option<ServerAlgorithm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its name in a job file.
    pub fn name(self) -> &'static str {
        match self {
            ServerAlgorithm::FedAvg => "fedavg",
            ServerAlgorithm::FedAvgM => "fedavgm",
            ServerAlgorithm::FedAdagrad => "fedadagrad",
            ServerAlgorithm::FedAdam => "fedadam",
            ServerAlgorithm::FedYogi => "fedyogi",
        }
    }
}

fn default_server_learning_rate() -> f64 {
    1.0
}

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.99
}

fn default_tau() -> f64 {
    1e-3
}

/// The `model:` block of a job.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ModelSpec {
    /// Safetensors file of the initial global model (F32 tensors); its tensors, sorted by name,
    /// are the layout of every model and update of the job. In a job file, a relative path is
    /// relative to the job file's directory. In a `FederatedJob`, it is a path in the
    /// coordinator's filesystem, such as a volume mounted into the coordinator pod
    /// (`/models/init.safetensors`).
    #[schema(value_type = String)]
    pub initial: PathBuf,
}

/// One entry of a job's `standardize:` list.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FeatureStatistics {
    /// The feature: a column name of the participants' tables.
    pub feature: String,
    /// The mean subtracted from it.
    pub mean: f64,
    /// The standard deviation it is divided by; positive.
    pub std: f64,
}

/// The `secure_aggregation:` block of a job.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SecureAggregationSpec {
    /// Whether updates are securely aggregated (default `true`). When `false`, each update
    /// reaches the coordinator in the clear.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Fraction of a participant's neighbours whose shares reconstruct its secrets: the threshold
    /// `t` is the smallest count above it. In `[0.5, 1)`; a round survives while every
    /// survivor keeps at least `t` surviving neighbours. A coordinator that deviates from the
    /// protocol learns nothing individual while fewer than `2t - k` of a participant's `k`
    /// neighbours collude with it: about 2/3 tolerates `k/3` colluders, the default 0.5 none or
    /// one.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Neighbours per participant (SecAgg+'s k-regular graph); omitted: `max(8, 2 log2 n)`,
    /// which is the complete graph up to 9 participants.
    #[serde(default)]
    pub neighbours: Option<u32>,
    /// Each value of a model delta (`local - global`) is clipped to `[-clip, clip]`.
    #[serde(default = "default_clip")]
    pub clip: f32,
    /// Quantisation of a clipped value into `2^bits` levels; omitted: the most that cannot wrap
    /// the 2^32 modulus with every listed participant, less one bit kept free so that a masked
    /// input out of range shows in the sum (k values shifted at random pass with chance 2^-k).
    #[serde(default)]
    pub quantization_bits: Option<u32>,
    /// An update's weight is its example count, capped at this; it caps updates in the clear
    /// too, when `enabled` is `false`.
    #[serde(default = "default_max_weight")]
    pub max_weight: u32,
    /// Updates in the clear (`enabled: false`): a participant's delta (`local - global`) longer
    /// than this L2 norm is scaled down to it, so one site's pull on the average is bounded;
    /// omitted: not clipped. (Securely aggregated updates are clipped per value, at `clip`.)
    #[serde(default)]
    pub clip_norm: Option<f32>,
}

impl Default for SecureAggregationSpec {
    fn default() -> Self {
        SecureAggregationSpec {
            enabled: default_enabled(),
            threshold: default_threshold(),
            neighbours: None,
            clip: default_clip(),
            quantization_bits: None,
            max_weight: default_max_weight(),
            clip_norm: None,
        }
    }
}

/// How many times the largest honest sum the 2^32 modulus holds by default: the decoded sum
/// is checked against what honest inputs give, and the headroom is what makes a sum wrapped or
/// shifted by a bad input fall outside that (with all 32 bits used, almost any sum looks
/// honest). One bit: each further bit would halve the chance that one shifted value passes, at
/// the cost of a bit of every honest value's precision.
const RANGE_HEADROOM: u32 = 2;

impl SecureAggregationSpec {
    /// Quantisation levels for `n_participants` listed participants.
    pub fn levels(&self, n_participants: usize) -> u32 {
        match self.quantization_bits {
            Some(bits) => 1u32.checked_shl(bits).unwrap_or(u32::MAX),
            None => (u32::MAX / n_participants.max(1) as u32 / RANGE_HEADROOM)
                .saturating_add(1)
                .min(1 << 31),
        }
    }

    /// How updates are encoded for `n_participants` listed participants; an error if the
    /// encoding cannot hold the sum of their updates.
    pub fn encoding(
        &self,
        n_participants: usize,
    ) -> Result<cairn_secagg::quantize::UpdateEncoding, Error> {
        let refused = |source| Error::JobEncoding {
            n_participants,
            source,
        };
        let encoding = cairn_secagg::quantize::UpdateEncoding::new(
            self.clip,
            self.levels(n_participants),
            self.max_weight,
        )
        .map_err(refused)?;
        encoding
            .check_capacity(n_participants as u64)
            .map_err(refused)?;
        Ok(encoding)
    }

    /// Neighbourhood degree for `n` selected participants.
    pub fn degree(&self, n: usize) -> u32 {
        self.neighbours
            .unwrap_or_else(|| cairn_secagg::graph::default_degree(n as u32))
    }
}

fn default_enabled() -> bool {
    true
}
fn default_threshold() -> f64 {
    0.5
}
fn default_clip() -> f32 {
    4.0
}
fn default_max_weight() -> u32 {
    10_000
}

fn default_metrics() -> Vec<String> {
    vec![Metric::Loss.name().into(), Metric::Accuracy.name().into()]
}
fn default_fraction() -> f64 {
    1.0
}
fn default_local_epochs() -> u32 {
    1
}
fn default_batch_size() -> u32 {
    32
}
fn default_learning_rate() -> f64 {
    0.05
}
fn default_phase_deadline_s() -> u64 {
    300
}
fn default_max_round_attempts() -> u32 {
    5
}

impl JobSpec {
    /// What the job asks of every participant's data and evaluation, as its `Welcome` says it:
    /// its metrics in its order and its fixed feature statistics.
    pub fn task_spec(&self) -> cairn_proto::v1::TaskSpec {
        cairn_proto::v1::TaskSpec {
            metrics: self.metrics.clone(),
            standardize: self
                .standardize
                .iter()
                .map(|entry| cairn_proto::v1::FeatureStatistics {
                    feature: entry.feature.clone(),
                    mean: entry.mean,
                    std: entry.std,
                })
                .collect(),
        }
    }

    /// Reads and validates a job file; a relative `model.initial` is resolved against the job
    /// file's directory (and stored resolved).
    pub fn load(path: &Path) -> Result<JobSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading job file {}", path.display()),
            source,
        })?;
        let mut job = Self::parse(&text).map_err(|source| Error::JobFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        if job.model.initial.is_relative() {
            let dir = path.parent().unwrap_or(Path::new(""));
            job.model.initial = dir.join(&job.model.initial);
        }
        Ok(job)
    }

    /// Parses and validates a job from YAML text. A relative `model.initial` stays as written
    /// (relative to the working directory).
    pub fn parse(text: &str) -> Result<JobSpec, Error> {
        refuse_legacy_form(text)?;
        let job: JobSpec =
            serde_saphyr::from_str(text).map_err(|source| Error::JobSyntax { source })?;
        job.validate()?;
        Ok(job)
    }

    /// The job's metrics, in its order (validated at load; a name that is no metric, which
    /// only a job built in code without [`JobSpec::validate`] can hold, is left out).
    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics
            .iter()
            .filter_map(|name| Metric::parse(name).ok())
            .collect()
    }

    /// Per-phase deadline.
    pub fn phase_deadline(&self) -> Duration {
        Duration::from_secs(self.phase_deadline_s)
    }

    /// Checks every field; the error names the field, its value and what is allowed.
    pub fn validate(&self) -> Result<(), Error> {
        if !is_valid_name(&self.name) {
            return invalid(
                "name",
                format!("{:?}", self.name),
                &format!("expected {NAME_RULE}"),
            );
        }
        if !(1..=1_000_000).contains(&self.rounds) {
            return invalid("rounds", self.rounds, "expected 1..=1000000");
        }
        if self.participants.is_empty() {
            return invalid(
                "participants",
                "empty",
                "expected at least one participant id",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in &self.participants {
            if !is_valid_name(id) {
                return invalid(
                    "participants",
                    format!("{id:?}"),
                    &format!("each id must be {NAME_RULE}"),
                );
            }
            if !seen.insert(id) {
                return invalid(
                    "participants",
                    format!("{id:?} listed twice"),
                    "each id must be listed once",
                );
            }
        }
        if self.min_participants == 0 || self.min_participants > self.participants.len() {
            return invalid(
                "min_participants",
                self.min_participants,
                &format!(
                    "expected 1..={} (the number of participants listed)",
                    self.participants.len()
                ),
            );
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return invalid("fraction", self.fraction, "expected a number in (0, 1]");
        }
        if !(1..=1000).contains(&self.local_epochs) {
            return invalid("local_epochs", self.local_epochs, "expected 1..=1000");
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return invalid("batch_size", self.batch_size, "expected 1..=65536");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 10.0) {
            return invalid(
                "learning_rate",
                self.learning_rate,
                "expected a number in (0, 10]",
            );
        }
        if !(0.0..=1000.0).contains(&self.proximal_mu) {
            return invalid(
                "proximal_mu",
                self.proximal_mu,
                "expected a number in [0, 1000]",
            );
        }
        if !(1..=7 * 24 * 3600).contains(&self.phase_deadline_s) {
            return invalid(
                "phase_deadline_s",
                self.phase_deadline_s,
                "expected 1..=604800 seconds",
            );
        }
        if !(1..=1000).contains(&self.max_round_attempts) {
            return invalid(
                "max_round_attempts",
                self.max_round_attempts,
                "expected 1..=1000",
            );
        }
        if self.model.initial.as_os_str().is_empty() {
            return invalid(
                "model.initial",
                "empty",
                "expected the path of a safetensors file holding the initial model",
            );
        }
        self.validate_metrics()?;
        self.validate_standardize()?;
        let server = &self.server_optimizer;
        if !(server.learning_rate > 0.0 && server.learning_rate <= 100.0) {
            return invalid(
                "server_optimizer.learning_rate",
                server.learning_rate,
                "expected a number in (0, 100]",
            );
        }
        for (field, value) in [
            ("server_optimizer.momentum", server.momentum),
            ("server_optimizer.beta1", server.beta1),
            ("server_optimizer.beta2", server.beta2),
        ] {
            if !(0.0..1.0).contains(&value) {
                return invalid(field, value, "expected a number in [0, 1)");
            }
        }
        if !(server.tau > 0.0 && server.tau <= 1.0) {
            return invalid(
                "server_optimizer.tau",
                server.tau,
                "expected a number in (0, 1]",
            );
        }
        let secure = &self.secure_aggregation;
        if let Some(norm) = secure.clip_norm
            && !(norm.is_finite() && norm > 0.0)
        {
            return invalid(
                "secure_aggregation.clip_norm",
                norm,
                "expected a finite L2 norm > 0",
            );
        }
        if !secure.enabled {
            return self.validate_privacy();
        }
        if self.min_participants < 3 {
            return invalid(
                "min_participants",
                self.min_participants,
                "secure aggregation needs at least 3 participants per round; raise min_participants or set secure_aggregation.enabled: false",
            );
        }
        if !(0.5..1.0).contains(&secure.threshold) {
            return invalid(
                "secure_aggregation.threshold",
                secure.threshold,
                "expected a fraction in [0.5, 1): a strict majority of each neighbourhood must be needed to reconstruct a secret",
            );
        }
        if let Some(k) = secure.neighbours
            && k < 2
        {
            return invalid("secure_aggregation.neighbours", k, "expected at least 2");
        }
        if !(secure.clip.is_finite() && secure.clip > 0.0 && secure.clip <= 1e6) {
            return invalid(
                "secure_aggregation.clip",
                secure.clip,
                "expected a number in (0, 1000000]",
            );
        }
        if let Some(bits) = secure.quantization_bits
            && !(2..=31).contains(&bits)
        {
            return invalid(
                "secure_aggregation.quantization_bits",
                bits,
                "expected 2..=31",
            );
        }
        secure.encoding(self.participants.len())?;
        self.validate_privacy()
    }

    fn validate_privacy(&self) -> Result<(), Error> {
        let Some(privacy) = &self.privacy else {
            return Ok(());
        };
        if !self.secure_aggregation.enabled {
            return invalid(
                "privacy",
                "present",
                "differential privacy adds each site's noise before masking, so it needs secure_aggregation.enabled: true",
            );
        }
        if !(privacy.epsilon_budget.is_finite() && privacy.epsilon_budget > 0.0) {
            return invalid(
                "privacy.epsilon_budget",
                privacy.epsilon_budget,
                "expected a finite number > 0",
            );
        }
        if !(privacy.delta > 0.0 && privacy.delta <= 0.1) {
            return invalid(
                "privacy.delta",
                privacy.delta,
                "expected a number in (0, 0.1]",
            );
        }
        if !(0.01..=1000.0).contains(&privacy.noise_multiplier) {
            return invalid(
                "privacy.noise_multiplier",
                privacy.noise_multiplier,
                "expected a number in [0.01, 1000]",
            );
        }
        if !(privacy.clip_norm.is_finite() && privacy.clip_norm > 0.0) {
            return invalid(
                "privacy.clip_norm",
                privacy.clip_norm,
                "expected a finite L2 norm > 0",
            );
        }
        if let Some(m) = privacy.min_contributors
            && !(1..=self.participants.len()).contains(&(m as usize))
        {
            return invalid(
                "privacy.min_contributors",
                m,
                &format!(
                    "expected 1..={} (the job's participants)",
                    self.participants.len()
                ),
            );
        }
        Ok(())
    }

    fn validate_metrics(&self) -> Result<(), Error> {
        let invalid = |value: String, expected: String| Error::JobField {
            field: "metrics",
            value,
            expected,
        };
        if self.metrics.is_empty() {
            return Err(invalid(
                "empty".into(),
                "expected at least one metric (loss, accuracy, roc_auc, mse, mae)".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.metrics {
            Metric::parse(name).map_err(|e| invalid(format!("{name:?}"), e.to_string()))?;
            if !seen.insert(name) {
                return Err(invalid(
                    format!("{name:?} listed twice"),
                    "each metric must be listed once".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_standardize(&self) -> Result<(), Error> {
        let mut seen = std::collections::BTreeSet::new();
        for (index, entry) in self.standardize.iter().enumerate() {
            let invalid = |what: String, expected: &str| Error::JobField {
                field: "standardize",
                value: format!("entry {} (feature {:?}) {what}", index + 1, entry.feature),
                expected: expected.into(),
            };
            if entry.feature.is_empty() {
                return Err(invalid(
                    "with an empty name".into(),
                    "expected a feature name (a column of the participants' tables)",
                ));
            }
            if !seen.insert(&entry.feature) {
                return Err(invalid(
                    "listed twice".into(),
                    "each feature must be listed once",
                ));
            }
            if !entry.mean.is_finite() {
                return Err(invalid(
                    format!("with mean {}", entry.mean),
                    "expected a finite mean",
                ));
            }
            if !(entry.std.is_finite() && entry.std > 0.0) {
                return Err(invalid(
                    format!("with std {}", entry.std),
                    "expected a finite std > 0",
                ));
            }
        }
        Ok(())
    }
}

/// Refuses a job of the old form, which named a built-in network (`model: mlp`) and a dataset,
/// with how to convert it, before the generic decoder's error ("invalid type: string") could
/// hide that. Text that is no YAML mapping is left to the decoder to name.
fn refuse_legacy_form(text: &str) -> Result<(), Error> {
    let Ok(serde_json::Value::Object(fields)) = serde_saphyr::from_str::<serde_json::Value>(text)
    else {
        return Ok(());
    };
    let scalar = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => None,
        other => Some(other.to_string()),
    };
    let model = fields.get("model").and_then(scalar);
    let dataset = fields
        .get("dataset")
        .map(|v| scalar(v).unwrap_or_else(|| v.to_string()));
    if model.is_none() && dataset.is_none() {
        return Ok(());
    }
    Err(Error::LegacyJob { model, dataset })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "
name: digits-demo
model: {initial: init.safetensors}
rounds: 3
min_participants: 3
participants: [alpha, beta, gamma]
";

    fn error_of(yaml: &str) -> String {
        JobSpec::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_job_gets_defaults() {
        let job = JobSpec::parse(VALID).unwrap();
        assert_eq!(job.fraction, 1.0);
        assert_eq!(job.batch_size, 32);
        assert_eq!(job.phase_deadline(), Duration::from_secs(300));
        assert_eq!(job.model.initial, PathBuf::from("init.safetensors"));
        assert_eq!(job.metrics(), vec![Metric::Loss, Metric::Accuracy]);
        assert!(job.standardize.is_empty());
        assert!(
            job.secure_aggregation.enabled,
            "secure aggregation is on by default"
        );
        assert_eq!(job.secure_aggregation.levels(3), u32::MAX / 3 / 2 + 1);
        assert_eq!(job.secure_aggregation.degree(3), 8);
        assert_eq!(job.server_optimizer, ServerOptimizerSpec::default());
        assert_eq!(job.server_optimizer.algorithm, ServerAlgorithm::FedAvg);
        for algorithm in ServerAlgorithm::ALL {
            // The names `parse` knows are those serde reads in a job file.
            let read: ServerAlgorithm =
                serde_json::from_value(serde_json::json!(algorithm.name())).unwrap();
            assert_eq!(
                (ServerAlgorithm::parse(algorithm.name()), read),
                (Some(algorithm), algorithm)
            );
        }
    }

    #[test]
    fn secure_aggregation_settings_are_checked() {
        let with = |block: &str| format!("{VALID}secure_aggregation: {{{block}}}\n");
        assert!(JobSpec::parse(&with("enabled: false")).is_ok());
        assert!(
            JobSpec::parse(&with(
                "threshold: 0.7, neighbours: 4, clip: 1.5, quantization_bits: 20, max_weight: 500"
            ))
            .is_ok()
        );
        let cases = [
            (
                "threshold: 0.4",
                "`secure_aggregation.threshold` is 0.4; expected a fraction in [0.5, 1)",
            ),
            ("threshold: 1.0", "`secure_aggregation.threshold` is 1"),
            (
                "neighbours: 1",
                "`secure_aggregation.neighbours` is 1; expected at least 2",
            ),
            ("clip: 0", "`secure_aggregation.clip` is 0"),
            (
                "quantization_bits: 32",
                "`secure_aggregation.quantization_bits` is 32; expected 2..=31",
            ),
            (
                "quantization_bits: 31, max_weight: 10",
                "could wrap the 2^32 modulus",
            ),
            ("max_weight: 2000000000", "max_weight"),
            ("max_weight: 0", "max_weight is 0"),
            ("sum: exact", "unknown field `sum`"),
        ];
        for (block, expected) in cases {
            let err = error_of(&with(block));
            assert!(err.contains(expected), "{block}: {err}");
        }
        let two = VALID.replace("min_participants: 3", "min_participants: 2");
        assert!(error_of(&two).contains("secure aggregation needs at least 3 participants"));
        assert!(JobSpec::parse(&format!("{two}secure_aggregation: {{enabled: false}}\n")).is_ok());
    }

    #[test]
    fn every_invalid_field_is_named_with_its_value_and_what_is_allowed() {
        let cases = [
            (
                "name: digits-demo",
                "name: Digits_Demo",
                "field `name` is \"Digits_Demo\"",
            ),
            (
                "rounds: 3",
                "rounds: 0",
                "field `rounds` is 0; expected 1..=1000000",
            ),
            (
                "min_participants: 3",
                "min_participants: 4",
                "field `min_participants` is 4; expected 1..=3",
            ),
            (
                "min_participants: 3",
                "min_participants: 0",
                "field `min_participants` is 0",
            ),
            (
                "participants: [alpha, beta, gamma]",
                "participants: [alpha, alpha, beta]",
                "\"alpha\" listed twice",
            ),
            (
                "participants: [alpha, beta, gamma]",
                "participants: [alpha, Beta, gamma]",
                "field `participants` is \"Beta\"",
            ),
            (
                "participants: [alpha, beta, gamma]",
                "participants: []",
                "field `participants` is empty",
            ),
            (
                "rounds: 3",
                "rounds: 3\nfraction: 1.5",
                "field `fraction` is 1.5; expected a number in (0, 1]",
            ),
            (
                "rounds: 3",
                "rounds: 3\nfraction: 0",
                "field `fraction` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nlocal_epochs: 0",
                "field `local_epochs` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nbatch_size: 0",
                "field `batch_size` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nlearning_rate: -0.1",
                "field `learning_rate` is -0.1",
            ),
            (
                "rounds: 3",
                "rounds: 3\nproximal_mu: -1",
                "field `proximal_mu` is -1; expected a number in [0, 1000]",
            ),
            (
                "rounds: 3",
                "rounds: 3\nphase_deadline_s: 0",
                "field `phase_deadline_s` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nmax_round_attempts: 0",
                "field `max_round_attempts` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nserver_optimizer: {algorithm: fedadam, learning_rate: 0}",
                "field `server_optimizer.learning_rate` is 0; expected a number in (0, 100]",
            ),
            (
                "rounds: 3",
                "rounds: 3\nserver_optimizer: {algorithm: fedavgm, momentum: 1}",
                "field `server_optimizer.momentum` is 1; expected a number in [0, 1)",
            ),
            (
                "rounds: 3",
                "rounds: 3\nserver_optimizer: {beta2: -0.5}",
                "field `server_optimizer.beta2` is -0.5",
            ),
            (
                "rounds: 3",
                "rounds: 3\nserver_optimizer: {tau: 0}",
                "field `server_optimizer.tau` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nserver_optimizer: {algorithm: fedsgd}",
                "unknown variant `fedsgd`, expected one of fedavg, fedavgm, fedadagrad, fedadam, fedyogi",
            ),
        ];
        for (from, to, expected) in cases {
            let yaml = VALID.replace(from, to);
            let err = error_of(&yaml);
            assert!(
                err.contains(expected),
                "{to:?} gave {err:?}, expected it to mention {expected:?}"
            );
        }
    }

    #[test]
    fn a_bad_job_file_keeps_the_chain_down_to_the_decoder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, format!("{VALID}epochs: 3\n")).unwrap();
        let err = JobSpec::load(&path).unwrap_err();
        assert!(
            matches!(&err, Error::JobFile { path: p, .. } if *p == path),
            "{err:?}"
        );
        let syntax = std::error::Error::source(&err).unwrap();
        assert!(syntax.to_string().starts_with("job: "), "{syntax}");
        let decoder = syntax.source().unwrap();
        assert!(decoder.to_string().contains("epochs"), "{decoder}");
        std::fs::write(&path, VALID.replace("rounds: 3", "rounds: 0")).unwrap();
        let err = JobSpec::load(&path).unwrap_err();
        let Error::JobFile { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(**source, Error::JobField { field: "rounds", ref value, .. } if value == "0"),
            "{source:?}"
        );
    }

    #[test]
    fn unknown_fields_and_types_are_refused_by_name() {
        let err = error_of(&VALID.replace("initial:", "path:"));
        assert!(err.contains("path") && err.contains("initial"), "{err}");
        let err = error_of(&VALID.replace("init.safetensors", "''"));
        assert!(err.contains("field `model.initial` is empty"), "{err}");
        let err = error_of(&format!("{VALID}epochs: 3\n"));
        assert!(err.contains("epochs"), "{err}");
        let err = error_of(&VALID.replace("rounds: 3", "rounds: three"));
        assert!(err.contains("rounds") || err.contains("three"), "{err}");
        let err = error_of(&VALID.replace("rounds: 3\n", ""));
        assert!(err.contains("rounds"), "{err}");
    }

    #[test]
    fn a_job_of_the_old_form_says_how_to_convert_it() {
        let old = VALID.replace(
            "model: {initial: init.safetensors}",
            "model: cnn\ndataset: mnist",
        );
        let err = JobSpec::parse(&old).unwrap_err();
        assert!(matches!(err, Error::LegacyJob { .. }), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("model: \"cnn\" names a built-in network")
                && err.contains(
                    "cairn-participant init-model --model cnn --dataset mnist --out init.safetensors"
                )
                && err.contains("`model: {initial: init.safetensors}`")
                && err.contains("remove `dataset: mnist`"),
            "{err}"
        );
        let no_dataset = VALID.replace("model: {initial: init.safetensors}", "model: mlp");
        let err = error_of(&no_dataset);
        assert!(
            err.contains("--model mlp --dataset DATASET") && err.contains("digits or mnist"),
            "{err}"
        );
        let only_dataset = format!("{VALID}dataset: digits\n");
        let err = error_of(&only_dataset);
        assert!(
            err.contains("field `dataset` is gone")
                && err.contains("remove `dataset: digits`")
                && err.contains("--model MODEL --dataset digits"),
            "{err}"
        );
    }

    #[test]
    fn metrics_are_checked_and_kept_in_the_jobs_order() {
        let with = |list: &str| VALID.replace("rounds: 3", &format!("rounds: 3\nmetrics: {list}"));
        let job = JobSpec::parse(&with("[roc_auc, loss, mae]")).unwrap();
        assert_eq!(
            job.metrics(),
            vec![Metric::RocAuc, Metric::Loss, Metric::Mae]
        );
        let cases = [
            (
                "[]",
                "field `metrics` is empty; expected at least one metric",
            ),
            (
                "[loss, f1]",
                "field `metrics` is \"f1\"; metric \"f1\" is unknown",
            ),
            ("[loss, accuracy, loss]", "\"loss\" listed twice"),
        ];
        for (list, expected) in cases {
            let err = error_of(&with(list));
            assert!(err.contains(expected), "{list}: {err}");
        }
    }

    #[test]
    fn standardize_entries_are_checked_by_entry() {
        let with = |entries: &str| format!("{VALID}standardize: [{entries}]\n");
        let job = JobSpec::parse(&with(
            "{feature: age, mean: 54.4, std: 9.1}, {feature: chol, mean: -1, std: 0.5}",
        ))
        .unwrap();
        assert_eq!(
            job.standardize[1],
            FeatureStatistics {
                feature: "chol".into(),
                mean: -1.0,
                std: 0.5
            }
        );
        let cases = [
            (
                "{feature: age, mean: 1, std: 0}",
                "field `standardize` is entry 1 (feature \"age\") with std 0; expected a finite std > 0",
            ),
            ("{feature: age, mean: 1, std: -2}", "with std -2"),
            (
                "{feature: age, mean: .nan, std: 1}",
                "with mean NaN; expected a finite mean",
            ),
            ("{feature: age, mean: 1, std: .inf}", "with std inf"),
            (
                "{feature: a, mean: 0, std: 1}, {feature: '', mean: 0, std: 1}",
                "entry 2 (feature \"\") with an empty name",
            ),
            (
                "{feature: a, mean: 0, std: 1}, {feature: a, mean: 2, std: 1}",
                "entry 2 (feature \"a\") listed twice",
            ),
            ("{feature: a, mean: 0}", "std"),
            ("{feature: a, mean: 0, std: 1, median: 3}", "median"),
        ];
        for (entries, expected) in cases {
            let err = error_of(&with(entries));
            assert!(err.contains(expected), "{entries}: {err}");
        }
    }

    #[test]
    fn a_relative_model_path_is_relative_to_the_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, VALID).unwrap();
        let job = JobSpec::load(&path).unwrap();
        assert_eq!(job.model.initial, dir.path().join("init.safetensors"));
        std::fs::write(
            &path,
            VALID.replace("init.safetensors", "/models/init.safetensors"),
        )
        .unwrap();
        let job = JobSpec::load(&path).unwrap();
        assert_eq!(job.model.initial, PathBuf::from("/models/init.safetensors"));
    }

    #[test]
    fn the_welcome_carries_the_jobs_task() {
        let job = JobSpec::parse(
            "name: t\nmodel: {initial: m.safetensors}\nmetrics: [roc_auc, loss]\n\
             standardize: [{feature: age, mean: 50, std: 10}]\nrounds: 1\nmin_participants: 1\n\
             participants: [a]\nsecure_aggregation: {enabled: false}\n",
        )
        .unwrap();
        let task = job.task_spec();
        assert_eq!(task.metrics, ["roc_auc", "loss"]);
        assert_eq!(
            task.standardize,
            [cairn_proto::v1::FeatureStatistics {
                feature: "age".into(),
                mean: 50.0,
                std: 10.0
            }]
        );
    }
}
