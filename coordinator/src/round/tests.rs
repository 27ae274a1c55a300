//! Unit tests of the round machine, driven by hand: no sockets, no clock.

use super::*;
use crate::strategy::ServerOptimizer;

fn fedavg() -> ServerOptimizer {
    ServerOptimizer::new(&Default::default(), 2)
}

fn settings(min: usize, rounds: u64) -> RoundSettings {
    RoundSettings {
        rounds,
        min_participants: min,
        fraction: 1.0,
        phase_deadline: Duration::from_secs(60),
        max_round_attempts: 2,
        seed: 7,
        metrics: vec![Metric::Loss, Metric::Accuracy],
        secure: None,
        max_weight: 10_000,
        clip_norm: None,
    }
}

fn machine(min: usize, rounds: u64) -> RoundMachine {
    RoundMachine::new(settings(min, rounds), fedavg(), vec![0.0; 2], 1)
}

fn connect(m: &mut RoundMachine, ids: &[&str]) -> Vec<Command> {
    ids.iter()
        .flat_map(|id| {
            m.handle(Event::Connected {
                id: id.to_string(),
                resume: None,
            })
        })
        .collect()
}

/// A plaintext update as its session hands it over: the header, then one piece per value.
fn update(id: &str, round: u64, delta: [f32; 2], weight: u64) -> Vec<Event> {
    let weighted: Vec<f32> = delta.iter().map(|d| d * weight as f32).collect();
    update_pieces(id, round, &weighted, weight, weighted.len())
}

/// The events of an update of `weighted` values, cut after the first `sent` of them.
fn update_pieces(id: &str, round: u64, weighted: &[f32], weight: u64, sent: usize) -> Vec<Event> {
    let header = Event::UpdateStarted {
        id: id.into(),
        round,
        weight,
        weighted_train_loss: weight as f64,
        sha256: vec![0; 32],
        first_chunk: 0,
    };
    let pieces = weighted[..sent]
        .iter()
        .enumerate()
        .map(|(offset, &value)| Event::UpdatePiece {
            id: id.into(),
            round,
            piece: Piece {
                offset,
                values: vec![value],
                last: offset + 1 == weighted.len(),
            },
        });
    std::iter::once(header).chain(pieces).collect()
}

/// Feeds events in order and returns every command they gave.
fn feed(m: &mut RoundMachine, events: Vec<Event>) -> Vec<Command> {
    events.into_iter().flat_map(|e| m.handle(e)).collect()
}

/// An evaluation of 10 examples with the given accuracy and loss `1 - accuracy`.
fn evaluation(id: &str, round: u64, accuracy: f64) -> Event {
    let mut totals = Totals::new(&[Metric::Loss, Metric::Accuracy]);
    totals.n_examples = 10;
    totals.metrics[0].1[0] = 10.0 * (1.0 - accuracy);
    totals.metrics[1].1[0] = 10.0 * accuracy;
    Event::EvaluationReceived {
        id: id.into(),
        round,
        totals,
    }
}

fn selected(commands: &[Command]) -> Vec<ParticipantId> {
    commands
        .iter()
        .find_map(|c| match c {
            Command::SendTrain { to, .. } => Some(to.clone()),
            _ => None,
        })
        .expect("a SendTrain command")
}

/// Whether `commands` send the new model out for evaluation: training is over.
fn asks_to_evaluate(commands: &[Command]) -> bool {
    commands
        .iter()
        .any(|c| matches!(c, Command::SendEvaluate { .. }))
}

fn committed(commands: &[Command]) -> Option<(RoundOutcome, Vec<f32>)> {
    commands.iter().find_map(|c| match c {
        Command::Commit { outcome, model, .. } => Some((outcome.clone(), model.as_ref().clone())),
        _ => None,
    })
}

#[test]
fn waits_for_enough_participants_then_runs_a_full_round() {
    let mut m = machine(2, 1);
    assert!(
        connect(&mut m, &["a"]).is_empty(),
        "one participant must not start a round"
    );
    let commands = connect(&mut m, &["b"]);
    assert_eq!(selected(&commands), vec!["a", "b"]);
    assert!(commands.iter().any(|c| matches!(
        c,
        Command::StartDeadline {
            phase: Phase::Train,
            ..
        }
    )));
    assert_eq!(m.phase(), Some(Phase::Train));

    assert!(feed(&mut m, update("a", 1, [1.0, 1.0], 1)).is_empty());
    let commands = feed(&mut m, update("b", 1, [3.0, -1.0], 3));
    let Some(Command::SendEvaluate { model, to, .. }) = commands.first() else {
        panic!("{commands:?}")
    };
    assert_eq!(model.as_ref(), &vec![2.5, -0.5]);
    assert_eq!(to, &vec!["a".to_string(), "b".to_string()]);

    m.handle(evaluation("a", 1, 0.5));
    let commands = m.handle(evaluation("b", 1, 0.9));
    let (outcome, model) = committed(&commands).expect("commit");
    assert_eq!(model, vec![2.5, -0.5]);
    assert_eq!(outcome.contributors, vec!["a", "b"]);
    assert_eq!(outcome.train_examples, 4);
    assert_eq!(outcome.eval_examples, 20);
    assert_eq!(
        outcome.eval_metrics.keys().collect::<Vec<_>>(),
        ["accuracy", "loss"]
    );
    assert!((outcome.eval_metrics["accuracy"] - 0.7).abs() < 1e-12);
    assert!((outcome.eval_metrics["loss"] - 0.3).abs() < 1e-12);
    assert!(commands.iter().any(|c| matches!(
        c,
        Command::Finish {
            succeeded: true,
            rounds_completed: 1,
            ..
        }
    )));
    assert!(m.is_finished());
}

/// Completes the running round with every selected participant answering, and returns the
/// commands of the last answer (the commit and the next round's start).
fn complete_round(
    m: &mut RoundMachine,
    selected: &[ParticipantId],
    evaluators: &[&str],
) -> Vec<Command> {
    let round = m.round();
    for id in selected {
        feed(m, update(id, round, [0.0, 0.0], 1));
    }
    let mut last = Vec::new();
    for id in evaluators {
        last = m.handle(evaluation(id, round, 0.5));
    }
    last
}

#[test]
fn a_participant_missing_the_deadline_is_dropped_and_the_round_completes() {
    let mut m = machine(2, 3);
    let first = selected(&connect(&mut m, &["a", "b"]));
    connect(&mut m, &["c"]);
    // c joined after round 1 started; it evaluates round 1's model and is selected in round 2.
    let commands = complete_round(&mut m, &first, &["a", "b", "c"]);
    assert_eq!(selected(&commands), vec!["a", "b", "c"]);
    feed(&mut m, update("a", 2, [1.0, 1.0], 1));
    feed(&mut m, update("b", 2, [1.0, 1.0], 1));
    let commands = m.handle(Event::DeadlineExpired {
        round: 2,
        attempt: 1,
        phase: Phase::Train,
    });
    assert!(asks_to_evaluate(&commands), "{commands:?}");
    // c is still connected, so it is asked to evaluate; it misses that deadline too.
    let commands = m.handle(Event::DeadlineExpired {
        round: 2,
        attempt: 1,
        phase: Phase::Evaluate,
    });
    let (outcome, _) = committed(&commands).expect("commit after the evaluation deadline");
    assert_eq!(outcome.contributors, vec!["a", "b"]);
    let phases: Vec<(String, Phase)> = outcome
        .dropouts
        .iter()
        .map(|d| (d.id.clone(), d.phase))
        .collect();
    assert_eq!(
        phases,
        vec![
            ("c".into(), Phase::Train),
            ("a".into(), Phase::Evaluate),
            ("b".into(), Phase::Evaluate),
            ("c".into(), Phase::Evaluate)
        ]
    );
    assert!(outcome.dropouts[0].reason.contains("60 s deadline"));
    assert!(outcome.eval_metrics.is_empty(), "nobody evaluated");
    // The next round starts right away with everyone still connected.
    assert_eq!(selected(&commands), vec!["a", "b", "c"]);
    assert_eq!(m.round(), 3);
}

