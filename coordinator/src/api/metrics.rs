//! Prometheus metrics of the coordinator, named and labelled by Prometheus conventions
//! (`cairn_` prefix, base units, `_total` counters), plus the process metrics of the
//! `prometheus` crate's process collector (its CPU time to the clock tick). Every labelled
//! series a dashboard or an alert may rate exists from the start, at 0.

use crate::round::Phase;
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
    /// Connections to the federation port refused in the TLS handshake.
    pub tls_refused: IntCounter,
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
        // Most phases of a small model's round take milliseconds.
        let phase_seconds = [0.001, 0.0025, 0.005, 0.01, 0.025]
            .into_iter()
            .chain(seconds.iter().copied())
            .collect();
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
                .buckets(phase_seconds),
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
        for phase in Phase::ALL {
            dropouts.with_label_values(&[phase.name()]);
        }
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
            .register(Box::new(ProcessMetrics(
                prometheus::process_collector::ProcessCollector::for_self(),
            )))
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
            tls_refused: counter(
                "cairn_tls_handshakes_refused_total",
                "Connections to the federation port refused in the TLS handshake (no client certificate, another CA, not TLS 1.3); the coordinator's log names each peer.",
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

/// The `prometheus` crate's process collector, whose `process_cpu_seconds_total` is an integer
/// counter of whole seconds, with that value read again to the clock tick.
#[cfg(target_os = "linux")]
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        let cpu = procfs::process::Process::myself()
            .and_then(|process| process.stat())
            .map(|stat| (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64);
        if let Ok(seconds) = cpu {
            let mut counter = prometheus::proto::Counter::default();
            counter.set_value(seconds);
            for family in &mut families {
                if family.name() == "process_cpu_seconds_total" {
                    for metric in family.mut_metric() {
                        metric.set_counter(counter.clone());
                    }
                }
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_phase_has_a_dropout_series_from_the_start_and_phases_have_millisecond_buckets() {
        let text = Metrics::new().render();
        for phase in Phase::ALL {
            let series = format!("cairn_dropouts_total{{phase=\"{}\"}}", phase.name());
            assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        let metrics = Metrics::new();
        metrics
            .phase_duration
            .with_label_values(&["unmask"])
            .observe(0.003);
        let text = metrics.render();
        let bucket = "cairn_phase_duration_seconds_bucket{phase=\"unmask\",le=\"0.001\"}";
        assert_eq!(value(&text, bucket), Some(0.0), "{text}");
        let bucket = "cairn_phase_duration_seconds_bucket{phase=\"unmask\",le=\"0.005\"}";
        assert_eq!(value(&text, bucket), Some(1.0), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_cpu_time_is_exported_to_the_clock_tick() {
        let cpu = || {
            let stat = procfs::process::Process::myself()
                .and_then(|p| p.stat())
                .expect("/proc/self/stat");
            (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
        };
        // Work until the CPU time is well away from a whole second, where truncating shows.
        let mut spent = cpu();
        let mut work = 0u64;
        while !(0.2..0.8).contains(&spent.fract()) {
            for i in 0..1_000_000u64 {
                work = work.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(work);
            spent = cpu();
        }
        let exported = value(&Metrics::new().render(), "process_cpu_seconds_total")
            .expect("process_cpu_seconds_total");
        assert!(
            exported >= spent && exported - spent < 0.2,
            "exported {exported} s, read {spent} s"
        );
    }
}
