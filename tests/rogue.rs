//! A rogue coordinator: a gRPC server that speaks the real wire protocol over mutual TLS to a real
//! participant and deviates from the protocol on purpose. Each test asserts on what the
//! participant sent back (nothing beyond what the protocol allows at that point) and on the log
//! line naming the rule it applied.

use cairn_identity::Authority;
use cairn_participant::client::identity::KitSigner;
use cairn_participant::client::{self, ClientOptions};
use cairn_participant::policy::{Partners, Policy};
use cairn_proto::v1::coordinator_message::Body as Outbound;
use cairn_proto::v1::federation_server::{Federation as FederationService, FederationServer};
use cairn_proto::v1::participant_message::Body as Inbound;
use cairn_proto::v1::{
    self, CoordinatorMessage, JobFinished, ParticipantMessage, SecureAggregation, TaskSpec,
    TensorSpec, TrainInstruction, TrainingConfig, Welcome,
};
use cairn_secagg::protocol::{
    GraphNonce, ParticipantMachine, RoundConfig, Signer, SurvivorSignature, Verifier,
    survivors_message,
};
use cairn_secagg::quantize::UpdateEncoding;
use cairn_tests::{Federation, digits_layout, digits_model, digits_task, logs};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const IDS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];
const JOB: &str = "rogue-job";

type Outbox = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// The rogue coordinator's service: it hands each session to the test.
struct Rogue {
    sessions: mpsc::Sender<(Streaming<ParticipantMessage>, Outbox)>,
}

#[tonic::async_trait]
impl FederationService for Rogue {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ParticipantMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (outbox, receiver) = mpsc::channel(64);
        let _ = self.sessions.send((request.into_inner(), outbox)).await;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One participant connected to the rogue coordinator.
struct Session {
    inbound: Streaming<ParticipantMessage>,
    outbox: Outbox,
    participant: tokio::task::JoinHandle<Result<client::RunSummary, cairn_participant::Error>>,
    /// The sessions the participant opens after this one.
    accepted: mpsc::Receiver<(Streaming<ParticipantMessage>, Outbox)>,
}

/// A provisioned federation, a rogue coordinator on loopback and `me` connected to it with
/// `policy`, past `Hello` and `Welcome`.
async fn connect(federation: &Federation, me: &str, policy: Policy) -> Session {
    let _ = rustls::crypto::ring::default_provider().install_default();
    cairn_tests::logs::capture();
    let dir = federation.dir.path().join("coordinator");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("coordinator kit");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("cert.pem"), read("key.pem")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().expect("address").port()
    );
    let (sessions, mut accepted) = mpsc::channel(4);
    let server = Server::builder()
        .tls_config(tls)
        .expect("server TLS")
        .add_service(FederationServer::new(Rogue { sessions }));
    tokio::spawn(
        server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut options: ClientOptions = federation.client_at(&url, me);
    options.policy = policy;
    let participant = tokio::spawn(client::run(options, digits_task(0, 4)));
    let (mut inbound, outbox) = accepted.recv().await.expect("a session");
    let through = greet(&mut inbound, &outbox, me, None).await;
    assert_eq!(through.round, 0, "nothing countersigned yet");
    Session {
        inbound,
        outbox,
        participant,
        accepted,
    }
}

/// Takes `me`'s `Hello`, answers `Welcome` with the head of the round log `chain`, and returns
/// where `me` says its countersigning stands.
async fn greet(
    inbound: &mut Streaming<ParticipantMessage>,
    outbox: &Outbox,
    me: &str,
    chain: Option<v1::ChainHead>,
) -> v1::SignedThrough {
    match next(inbound).await {
        Some(Inbound::Hello(_)) => {}
        other => panic!("expected Hello first, got {other:?}"),
    }
    let welcome = Welcome {
        protocol_version: cairn_proto::PROTOCOL_VERSION,
        job_name: JOB.into(),
        participant_id: me.into(),
        heartbeat_interval_s: 60,
        task: Some(TaskSpec {
            metrics: vec!["loss".into(), "accuracy".into()],
            standardize: vec![],
        }),
        chain,
    };
    let welcome = CoordinatorMessage {
        body: Some(Outbound::Welcome(welcome)),
    };
    outbox.send(Ok(welcome)).await.expect("the session is open");
    match next(inbound).await {
        Some(Inbound::SignedThrough(through)) => through,
        other => panic!("expected SignedThrough after Welcome, got {other:?}"),
    }
}

/// The participant's next message that is not a heartbeat; `None` once its stream ended.
async fn next(inbound: &mut Streaming<ParticipantMessage>) -> Option<Inbound> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), inbound.message())
            .await
            .expect("the participant answers within two minutes")
            .ok()??;
        match message.body {
            Some(Inbound::Heartbeat(_)) => continue,
            body => return body,
        }
    }
}