#[test]
fn a_participant_that_missed_a_deadline_gets_only_a_grace_until_it_sends_something() {
    let mut m = machine(2, 3);
    let first = selected(&connect(&mut m, &["a", "b"]));
    // c connects mid-round, is asked to evaluate and stays silent: the round waits for it once.
    connect(&mut m, &["c"]);
    complete_round(&mut m, &first, &["a", "b"]);
    let commands = m.handle(Event::DeadlineExpired {
        round: 1,
        attempt: 1,
        phase: Phase::Evaluate,
    });
    let (outcome, _) = committed(&commands).expect("round 1 commits at its deadline");
    assert!(
        outcome.dropouts[0]
            .reason
            .contains("until it answers, later phases wait for it only briefly"),
        "{:?}",
        outcome.dropouts
    );
    // Round 2 selects c again, but once a and b have answered in a phase, c only gets its
    // grace (as long again as the phase took), not the deadline.
    assert_eq!(selected(&commands), vec!["a", "b", "c"]);
    feed(&mut m, update("a", 2, [1.0, 1.0], 1));
    let commands = feed(&mut m, update("b", 2, [1.0, 1.0], 1));
    let grace = |phase| Command::StartGrace {
        round: 2,
        attempt: 1,
        phase,
    };
    assert_eq!(commands, [grace(Phase::Train)]);
    let commands = m.handle(Event::GraceExpired {
        round: 2,
        attempt: 1,
        phase: Phase::Train,
    });
    assert!(
        asks_to_evaluate(&commands),
        "training waited for c past its grace: {commands:?}"
    );
    m.handle(evaluation("a", 2, 0.5));
    assert_eq!(m.handle(evaluation("b", 2, 0.5)), [grace(Phase::Evaluate)]);
    let commands = m.handle(Event::GraceExpired {
        round: 2,
        attempt: 1,
        phase: Phase::Evaluate,
    });
    let (outcome, _) = committed(&commands).expect("evaluation did not wait for c");
    assert_eq!(outcome.contributors, vec!["a", "b"]);
    let dropped: Vec<(&str, Phase)> = outcome
        .dropouts
        .iter()
        .map(|d| (d.id.as_str(), d.phase))
        .collect();
    assert_eq!(dropped, [("c", Phase::Train), ("c", Phase::Evaluate)]);
    assert!(outcome.dropouts[0].reason.starts_with("not waited for"));
    // c's late answer to round 1 (refused as too late) shows it is alive: round 3 waits for it.
    let late = m.handle(evaluation("c", 1, 0.5));
    assert!(matches!(late[..], [Command::Ignored { .. }]), "{late:?}");
    feed(&mut m, update("a", 3, [1.0, 1.0], 1));
    let commands = feed(&mut m, update("b", 3, [1.0, 1.0], 1));
    assert!(
        commands.is_empty(),
        "training did not wait for c: {commands:?}"
    );
    let commands = feed(&mut m, update("c", 3, [1.0, 1.0], 1));
    assert!(asks_to_evaluate(&commands), "{commands:?}");
}

#[test]
fn a_phase_waits_for_unproven_participants_when_too_few_others_answered() {
    let mut m = machine(2, 2);
    let first = selected(&connect(&mut m, &["a", "b"]));
    feed(&mut m, update("a", 1, [1.0, 1.0], 1));
    // b misses the training deadline: the round has too few updates and is tried again.
    let commands = m.handle(Event::DeadlineExpired {
        round: 1,
        attempt: 1,
        phase: Phase::Train,
    });
    assert_eq!(first, selected(&commands));
    // The second attempt needs b: it is waited for although it missed the last deadline.
    let commands = feed(&mut m, update("a", 1, [1.0, 1.0], 1));
    assert!(commands.is_empty(), "{commands:?}");
    assert_eq!(m.phase(), Some(Phase::Train));
}

#[test]
fn too_few_updates_fail_the_round_which_is_retried_with_the_same_model() {
    let mut m = machine(2, 1);
    connect(&mut m, &["a", "b"]);
    feed(&mut m, update("a", 1, [5.0, 5.0], 1));
    let commands = m.handle(Event::Disconnected {
        id: "b".into(),
        reason: "killed".into(),
    });
    assert!(
        commands.is_empty(),
        "b may resume until the deadline: {commands:?}"
    );
    let commands = m.handle(Event::DeadlineExpired {
        round: 1,
        attempt: 1,
        phase: Phase::Train,
    });
    assert!(
        matches!(&commands[0], Command::RoundFailed { round: 1, attempt: 1, reason } if reason.contains("only 1 of 2")),
        "{commands:?}"
    );
    assert_eq!(
        m.global().as_ref(),
        &vec![0.0, 0.0],
        "a failed round must not change the model"
    );
    assert_eq!(m.phase(), None, "waits for participants again");
    // b comes back: attempt 2 starts; a stale deadline from attempt 1 changes nothing.
    let commands = connect(&mut m, &["b"]);
    assert_eq!(selected(&commands), vec!["a", "b"]);
    assert!(
        m.handle(Event::DeadlineExpired {
            round: 1,
            attempt: 1,
            phase: Phase::Train
        })
        .is_empty()
    );
    assert_eq!(m.phase(), Some(Phase::Train));
}

#[test]
fn the_job_gives_up_after_its_attempts_and_never_hangs() {
    let mut m = machine(2, 3);
    connect(&mut m, &["a", "b"]);
    m.handle(Event::DeadlineExpired {
        round: 1,
        attempt: 1,
        phase: Phase::Train,
    });
    let commands = m.handle(Event::DeadlineExpired {
        round: 1,
        attempt: 2,
        phase: Phase::Train,
    });
    assert!(
        commands.iter().any(|c| matches!(c, Command::Finish { succeeded: false, rounds_completed: 0, reason } if reason.contains("failed 2 times"))),
        "{commands:?}"
    );
    assert!(m.is_finished());
}

