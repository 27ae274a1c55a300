//! Negative cases against a real coordinator over loopback mTLS. Each bad actor is refused with a
//! clear error, and the honest participants' job still completes.

use cairn_coordinator::Coordinator;
use cairn_coordinator::round::Phase;
use cairn_participant::client::{self, ClientOptions, Kit, run_many};
use cairn_proto::transfer::split;
use cairn_proto::v1::federation_client::FederationClient;
use cairn_proto::v1::{
    CoordinatorMessage, Hello, ParticipantMessage, TensorSpec, UpdateHeader, coordinator_message,
    participant_message::Body,
};
use cairn_tests::{Federation, digits_job, digits_job_with_deadline, digits_task, logs, url};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};

const HONEST: [&str; 2] = ["alpha", "bravo"];

/// Runs the honest participants to the end of a one-round job and checks that it completed.
async fn honest_job_completes(federation: &Federation, coordinator: Coordinator) {
    let clients = federation.clients(&coordinator, &HONEST);
    for result in run_many(clients).await {
        assert_eq!(
            result.expect("honest participant finishes").rounds_trained,
            1
        );
    }
    let report = cairn_tests::finish(coordinator).await.expect("report");
    assert!(report.succeeded, "{}", report.reason);
    assert_eq!(report.rounds.len(), 1);
    assert_eq!(report.rounds[0].outcome.contributors, HONEST);
}

/// Opens a session on `channel` and sends Hello; returns the way in and the way out.
async fn say_hello(
    channel: tonic::transport::Channel,
) -> Result<
    (
        mpsc::Sender<ParticipantMessage>,
        Streaming<CoordinatorMessage>,
    ),
    Status,
> {
    let (outbox, receiver) = mpsc::channel(64);
    let hello = Hello {
        protocol_version: cairn_proto::PROTOCOL_VERSION,
        client_version: "test".into(),
        resume: None,
    };
    outbox
        .send(ParticipantMessage {
            body: Some(Body::Hello(hello)),
        })
        .await
        .expect("queue hello");
    let inbound = FederationClient::new(channel)
        .session(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((outbox, inbound))
}

/// A raw session with `id`'s kit: sends Hello and returns the stream after the Welcome.
async fn raw_session(
    federation: &Federation,
    coordinator: &Coordinator,
    id: &str,
) -> Result<
    (
        mpsc::Sender<ParticipantMessage>,
        Streaming<CoordinatorMessage>,
    ),
    Status,
> {
    let options = federation.client(coordinator, id);
    let channel = client::connect(&options)
        .await
        .map_err(|e| Status::unavailable(error_chain(&e)))?;
    let (outbox, mut inbound) = say_hello(channel).await?;
    match inbound.message().await?.and_then(|m| m.body) {
        Some(coordinator_message::Body::Welcome(welcome)) => assert_eq!(welcome.participant_id, id),
        other => panic!("expected Welcome, got {other:?}"),
    }
    Ok((outbox, inbound))
}

/// The status that ends the session after the messages already queued.
async fn final_status(inbound: &mut Streaming<CoordinatorMessage>) -> Status {
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("session ended without an error status"),
            Err(status) => return status,
        }
    }
}

fn model_layout() -> Vec<TensorSpec> {
    cairn_tests::digits_layout()
        .into_iter()
        .map(|t| TensorSpec::new(t.name, &t.shape))
        .collect()
}

fn n_values(specs: &[TensorSpec]) -> usize {
    specs
        .iter()
        .map(|t| t.shape.iter().product::<u64>() as usize)
        .sum()
}

/// Sends an update as `mallory` after `tamper` had its way with it, and returns the status that
/// ends mallory's session; then checks the honest job completes.
/// A one-round job of alpha, bravo and mallory, with mallory in a raw session.
async fn mallory_in_a_job() -> (
    Federation,
    Coordinator,
    mpsc::Sender<ParticipantMessage>,
    Streaming<CoordinatorMessage>,
) {
    let ids = ["alpha", "bravo", "mallory"];
    let federation = Federation::provision(&ids);
    let coordinator = federation.start(digits_job(&ids, 1, 2)).await;
    let (outbox, inbound) = raw_session(&federation, &coordinator, "mallory")
        .await
        .expect("session");
    (federation, coordinator, outbox, inbound)
}