impl Session {
    async fn send(&self, body: Outbound) {
        self.outbox
            .send(Ok(CoordinatorMessage { body: Some(body) }))
            .await
            .expect("the session is open");
    }

    /// Sends the digits model for `round`, every value shifted by `shift`, as `instruction`
    /// makes it known from its header.
    async fn model(
        &self,
        round: u64,
        shift: f32,
        instruction: impl FnOnce(v1::TransferHeader) -> Outbound,
    ) {
        let (layout, values) =
            cairn_coordinator::model::read_model(&digits_model()).expect("the digits model");
        let specs: Vec<TensorSpec> = layout
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
            })
            .collect();
        let values: Vec<f32> = values.iter().map(|v| v + shift).collect();
        let (header, chunks) = cairn_proto::transfer::split(round, &specs, &values);
        self.send(instruction(header)).await;
        for chunk in chunks {
            self.send(Outbound::Chunk(chunk)).await;
        }
    }

    /// Sends an `Evaluate` for `round` with the digits model shifted by `shift`, and `setup`
    /// (`None`: the report in the clear).
    async fn evaluate(&self, round: u64, shift: f32, setup: Option<SecureAggregation>) {
        self.model(round, shift, |header| {
            Outbound::Evaluate(v1::EvaluateInstruction {
                model: Some(header),
                secure_aggregation: setup,
            })
        })
        .await;
    }

    /// Sends a `Train` for `round` with the digits model, and `setup` (`None`: in the clear).
    async fn train(&self, round: u64, setup: Option<SecureAggregation>) {
        self.train_with_mu(round, setup, 0.0).await;
    }

    /// [`Session::train`] with FedProx's `proximal_mu`.
    async fn train_with_mu(&self, round: u64, setup: Option<SecureAggregation>, proximal_mu: f64) {
        let config = TrainingConfig {
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.1,
            seed: 1,
            proximal_mu,
        };
        self.model(round, 0.0, |header| {
            Outbound::Train(TrainInstruction {
                config: Some(config),
                model: Some(header),
                secure_aggregation: setup,
                first_chunk: 0,
            })
        })
        .await;
    }

    /// Ends the job and returns everything the participant sent until its stream closed.
    async fn finish(mut self) -> Vec<Inbound> {
        self.send(Outbound::Finished(JobFinished {
            reason: "the rogue coordinator is done".into(),
            ..Default::default()
        }))
        .await;
        let mut sent = Vec::new();
        while let Some(body) = next(&mut self.inbound).await {
            sent.push(body);
        }
        let summary = self.participant.await.expect("participant task");
        assert!(summary.is_ok(), "the participant ends cleanly: {summary:?}");
        sent
    }
}

/// A secure-aggregation setup for `roster` (complete graph, strict-majority threshold).
fn setup(roster: &[&str], attempt: u32) -> SecureAggregation {
    let n = roster.len() as u32;
    SecureAggregation {
        attempt,
        participants: roster.iter().map(|id| id.to_string()).collect(),
        degree: n - 1,
        threshold: (n - 1) / 2 + 1,
        clip: 1.0,
        quantization_levels: 1 << 20,
        max_weight: 10_000,
        privacy: None,
    }
}

