//! The client side of the monitoring API, for `cairn-coordinator status`: the job and its round
//! table as text, and a follower of the live stream that prints each change as it happens.

use super::{ApiEvent, JobState, JobView, ParticipantView, RoundPage, RoundView};
use crate::Error;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

/// A connection to one coordinator's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// What went wrong talking to the monitoring API; every variant names the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiClientError {
    /// No HTTP answer came.
    #[error("cannot reach the API at {url}: {source}")]
    Unreachable {
        /// The URL asked for.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The API answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The URL asked for.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The answer's body (the API's error text).
        body: String,
    },
    /// The answer's body is not what this client reads there.
    #[error("{url} sent an unexpected body: {source}")]
    UnexpectedBody {
        /// The URL asked for.
        url: String,
        /// The decoder's error.
        source: reqwest::Error,
    },
    /// The live stream's connection broke.
    #[error("live stream {url} broke after {n_events} events: {source}")]
    StreamBroken {
        /// The stream's URL.
        url: String,
        /// Events decoded before.
        n_events: usize,
        /// The transport's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The live stream is not UTF-8.
    #[error("live stream {url} is not UTF-8 after {n_events} events: {source}")]
    StreamNotUtf8 {
        /// The stream's URL.
        url: String,
        /// Events decoded before.
        n_events: usize,
        /// Where the bytes stopped being UTF-8.
        source: std::string::FromUtf8Error,
    },
    /// The live stream does not follow the server-sent events format.
    #[error(
        "live stream {url} is not a server-sent event stream after {n_events} events: {reason}"
    )]
    StreamNotEvents {
        /// The stream's URL.
        url: String,
        /// Events decoded before.
        n_events: usize,
        /// What the event-stream parser found.
        reason: String,
    },
    /// An event's data is not a change this client knows.
    #[error(
        "live stream {url}: event {index} (`{name}`) is not a change the client knows: {source}; \
         its data begins {excerpt:?}"
    )]
    UnknownEvent {
        /// The stream's URL.
        url: String,
        /// The event's position in the stream, from 1.
        index: usize,
        /// The event's name (`event:` field).
        name: String,
        /// The first characters of its data.
        excerpt: String,
        /// The JSON decoder's error.
        source: serde_json::Error,
    },
    /// The live stream ended while the job still ran.
    #[error(
        "live stream {url} ended after {n_events} events; expected it to last until a \
         job_finished event"
    )]
    StreamEnded {
        /// The stream's URL.
        url: String,
        /// Events decoded before it ended.
        n_events: usize,
    },
}

