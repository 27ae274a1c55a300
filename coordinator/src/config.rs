//! The job file (YAML): what to train, on which data, for how many rounds, with whom. Every field
//! is validated, and an error names the field, the value and what is allowed. The same type is
//! the spec of the `FederatedJob` Kubernetes resource.

use crate::Error;
use cairn_identity::{NAME_RULE, is_valid_name};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// A federated training job.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct JobSpec {
    /// Job name: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// Network to train: `mlp` (McMahan et al. 2017's 2NN, two hidden layers of 200) or `cnn`.
    pub model: ModelKind,
    /// Dataset every participant holds a share of; fixes the input size.
    pub dataset: DatasetKind,
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
    /// Seed of the initial model and of participant selection.
    #[serde(default)]
    pub seed: u64,
    /// Secure aggregation (on unless disabled): the coordinator learns only the sum of the
    /// updates.
    #[serde(default)]
    pub secure_aggregation: SecureAggregationSpec,
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
    /// the 2^32 modulus with every listed participant.
    #[serde(default)]
    pub quantization_bits: Option<u32>,
    /// An update's weight is its example count, capped at this.
    #[serde(default = "default_max_weight")]
    pub max_weight: u32,
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
        }
    }
}

impl SecureAggregationSpec {
    /// Quantisation levels for `n_participants` listed participants.
    pub fn levels(&self, n_participants: usize) -> u32 {
        match self.quantization_bits {
            Some(bits) => 1u32.checked_shl(bits).unwrap_or(u32::MAX),
            None => (u32::MAX / n_participants.max(1) as u32)
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

/// Networks a job can train.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Two hidden layers of 200 units (McMahan et al. 2017's "2NN").
    Mlp,
    /// Two 5x5 convolutions (32, 64 channels) with 2x2 max pooling, 512 fully connected units.
    Cnn,
}

impl ModelKind {
    /// The name used on the wire and in job files.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
        }
    }
}

/// Datasets a job can name; each fixes the image size.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// MNIST, 28x28.
    Mnist,
    /// scikit-learn's 8x8 digits.
    Digits,
}

impl DatasetKind {
    /// Image height and width.
    pub fn image_size(self) -> (usize, usize) {
        match self {
            DatasetKind::Mnist => (28, 28),
            DatasetKind::Digits => (8, 8),
        }
    }
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
    /// Reads and validates a job file.
    pub fn load(path: &Path) -> Result<JobSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading job file {}", path.display()),
            source,
        })?;
        Self::parse(&text).map_err(|source| Error::JobFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses and validates a job from YAML text.
    pub fn parse(text: &str) -> Result<JobSpec, Error> {
        let job: JobSpec =
            serde_saphyr::from_str(text).map_err(|source| Error::JobSyntax { source })?;
        job.validate()?;
        Ok(job)
    }

    /// Per-phase deadline.
    pub fn phase_deadline(&self) -> Duration {
        Duration::from_secs(self.phase_deadline_s)
    }

    /// Checks every field; the error names the field, its value and what is allowed.
    pub fn validate(&self) -> Result<(), Error> {
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
        let secure = &self.secure_aggregation;
        if !secure.enabled {
            return Ok(());
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "
name: digits-demo
model: mlp
dataset: digits
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
        assert_eq!(job.dataset.image_size(), (8, 8));
        assert!(
            job.secure_aggregation.enabled,
            "secure aggregation is on by default"
        );
        assert_eq!(job.secure_aggregation.levels(3), u32::MAX / 3 + 1);
        assert_eq!(job.secure_aggregation.degree(3), 8);
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
                "rounds: 3\nphase_deadline_s: 0",
                "field `phase_deadline_s` is 0",
            ),
            (
                "rounds: 3",
                "rounds: 3\nmax_round_attempts: 0",
                "field `max_round_attempts` is 0",
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
    fn unknown_models_fields_and_types_are_refused_by_name() {
        let err = error_of(&VALID.replace("model: mlp", "model: resnet"));
        assert!(
            err.contains("resnet") && err.contains("mlp") && err.contains("cnn"),
            "{err}"
        );
        let err = error_of(&VALID.replace("dataset: digits", "dataset: cifar"));
        assert!(err.contains("cifar"), "{err}");
        let err = error_of(&format!("{VALID}epochs: 3\n"));
        assert!(err.contains("epochs"), "{err}");
        let err = error_of(&VALID.replace("rounds: 3", "rounds: three"));
        assert!(err.contains("rounds") || err.contains("three"), "{err}");
        let err = error_of(&VALID.replace("rounds: 3\n", ""));
        assert!(err.contains("rounds"), "{err}");
    }
}