fn kinds(sent: &[Inbound]) -> Vec<&'static str> {
    sent.iter()
        .map(|body| match body {
            Inbound::Hello(_) => "hello",
            Inbound::Heartbeat(_) => "heartbeat",
            Inbound::Update(_) => "update",
            Inbound::Chunk(_) => "chunk",
            Inbound::Evaluation(_) => "evaluation",
            Inbound::Advertisement(_) => "advertisement",
            Inbound::GraphNonce(_) => "graph nonce",
            Inbound::Shares(_) => "shares",
            Inbound::MaskedInput(_) => "masked input",
            Inbound::SurvivorSignature(_) => "survivor signature",
            Inbound::Reveal(_) => "reveal",
            Inbound::SignedThrough(_) => "signed through",
            Inbound::Countersignature(_) => "countersignature",
        })
        .collect()
}

/// Runs one round that `me` must refuse under `policy`, and checks that it logged `rule` and
/// sent nothing for the round.
async fn refused(me: &str, policy: Policy, setup: Option<SecureAggregation>, rule: &[&str]) {
    let federation = Federation::provision(&IDS);
    let session = connect(&federation, me, policy).await;
    session.train(1, setup).await;
    let mut parts = vec![me, "round 1: training refused, nothing is sent for it"];
    parts.extend_from_slice(rule);
    logs::line(&parts).await;
    let sent = session.finish().await;
    assert!(
        sent.is_empty(),
        "{me} sent {:?} for a refused round",
        kinds(&sent)
    );
}

#[tokio::test]
async fn a_round_in_the_clear_is_refused_by_default() {
    refused(
        "alpha",
        Policy::default(),
        None,
        &["asks for the update in the clear", "--allow-plaintext"],
    )
    .await;
}

#[tokio::test]
async fn a_roster_with_a_duplicate_id_is_refused() {
    // One colluder in two neighbour slots would see two of the victim's pairwise masks.
    refused(
        "bravo",
        Policy::default(),
        Some(setup(&["alpha", "bravo", "delta", "delta"], 1)),
        &["lists \"delta\" before \"delta\"", "each listed once"],
    )
    .await;
}

#[tokio::test]
async fn a_roster_of_three_is_refused_by_a_site_that_asks_for_four() {
    // With the victim and two colluders, the coordinator learns the victim's update from the sum.
    let policy = Policy {
        min_participants: 4,
        ..Policy::default()
    };
    refused(
        "charlie",
        policy,
        Some(setup(&["alpha", "bravo", "charlie"], 1)),
        &["has 3 participants", "at least 4 (--min-participants)"],
    )
    .await;
}

#[tokio::test]
async fn a_roster_naming_someone_outside_the_partners_is_refused() {
    let policy = Policy {
        partners: Some(Partners::parse("alpha\nbravo\ncharlie\n").expect("partners")),
        ..Policy::default()
    };
    refused(
        "alpha",
        policy,
        Some(setup(&["alpha", "bravo", "delta"], 1)),
        &["names \"delta\"", "not among this site's partners"],
    )
    .await;
}

#[tokio::test]
async fn replayed_messages_and_an_earlier_round_get_nothing() {
    let federation = Federation::provision(&IDS);
    let mut session = connect(&federation, "alpha", Policy::default()).await;
    let roster = ["alpha", "bravo", "charlie"];
    session.train(2, Some(setup(&roster, 2))).await;
    // The participant trains and advertises its keys, as the protocol says.
    let real = match next(&mut session.inbound).await {
        Some(Inbound::Advertisement(ad)) => ad,
        other => panic!("expected an advertisement, got {other:?}"),
    };
    assert_eq!((real.round, real.attempt), (2, 2));
    // Advertisements of an earlier attempt, then of an earlier round, replayed at it.
    for (round, attempt) in [(2, 1), (1, 2)] {
        let replayed = Forged::new(&federation, &roster, round, attempt, real.clone());
        session.send(Outbound::Advertisements(replayed.ads)).await;
        logs::line(&[
            &format!(
                "alpha: ignored a secure aggregation message for round {round} attempt {attempt}"
            ),
            "which this participant is not running",
        ])
        .await;
    }
    // An earlier round's instruction: this site already trained past it.
    session.train(1, Some(setup(&roster, 5))).await;
    logs::line(&[
        "alpha: round 1: training refused",
        "round 1 comes after round 2 was started; expected round 2 or a later one",
    ])
    .await;
    let sent = session.finish().await;
    assert!(
        sent.is_empty(),
        "alpha answered replays with {:?}",
        kinds(&sent)
    );
}