impl ApiClient {
    /// A client of the API at `base` (`http://host:port`) with a bearer token.
    pub fn new(base: &str, token: &str) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// A successful response to `GET path`.
    async fn send(&self, path: &str) -> Result<reqwest::Response, Error> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ApiClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ApiClientError::Refused { url, status, body }.into());
        }
        Ok(response)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(path).await?.json().await.map_err(|source| {
            ApiClientError::UnexpectedBody {
                url: format!("{}{path}", self.base),
                source,
            }
            .into()
        })
    }

    /// The job.
    pub async fn job(&self) -> Result<JobView, Error> {
        self.get("/api/v1/job").await
    }

    /// Every committed round, page by page.
    pub async fn rounds(&self) -> Result<Vec<RoundView>, Error> {
        self.rounds_from(0).await
    }

    /// The committed rounds `shown` asks for, and how many earlier ones were left out.
    pub async fn rounds_shown(&self, shown: Shown) -> Result<(Vec<RoundView>, usize), Error> {
        let offset = match shown {
            Shown::All => 0,
            Shown::Last(last) => {
                let page: RoundPage = self.get("/api/v1/rounds?offset=0&limit=1").await?;
                page.total.saturating_sub(last)
            }
        };
        Ok((self.rounds_from(offset).await?, offset))
    }

    /// The committed rounds from the `offset`-th on, page by page.
    async fn rounds_from(&self, offset: usize) -> Result<Vec<RoundView>, Error> {
        let mut rounds = Vec::new();
        loop {
            let page: RoundPage = self
                .get(&format!(
                    "/api/v1/rounds?offset={}&limit=1000",
                    offset + rounds.len()
                ))
                .await?;
            let done =
                page.rounds.is_empty() || offset + rounds.len() + page.rounds.len() >= page.total;
            rounds.extend(page.rounds);
            if done {
                return Ok(rounds);
            }
        }
    }

    /// Every participant.
    pub async fn participants(&self) -> Result<Vec<ParticipantView>, Error> {
        self.get("/api/v1/participants").await
    }

    /// The job, its participants and the rounds `shown` of its round table, as text.
    pub async fn status(&self, shown: Shown) -> Result<String, Error> {
        let job = self.job().await?;
        let (rounds, left_out) = self.rounds_shown(shown).await?;
        let participants = self.participants().await?;
        Ok(render(&job, &rounds, left_out, &participants))
    }

    /// Subscribes to the live stream: every change from now on will be delivered by
    /// [`LiveStream::follow`], however long the caller takes to start following.
    pub async fn subscribe(&self) -> Result<LiveStream, Error> {
        // The server subscribes to the job's changes before it answers, so once the answer's
        // head has arrived no later change can be missed.
        let response = self.send(EVENTS_PATH).await?;
        Ok(LiveStream {
            url: format!("{}{EVENTS_PATH}", self.base),
            response,
        })
    }

    /// Hands every change from now on to `on_event`, until the job ends. The stream closing before
    /// the job's end is an error.
    pub async fn follow(&self, on_event: impl FnMut(ApiEvent)) -> Result<(), Error> {
        self.subscribe().await?.follow(on_event).await
    }

    /// Prints the status (with the rounds `shown`), then one line per change until the job ends;
    /// only the status if the job has already ended.
    pub async fn watch(&self, shown: Shown, mut print: impl FnMut(&str)) -> Result<(), Error> {
        // Subscribing before reading the status means that a change in between is shown (perhaps
        // twice: in the status and as a line), never lost.
        let live = self.subscribe().await?;
        let job = self.job().await?;
        let (rounds, left_out) = self.rounds_shown(shown).await?;
        let participants = self.participants().await?;
        print(&render(&job, &rounds, left_out, &participants));
        if matches!(job.state, JobState::Finished | JobState::Failed) {
            // The stream carries changes from the subscription on, so an ended job's end never
            // comes.
            return Ok(());
        }
        live.follow(|event| print(&describe(&event))).await
    }
}

/// Where the live stream is served.
const EVENTS_PATH: &str = "/api/v1/events";

/// Which committed rounds the status shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Every one.
    All,
    /// The last ones, this many.
    Last(usize),
}

/// The live stream, subscribed to and not yet read.
#[derive(Debug)]
pub struct LiveStream {
    url: String,
    response: reqwest::Response,
}

impl LiveStream {
    /// Hands every change since the subscription to `on_event`, until the job ends. The stream
    /// closing before the job's end, breaking, or carrying an event that is not a change is an
    /// error.
    pub async fn follow(self, on_event: impl FnMut(ApiEvent)) -> Result<(), Error> {
        follow_events(&self.url, self.response.bytes_stream(), on_event).await
    }
}

/// At most this many characters of an undecodable event's data go into the error.
const DATA_EXCERPT_CHARS: usize = 200;