#[test]
fn an_update_claiming_more_examples_than_the_cap_counts_as_the_cap() {
    let mut m = RoundMachine::new(
        RoundSettings {
            max_weight: 100,
            ..settings(2, 1)
        },
        fedavg(),
        vec![0.0; 2],
        1,
    );
    connect(&mut m, &["a", "b"]);
    feed(&mut m, update("a", 1, [1.0, 2.0], 1_000_000));
    feed(&mut m, update("b", 1, [-1.0, -2.0], 100));
    let commands = m.handle(evaluation("a", 1, 0.5));
    let commands = [commands, m.handle(evaluation("b", 1, 0.5))].concat();
    let (outcome, model) = committed(&commands).expect("committed");
    assert_eq!(outcome.train_examples, 200, "a's weight is capped at 100");
    assert_eq!(
        model,
        vec![0.0, 0.0],
        "a million claimed examples outweigh nobody"
    );
}

#[test]
fn an_update_longer_than_the_clipping_norm_counts_at_that_norm() {
    let mut m = RoundMachine::new(
        RoundSettings {
            clip_norm: Some(5.0),
            ..settings(2, 1)
        },
        fedavg(),
        vec![0.0; 2],
        1,
    );
    connect(&mut m, &["a", "b"]);
    // a pulls with norm 500, b with norm 0.5 (within the bound, unchanged).
    feed(&mut m, update("a", 1, [300.0, 400.0], 10));
    feed(&mut m, update("b", 1, [0.3, -0.4], 10));
    let commands = m.handle(evaluation("a", 1, 0.5));
    let commands = [commands, m.handle(evaluation("b", 1, 0.5))].concat();
    let (_, model) = committed(&commands).expect("committed");
    // The average of [3, 4] (a clipped to norm 5) and [0.3, -0.4].
    for (got, want) in model.iter().zip([1.65, 1.8]) {
        assert!((got - want).abs() < 1e-5, "{model:?}");
    }
}

#[test]
fn updates_too_large_to_be_trained_are_refused_and_the_round_commits_nothing() {
    let mut m = RoundMachine::new(settings(2, 1), fedavg(), vec![3.0e38, 0.0], 1);
    connect(&mut m, &["a", "b"]);
    let commands = feed(&mut m, update("a", 1, [3.0e38, 0.0], 1));
    assert!(
        commands.iter().any(|c| matches!(c, Command::Ignored { reason, .. }
            if reason.contains("weighted value 300000000000000000000000000000000000000 at position 0 is outside +-2^50"))),
        "{commands:?}"
    );
    let commands = feed(&mut m, update("b", 1, [3.0e38, 0.0], 1));
    assert!(committed(&commands).is_none());
    assert!(
        commands.iter().any(
            |c| matches!(c, Command::RoundFailed { round: 1, reason, .. }
            if reason.contains("only 0 of 2 selected participants contributed"))
        ),
        "{commands:?}"
    );
    assert_eq!(
        m.global().as_ref(),
        &vec![3.0e38, 0.0],
        "the model is unchanged"
    );
}

#[test]
fn late_duplicate_and_unselected_updates_are_ignored() {
    let mut m = RoundMachine::new(
        RoundSettings {
            fraction: 0.5,
            ..settings(1, 2)
        },
        fedavg(),
        vec![0.0; 2],
        1,
    );
    let commands = connect(&mut m, &["a", "b"]);
    let chosen = selected(&commands);
    assert_eq!(chosen.len(), 1);
    let other = if chosen[0] == "a" { "b" } else { "a" };
    let ignored = feed(&mut m, update(other, 1, [1.0, 1.0], 1));
    assert!(
        matches!(&ignored[0], Command::Ignored { reason, .. } if reason.contains("not selected")),
        "{ignored:?}"
    );
    assert_eq!(
        ignored.len(),
        2,
        "the header and the first piece count; the later pieces are dropped quietly: {ignored:?}"
    );
    let ignored = feed(&mut m, update(&chosen[0], 0, [1.0, 1.0], 1));
    assert!(
        matches!(&ignored[0], Command::Ignored { reason, .. } if reason.contains("round 0")),
        "{ignored:?}"
    );
    feed(&mut m, update(&chosen[0], 1, [1.0, 1.0], 1));
    let ignored = feed(&mut m, update(&chosen[0], 1, [9.0, 9.0], 1));
    assert!(
        matches!(&ignored[0], Command::Ignored { reason, .. } if reason.contains("not asked") || reason.contains("outside")),
        "{ignored:?}"
    );
}

#[test]
fn an_update_cut_off_halfway_leaves_the_model_as_if_it_had_never_been_sent() {
    let model = |sent: usize| {
        let mut m = machine(2, 2);
        let first = selected(&connect(&mut m, &["a", "b"]));
        connect(&mut m, &["c"]);
        complete_round(&mut m, &first, &["a", "b", "c"]);
        feed(&mut m, update_pieces("a", 2, &[0.1, 1e-8], 1, 2));
        feed(&mut m, update_pieces("b", 2, &[1e-3, 2.5e-7], 1, 2));
        let mut commands = feed(
            &mut m,
            update_pieces("c", 2, &[12345.678, -9876.5], 1, sent),
        );
        commands.extend(m.handle(Event::Disconnected {
            id: "c".into(),
            reason: "connection lost".into(),
        }));
        commands.extend(m.handle(Event::DeadlineExpired {
            round: 2,
            attempt: 1,
            phase: Phase::Train,
        }));
        let Some(Command::SendEvaluate { model, .. }) = commands
            .iter()
            .find(|c| matches!(c, Command::SendEvaluate { .. }))
        else {
            panic!("{commands:?}")
        };
        model.as_ref().clone()
    };
    assert_eq!(model(1), model(0));
    assert_eq!(model(0), vec![0.0505, 1.3e-7]);
}

#[test]
fn an_update_of_the_wrong_size_drops_only_its_sender() {
    let mut m = machine(2, 2);
    let first = selected(&connect(&mut m, &["a", "b"]));
    connect(&mut m, &["c"]);
    complete_round(&mut m, &first, &["a", "b", "c"]);
    assert_eq!(m.round(), 2);
    let commands = feed(&mut m, update_pieces("a", 2, &[1.0; 3], 1, 3));
    assert!(
        commands.iter().any(|c| matches!(c, Command::Ignored { reason, .. } if reason.contains("3 values, job expects 2"))),
        "{commands:?}"
    );
    feed(&mut m, update("b", 2, [2.0, 2.0], 1));
    let commands = feed(&mut m, update("c", 2, [4.0, 4.0], 1));
    assert!(
        matches!(&commands[0], Command::SendEvaluate { model, .. } if model.as_ref() == &vec![3.0, 3.0]),
        "{commands:?}"
    );
}

#[test]
fn selection_takes_the_fraction_but_at_least_the_minimum() {
    let mut m = RoundMachine::new(
        RoundSettings {
            fraction: 0.1,
            ..settings(3, 1)
        },
        fedavg(),
        vec![0.0; 2],
        1,
    );
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let commands = connect(&mut m, &refs);
    assert_eq!(selected(&commands).len(), 3);
}

/// Transfers of a plaintext round that resume after a participant's session broke.
mod resume {
    use super::*;

    /// Values in a whole chunk: the pieces of a real transfer.
    const CHUNK: usize = cairn_proto::MAX_CHUNK_BYTES / 4;
    /// A model of two whole chunks and a bit.
    const N: usize = 2 * CHUNK + 3;

    fn machine() -> RoundMachine {
        RoundMachine::new(
            settings(2, 1),
            ServerOptimizer::new(&Default::default(), N),
            vec![0.0; N],
            1,
        )
    }