#[tokio::test]
async fn an_evaluation_in_the_clear_is_refused_by_default() {
    // Each site's own metrics would be a query on its private test data.
    let federation = Federation::provision(&IDS);
    let session = connect(&federation, "alpha", Policy::default()).await;
    session.evaluate(1, 0.0, None).await;
    logs::line(&[
        "alpha: round 1: evaluation refused, nothing is sent for it",
        "asks for an evaluation in the clear",
        "--allow-plaintext",
    ])
    .await;
    let sent = session.finish().await;
    assert!(sent.is_empty(), "alpha sent {:?}", kinds(&sent));
}

#[tokio::test]
async fn a_model_evaluated_that_the_federation_does_not_go_on_with_is_caught() {
    // The host has alpha evaluate a model of its own as round 1's new one, then goes on with
    // another: the evaluation was a query, and alpha takes no further part.
    let federation = Federation::provision(&IDS);
    let mut session = connect(&federation, "alpha", Policy::default()).await;
    let roster = ["alpha", "bravo", "charlie"];
    session.evaluate(1, 0.5, Some(setup(&roster, 2))).await;
    // Its sums go only into secure aggregation: an advertisement, no report.
    match next(&mut session.inbound).await {
        Some(Inbound::Advertisement(ad)) => assert_eq!((ad.round, ad.attempt), (1, 2)),
        other => panic!("expected an advertisement, got {other:?}"),
    }
    session.train(2, Some(setup(&roster, 1))).await;
    logs::line(&[
        "alpha: round 2: training refused, nothing is sent for it",
        "not the one this site evaluated as round 1's new model",
    ])
    .await;
    let sent = session.finish().await;
    assert!(sent.is_empty(), "alpha sent {:?}", kinds(&sent));
}

/// Sends `message` to a freshly connected alpha, and checks that alpha ends the session with
/// a log line naming `rule`, having sent nothing.
async fn ends_the_session(message: CoordinatorMessage, rule: &str) {
    let federation = Federation::provision(&IDS);
    let session = connect(&federation, "alpha", Policy::default()).await;
    session.outbox.send(Ok(message)).await.expect("open");
    ended_with_nothing_sent(session, rule).await;
}

/// Checks that alpha ends `session` with a log line naming `rule` and reconnects, having sent
/// nothing in it.
async fn ended_with_nothing_sent(mut session: Session, rule: &str) {
    logs::line(&["alpha: ", rule, "reconnecting in"]).await;
    let mut sent = Vec::new();
    while let Some(body) = next(&mut session.inbound).await {
        sent.push(body);
    }
    assert!(sent.is_empty(), "alpha sent {:?}", kinds(&sent));
    session.participant.abort();
}

#[tokio::test]
async fn an_unknown_message_ends_the_session_with_nothing_sent() {
    // A message of a kind this build does not know decodes with no body.
    ends_the_session(
        CoordinatorMessage { body: None },
        "a message of no kind this participant knows; expected one of protocol version",
    )
    .await;
}

#[tokio::test]
async fn an_oversized_message_ends_the_session_with_nothing_sent() {
    // gRPC's 4 MiB limit on a decoded message holds against the coordinator too.
    let chunk = v1::Chunk {
        round: 1,
        index: 0,
        data: vec![0u8; 5 << 20].into(),
    };
    ends_the_session(
        CoordinatorMessage {
            body: Some(Outbound::Chunk(chunk)),
        },
        "message length too large",
    )
    .await;
}

#[tokio::test]
async fn a_proximal_mu_that_is_no_number_ends_the_session_with_nothing_sent() {
    let federation = Federation::provision(&IDS);
    let session = connect(&federation, "alpha", Policy::default()).await;
    let roster = ["alpha", "bravo", "charlie"];
    session
        .train_with_mu(1, Some(setup(&roster, 1)), f64::NAN)
        .await;
    ended_with_nothing_sent(
        session,
        "the coordinator asks for proximal_mu NaN; expected a finite number >= 0",
    )
    .await;
}