/// Decodes the server-sent events in `chunks` (the body of `url`, split however the network split
/// it) and hands each change to `on_event` until the job's end.
async fn follow_events<S, B, E>(
    url: &str,
    chunks: S,
    mut on_event: impl FnMut(ApiEvent),
) -> Result<(), Error>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The event-stream decoder keeps a character split across chunks until its last byte arrives
    // and accepts the line endings the format allows (LF, CRLF, CR).
    let mut events = std::pin::pin!(chunks.eventsource());
    let mut n_events = 0usize;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(e) => ApiClientError::StreamBroken {
                url: url.to_string(),
                n_events,
                source: e.into(),
            },
            EventStreamError::Utf8(source) => ApiClientError::StreamNotUtf8 {
                url: url.to_string(),
                n_events,
                source,
            },
            EventStreamError::Parser(e) => ApiClientError::StreamNotEvents {
                url: url.to_string(),
                n_events,
                reason: e.to_string(),
            },
        })?;
        n_events += 1;
        let change: ApiEvent =
            serde_json::from_str(&event.data).map_err(|source| ApiClientError::UnknownEvent {
                url: url.to_string(),
                index: n_events,
                name: event.event.clone(),
                excerpt: event.data.chars().take(DATA_EXCERPT_CHARS).collect(),
                source,
            })?;
        let over = matches!(change, ApiEvent::JobFinished { .. });
        on_event(change);
        if over {
            return Ok(());
        }
    }
    Err(ApiClientError::StreamEnded {
        url: url.to_string(),
        n_events,
    }
    .into())
}

