//! Prometheus metrics of the coordinator, named and labelled by Prometheus conventions
//! (`cairn_` prefix, base units, `_total` counters), plus the process metrics of the
//! `prometheus` crate's process collector.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the coordinator exports.
pub struct Metrics {
    registry: Registry,
    /// Rounds committed.
    pub rounds_completed: IntCounter,
    /// Attempts of rounds that failed.
    pub rounds_failed: IntCounter,
    /// Wall time of committed rounds.
    pub round_duration: Histogram,
    /// Wall time of each phase.
    pub phase_duration: HistogramVec,
    /// Participants with a live session.
    pub participants_connected: IntGauge,
    /// Participants dropped from committed rounds, by phase.
    pub dropouts: IntCounterVec,
    /// Bytes received from participants.
    pub bytes_received: IntCounter,
    /// Bytes sent to participants.
    pub bytes_sent: IntCounter,
    /// Each evaluation metric of the last committed round, by the job's metric name (label
    /// `metric`).
    pub eval_metric: GaugeVec,
    /// Training loss of the last committed round.
    pub train_loss: Gauge,
    /// Round running or next to run.
    pub current_round: IntGauge,
    /// Under differential privacy, the job's epsilon after the last committed round.
    pub privacy_epsilon: Gauge,
}

/// `metric`, registered into `registry`.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        // Invariant: each metric is registered once into a fresh registry.
        .expect("registered once");
    metric
}

// Invariant: the names, help texts and buckets below are constants that the prometheus crate
// accepts, and each is registered once into a fresh registry; failures are programming errors.
impl Metrics {
    /// A fresh registry with every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let seconds = vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        ];
        let counter = |name: &str, help: &str| {
            registered(
                &registry,
                IntCounter::new(name, help).expect("valid counter"),
            )
        };
        let gauge = |name: &str, help: &str| {
            registered(&registry, Gauge::new(name, help).expect("valid gauge"))
        };
        let int_gauge = |name: &str, help: &str| {
            registered(&registry, IntGauge::new(name, help).expect("valid gauge"))
        };
        let round_duration = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cairn_round_duration_seconds",
                    "Wall time of committed rounds, from the first attempt's start to the commit.",
                )
                .buckets(seconds.clone()),
            )
            .expect("valid histogram"),
        );
        let phase_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "cairn_phase_duration_seconds",
                    "Wall time of each phase of a round.",
                )
                .buckets(seconds),
                &["phase"],
            )
            .expect("valid histogram"),
        );
        let dropouts = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "cairn_dropouts_total",
                    "Participants dropped from committed rounds, by the phase they dropped in.",
                ),
                &["phase"],
            )
            .expect("valid counter"),
        );
        let eval_metric = registered(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "cairn_eval_metric",
                    "Federated evaluation of the last committed round's model over every evaluator's test examples, by metric (loss, accuracy, roc_auc, mse, mae; the ones the job names).",
                ),
                &["metric"],
            )
            .expect("valid gauge"),
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        Metrics {
            rounds_completed: counter("cairn_rounds_completed_total", "Rounds committed."),
            rounds_failed: counter(
                "cairn_rounds_failed_total",
                "Attempts of rounds that failed (too few participants; the round is retried).",
            ),
            round_duration,
            phase_duration,
            participants_connected: int_gauge(
                "cairn_participants_connected",
                "Participants with a live session.",
            ),
            dropouts,
            bytes_received: counter(
                "cairn_received_bytes_total",
                "Bytes received from participants.",
            ),
            bytes_sent: counter("cairn_sent_bytes_total", "Bytes sent to participants."),
            eval_metric,
            train_loss: gauge(
                "cairn_train_loss",
                "Training loss of the last committed round, weighted by examples.",
            ),
            current_round: int_gauge("cairn_round", "Round running or next to run."),
            privacy_epsilon: gauge(
                "cairn_privacy_epsilon",
                "Differential privacy: the job's epsilon (at its delta) after the last committed round; 0 without it.",
            ),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Invariant: encoding gathered families into a Vec cannot fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding");
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