#[tokio::test]
async fn a_round_failed_on_purpose_is_drawn_again_only_as_often_as_the_site_allows() {
    // Each attempt draws a fresh graph; a host that abandons attempts until the graph suits it
    // gets `--max-round-attempts` draws.
    let federation = Federation::provision(&IDS);
    let policy = Policy {
        max_round_attempts: 2,
        ..Policy::default()
    };
    let mut session = connect(&federation, "alpha", policy).await;
    let roster = ["alpha", "bravo", "charlie"];
    for attempt in 1..=2 {
        session.train(3, Some(setup(&roster, attempt))).await;
        match next(&mut session.inbound).await {
            Some(Inbound::Advertisement(ad)) => assert_eq!(ad.attempt, attempt),
            other => panic!("expected an advertisement, got {other:?}"),
        }
    }
    // A third attempt, numbered as a first one after a "restart": counted all the same.
    session.train(3, Some(setup(&roster, 1))).await;
    logs::line(&[
        "alpha: round 3: training refused, nothing is sent for it",
        "at most 2 attempts of a round (--max-round-attempts)",
    ])
    .await;
    let sent = session.finish().await;
    assert!(sent.is_empty(), "alpha sent {:?}", kinds(&sent));
}

/// Waits for alpha's abort of round 1 naming `rule`, ends the job and checks that alpha sent
/// nothing more; returns the log line.
async fn aborted_with_nothing_more_sent(session: Session, rule: &[&str]) -> String {
    let mut parts = vec!["alpha: round 1 attempt 1: aborting secure aggregation"];
    parts.extend_from_slice(rule);
    let line = logs::line(&parts).await;
    let sent = session.finish().await;
    assert!(
        sent.is_empty(),
        "alpha sent {:?} after aborting",
        kinds(&sent)
    );
    line
}

/// Checks no signature: the forged neighbours take whatever alpha signs.
struct AcceptAll;