    fn weighted(id: &str) -> Vec<f32> {
        let scale = if id == "a" { 1e-3 } else { -7.5 };
        (0..N).map(|i| (i as f32 * 0.37).sin() * scale).collect()
    }

    fn sha(id: &str) -> Vec<u8> {
        vec![id.as_bytes()[0]; 32]
    }

    /// `id`'s update as its session hands it over: the header (resumed at `first_chunk` when
    /// not 0), then one piece per chunk from there up to chunk `until`.
    fn chunks(id: &str, first_chunk: usize, until: usize) -> Vec<Event> {
        let values = weighted(id);
        let header = Event::UpdateStarted {
            id: id.into(),
            round: 1,
            weight: 1,
            weighted_train_loss: 0.5,
            sha256: sha(id),
            first_chunk: first_chunk as u32,
        };
        let pieces = (first_chunk..until).map(|index| {
            let start = index * CHUNK;
            let end = N.min(start + CHUNK);
            Event::UpdatePiece {
                id: id.into(),
                round: 1,
                piece: Piece {
                    offset: start,
                    values: values[start..end].to_vec(),
                    last: end == N,
                },
            }
        });
        std::iter::once(header).chain(pieces).collect()
    }

    fn disconnect(id: &str) -> Event {
        Event::Disconnected {
            id: id.into(),
            reason: "connection lost".into(),
        }
    }

    fn reconnect(id: &str, transfer: Option<ResumedTransfer>) -> Event {
        Event::Connected {
            id: id.into(),
            resume: transfer.map(|transfer| Resume {
                round: 1,
                sha256: sha(id),
                transfer,
            }),
        }
    }