async fn refused_update(
    tamper: impl FnOnce(&mut UpdateHeader, &mut Vec<cairn_proto::v1::Chunk>),
    specs: Vec<TensorSpec>,
    values: Vec<f32>,
) -> Status {
    let (federation, coordinator, outbox, mut inbound) = mallory_in_a_job().await;
    let (transfer, mut chunks) = split(1, &specs, &values);
    let mut header = UpdateHeader {
        transfer: Some(transfer),
        weight: 10,
        weighted_train_loss: 1.0,
        first_chunk: 0,
    };
    tamper(&mut header, &mut chunks);
    let _ = outbox
        .send(ParticipantMessage {
            body: Some(Body::Update(header)),
        })
        .await;
    for chunk in chunks {
        let _ = outbox
            .send(ParticipantMessage {
                body: Some(Body::Chunk(chunk)),
            })
            .await;
    }
    let status = final_status(&mut inbound).await;
    honest_job_completes(&federation, coordinator).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_the_wrong_number_of_values_is_refused() {
    let specs = vec![TensorSpec {
        name: "fc1.weight".into(),
        shape: vec![7850],
    }];
    let status = refused_update(|_, _| {}, specs, vec![0.0; 7850]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    let expected = n_values(&model_layout());
    assert_eq!(
        status.message(),
        format!("model update for round 1 has 7850 values, expected {expected}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_containing_nan_or_infinity_is_refused() {
    let specs = model_layout();
    let mut values = vec![0.0; n_values(&specs)];
    values[123] = f32::NAN;
    let status = refused_update(|_, _| {}, specs.clone(), values.clone()).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("non-finite value (NaN) at position 123"),
        "{}",
        status.message()
    );
    values[123] = f32::INFINITY;
    let status = refused_update(|_, _| {}, specs, values).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("non-finite value (inf)"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_whose_hash_does_not_match_is_refused() {
    let specs = model_layout();
    let values = vec![0.5; n_values(&specs)];
    let status = refused_update(
        |_, chunks| {
            let mut data = chunks[0].data.to_vec();
            data[0] ^= 0xff;
            chunks[0].data = data.into();
        },
        specs,
        values,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("chunk 0's data does not match the sha256 its transfer header lists"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_not_in_the_job_is_permission_denied() {
    logs::capture();
    let ids = ["alpha", "bravo", "eve"];
    let federation = Federation::provision(&ids);
    let coordinator = federation.start(digits_job(&HONEST, 1, 2)).await;
    let status = raw_session(&federation, &coordinator, "eve")
        .await
        .map(|_| ())
        .expect_err("eve is refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("participant \"eve\" is not in the job this coordinator runs"),
        "{}",
        status.message()
    );
    // A refusal tells the caller nothing about the job: not its name, not who takes part.
    for secret in ["test-job", "alpha", "bravo"] {
        assert!(!status.message().contains(secret), "{}", status.message());
    }
    // The operator's log names the address, the participant and the job.
    logs::line(&[
        "refused a session from 127.0.0.1:",
        "participant \"eve\" is not in the job",
        "(job \"test-job\")",
    ])
    .await;
    // The participant client gives up at once on a refusal instead of retrying.
    let err = client::run(federation.client(&coordinator, "eve"), digits_task(0, 2))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("not in the job"), "{err}");
    honest_job_completes(&federation, coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_but_silent_participant_costs_one_deadline_not_one_per_round() {
    let ids = ["alpha", "bravo", "charlie"];
    let federation = Federation::provision(&ids);
    let coordinator = federation
        .start(digits_job_with_deadline(&ids, 3, 2, 3))
        .await;
    let clients = federation.clients(&coordinator, &HONEST);
    let honest = tokio::spawn(run_many(clients));
    // charlie says Hello, reads everything it is sent, sends heartbeats and nothing else.
    let (heartbeats, mut inbound) = raw_session(&federation, &coordinator, "charlie")
        .await
        .expect("charlie's session");
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let beating = tokio::spawn(async move {
        loop {
            let beat = Body::Heartbeat(cairn_proto::v1::Heartbeat { sent_at_unix_ms: 0 });
            if heartbeats
                .send(ParticipantMessage { body: Some(beat) })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    for result in honest.await.expect("honest participants") {
        // Three rounds, and a failed attempt if charlie was picked before bravo connected.
        let trained = result.expect("honest participant finishes").rounds_trained;
        assert!((3..=4).contains(&trained), "{trained}");
    }
    let report = cairn_tests::finish(coordinator).await.expect("report");
    reader.abort();
    beating.abort();
    assert!(report.succeeded, "{}", report.reason);
    let charlie = |round: usize| -> Vec<(Phase, String)> {
        report.rounds[round]
            .outcome
            .dropouts
            .iter()
            .filter(|d| d.id == "charlie")
            .map(|d| (d.phase, d.reason.clone()))
            .collect()
    };
    // charlie is waited for until its first deadline passes (in the round it joined, or in a
    // failed attempt), and never again: the last round closes each phase without it.
    let missed = (0..3)
        .flat_map(charlie)
        .filter(|(_, reason)| reason.contains("missed the 3 s deadline"))
        .count();
    assert!(missed <= 1, "{:?}", report.rounds);
    let last = charlie(2);
    assert_eq!(
        last.iter().map(|(phase, _)| *phase).collect::<Vec<_>>(),
        [Phase::Train, Phase::Evaluate],
        "{last:?}"
    );
    assert!(
        last.iter()
            .all(|(_, reason)| reason.starts_with("not waited for")),
        "{last:?}"
    );
    assert_eq!(report.rounds[2].outcome.contributors, HONEST);
}

/// Connects with `tls`, sends Hello and waits for the first answer: `Ok` only if the coordinator
/// accepted the session, else the error with its causes (where the TLS alert is named).
async fn session_with(coordinator: &Coordinator, tls: ClientTlsConfig) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(url(coordinator))
        .expect("url")
        .tls_config(tls)
        .expect("tls");
    let session = async {
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        let (_outbox, mut inbound) = say_hello(channel).await.map_err(|s| error_chain(&s))?;
        inbound
            .message()
            .await
            .map(|_| ())
            .map_err(|s| error_chain(&s))
    };
    // The server ends a handshake it refuses within seconds; a client left waiting is a failure
    // to report, not a test to hang.
    tokio::time::timeout(std::time::Duration::from_secs(60), session)
        .await
        .unwrap_or_else(|_| Err("no answer from the coordinator within 60 s".into()))
}

/// `error` and its causes, outermost first.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks that `refused` (an error chain from [`session_with`]) is the connection being torn
/// down, not an answer from the coordinator. With TLS 1.3 the client finishes its side of the
/// handshake before the server has checked the client's certificate, so the refusal arrives
/// either as an error on the connection (the alert read) or as the connection closing under the
/// first request (the alert lost with it): both are the TLS layer's refusal. That the coordinator
/// admitted no one is [`assert_no_session`]'s to check.
fn assert_torn_down(refused: &str) {
    assert!(
        refused.contains("connection error") || refused.contains("connection closed"),
        "expected the TLS layer to tear the connection down: {refused}"
    );
}

/// Checks that no participant has ever had a session: the coordinator saw no Hello from anyone.
fn assert_no_session(coordinator: &Coordinator) {
    let participants = coordinator.monitor().participants();
    assert!(
        participants
            .iter()
            .all(|p| !p.connected && p.last_seen.is_none() && p.client_version.is_none()),
        "{participants:?}"
    );
}

/// Waits until the coordinator has counted `n` refused TLS handshakes
/// (`cairn_tls_handshakes_refused_total`): the server may finish counting after the client has
/// already seen the connection go.
async fn refused_handshakes(coordinator: &Coordinator, n: u64) {
    let counted = || coordinator.monitor().metrics.tls_refused.get();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while counted() < n {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{} refused handshakes counted, expected {n}",
        counted()
    );
}

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_cannot_connect() {
    let federation = Federation::provision(&HONEST);
    let coordinator = federation.start(digits_job(&HONEST, 1, 2)).await;
    let ca = read(federation.kit_dir("alpha").join("ca.pem"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let refused = session_with(&coordinator, tls)
        .await
        .expect_err("a client without a certificate got a session");
    // Refused in the TLS handshake (the alert may or may not reach the client before the
    // connection is gone), and the coordinator admitted no one.
    assert_torn_down(&refused);
    assert_no_session(&coordinator);
    refused_handshakes(&coordinator, 1).await;
    honest_job_completes(&federation, coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_cannot_connect() {
    let federation = Federation::provision(&HONEST);
    let other = Federation::provision(&["alpha"]);
    let coordinator = federation.start(digits_job(&HONEST, 1, 2)).await;
    // alpha's certificate from a foreign CA, trusting the real server's CA so that only the
    // client certificate is wrong.
    let identity = tonic::transport::Identity::from_pem(
        read(other.kit_dir("alpha").join("cert.pem")),
        read(other.kit_dir("alpha").join("key.pem")),
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(
            federation.kit_dir("alpha").join("ca.pem"),
        )))
        .identity(identity)
        .domain_name("localhost");
    let refused = session_with(&coordinator, tls)
        .await
        .expect_err("a certificate from another CA got a session");
    assert_torn_down(&refused);
    assert_no_session(&coordinator);
    refused_handshakes(&coordinator, 1).await;
    // And a participant that trusts another CA refuses the coordinator's certificate.
    let mut wrong_trust = ClientOptions::new(
        url(&coordinator),
        Kit::load(&other.kit_dir("alpha")).expect("kit"),
        "x",
    );
    wrong_trust.server_name = Some("localhost".into());
    let err = client::connect(&wrong_trust)
        .await
        .map(|_| ())
        .map_err(|e| error_chain(&e))
        .expect_err("server certificate not trusted");
    assert!(
        err.contains("cannot connect") && err.contains("invalid peer certificate"),
        "{err}"
    );
    honest_job_completes(&federation, coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_client_and_a_plaintext_client_are_refused_in_the_handshake() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let federation = Federation::provision(&HONEST);
    let coordinator = federation.start(digits_job(&HONEST, 1, 2)).await;
    let kit = federation.kit_dir("alpha");
    // A member of the federation with a valid certificate, offering only TLS 1.2.
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(kit.join("ca.pem")).expect("ca.pem") {
        roots.add(ca.expect("ca")).expect("root");
    }
    let chain = CertificateDer::pem_file_iter(kit.join("cert.pem"))
        .expect("cert.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_file(kit.join("key.pem")).expect("key.pem");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    let tcp = tokio::net::TcpStream::connect(coordinator.local_addr())
        .await
        .expect("connect");
    let refused = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect_err("a TLS 1.2 handshake succeeded");
    assert!(
        refused.to_string().contains("ProtocolVersion"),
        "expected a protocol_version alert: {refused}"
    );
    refused_handshakes(&coordinator, 1).await;
    // HTTP/2 in plaintext: the connection is closed without an answer.
    let mut tcp = tokio::net::TcpStream::connect(coordinator.local_addr())
        .await
        .expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(
        !answer.windows(4).any(|w| w == b"HTTP"),
        "plaintext got an HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );
    refused_handshakes(&coordinator, 2).await;
    assert_no_session(&coordinator);
    honest_job_completes(&federation, coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_and_a_session_without_hello_are_refused() {
    let federation = Federation::provision(&HONEST);
    let coordinator = federation.start(digits_job(&HONEST, 1, 2)).await;
    let options = federation.client(&coordinator, "alpha");
    for (first, expected) in [
        (
            Body::Hello(Hello {
                protocol_version: 99,
                client_version: "future".into(),
                resume: None,
            }),
            format!(
                "protocol version 99 is not supported; this coordinator speaks version {}",
                cairn_proto::PROTOCOL_VERSION
            ),
        ),
        (
            Body::Heartbeat(cairn_proto::v1::Heartbeat { sent_at_unix_ms: 0 }),
            "the first message of a session must be Hello".to_string(),
        ),
    ] {
        let channel = client::connect(&options).await.expect("connect");
        let (outbox, receiver) = mpsc::channel(4);
        outbox
            .send(ParticipantMessage { body: Some(first) })
            .await
            .expect("queue");
        let mut inbound = FederationClient::new(channel)
            .session(ReceiverStream::new(receiver))
            .await
            .expect("rpc")
            .into_inner();
        let status = final_status(&mut inbound).await;
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&expected),
            "{:?} does not contain {expected:?}",
            status.message()
        );
    }
    honest_job_completes(&federation, coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_secure_aggregation_messages_are_refused_by_name() {
    let ids = ["alpha", "bravo", "mallory"];
    let federation = Federation::provision(&ids);
    let coordinator = federation.start(digits_job(&ids, 1, 2)).await;
    let own_certificate = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(
            federation.kit_dir("mallory").join("cert.pem"),
        )
        .expect("mallory's certificate")
        .to_vec()
    };
    let short_key = cairn_proto::v1::Advertisement {
        round: 1,
        attempt: 1,
        index: 0,
        channel_public: vec![1; 31],
        mask_public: vec![2; 32],
        signature: vec![3; 70],
        certificate: own_certificate,
        nonce_commitment: vec![4; 32],
    };
    let borrowed_certificate = cairn_proto::v1::Advertisement {
        channel_public: vec![1; 32],
        certificate: {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_file(
                federation.kit_dir("alpha").join("cert.pem"),
            )
            .expect("alpha's certificate")
            .to_vec()
        },
        ..short_key.clone()
    };
    let masked = cairn_proto::v1::MaskedInputHeader {
        round: 1,
        attempt: 1,
        // Neither an update's length nor an evaluation's (three values for loss and accuracy).
        transfer: Some(split(1, &cairn_proto::transfer::masked_input_layout(7), &[0.0; 7]).0),
    };
    let reveal = cairn_proto::v1::Reveal {
        round: 1,
        attempt: 1,
        self_mask_shares: vec![cairn_proto::v1::RevealedShare {
            owner: 1,
            share: vec![0; 5],
        }],
        mask_key_shares: vec![],
    };
    let cases = [
        (
            Body::Advertisement(short_key),
            "channel_public has 31 bytes, expected 32",
        ),
        (
            Body::Advertisement(borrowed_certificate),
            "the advertised certificate is not the one this session authenticated with",
        ),
        (
            Body::MaskedInput(masked),
            "masked input must be one tensor \"masked_input\" of",
        ),
        (
            Body::Reveal(reveal),
            "revealed self-mask share of participant 1",
        ),
    ];
    for (body, expected) in cases {
        let (outbox, mut inbound) = raw_session(&federation, &coordinator, "mallory")
            .await
            .expect("session");
        outbox
            .send(ParticipantMessage { body: Some(body) })
            .await
            .expect("send");
        let status = final_status(&mut inbound).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let clients = federation.clients(&coordinator, &HONEST);
    for result in run_many(clients).await {
        result.expect("honest participant finishes");
    }
    let report = cairn_tests::finish(coordinator).await.expect("report");
    assert!(report.succeeded, "{}", report.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_keeps_sending_what_the_protocol_does_not_allow_is_dropped() {
    // Stale survivor signatures, well formed but for no round in progress: each is ignored, the
    // first few logged; at the bound the session is ended, and the job goes on without it.
    let (federation, coordinator, outbox, mut inbound) = mallory_in_a_job().await;
    let stale = cairn_proto::v1::SurvivorSignature {
        round: 7,
        attempt: 7,
        index: 2,
        signature: vec![1; 70],
    };
    for _ in 0..40 {
        // The session may already be ended when the last ones are sent.
        let body = Some(Body::SurvivorSignature(stale.clone()));
        if outbox.send(ParticipantMessage { body }).await.is_err() {
            break;
        }
    }
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("32 messages this round that the protocol does not allow"),
        "{}",
        status.message()
    );
    honest_job_completes(&federation, coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_answered_with_resource_exhausted() {
    let (federation, coordinator, outbox, mut inbound) = mallory_in_a_job().await;
    // A chunk of 5 MiB, past the 4 MiB a message may have.
    let chunk = cairn_proto::v1::Chunk {
        round: 1,
        index: 0,
        data: vec![0u8; 5 << 20].into(),
    };
    outbox
        .send(ParticipantMessage {
            body: Some(Body::Chunk(chunk)),
        })
        .await
        .expect("queue the chunk");
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("message too large")
            && status
                .message()
                .contains(&cairn_proto::MAX_MESSAGE_BYTES.to_string()),
        "{status:?}"
    );
    honest_job_completes(&federation, coordinator).await;
}