impl Verifier for AcceptAll {
    fn verify(&self, _: u32, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// Alpha's neighbours as the rogue host forges them: protocol machines with keys signed by
/// certificates it minted for their ids with the federation CA's key, so that they chain to the
/// CA and name the right participants.
struct Forged {
    config: RoundConfig,
    round: u64,
    attempt: u32,
    /// Alpha's real advertisement and the forged ones, as relayed (without certificates).
    ads: v1::Advertisements,
    /// Alpha's certificate and the minted ones, by index.
    certificates: Vec<(u32, Vec<u8>)>,
    /// The forged neighbours' machines and signers, for indices 1, 2, ...
    machines: Vec<ParticipantMachine>,
    signers: Vec<KitSigner>,
}

impl Forged {
    fn new(
        federation: &Federation,
        roster: &[&str],
        round: u64,
        attempt: u32,
        real: v1::Advertisement,
    ) -> Forged {
        let ca_dir = federation.dir.path().join("ca");
        let read = |name: &str| std::fs::read_to_string(ca_dir.join(name)).expect("CA files");
        let ca = Authority::from_pem(&read("ca.pem"), &read("ca-key.pem")).expect("the CA");
        let setup = setup(roster, attempt);
        let n_values: usize = digits_layout()
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        let config = RoundConfig::derive(
            JOB,
            round,
            attempt,
            &setup.participants,
            setup.degree,
            setup.threshold as usize,
            UpdateEncoding::vector_len(n_values),
        )
        .expect("round config");
        let mut certificates = vec![(0, real.certificate.clone())];
        let mut advertisements = vec![v1::Advertisement {
            certificate: Vec::new(),
            ..real
        }];
        let (mut machines, mut signers) = (Vec::new(), Vec::new());
        for (index, id) in roster.iter().enumerate().skip(1) {
            let minted = ca
                .issue_participant(id, id, 1)
                .expect("a minted certificate");
            let signer = KitSigner::from_pem(&minted.key_pem).expect("the minted key");
            let (machine, ad) = ParticipantMachine::new(config.clone(), index as u32, &signer);
            let der = cairn_identity::certificate_der(&minted.cert_pem, "minted").expect("DER");
            certificates.push((index as u32, der));
            advertisements.push(v1::Advertisement::new(round, attempt, &ad, Vec::new()));
            machines.push(machine);
            signers.push(signer);
        }
        let ads = v1::Advertisements {
            round,
            attempt,
            advertisements,
        };
        Forged {
            config,
            round,
            attempt,
            ads,
            certificates,
            machines,
            signers,
        }
    }

    /// Every party's graph nonce, alpha's `own` first, with every certificate.
    fn nonces(&mut self, own: v1::GraphNonce) -> v1::GraphNonces {
        let ads: Vec<_> = self
            .ads
            .advertisements
            .iter()
            .map(|ad| ad.clone().into_parts().expect("well-formed").0)
            .collect();
        let mut nonces = vec![own.into_nonce().expect("alpha's nonce")];
        for machine in &mut self.machines {
            nonces.push(
                machine
                    .on_advertisements(ads.clone())
                    .expect("forged nonce"),
            );
        }
        v1::GraphNonces::new(self.round, self.attempt, &nonces, self.certificates.clone())
    }
}

/// Alpha's next message, chunks of a transfer skipped.
async fn next_but_chunks(inbound: &mut Streaming<ParticipantMessage>) -> Option<Inbound> {
    loop {
        match next(inbound).await {
            Some(Inbound::Chunk(_)) => continue,
            body => return body,
        }
    }
}

/// The fingerprint of `id`'s real certificate, as `cairn-participant fingerprint` prints it.
fn fingerprint(federation: &Federation, id: &str) -> String {
    let pem = std::fs::read_to_string(federation.kit_dir(id).join("cert.pem")).expect("cert");
    cairn_identity::fingerprint(&cairn_identity::certificate_der(&pem, "cert.pem").expect("DER"))
}

/// Alpha trains in a round with bravo and charlie, whose advertisements the host then forges;
/// returns the session once alpha has them, with alpha's nonce in the forged nonces.
async fn with_forged_neighbours(
    federation: &Federation,
    policy: Policy,
    alter: impl FnOnce(&mut v1::Advertisements),
) -> (Session, Forged, Option<v1::GraphNonces>) {
    let roster = ["alpha", "bravo", "charlie"];
    let mut session = connect(federation, "alpha", policy).await;
    session.train(1, Some(setup(&roster, 1))).await;
    let real = match next(&mut session.inbound).await {
        Some(Inbound::Advertisement(ad)) => ad,
        other => panic!("expected an advertisement, got {other:?}"),
    };
    let mut forged = Forged::new(federation, &roster, 1, 1, real);
    let mut shown = forged.ads.clone();
    alter(&mut shown);
    session.send(Outbound::Advertisements(shown)).await;
    let nonces = match next(&mut session.inbound).await {
        Some(Inbound::GraphNonce(own)) => Some(forged.nonces(own)),
        _ => None,
    };
    (session, forged, nonces)
}

#[tokio::test]
async fn a_neighbour_whose_certificate_is_not_the_pinned_one_gets_nothing() {
    // Without pins, the host that holds the CA key can stand in for every neighbour: alpha
    // shares its secrets with the minted keys.
    let federation = Federation::provision(&IDS);
    let (mut session, _, nonces) =
        with_forged_neighbours(&federation, Policy::default(), |_| {}).await;
    session
        .send(Outbound::GraphNonces(nonces.expect("alpha's nonce")))
        .await;
    match next(&mut session.inbound).await {
        Some(Inbound::Shares(_)) => {}
        other => panic!("unpinned, the forgery goes through to shares; got {other:?}"),
    }

    // Pinned: the fingerprints are exchanged out of band, so the same forgery is caught before
    // alpha shares anything.
    let federation = Federation::provision(&IDS);
    let pins: String = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|id| format!("{id} {}\n", fingerprint(&federation, id)))
        .collect();
    let policy = Policy {
        partners: Some(Partners::parse(&pins).expect("partners")),
        ..Policy::default()
    };
    let (session, _, nonces) = with_forged_neighbours(&federation, policy, |_| {}).await;
    session
        .send(Outbound::GraphNonces(nonces.expect("alpha's nonce")))
        .await;
    let line = aborted_with_nothing_more_sent(
        session,
        &["\"bravo\" presents certificate sha256:", "this site pinned"],
    )
    .await;
    assert!(line.contains(&fingerprint(&federation, "bravo")), "{line}");
}

#[tokio::test]
async fn a_substituted_public_key_gets_nothing_past_the_nonce() {
    // The host swaps bravo's mask key after bravo signed it: alpha reveals its nonce (the
    // protocol allows that much before the graph says whose signatures count), then refuses.
    let federation = Federation::provision(&IDS);
    let (session, _, nonces) = with_forged_neighbours(&federation, Policy::default(), |ads| {
        ads.advertisements[1].mask_public = vec![7; 32];
    })
    .await;
    session
        .send(Outbound::GraphNonces(nonces.expect("alpha's nonce")))
        .await;
    aborted_with_nothing_more_sent(
        session,
        &["advertisement of participant 1 does not carry a valid signature"],
    )
    .await;
}

#[tokio::test]
async fn a_coordinator_that_withholds_or_alters_a_nonce_draws_no_graph() {
    // Leaving charlie's nonce out would let the host pick among graphs; changing it, too.
    for (alter, rule) in [
        (
            (|nonces: &mut v1::GraphNonces| {
                nonces.nonces.pop();
            }) as fn(&mut v1::GraphNonces),
            "participants [2] advertised keys but revealed no graph nonce",
        ),
        (
            |nonces: &mut v1::GraphNonces| nonces.nonces[2].nonce[0] ^= 1,
            "the graph nonce of participant 2 does not match the commitment it advertised",
        ),
    ] {
        let federation = Federation::provision(&IDS);
        let (session, _, nonces) =
            with_forged_neighbours(&federation, Policy::default(), |_| {}).await;
        let mut nonces = nonces.expect("alpha's nonce");
        alter(&mut nonces);
        session.send(Outbound::GraphNonces(nonces)).await;
        aborted_with_nothing_more_sent(session, &[rule]).await;
    }
}

#[tokio::test]
async fn a_forged_survivor_signature_gets_no_reveal() {
    // The host plays bravo and charlie through the whole protocol (it minted their keys), then
    // shows alpha a survivor set that charlie "signed" over another set: alpha masks and signs,
    // as the protocol allows, but reveals nothing.
    let federation = Federation::provision(&IDS);
    let (mut session, mut forged, nonces) =
        with_forged_neighbours(&federation, Policy::default(), |_| {}).await;
    let nonces = nonces.expect("alpha's nonce");
    session.send(Outbound::GraphNonces(nonces.clone())).await;
    let Some(Inbound::Shares(_)) = next(&mut session.inbound).await else {
        panic!("alpha shares with its (unpinned) neighbours")
    };
    let (nonces, _) = nonces.into_parts().expect("nonces");
    let mut for_alpha = Vec::new();
    for machine in &mut forged.machines {
        let shares: Vec<GraphNonce> = nonces.clone();
        for message in machine
            .on_nonces(shares, &AcceptAll)
            .expect("forged shares")
        {
            if message.to == 0 {
                for_alpha.push(message);
            }
        }
    }
    session
        .send(Outbound::Shares(v1::EncryptedShares::new(1, 1, &for_alpha)))
        .await;
    let Some(Inbound::MaskedInput(_)) = next_but_chunks(&mut session.inbound).await else {
        panic!("alpha masks its input")
    };
    let survivors = vec![0, 1, 2];
    session
        .send(Outbound::Survivors(v1::Survivors {
            round: 1,
            attempt: 1,
            survivors: survivors.clone(),
        }))
        .await;
    let own = match next_but_chunks(&mut session.inbound).await {
        Some(Inbound::SurvivorSignature(own)) => SurvivorSignature::try_from(own).expect("own"),
        other => panic!("alpha signs the survivor set, got {other:?}"),
    };
    let other_set = survivors_message(&forged.config, &[0, 2]);
    let signatures = vec![
        own,
        SurvivorSignature {
            from: 2,
            signature: forged.signers[1].sign(&other_set),
        },
    ];
    session
        .send(Outbound::SurvivorSignatures(v1::SurvivorSignatures::new(
            1,
            1,
            &signatures,
        )))
        .await;
    aborted_with_nothing_more_sent(
        session,
        &["survivor set signature of participant 2 does not match the set shown here"],
    )
    .await;
}

/// A round record of `round` in the coordinator's format, after the record `previous` (hex
/// SHA-256), with `contributors`.
fn round_record(round: u64, previous: &str, contributors: &[&str]) -> v1::RoundRecord {
    let json = serde_json::json!({
        "round": round,
        "contributors": contributors,
        "previous_record_sha256": previous,
        "job_sha256": "a1".repeat(32),
        "model_sha256": "b2".repeat(32),
    });
    v1::RoundRecord {
        round,
        record: serde_json::to_vec(&json).expect("JSON"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_participant_shown_a_rewritten_history_refuses_to_go_on_and_says_why() {
    let federation = Federation::provision(&IDS);
    let mut session = connect(&federation, "alpha", Policy::default()).await;
    let certificate = cairn_identity::certificate_der(
        &std::fs::read_to_string(federation.kit_dir("alpha").join("cert.pem")).expect("cert"),
        "cert.pem",
    )
    .expect("certificate");
    // Rounds 1 and 2 as they happened: alpha countersigns each with its certificate's key.
    let first = round_record(1, "", &["alpha", "bravo", "charlie"]);
    let second = round_record(
        2,
        &sha256_hex(&first.record),
        &["alpha", "bravo", "charlie"],
    );
    for record in [&first, &second] {
        session.send(Outbound::Record(record.clone())).await;
        let Some(Inbound::Countersignature(signature)) = next(&mut session.inbound).await else {
            panic!("alpha countersigns round {}", record.round);
        };
        let hash = ring::digest::digest(&ring::digest::SHA256, &record.record);
        assert_eq!(signature.record_sha256, hash.as_ref());
        let message = cairn_identity::countersigned_message(JOB, record.round, hash.as_ref());
        assert!(
            cairn_identity::verify_signature(&certificate, &message, &signature.signature),
            "the countersignature verifies with alpha's certificate"
        );
    }
    // The host restarts with round 2 rewritten (alpha left out of it): alpha reconnects, says
    // where it stands, and refuses the head it is shown.
    session
        .outbox
        .send(Err(Status::unavailable("restarting")))
        .await
        .expect("open");
    let (mut inbound, outbox) = session.accepted.recv().await.expect("alpha reconnects");
    let rewritten = round_record(2, &sha256_hex(&first.record), &["bravo", "charlie"]);
    let head = v1::ChainHead {
        rounds: 2,
        record_sha256: ring::digest::digest(&ring::digest::SHA256, &rewritten.record)
            .as_ref()
            .to_vec(),
    };
    let Some(Inbound::Hello(_)) = next(&mut inbound).await else {
        panic!("expected Hello");
    };
    let welcome = Welcome {
        protocol_version: cairn_proto::PROTOCOL_VERSION,
        job_name: JOB.into(),
        participant_id: "alpha".into(),
        heartbeat_interval_s: 60,
        task: Some(TaskSpec {
            metrics: vec!["loss".into()],
            standardize: vec![],
        }),
        chain: Some(head),
    };
    outbox
        .send(Ok(CoordinatorMessage {
            body: Some(Outbound::Welcome(welcome)),
        }))
        .await
        .expect("open");
    let err = session
        .participant
        .await
        .expect("participant task")
        .expect_err("alpha refuses the rewritten history");
    let message = err.to_string();
    assert!(
        message.contains("the coordinator's round log forks from the one this site countersigned")
            && message.contains(&format!(
                "its record of round 2 hashes to {}",
                sha256_hex(&rewritten.record)
            ))
            && message.contains(&sha256_hex(&second.record)),
        "{message}"
    );
    let mut sent = Vec::new();
    while let Some(body) = next(&mut inbound).await {
        sent.push(body);
    }
    assert!(sent.is_empty(), "alpha sent {:?}", kinds(&sent));
}