    fn new_model(commands: &[Command]) -> Vec<f32> {
        commands
            .iter()
            .find_map(|c| match c {
                Command::SendEvaluate { model, .. } => Some(model.as_ref().clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no new model in {commands:?}"))
    }

    fn started() -> RoundMachine {
        let mut m = machine();
        assert_eq!(selected(&connect(&mut m, &["a", "b"])), vec!["a", "b"]);
        m
    }

    #[test]
    fn an_update_resumed_after_its_session_broke_counts_once_and_whole() {
        let whole = {
            let mut m = started();
            feed(&mut m, chunks("b", 0, 3));
            new_model(&feed(&mut m, chunks("a", 0, 3)))
        };
        let mut m = started();
        feed(&mut m, chunks("b", 0, 3));
        assert!(feed(&mut m, chunks("a", 0, 1)).is_empty());
        assert!(
            m.handle(disconnect("a")).is_empty(),
            "a may resume until the deadline"
        );
        // Chunk 1 was on its way through the broken session: it is left out, not counted.
        let late = chunks("a", 0, 2).pop().expect("a piece");
        assert!(
            m.handle(late)
                .iter()
                .all(|c| matches!(c, Command::Ignored { .. }))
        );
        let commands = m.handle(reconnect("a", Some(ResumedTransfer::Update)));
        assert_eq!(
            commands,
            vec![Command::ResumeUpdate {
                round: 1,
                to: "a".into(),
                sha256: sha("a"),
                next_chunk: 1
            }]
        );
        let resumed = feed(&mut m, chunks("a", 1, 3));
        assert_eq!(new_model(&resumed), whole);
    }

    #[test]
    fn a_resumed_update_must_be_the_one_that_started_and_go_on_where_the_sum_stopped() {
        let mut m = started();
        feed(&mut m, chunks("a", 0, 1));
        m.handle(disconnect("a"));
        m.handle(reconnect("a", Some(ResumedTransfer::Update)));
        // Resumed one chunk too far: the sum would miss a chunk.
        let commands = feed(&mut m, chunks("a", 2, 3));
        assert!(
            commands
                .iter()
                .any(|c| matches!(c, Command::Ignored { reason, .. }
                if reason.contains("resumes at chunk 2, expected chunk 1"))),
            "{commands:?}"
        );
        let commands = feed(&mut m, chunks("b", 0, 3));
        assert!(
            matches!(&commands[0], Command::RoundFailed { reason, .. } if reason.contains("only 1 of 2")),
            "{commands:?}"
        );

        // Asking to resume another update than the one that started drops it at once.
        let mut m = started();
        feed(&mut m, chunks("a", 0, 1));
        m.handle(disconnect("a"));
        let commands = m.handle(Event::Connected {
            id: "a".into(),
            resume: Some(Resume {
                round: 1,
                sha256: sha("z"),
                transfer: ResumedTransfer::Update,
            }),
        });
        assert!(
            !commands
                .iter()
                .any(|c| matches!(c, Command::ResumeUpdate { .. }))
        );
        let commands = feed(&mut m, chunks("b", 0, 3));
        assert!(
            matches!(&commands[0], Command::RoundFailed { reason, .. } if reason.contains("only 1 of 2")),
            "{commands:?}"
        );
    }

    #[test]
    fn a_participant_back_without_its_transfer_is_dropped_and_one_not_back_misses_the_deadline() {
        let three = || {
            let mut m = RoundMachine::new(
                settings(3, 1),
                ServerOptimizer::new(&Default::default(), N),
                vec![0.0; N],
                1,
            );
            assert_eq!(selected(&connect(&mut m, &["a", "b", "c"])).len(), 3);
            feed(&mut m, chunks("a", 0, 3));
            feed(&mut m, chunks("c", 0, 3));
            assert!(m.handle(disconnect("b")).is_empty(), "b may resume");
            m
        };
        // b restarted: it holds nothing of the round, and the round stops waiting for it.
        let mut m = three();
        let commands = m.handle(reconnect("b", None));
        assert!(
            matches!(&commands[0], Command::RoundFailed { reason, .. } if reason.contains("only 2 of 3")),
            "{commands:?}"
        );
        // b never comes back: the deadline drops it.
        let mut m = three();
        let commands = m.handle(Event::DeadlineExpired {
            round: 1,
            attempt: 1,
            phase: Phase::Train,
        });
        assert!(
            matches!(&commands[0], Command::RoundFailed { reason, .. } if reason.contains("only 2 of 3")),
            "{commands:?}"
        );
    }

    #[test]
    fn a_participant_cut_off_while_the_model_arrived_is_sent_the_rest_then_its_whole_update() {
        let mut m = started();
        m.handle(disconnect("a"));
        let commands = m.handle(reconnect(
            "a",
            Some(ResumedTransfer::GlobalModel { next_chunk: 2 }),
        ));
        assert!(
            matches!(&commands[..], [Command::ResumeTrain { round: 1, to, first_chunk: 2, model }]
                if to == "a" && model.len() == N),
            "{commands:?}"
        );
        // Cut again after training, before any of its update arrived: it sends it all.
        m.handle(disconnect("a"));
        let commands = m.handle(reconnect("a", Some(ResumedTransfer::Update)));
        assert!(
            matches!(&commands[..], [Command::ResumeUpdate { next_chunk: 0, .. }]),
            "{commands:?}"
        );
        feed(&mut m, chunks("a", 0, 3));
        let commands = feed(&mut m, chunks("b", 0, 3));
        assert!(
            matches!(&commands[0], Command::SendEvaluate { .. }),
            "{commands:?}"
        );
    }
}

mod server_optimizer {
    //! Server optimisers in the round machine, and their state across a restart.

    use super::*;
    use crate::config::{JobSpec, ServerAlgorithm, ServerOptimizerSpec};
    use crate::model::TensorShape;
    use crate::store::{OptimizerState, RoundRecord, Store};

    fn spec(algorithm: ServerAlgorithm) -> ServerOptimizerSpec {
        ServerOptimizerSpec {
            algorithm,
            learning_rate: 0.05,
            ..ServerOptimizerSpec::default()
        }
    }

    /// Runs round `round` with a and b (connected already for a round after the first), whose
    /// deltas change from round to round; returns the committed model and optimiser state.
    fn one_round(m: &mut RoundMachine, round: u64) -> (Vec<f32>, Vec<f32>) {
        if round == m.round() && m.phase().is_none() {
            connect(m, &["a", "b"]);
        }
        let r = round as f32;
        feed(m, update("a", round, [0.3 * r, -0.2], 3));
        feed(m, update("b", round, [-0.1, 0.5 / r], 1));
        m.handle(evaluation("a", round, 0.5));
        let commands = m.handle(evaluation("b", round, 0.5));
        commands
            .iter()
            .find_map(|c| match c {
                Command::Commit {
                    model,
                    optimizer_state,
                    ..
                } => Some((model.to_vec(), optimizer_state.to_vec())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("round {round} commits: {commands:?}"))
    }

    fn machine_with(optimizer: ServerOptimizer, global: Vec<f32>, first: u64) -> RoundMachine {
        RoundMachine::new(settings(2, 4), optimizer, global, first)
    }

    #[test]
    fn each_optimiser_steps_along_the_average_delta() {
        // Reference values from an independent implementation of Reddi et al. 2021's
        // Algorithm 2 (numpy, f32 state), for average deltas 1, -0.5, 0.25 on one value.
        let cases = [
            (ServerAlgorithm::FedAvg, 1.0, [1.0, 0.5, 0.75]),
            (ServerAlgorithm::FedAvgM, 1.0, [1.0, 1.4, 2.01]),
            (
                ServerAlgorithm::FedAdagrad,
                0.1,
                [0.009990006, 0.013564516, 0.018884387],
            ),
            (
                ServerAlgorithm::FedAdam,
                0.1,
                [0.09900505, 0.134_605, 0.18783975],
            ),
            (
                ServerAlgorithm::FedYogi,
                0.1,
                [0.099005, 0.13446352, 0.18724595],
            ),
        ];
        for (algorithm, learning_rate, expected) in cases {
            let spec = ServerOptimizerSpec {
                algorithm,
                learning_rate,
                ..ServerOptimizerSpec::default()
            };
            let mut optimizer = ServerOptimizer::new(&spec, 1);
            let mut global = vec![0.0f32];
            for (delta, want) in [1.0f32, -0.5, 0.25].into_iter().zip(expected) {
                let sum = crate::strategy::UpdateSum::from_totals(
                    vec![2.0 * f64::from(delta)],
                    2,
                    0.0,
                    1,
                )
                .unwrap();
                let (next, state) = optimizer.step(&global, &sum).unwrap();
                optimizer.adopt(state);
                global = next;
                assert!(
                    (global[0] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{}: {} vs {want}",
                    algorithm.name(),
                    global[0]
                );
            }
        }
    }

    #[test]
    fn a_resumed_optimiser_steps_exactly_as_one_that_never_stopped() {
        for algorithm in [
            ServerAlgorithm::FedAvgM,
            ServerAlgorithm::FedAdam,
            ServerAlgorithm::FedYogi,
        ] {
            let spec = spec(algorithm);
            let straight: Vec<_> = {
                let mut m = machine_with(ServerOptimizer::new(&spec, 2), vec![0.0; 2], 1);
                (1..=4).map(|round| one_round(&mut m, round)).collect()
            };

            // Rounds 1 and 2 committed to a state directory; the coordinator stops.
            let dir = tempfile::tempdir().unwrap();
            let job = JobSpec::parse(&format!(
                "name: t\nmodel: {{initial: /m.safetensors}}\nrounds: 4\nmin_participants: 2\n\
                 participants: [a, b]\nsecure_aggregation: {{enabled: false}}\n\
                 server_optimizer: {{algorithm: {}, learning_rate: 0.05}}\n",
                algorithm.name()
            ))
            .unwrap();
            let layout = [TensorShape::new("w", &[2])];
            let optimizer_layout = ServerOptimizer::state_layout(&spec, 2);
            let (store, _) = Store::open(dir.path(), &job, &layout, &optimizer_layout, 5).unwrap();
            let mut m = machine_with(ServerOptimizer::new(&spec, 2), vec![0.0; 2], 1);
            for round in 1..=2 {
                let (model, state) = one_round(&mut m, round);
                let record = RoundRecord {
                    outcome: RoundOutcome {
                        round,
                        attempt: 1,
                        selected: vec![],
                        contributors: vec![],
                        dropouts: vec![],
                        train_examples: 4,
                        train_loss: 1.0,
                        evaluators: 2,
                        eval_examples: 20,
                        eval_metrics: BTreeMap::new(),
                        epsilon: None,
                    },
                    duration_s: 0.0,
                    bytes_in: 0,
                    bytes_out: 0,
                    committed_at: String::new(),
                    checkpoint_sha256: String::new(),
                    optimizer_state_sha256: String::new(),
                    phase_durations: vec![],
                    previous_record_sha256: String::new(),
                    job_sha256: String::new(),
                    model_before_sha256: String::new(),
                    model_sha256: String::new(),
                };
                let state = OptimizerState {
                    layout: &optimizer_layout,
                    values: &state,
                };
                store.commit(&record, &layout, &model, state).unwrap();
            }
            drop((store, m));

            // A new coordinator resumes from the directory.
            let (_, resume) = Store::open(dir.path(), &job, &layout, &optimizer_layout, 5).unwrap();
            let global = resume.global.unwrap();
            let state = resume.optimizer_state.unwrap();
            let resumed = ServerOptimizer::resumed(&spec, 2, state).unwrap();
            let mut m = machine_with(resumed, global.clone(), 3);
            let after: Vec<_> = (3..=4).map(|round| one_round(&mut m, round)).collect();
            assert_eq!(after, straight[2..], "{}: bit for bit", algorithm.name());

            // Without its state, the same model goes elsewhere: the state is what was kept.
            let mut m = machine_with(ServerOptimizer::new(&spec, 2), global, 3);
            let (forgetful, _) = one_round(&mut m, 3);
            assert_ne!(forgetful, straight[2].0, "{}", algorithm.name());
        }
    }

    #[test]
    fn a_checkpointed_state_of_the_wrong_size_is_refused() {
        let spec = spec(ServerAlgorithm::FedAdam);
        let err = ServerOptimizer::resumed(&spec, 2, vec![0.0; 3]).unwrap_err();
        assert!(
            err.to_string()
                .contains("server optimiser state has 3 values, job expects 4"),
            "{err}"
        );
    }
}

mod secure {
    //! The secure-aggregation phases driven by hand with real participant machines (their
    //! advertisements carry real signatures and certificates, since the coordinator checks them;
    //! the participants' own checks are tested in `cairn-secagg` and end to end).

    use super::*;
    use crate::config::SecureAggregationSpec;
    use cairn_proto::metrics::{EvaluationEncoding, Totals};
    use cairn_secagg::protocol::{ParticipantMachine, Signer, Verifier};
    use cairn_secagg::quantize::UpdateEncoding;
    use std::collections::BTreeMap;

    /// A participant's identity: an ECDSA P-256 key and a self-signed certificate for it.
    struct Identity {
        key: rcgen::KeyPair,
        certificate: Vec<u8>,
    }

    impl Identity {
        fn new() -> Identity {
            let key = rcgen::KeyPair::generate().unwrap();
            let certificate = rcgen::CertificateParams::new(Vec::<String>::new())
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .der()
                .to_vec();
            Identity { key, certificate }
        }
    }

    impl Signer for Identity {
        fn sign(&self, message: &[u8]) -> Vec<u8> {
            rcgen::SigningKey::sign(&self.key, message).unwrap()
        }
    }

    /// Signatures of other participants are not checked by this test's participants.
    struct Unchecked;
    impl Signer for Unchecked {
        fn sign(&self, _: &[u8]) -> Vec<u8> {
            vec![0]
        }
    }
    impl Verifier for Unchecked {
        fn verify(&self, _: u32, _: &[u8], _: &[u8]) -> bool {
            true
        }
    }

    fn secure_machine() -> RoundMachine {
        let spec = SecureAggregationSpec::default();
        let mut settings = settings(3, 1);
        settings.secure = Some(SecureSettings {
            job: "job".into(),
            encoding: spec.encoding(4).unwrap(),
            spec,
            privacy: None,
        });
        RoundMachine::new(settings, fedavg(), vec![0.0; 2], 1)
    }

    #[test]
    fn a_round_that_would_pass_the_privacy_budget_is_not_started() {
        let spec = SecureAggregationSpec::default();
        let mechanism = cairn_secagg::privacy::DistributedDp::new(1.0, 2.0, 3, 2).unwrap();
        let mut privacy = PrivacySettings {
            mechanism,
            delta: 1e-5,
            epsilon_budget: 0.0,
        };
        // Room for two rounds and not three.
        privacy.epsilon_budget = (privacy.epsilon_after(2) + privacy.epsilon_after(3)) / 2.0;
        let machine_at = |first_round| {
            let mut settings = settings(3, 5);
            settings.secure = Some(SecureSettings {
                job: "job".into(),
                encoding: spec.encoding(4).unwrap(),
                spec: spec.clone(),
                privacy: Some(privacy),
            });
            RoundMachine::new(settings, fedavg(), vec![0.0; 2], first_round)
        };
        let mut second = machine_at(2);
        assert_eq!(second.finished_because(), None);
        // Round 2 starts once three participants are there.
        let commands = connect(&mut second, &["a", "b", "c"]);
        let Some(Command::SendTrain {
            secure: Some(setup),
            ..
        }) = commands.first()
        else {
            panic!("round 2 starts: {commands:?}");
        };
        assert_eq!(
            setup.privacy,
            Some(mechanism),
            "the noise travels with the setup"
        );
        let third = machine_at(3);
        let reason = third
            .finished_because()
            .expect("round 3 is past the budget");
        assert!(
            reason.starts_with("privacy budget spent: round 3 would take epsilon from"),
            "{reason}"
        );
        // A machine that reaches the budget between rounds ends the job, recorded as a success.
        let mut settings = settings(3, 5);
        settings.secure = Some(SecureSettings {
            job: "job".into(),
            encoding: spec.encoding(4).unwrap(),
            spec: spec.clone(),
            privacy: Some(PrivacySettings {
                epsilon_budget: privacy.epsilon_after(1) / 2.0,
                ..privacy
            }),
        });
        let mut none = RoundMachine::new(settings, fedavg(), vec![0.0; 2], 1);
        assert!(none.is_finished());
        assert!(connect(&mut none, &["a", "b", "c"]).is_empty());
    }

    fn deltas(id: &str) -> ([f32; 2], u64) {
        match id {
            "a" => ([1.0, 1.0], 1),
            "b" => ([3.0, -1.0], 3),
            "c" => ([-2.0, 0.5], 2),
            _ => ([0.5, 0.5], 4),
        }
    }

    fn secure(id: &str, attempt: u32, message: SecureMessage) -> Event {
        Event::Secure {
            id: id.into(),
            round: 1,
            attempt,
            message,
        }
    }

    /// A machine whose round 1 runs its second attempt with a, b, c and d, and that attempt's
    /// setup and protocol configuration. (The first attempt starts with the first three to
    /// connect; it times out, so the second starts with all four and fresh keys.)
    fn second_attempt() -> (
        RoundMachine,
        SecureSetup,
        cairn_secagg::protocol::RoundConfig,
    ) {
        let mut m = secure_machine();
        connect(&mut m, &["a", "b", "c", "d"]);
        let commands = m.handle(Event::DeadlineExpired {
            round: 1,
            attempt: 1,
            phase: Phase::AdvertiseKeys,
        });
        let Some(Command::SendTrain {
            secure: Some(setup),
            to,
            ..
        }) = commands
            .iter()
            .find(|c| matches!(c, Command::SendTrain { .. }))
        else {
            panic!("{commands:?}")
        };
        assert_eq!(setup.attempt, 2);
        assert_eq!(to, &setup.roster, "the roster is who was selected");
        assert_eq!(to.len(), 4);
        assert_eq!(m.phase(), Some(Phase::AdvertiseKeys));
        let config = config_of(setup, UpdateEncoding::vector_len(2));
        (m, setup.clone(), config)
    }

    /// The protocol configuration of round 1 with `setup`, for vectors of `vector_len` values.
    fn config_of(setup: &SecureSetup, vector_len: usize) -> cairn_secagg::protocol::RoundConfig {
        cairn_secagg::protocol::RoundConfig::derive(
            "job",
            1,
            setup.attempt,
            &setup.roster,
            setup.degree,
            setup.threshold as usize,
            vector_len,
        )
        .unwrap()
    }

    /// Runs round 1's training with participants a, b, c, d, where `silent` stops answering
    /// from phase `silent_from` on; returns the commands that ended the secure phases.
    fn run(silent: &str, silent_from: Phase) -> (RoundMachine, Vec<Command>) {
        let (mut m, setup, config) = second_attempt();
        let encoding = UpdateEncoding::new(setup.clip, setup.levels, setup.max_weight).unwrap();
        let input = |id: &str| {
            let (delta, weight) = deltas(id);
            encoding.encode(&delta, weight, 0.5)
        };
        let last = drive(&mut m, &setup, config, input, silent, silent_from, false);
        (m, last)
    }

    /// Drives one secure aggregation of `setup` (protocol configuration `config`) with real
    /// participant machines whose inputs `input` gives, where `silent` stops answering from
    /// `silent_from` on (`halfway`: after sending the first half of its masked input, when
    /// that phase is `CollectMasked`); returns the commands that ended it.
    fn drive(
        m: &mut RoundMachine,
        setup: &SecureSetup,
        config: cairn_secagg::protocol::RoundConfig,
        input: impl Fn(&str) -> Vec<u32>,
        silent: &str,
        silent_from: Phase,
        halfway: bool,
    ) -> Vec<Command> {
        let (to, attempt) = (&setup.roster, setup.attempt);
        let mut machines = BTreeMap::new();
        let mut last = Vec::new();
        for (index, id) in to.iter().enumerate() {
            let identity = Identity::new();
            let (machine, ad) = ParticipantMachine::new(config.clone(), index as u32, &identity);
            machines.insert(id.clone(), machine);
            if !(id == silent && silent_from == Phase::AdvertiseKeys) {
                let advertisement = SecureMessage::Advertisement(ad, identity.certificate);
                last = m.handle(secure(id, attempt, advertisement));
            }
        }
        loop {
            if !last.iter().any(|c| matches!(c, Command::SendSecure { .. })) {
                if last.iter().any(|c| {
                    matches!(
                        c,
                        Command::SendEvaluate { .. }
                            | Command::Commit { .. }
                            | Command::RoundFailed { .. }
                    )
                }) {
                    return last;
                }
                let phase = m.phase().unwrap();
                last = m.handle(Event::DeadlineExpired {
                    round: 1,
                    attempt,
                    phase,
                });
                if !last.iter().any(|c| matches!(c, Command::SendSecure { .. })) {
                    return last;
                }
            }
            let Some(Command::SendSecure { messages, .. }) = last.first().cloned() else {
                return last;
            };
            let phase = m.phase().unwrap();
            assert!(
                last.iter().any(
                    |c| matches!(c, Command::StartDeadline { phase: p, attempt: a, .. } if *p == phase && *a == attempt)
                ),
                "the next phase's deadline starts with it: {last:?}"
            );
            last = Vec::new();
            for (id, message) in messages {
                if id == silent && phase >= silent_from {
                    if let (true, SecureOutbound::Shares(shares)) = (halfway, message) {
                        let machine = machines.get_mut(&id).unwrap();
                        let mut values = machine.on_shares(shares, &input(&id)).unwrap().values;
                        values.truncate(values.len() / 2);
                        let piece = Piece {
                            offset: 0,
                            values,
                            last: false,
                        };
                        last.extend(m.handle(secure(
                            &id,
                            attempt,
                            SecureMessage::MaskedInput(piece),
                        )));
                    }
                    continue;
                }
                let machine = machines.get_mut(&id).unwrap();
                let reply = match message {
                    SecureOutbound::Advertisements(all) => {
                        SecureMessage::Nonce(machine.on_advertisements(all.to_vec()).unwrap().nonce)
                    }
                    SecureOutbound::Nonces {
                        nonces,
                        certificates,
                        certified,
                    } => {
                        let shares = machine.on_nonces(nonces.to_vec(), &Unchecked).unwrap();
                        // Certificates go to the recipient's neighbourhood only.
                        assert_eq!(certified, machine.neighbourhood());
                        assert_eq!(certificates.len(), to.len());
                        SecureMessage::Shares(shares)
                    }
                    SecureOutbound::Shares(shares) => SecureMessage::MaskedInput(Piece {
                        offset: 0,
                        values: machine.on_shares(shares, &input(&id)).unwrap().values,
                        last: true,
                    }),
                    SecureOutbound::Survivors(survivors) => SecureMessage::Signature(
                        machine
                            .on_survivors(survivors.to_vec(), &Unchecked)
                            .unwrap()
                            .signature,
                    ),
                    SecureOutbound::Signatures(signatures) => {
                        let reveal = machine
                            .on_signatures(signatures.to_vec(), &Unchecked)
                            .unwrap();
                        SecureMessage::Reveal {
                            self_mask_shares: reveal.self_mask_shares,
                            mask_key_shares: reveal.mask_key_shares,
                        }
                    }
                };
                last.extend(m.handle(secure(&id, attempt, reply)));
            }
        }
    }

    #[test]
    fn a_masked_input_out_of_range_fails_the_attempt_and_commits_nothing() {
        // d masks an input whose first value is shifted by half the modulus: the protocol
        // completes, and the decoded sum is one that no four honest inputs give.
        let (mut m, setup, config) = second_attempt();
        let encoding = UpdateEncoding::new(setup.clip, setup.levels, setup.max_weight).unwrap();
        let input = |id: &str| {
            let (delta, weight) = deltas(id);
            let mut encoded = encoding.encode(&delta, weight, 0.5);
            if id == "d" {
                encoded[0] = encoded[0].wrapping_add(u32::MAX / 2);
            }
            encoded
        };
        let commands = drive(&mut m, &setup, config, input, "nobody", Phase::Train, false);
        assert!(
            commands.iter().any(|c| matches!(c, Command::RoundFailed { attempt: 2, reason, .. }
                if reason.contains("secure aggregation failed in unmask") && reason.contains("honest inputs give"))),
            "{commands:?}"
        );
        assert!(
            committed(&commands).is_none() && !asks_to_evaluate(&commands),
            "{commands:?}"
        );
    }

    /// Runs round 1's training with everyone, then its evaluation, where `silent` stops
    /// answering from `silent_from` on; returns the committed round.
    fn evaluate(silent: &str, silent_from: Phase) -> RoundOutcome {
        let (mut m, commands) = run("nobody", Phase::Train);
        let Some(Command::SendEvaluate {
            secure: Some(setup),
            to,
            ..
        }) = commands.first()
        else {
            panic!("{commands:?}")
        };
        assert_eq!(setup.attempt, 3, "the round's next attempt number");
        assert_eq!(to, &setup.roster);
        assert_eq!(setup.roster, ["a", "b", "c", "d"], "everyone connected");
        let metrics = [Metric::Loss, Metric::Accuracy];
        let config = config_of(setup, EvaluationEncoding::vector_len(&metrics));
        let encoding = EvaluationEncoding::new(setup.max_weight, setup.levels).unwrap();
        // a, b, c and d evaluate 10, 20, 30 and 40 examples, all of them correct but one each.
        let input = |id: &str| {
            let n = 10 * (u64::from(id.as_bytes()[0] - b'a') + 1);
            let mut totals = Totals::new(&metrics);
            totals.n_examples = n;
            totals.metrics[0].1[0] = 0.5 * n as f64;
            totals.metrics[1].1[0] = n as f64 - 1.0;
            encoding.encode(&totals)
        };
        let commands = drive(&mut m, setup, config, input, silent, silent_from, false);
        committed(&commands)
            .unwrap_or_else(|| panic!("{commands:?}"))
            .0
    }

    #[test]
    fn the_evaluation_is_aggregated_securely_and_committed_with_the_round() {
        let outcome = evaluate("nobody", Phase::Train);
        assert_eq!((outcome.attempt, outcome.evaluators), (2, 4));
        assert_eq!(outcome.eval_examples, 100);
        let accuracy = outcome.eval_metrics["accuracy"];
        assert!((accuracy - 0.96).abs() < 1e-6, "{outcome:?}");
        assert!(
            (outcome.eval_metrics["loss"] - 0.5).abs() < 1e-6,
            "{outcome:?}"
        );

        // c leaves the evaluation after sharing its keys: the others' totals are committed and
        // c is recorded as having left the evaluation.
        let outcome = evaluate("c", Phase::CollectMasked);
        assert_eq!((outcome.evaluators, outcome.eval_examples), (3, 70));
        assert!((outcome.eval_metrics["accuracy"] - 67.0 / 70.0).abs() < 1e-6);
        assert!(
            outcome
                .dropouts
                .iter()
                .any(|d| d.id == "c" && d.phase == Phase::Evaluate),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_failed_secure_evaluation_commits_the_round_unevaluated() {
        // No evaluator answers: too few advertise for any threshold.
        let (mut m, commands) = run("nobody", Phase::Train);
        let Some(Command::SendEvaluate { model, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        let model = model.clone();
        let commands = m.handle(Event::DeadlineExpired {
            round: 1,
            attempt: 3,
            phase: Phase::AdvertiseKeys,
        });
        let (outcome, committed_model) =
            committed(&commands).unwrap_or_else(|| panic!("{commands:?}"));
        assert_eq!(committed_model, *model, "the new model is kept");
        assert!(outcome.eval_metrics.is_empty(), "{outcome:?}");
        assert_eq!(outcome.metrics_text(), "not evaluated");
        assert!(
            outcome
                .dropouts
                .iter()
                .filter(|d| d.phase == Phase::Evaluate)
                .count()
                == 4
        );
    }

    #[test]
    fn a_participant_silent_from_share_keys_is_dropped_and_the_others_are_averaged() {
        let (m, commands) = run("c", Phase::ShareKeys);
        let Some(Command::SendEvaluate { model, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        // FedAvg of a, b and d: (1*[1,1] + 3*[3,-1] + 4*[0.5,0.5]) / 8.
        let expected = [12.0 / 8.0, 0.0];
        for (got, want) in model.iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-4, "{model:?}");
        }
        assert_eq!(
            m.phase(),
            Some(Phase::AdvertiseKeys),
            "the evaluation's secure aggregation"
        );
    }

    #[test]
    fn a_masked_input_cut_off_halfway_leaves_the_sum_as_if_it_had_never_been_sent() {
        let model = |halfway: bool| {
            let (mut m, setup, config) = second_attempt();
            let encoding = UpdateEncoding::new(setup.clip, setup.levels, setup.max_weight).unwrap();
            let input = |id: &str| {
                let (delta, weight) = deltas(id);
                encoding.encode(&delta, weight, 0.5)
            };
            let commands = drive(
                &mut m,
                &setup,
                config,
                input,
                "c",
                Phase::CollectMasked,
                halfway,
            );
            let Some(Command::SendEvaluate { model, .. }) = commands.first() else {
                panic!("{commands:?}")
            };
            model.as_ref().clone()
        };
        // c's first half went into the sum as it arrived; it is subtracted again when the
        // deadline closes the phase, and c's masks are removed as a dropped participant's.
        let cut = model(true);
        assert_eq!(cut, model(false));
        // FedAvg of a, b and d: (1*[1,1] + 3*[3,-1] + 4*[0.5,0.5]) / 8.
        for (got, want) in cut.iter().zip([12.0 / 8.0, 0.0]) {
            assert!((f64::from(*got) - want).abs() < 1e-4, "{cut:?}");
        }
    }

    #[test]
    fn an_advertiser_that_withholds_its_graph_nonce_fails_the_attempt() {
        // Drawing the graph without c's nonce would let whoever withholds choose among graphs;
        // the attempt fails instead, and the round is retried with fresh keys.
        let (m, commands) = run("c", Phase::DrawGraph);
        assert!(
            commands.iter().any(|c| matches!(c, Command::RoundFailed { attempt: 2, reason, .. } if reason.contains("secure aggregation failed in draw_graph") && reason.contains("revealed no graph nonce"))),
            "{commands:?}"
        );
        assert!(m.phase().is_none() || m.phase() == Some(Phase::AdvertiseKeys));
    }

    #[test]
    fn a_masked_input_in_the_sum_stays_even_if_its_sender_leaves_before_unmasking() {
        let (_, commands) = run("c", Phase::ConsistencyCheck);
        let Some(Command::SendEvaluate { model, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        // FedAvg of all four: (1 + 9 - 4 + 2, -(1) ... ) / 10.
        let expected = [
            (1.0 + 9.0 - 4.0 + 2.0) / 10.0,
            (1.0 - 3.0 + 1.0 + 2.0) / 10.0,
        ];
        for (got, want) in model.iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-4, "{model:?}");
        }
    }

    #[test]
    fn an_advertisement_that_does_not_verify_drops_its_sender_not_the_round() {
        let (mut m, _, config) = second_attempt();
        let (signer, other) = (Identity::new(), Identity::new());
        // d signs with one key and presents another's certificate.
        let (_, ad) = ParticipantMachine::new(config, 3, &signer);
        let commands = m.handle(secure(
            "d",
            2,
            SecureMessage::Advertisement(ad, other.certificate),
        ));
        assert!(
            matches!(&commands[..], [Command::Ignored { reason, .. }] if reason.contains("does not verify with its certificate")),
            "{commands:?}"
        );
    }

    #[test]
    fn stale_and_out_of_phase_messages_are_ignored_or_drop_their_sender() {
        let mut m = secure_machine();
        connect(&mut m, &["a", "b", "c"]);
        let commands = m.handle(secure("a", 7, SecureMessage::Signature(vec![1])));
        assert!(
            matches!(&commands[..], [Command::Ignored { reason, .. }] if reason.contains("attempt 7")),
            "{commands:?}"
        );
        let commands = m.handle(secure("b", 1, SecureMessage::Signature(vec![1])));
        assert!(
            matches!(&commands[..], [Command::Ignored { reason, .. }] if reason.contains("survivor signature arrived during advertise_keys")),
            "{commands:?}"
        );
        // b broke the protocol and left the round; once c and a time out too, too few advertised.
        let commands = m.handle(Event::DeadlineExpired {
            round: 1,
            attempt: 1,
            phase: Phase::AdvertiseKeys,
        });
        assert!(
            commands.iter().any(|c| matches!(c, Command::RoundFailed { reason, .. } if reason.contains("secure aggregation failed in advertise_keys"))),
            "{commands:?}"
        );
    }
}

#[test]
fn stopping_abandons_the_running_round_and_keeps_the_committed_ones() {
    let mut m = machine(2, 3);
    let first = selected(&connect(&mut m, &["a", "b"]));
    complete_round(&mut m, &first, &["a", "b"]);
    assert_eq!(m.round(), 2);
    // Round 2 is training when the stop arrives: it ends the job, unsuccessfully, at round 1.
    let commands = m.handle(Event::Stop {
        reason: "the FederatedJob was deleted".into(),
    });
    let [
        Command::Finish {
            rounds_completed,
            succeeded,
            reason,
        },
    ] = commands.as_slice()
    else {
        panic!("{commands:?}")
    };
    assert_eq!((*rounds_completed, *succeeded), (1, false));
    assert_eq!(reason, "the FederatedJob was deleted");
    assert!(m.is_finished());
    // Late answers and a second stop change nothing.
    assert!(committed(&feed(&mut m, update("a", 2, [1.0, 1.0], 1))).is_none());
    assert!(
        m.handle(Event::Stop {
            reason: "again".into()
        })
        .is_empty()
    );
}