fn or_dash(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The status as text: the job, its participants and `rounds`, after `left_out` earlier rounds
/// that are not shown.
pub fn render(
    job: &JobView,
    rounds: &[RoundView],
    left_out: usize,
    participants: &[ParticipantView],
) -> String {
    let mut out = String::new();
    let state = serde_json::to_value(job.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    out.push_str(&format!(
        "job {} (model {}): {state}, {}/{} rounds committed",
        job.spec.name,
        job.spec.model.initial.display(),
        job.rounds_completed,
        job.spec.rounds
    ));
    if let (Some(round), Some(phase)) = (job.current_round, job.current_phase) {
        out.push_str(&format!("; round {round} in {}", phase.name()));
    }
    if let Some(reason) = &job.finish_reason {
        out.push_str(&format!("; {reason}"));
    }
    let aggregation = match job.spec.secure_aggregation.enabled {
        true => "secure aggregation",
        false => "updates in the clear",
    };
    out.push_str(&format!(
        "\ntraining: {aggregation}, server optimiser {}, FedProx mu {}",
        job.spec.server_optimizer.describe(),
        job.spec.proximal_mu
    ));
    let connected = participants.iter().filter(|p| p.connected).count();
    out.push_str(&format!(
        "\nparticipants connected: {connected}/{}\n",
        participants.len()
    ));
    // One column per metric the job names, each as wide as its heading (and at least 8).
    let metrics: Vec<(&str, usize)> = job
        .spec
        .metrics
        .iter()
        .map(|name| (name.as_str(), name.len().max(8)))
        .collect();
    out.push_str("\nround  attempt  participants  dropped  train loss");
    for (name, width) in &metrics {
        out.push_str(&format!("  {name:>width$}"));
    }
    out.push_str("  duration  signed\n");
    if left_out > 0 {
        let rounds = if left_out == 1 { "round" } else { "rounds" };
        out.push_str(&format!(
            "  ... {left_out} earlier {rounds} (--limit or --all shows them)\n"
        ));
    }
    for view in rounds {
        let r = &view.record;
        let o = &r.outcome;
        out.push_str(&format!(
            "{:>5}  {:>7}  {:>12}  {:>7}  {:>10.4}",
            o.round,
            o.attempt,
            format!("{}/{}", o.contributors.len(), o.selected.len()),
            o.dropouts.len(),
            o.train_loss,
        ));
        for (name, width) in &metrics {
            let value = or_dash(o.eval_metrics.get(*name).copied());
            out.push_str(&format!("  {value:>width$}"));
        }
        out.push_str(&format!(
            "  {:>7.2}s  {:>6}\n",
            r.duration_s,
            view.countersigned_by.len()
        ));
    }
    out
}

/// One line for a change.
pub fn describe(event: &ApiEvent) -> String {
    match event {
        ApiEvent::RoundStarted { round, selected } => {
            format!("round {round} started with {} participants", selected.len())
        }
        ApiEvent::PhaseStarted {
            round,
            attempt,
            phase,
        } => format!("round {round} attempt {attempt}: {}", phase.name()),
        ApiEvent::RoundCommitted { record } => format!(
            "round {} committed: {}/{} participants, {}, {:.2} s",
            record.outcome.round,
            record.outcome.contributors.len(),
            record.outcome.selected.len(),
            record.outcome.metrics_text(),
            record.duration_s
        ),
        ApiEvent::RoundFailed {
            round,
            attempt,
            reason,
        } => format!("round {round} attempt {attempt} failed: {reason}"),
        ApiEvent::Countersigned { round, participant } => {
            format!("{participant} countersigned round {round}")
        }
        ApiEvent::ParticipantConnected { id } => format!("{id} connected"),
        ApiEvent::ParticipantDisconnected { id, reason } => format!("{id} left: {reason}"),
        ApiEvent::JobFinished { succeeded, reason } => {
            format!(
                "job {}: {reason}",
                if *succeeded { "finished" } else { "failed" }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://coordinator/api/v1/events";

    #[test]
    fn the_status_table_has_a_column_per_metric_of_the_job() {
        let spec = crate::config::JobSpec::parse(
            "name: t\nmodel: {initial: /models/t.safetensors}\nmetrics: [roc_auc, loss]\n\
             rounds: 2\nmin_participants: 1\nparticipants: [a]\n\
             secure_aggregation: {enabled: false}\n",
        )
        .unwrap();
        let monitor = crate::api::Monitor::new(
            spec,
            Vec::new(),
            None,
            crate::store::signatures::Countersignatures::none(),
        );
        let record = crate::store::RoundRecord {
            outcome: crate::round::RoundOutcome {
                round: 1,
                attempt: 1,
                selected: vec!["a".into()],
                contributors: vec!["a".into()],
                dropouts: vec![],
                train_examples: 10,
                train_loss: 0.5,
                evaluators: 1,
                eval_examples: 4,
                // roc_auc undefined this round (one class only): shown as a dash.
                eval_metrics: [("loss".to_string(), 0.25)].into(),
                epsilon: None,
            },
            duration_s: 1.5,
            bytes_in: 0,
            bytes_out: 0,
            committed_at: "2026-01-01T00:00:00Z".into(),
            checkpoint_sha256: String::new(),
            optimizer_state_sha256: String::new(),
            phase_durations: Vec::new(),
            previous_record_sha256: String::new(),
            job_sha256: String::new(),
            model_before_sha256: String::new(),
            model_sha256: String::new(),
        };
        let view = RoundView {
            record: record.clone(),
            countersigned_by: vec!["a".into()],
        };
        let text = render(
            &monitor.job(),
            std::slice::from_ref(&view),
            0,
            &monitor.participants(),
        );
        assert!(text.contains("(model /models/t.safetensors)"), "{text}");
        assert!(
            text.contains(
                "\ntraining: updates in the clear, server optimiser fedavg (server learning rate 1), FedProx mu 0\n"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("round ")).unwrap();
        assert_eq!(
            lines[header],
            "round  attempt  participants  dropped  train loss   roc_auc      loss  duration  signed"
        );
        assert_eq!(
            lines[header + 1],
            "    1        1           1/1        0      0.5000         -    0.2500     1.50s       1"
        );
        let event = describe(&ApiEvent::RoundCommitted {
            record: Box::new(record),
        });
        assert_eq!(
            event,
            "round 1 committed: 1/1 participants, loss 0.2500, 1.50 s"
        );
    }

    /// The body the server sends for `events`, with `line_end` between lines, and a keep-alive
    /// comment before each event.
    fn body(events: &[ApiEvent], line_end: &str) -> Vec<u8> {
        let mut body = String::new();
        for event in events {
            let data = serde_json::to_string(event).expect("an ApiEvent serialises");
            body.push_str(&format!(
                ":{line_end}{line_end}event: change{line_end}data: {data}{line_end}{line_end}"
            ));
        }
        body.into_bytes()
    }

    /// What `follow_events` hands over, as JSON (`ApiEvent` has no `PartialEq`), and its result.
    async fn decode(
        chunks: Vec<Result<Vec<u8>, String>>,
    ) -> (Vec<serde_json::Value>, Result<(), Error>) {
        let mut seen = Vec::new();
        let result = follow_events(URL, futures_util::stream::iter(chunks), |event| {
            seen.push(serde_json::to_value(&event).expect("an ApiEvent serialises"));
        })
        .await;
        (seen, result)
    }

    fn as_json(events: &[ApiEvent]) -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|event| serde_json::to_value(event).expect("an ApiEvent serialises"))
            .collect()
    }

    fn a_job() -> Vec<ApiEvent> {
        vec![
            ApiEvent::ParticipantConnected { id: "zoë".into() },
            ApiEvent::ParticipantDisconnected {
                id: "zoë".into(),
                reason: "heartbeat missed — 3 s ✓".into(),
            },
            ApiEvent::JobFinished {
                succeeded: true,
                reason: "every round committed".into(),
            },
        ]
    }

    #[tokio::test]
    async fn a_character_split_across_chunks_is_decoded_whole() {
        let events = a_job();
        let body = body(&events, "\n");
        let first_multibyte = body
            .iter()
            .position(|byte| !byte.is_ascii())
            .expect("the body holds a multi-byte character");
        // Every split point, and in particular the one inside the first multi-byte character.
        for split in (1..body.len()).chain([first_multibyte + 1]) {
            let chunks = vec![Ok(body[..split].to_vec()), Ok(body[split..].to_vec())];
            let (seen, result) = decode(chunks).await;
            assert!(result.is_ok(), "split at {split}: {result:?}");
            assert_eq!(seen, as_json(&events), "split at {split}");
        }
    }

    #[tokio::test]
    async fn one_byte_at_a_time_is_decoded_whole() {
        let events = a_job();
        let chunks = body(&events, "\n")
            .into_iter()
            .map(|byte| Ok(vec![byte]))
            .collect();
        let (seen, result) = decode(chunks).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, as_json(&events));
    }

    #[tokio::test]
    async fn crlf_line_endings_are_accepted() {
        let events = a_job();
        let (seen, result) = decode(vec![Ok(body(&events, "\r\n"))]).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, as_json(&events));
    }

    #[tokio::test]
    async fn the_stream_ending_before_the_job_is_an_error() {
        let events = a_job();
        let (seen, result) = decode(vec![Ok(body(&events[..2], "\n"))]).await;
        assert_eq!(seen, as_json(&events[..2]));
        let message = result.expect_err("EOF before job_finished").to_string();
        assert_eq!(
            message,
            format!(
                "API client: live stream {URL} ended after 2 events; expected it to last until a \
                 job_finished event"
            )
        );
    }

    #[tokio::test]
    async fn an_event_that_is_not_a_change_is_an_error_naming_it() {
        let mut stream = body(&a_job()[..1], "\n");
        stream.extend_from_slice(b"event: round_started\ndata: {\"type\":\"round_started\"}\n\n");
        stream.extend_from_slice(&body(&a_job()[2..], "\n"));
        let (seen, result) = decode(vec![Ok(stream)]).await;
        assert_eq!(seen, as_json(&a_job()[..1]), "nothing after the bad event");
        let message = result.expect_err("an undecodable event").to_string();
        assert!(
            message.contains("event 2 (`round_started`)")
                && message.contains("missing field `round`")
                && message.contains(r#"its data begins "{\"type\":\"round_started\"}""#),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_broken_stream_is_an_error() {
        let chunks = vec![
            Ok(body(&a_job()[..1], "\n")),
            Err("connection reset".to_string()),
        ];
        let (seen, result) = decode(chunks).await;
        assert_eq!(seen, as_json(&a_job()[..1]));
        assert_eq!(
            result.expect_err("a transport error").to_string(),
            format!("API client: live stream {URL} broke after 1 events: connection reset")
        );
    }

    #[tokio::test]
    async fn nothing_after_the_job_finished_is_read() {
        let mut chunks = vec![Ok(body(&a_job(), "\n"))];
        // Never decoded: following stops at the job's end.
        chunks.push(Ok(b"data: not json\n\n".to_vec()));
        chunks.push(Err("never reached".to_string()));
        let (seen, result) = decode(chunks).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, as_json(&a_job()));
    }
}
