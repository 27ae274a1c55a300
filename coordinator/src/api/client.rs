//! The client side of the monitoring API, for `cairn-coordinator status`: the job and its round
//! table as text, and a follower of the live stream that prints each change as it happens.

use super::{ApiEvent, JobView, ParticipantView, RoundPage};
use crate::Error;
use crate::store::RoundRecord;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// A connection to one coordinator's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

fn api_error(what: impl Into<String>) -> Error {
    Error::Server(what.into())
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
            .map_err(|e| api_error(format!("cannot reach the API at {url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(api_error(format!("{url} answered {status}: {body}")));
        }
        Ok(response)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(path)
            .await?
            .json()
            .await
            .map_err(|e| api_error(format!("{}{path} sent an unexpected body: {e}", self.base)))
    }

    /// The job.
    pub async fn job(&self) -> Result<JobView, Error> {
        self.get("/api/v1/job").await
    }

    /// Every committed round, page by page.
    pub async fn rounds(&self) -> Result<Vec<RoundRecord>, Error> {
        let mut rounds = Vec::new();
        loop {
            let page: RoundPage = self
                .get(&format!(
                    "/api/v1/rounds?offset={}&limit=1000",
                    rounds.len()
                ))
                .await?;
            let done = page.rounds.is_empty() || rounds.len() + page.rounds.len() >= page.total;
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

    /// The job, its participants and its round table, as text.
    pub async fn status(&self) -> Result<String, Error> {
        let job = self.job().await?;
        let rounds = self.rounds().await?;
        let participants = self.participants().await?;
        Ok(render(&job, &rounds, &participants))
    }

    /// Hands every change from now on to `on_event`, until the job ends or the stream closes.
    pub async fn follow(&self, mut on_event: impl FnMut(ApiEvent)) -> Result<(), Error> {
        let mut stream = self.send("/api/v1/events").await?.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| api_error(format!("live stream broke: {e}")))?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .collect();
                let Ok(event) = serde_json::from_str::<ApiEvent>(data.trim()) else {
                    // Keep-alive comments carry no data.
                    continue;
                };
                let over = matches!(event, ApiEvent::JobFinished { .. });
                on_event(event);
                if over {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Prints the status, then one line per change until the job ends.
    pub async fn watch(&self, mut print: impl FnMut(&str)) -> Result<(), Error> {
        print(&self.status().await?);
        self.follow(|event| print(&describe(&event))).await
    }
}

fn or_dash(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The status as text.
pub fn render(job: &JobView, rounds: &[RoundRecord], participants: &[ParticipantView]) -> String {
    let mut out = String::new();
    let state = serde_json::to_value(job.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    out.push_str(&format!(
        "job {} ({} on {}): {state}, {}/{} rounds committed",
        job.spec.name,
        job.spec.model.name(),
        serde_json::to_value(job.spec.dataset)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        job.rounds_completed,
        job.spec.rounds
    ));
    if let (Some(round), Some(phase)) = (job.current_round, job.current_phase) {
        out.push_str(&format!("; round {round} in {}", phase.name()));
    }
    if let Some(reason) = &job.finish_reason {
        out.push_str(&format!("; {reason}"));
    }
    let connected = participants.iter().filter(|p| p.connected).count();
    out.push_str(&format!(
        "\nparticipants connected: {connected}/{}\n",
        participants.len()
    ));
    out.push_str(
        "\nround  attempt  participants  dropped  train loss  eval loss  accuracy  duration\n",
    );
    for r in rounds {
        let o = &r.outcome;
        out.push_str(&format!(
            "{:>5}  {:>7}  {:>12}  {:>7}  {:>10.4}  {:>9}  {:>8}  {:>7.2}s\n",
            o.round,
            o.attempt,
            format!("{}/{}", o.contributors.len(), o.selected.len()),
            o.dropouts.len(),
            o.train_loss,
            or_dash(o.eval_loss),
            or_dash(o.eval_accuracy),
            r.duration_s
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
            "round {} committed: {}/{} participants, accuracy {}, {:.2} s",
            record.outcome.round,
            record.outcome.contributors.len(),
            record.outcome.selected.len(),
            or_dash(record.outcome.eval_accuracy),
            record.duration_s
        ),
        ApiEvent::RoundFailed {
            round,
            attempt,
            reason,
        } => format!("round {round} attempt {attempt} failed: {reason}"),
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
