//! This site's own rules for taking part in a round, which nothing the coordinator sends can
//! change. Before it trains, the participant checks the round's setup against its [`Policy`]:
//! secure aggregation on (unless the site allows updates in the clear), enough participants,
//! neighbours and threshold, a roster that is sorted, free of duplicates and made of the site's
//! partners, no round before one it already started, and, with a privacy budget, the round's
//! noise and what it would cost the site. Before it shares keys, it checks
//! each neighbour's certificate against the fingerprint the site pinned for it, if any, and
//! against the federation CA's revocation list, if the site has one. A round
//! that breaks a rule is refused whole: the participant logs the rule and sends nothing for it.
//!
//! The rules live here, once; `main.rs` maps flags onto them and the chart maps values onto the
//! flags.

use cairn_proto::v1::SecureAggregation;
use cairn_secagg::privacy::{DistributedDp, Ledger};
use std::collections::BTreeMap;
use std::path::Path;

/// What this site accepts; [`Policy::default`] is the strictest that still lets the protocol
/// run.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Send the update in the clear when a round asks for it (default: refuse such rounds, as a
    /// coordinator that turns secure aggregation off would otherwise see every update).
    pub allow_plaintext: bool,
    /// Fewest participants in a securely aggregated round (default 3, the protocol's least).
    /// Secure aggregation hides an update only among the others: with `n` participants, a
    /// coordinator and `n - 2` colluders learn the last one's update, so a site that fears a
    /// coalition of `c` sets this above `c + 1`.
    pub min_participants: usize,
    /// Fewest neighbours in the round's graph (default 2, the protocol's least).
    pub min_neighbours: usize,
    /// Least threshold, as a fraction of the neighbours (default 0.5; the protocol also
    /// requires a strict majority). A higher threshold tolerates more colluding neighbours
    /// (fewer than `2t - k` of `k`) and fewer dropouts.
    pub min_threshold: f64,
    /// The partners this site aggregates with, agreed out of band; `None`: any participant the
    /// federation CA certified.
    pub partners: Option<Partners>,
    /// Most attempts of one round this site takes part in (default 5, the jobs' default). Each
    /// attempt draws a fresh neighbourhood graph, so a coordinator that fails attempts on purpose
    /// until a target's neighbours are its colluders makes that `a` times as likely in `a`
    /// attempts, never more.
    pub max_round_attempts: u32,
    /// The federation CA's revocation list, already verified against the CA
    /// ([`Kit::revocations`](crate::client::Kit::revocations)); a neighbour whose certificate is
    /// on it is refused. `None`: no certificate is taken for revoked.
    pub revocations: Option<cairn_identity::RevocationList>,
    /// This site's differential-privacy budget: `ε` at [`Policy::privacy_delta`] over every
    /// round it sends an update in. When set, rounds without the job's noise are refused, and so
    /// is a round that would take the site past it, by its own accounting (whatever noise
    /// settings the coordinator sends, the site charges itself what they give). `None`: no
    /// budget, and noise only when the round asks for it.
    pub max_epsilon: Option<f64>,
    /// `δ` of this site's budget (default 1e-5).
    pub privacy_delta: f64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow_plaintext: false,
            min_participants: 3,
            min_neighbours: 2,
            min_threshold: 0.5,
            partners: None,
            max_round_attempts: 5,
            revocations: None,
            max_epsilon: None,
            privacy_delta: 1e-5,
        }
    }
}

/// A site's list of partners: participant ids, each optionally with the fingerprint of its
/// certificate (`sha256:HEX`, as `cairn-participant fingerprint` prints it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partners {
    pinned: BTreeMap<String, Option<String>>,
}

impl Partners {
    /// Reads a partners file: one partner per line, `ID` or `ID sha256:HEX`; `#` starts a
    /// comment.
    pub fn load(path: &Path) -> Result<Partners, crate::Error> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::Data {
            path: path.to_path_buf(),
            reason: format!("cannot read the partners file: {e}"),
        })?;
        Partners::parse(&text).map_err(|reason| crate::Error::Data {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the text of a partners file; the error names the line.
    pub fn parse(text: &str) -> Result<Partners, String> {
        let mut pinned = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = |reason: String| format!("line {}: {reason}", number + 1);
            let mut words = line.split_whitespace();
            let id = words.next().unwrap_or_default();
            cairn_identity::check_participant_id(id).map_err(|e| at(e.to_string()))?;
            let fingerprint = match words.next() {
                None => None,
                Some(word) if is_fingerprint(word) => Some(word.to_ascii_lowercase()),
                Some(word) => {
                    return Err(at(format!(
                        "{word:?} is not a certificate fingerprint; expected sha256: and 64 hex digits"
                    )));
                }
            };
            if let Some(extra) = words.next() {
                return Err(at(format!(
                    "unexpected {extra:?}; expected `ID` or `ID sha256:HEX`"
                )));
            }
            if pinned.insert(id.to_string(), fingerprint).is_some() {
                return Err(at(format!("{id:?} is listed twice")));
            }
        }
        if pinned.is_empty() {
            return Err("lists no partner; expected one `ID [sha256:HEX]` per line".into());
        }
        Ok(Partners { pinned })
    }

    /// Whether `id` is a partner.
    pub fn contains(&self, id: &str) -> bool {
        self.pinned.contains_key(id)
    }

    /// The fingerprint pinned for `id`, if any.
    pub fn fingerprint(&self, id: &str) -> Option<&str> {
        self.pinned.get(id).and_then(|f| f.as_deref())
    }

    /// The partners' ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.pinned.keys().map(String::as_str)
    }
}

fn is_fingerprint(word: &str) -> bool {
    word.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A rule of the [`Policy`] that a round or a neighbour broke; its message names the rule and,
/// where the site may relax it, the flag that does.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The round asks for the update in the clear.
    #[error(
        "the round asks for the update in the clear; this site requires secure aggregation (--allow-plaintext relaxes it)"
    )]
    Plaintext,
    /// The coordinator asks for an evaluation in the clear.
    #[error(
        "the coordinator asks for an evaluation in the clear; this site reports evaluations only inside secure aggregation (--allow-plaintext relaxes it)"
    )]
    PlaintextEvaluation,
    /// The model to train on is not the one this site evaluated as the previous round's.
    #[error(
        "the model to train in round {round} is not the one this site evaluated as round {evaluated}'s new model; this site evaluates only models the federation goes on with"
    )]
    NotEvaluatedModel {
        /// The round asked for.
        round: u64,
        /// The round whose model this site evaluated.
        evaluated: u64,
    },
    /// The roster does not name this participant.
    #[error("the roster does not name this participant ({id:?})")]
    NotListed {
        /// This participant's id.
        id: String,
    },
    /// The roster is out of order or names someone twice.
    #[error(
        "the roster lists {first:?} before {second:?}; expected ids sorted and each listed once"
    )]
    Roster {
        /// The earlier id.
        first: String,
        /// The id after it, not greater.
        second: String,
    },
    /// Too few participants.
    #[error(
        "the round has {participants} participants; this site requires at least {min} (--min-participants)"
    )]
    TooFewParticipants {
        /// In the roster.
        participants: usize,
        /// The policy's least.
        min: usize,
    },
    /// The roster names someone outside the site's partners.
    #[error("the roster names {id:?}, who is not among this site's partners (--partners)")]
    Stranger {
        /// The id.
        id: String,
    },
    /// The graph or threshold is not one the protocol allows.
    #[error("the round's graph or threshold is invalid: {0}")]
    Setup(String),
    /// Too few neighbours.
    #[error(
        "the round gives each participant {neighbours} neighbours; this site requires at least {min} (--min-neighbours)"
    )]
    TooFewNeighbours {
        /// In the round's graph.
        neighbours: usize,
        /// The policy's least.
        min: usize,
    },
    /// The threshold is below the site's fraction.
    #[error(
        "the round's threshold is {threshold} of {neighbours} neighbours; this site requires at least {min} (--min-threshold {fraction})"
    )]
    LowThreshold {
        /// The round's threshold.
        threshold: u32,
        /// Neighbours per participant.
        neighbours: usize,
        /// The least this site accepts.
        min: usize,
        /// The policy's fraction.
        fraction: f64,
    },
    /// A round before one this participant already started.
    #[error(
        "round {round} comes after round {latest} was started; expected round {latest} or a later one"
    )]
    Replayed {
        /// The round asked for.
        round: u64,
        /// The latest round started.
        latest: u64,
    },
    /// The round was started as often as the site allows.
    #[error(
        "round {round} was started {max} times already; this site takes part in at most {max} attempts of a round (--max-round-attempts)"
    )]
    TooManyAttempts {
        /// The round.
        round: u64,
        /// The policy's most.
        max: u32,
    },
    /// The round asks for updates without differential privacy, which this site requires.
    #[error(
        "the round asks for the update without differential privacy; this site sends updates only with noise, up to epsilon {max} (--max-epsilon)"
    )]
    NoPrivacy {
        /// The site's budget.
        max: f64,
    },
    /// The round's noise settings are not ones the mechanism allows.
    #[error("the round's differential privacy settings are refused: {0}")]
    PrivacySetup(String),
    /// The round would take the site past its budget.
    #[error(
        "the round would take this site's epsilon from {spent:.3} to {next:.3} (at delta {delta}), past its budget of {max} (--max-epsilon)"
    )]
    PrivacyBudget {
        /// Spent so far.
        spent: f64,
        /// Spent after this round.
        next: f64,
        /// The site's budget.
        max: f64,
        /// The site's `δ`.
        delta: f64,
    },
    /// A neighbour's certificate is on the federation CA's revocation list.
    #[error("{id:?} presents certificate serial {serial}, which the federation CA revoked (--crl)")]
    Revoked {
        /// The neighbour.
        id: String,
        /// The certificate's serial number (hex).
        serial: String,
    },
    /// A neighbour's certificate is not the one pinned for it.
    #[error("{id:?} presents certificate {found}; this site pinned {expected} for it (--partners)")]
    Unpinned {
        /// The neighbour.
        id: String,
        /// Its certificate's fingerprint.
        found: String,
        /// The pinned one.
        expected: String,
    },
}

impl Policy {
    /// Checks the setup of a round's evaluation (`None`: the report in the clear) for
    /// participant `me`: the rules of a round's training, with its own refusal of the clear.
    pub fn check_evaluation(
        &self,
        me: &str,
        setup: Option<&SecureAggregation>,
    ) -> Result<(), Refusal> {
        if setup.is_none() && !self.allow_plaintext {
            return Err(Refusal::PlaintextEvaluation);
        }
        self.check_round(me, setup)
    }

    /// Checks a round's setup (`None`: the update in the clear) for participant `me`.
    pub fn check_round(&self, me: &str, setup: Option<&SecureAggregation>) -> Result<(), Refusal> {
        let Some(setup) = setup else {
            return match self.allow_plaintext {
                true => Ok(()),
                false => Err(Refusal::Plaintext),
            };
        };
        let roster = &setup.participants;
        if let Some(pair) = roster.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(Refusal::Roster {
                first: pair[0].clone(),
                second: pair[1].clone(),
            });
        }
        if !roster.iter().any(|id| id == me) {
            return Err(Refusal::NotListed { id: me.into() });
        }
        if roster.len() < self.min_participants {
            return Err(Refusal::TooFewParticipants {
                participants: roster.len(),
                min: self.min_participants,
            });
        }
        if let Some(partners) = &self.partners
            && let Some(stranger) = roster.iter().find(|id| !partners.contains(id))
        {
            return Err(Refusal::Stranger {
                id: stranger.clone(),
            });
        }
        let n = u32::try_from(roster.len())
            .map_err(|_| Refusal::Setup(format!("{} participants", roster.len())))?;
        let neighbours = cairn_secagg::protocol::neighbourhood_size(n, setup.degree)
            .map_err(|e| Refusal::Setup(e.to_string()))?;
        if neighbours < self.min_neighbours {
            return Err(Refusal::TooFewNeighbours {
                neighbours,
                min: self.min_neighbours,
            });
        }
        let min = (self.min_threshold * neighbours as f64).ceil() as usize;
        if (setup.threshold as usize) < min {
            return Err(Refusal::LowThreshold {
                threshold: setup.threshold,
                neighbours,
                min,
                fraction: self.min_threshold,
            });
        }
        Ok(())
    }

    /// Checks a training round's differential privacy for a model of `dim` parameters against
    /// this site's budget, given what it has `spent`; the mechanism to encode the update with,
    /// if the round has noise.
    pub fn check_privacy(
        &self,
        setup: Option<&SecureAggregation>,
        dim: usize,
        spent: &Ledger,
    ) -> Result<Option<DistributedDp>, Refusal> {
        let privacy = setup.and_then(|setup| setup.privacy.as_ref());
        let Some(privacy) = privacy else {
            return match self.max_epsilon {
                Some(max) => Err(Refusal::NoPrivacy { max }),
                None => Ok(None),
            };
        };
        let mechanism = DistributedDp::new(
            privacy.clip_norm,
            privacy.noise_multiplier,
            privacy.min_contributors,
            dim,
        )
        .map_err(|e| Refusal::PrivacySetup(e.to_string()))?;
        if let Some(max) = self.max_epsilon {
            let delta = self.privacy_delta;
            let next = spent.with(&mechanism.round_rdp_curve()).epsilon(delta);
            if next > max {
                return Err(Refusal::PrivacyBudget {
                    spent: spent.epsilon(delta),
                    next,
                    max,
                    delta,
                });
            }
        }
        Ok(Some(mechanism))
    }

    /// Checks a neighbour's certificate (DER) against the site's revocation list, if it has
    /// one, and against the fingerprint pinned for `id`, if the site pinned one. (Its chain to
    /// the federation CA is checked by `client::identity`.)
    pub fn check_certificate(&self, id: &str, der: &[u8]) -> Result<(), Refusal> {
        if let Some(revocations) = &self.revocations
            && let Err(error) = revocations.check(der)
        {
            // A certificate that does not parse is refused by the chain check, with its reason.
            if let cairn_identity::Error::Revoked { serial, .. } = error {
                return Err(Refusal::Revoked {
                    id: id.into(),
                    serial,
                });
            }
        }
        let Some(expected) = self.partners.as_ref().and_then(|p| p.fingerprint(id)) else {
            return Ok(());
        };
        let found = cairn_identity::fingerprint(der);
        match found == expected {
            true => Ok(()),
            false => Err(Refusal::Unpinned {
                id: id.into(),
                found,
                expected: expected.into(),
            }),
        }
    }
}

/// The latest round this participant started in the current job, and how often, so that it
/// never goes back: a coordinator that sends an earlier round's instruction again is fishing for
/// a second update of a model this site already trained on. The same round may come again, as a
/// new attempt after a failure or a coordinator that restarted, up to `max` times in all;
/// attempts are the coordinator's to number, so they are counted here, not read.
#[derive(Debug, Default)]
pub(crate) struct Started {
    latest: Option<u64>,
    attempts: u32,
    /// The last round whose new model this participant evaluated, and that model's SHA-256.
    evaluated: Option<(u64, Vec<u8>)>,
    /// The differential privacy this site spent in the job: every noised update it started to
    /// send, charged when it advertised its keys for it (before any of it left).
    pub(crate) privacy: Ledger,
}

impl Started {
    /// Records that this participant evaluated `round`'s new model, whose payload has SHA-256
    /// `digest`.
    pub(crate) fn evaluated(&mut self, round: u64, digest: Vec<u8>) {
        self.evaluated = Some((round, digest));
    }

    /// Refuses to train in `round` on a model (SHA-256 `digest`) other than the one evaluated
    /// as the round before's new model: a coordinator that had a site evaluate a model the
    /// federation did not go on with used the evaluation as a query, and is caught here.
    pub(crate) fn continues(&self, round: u64, digest: &[u8]) -> Result<(), Refusal> {
        match &self.evaluated {
            Some((evaluated, expected)) if evaluated + 1 == round && expected != digest => {
                Err(Refusal::NotEvaluatedModel {
                    round,
                    evaluated: *evaluated,
                })
            }
            _ => Ok(()),
        }
    }

    /// Records that `round` starts now, unless a later one was started before or this one
    /// `max` times already.
    pub(crate) fn admit(&mut self, round: u64, max: u32) -> Result<(), Refusal> {
        match self.latest {
            Some(latest) if round < latest => return Err(Refusal::Replayed { round, latest }),
            Some(latest) if round == latest && self.attempts >= max => {
                return Err(Refusal::TooManyAttempts { round, max });
            }
            Some(latest) if round == latest => self.attempts += 1,
            _ => self.attempts = 1,
        }
        self.latest = Some(round);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(roster: &[&str], degree: u32, threshold: u32) -> SecureAggregation {
        SecureAggregation {
            attempt: 1,
            participants: roster.iter().map(|s| s.to_string()).collect(),
            degree,
            threshold,
            clip: 1.0,
            quantization_levels: 1 << 20,
            max_weight: 1000,
            privacy: None,
        }
    }

    #[test]
    fn the_default_refuses_plaintext_and_accepts_a_sound_round() {
        let policy = Policy::default();
        assert_eq!(policy.check_round("b", None), Err(Refusal::Plaintext));
        let relaxed = Policy {
            allow_plaintext: true,
            ..Policy::default()
        };
        assert_eq!(relaxed.check_round("b", None), Ok(()));
        assert_eq!(
            policy.check_round("b", Some(&setup(&["a", "b", "c"], 2, 2))),
            Ok(())
        );
    }

    #[test]
    fn rosters_must_be_sorted_unique_long_enough_and_of_partners() {
        let policy = Policy {
            min_participants: 4,
            partners: Some(Partners::parse("a\nb\nc\nd\n").unwrap()),
            ..Policy::default()
        };
        let refusal = |roster: &[&str]| policy.check_round("b", Some(&setup(roster, 3, 2)));
        assert_eq!(
            refusal(&["a", "b", "b", "c"]),
            Err(Refusal::Roster {
                first: "b".into(),
                second: "b".into()
            })
        );
        assert!(matches!(
            refusal(&["b", "a", "c", "d"]),
            Err(Refusal::Roster { .. })
        ));
        assert_eq!(
            refusal(&["a", "c", "d", "e"]),
            Err(Refusal::NotListed { id: "b".into() })
        );
        assert_eq!(
            refusal(&["a", "b", "c"]),
            Err(Refusal::TooFewParticipants {
                participants: 3,
                min: 4
            })
        );
        assert_eq!(
            refusal(&["a", "b", "c", "m"]),
            Err(Refusal::Stranger { id: "m".into() })
        );
        assert_eq!(refusal(&["a", "b", "c", "d"]), Ok(()));
    }

    #[test]
    fn neighbours_and_threshold_meet_the_sites_least() {
        let roster: Vec<String> = (0..20).map(|i| format!("p{i:02}")).collect();
        let roster: Vec<&str> = roster.iter().map(String::as_str).collect();
        let policy = Policy {
            min_neighbours: 6,
            min_threshold: 2.0 / 3.0,
            ..Policy::default()
        };
        assert_eq!(
            policy.check_round("p03", Some(&setup(&roster, 4, 3))),
            Err(Refusal::TooFewNeighbours {
                neighbours: 4,
                min: 6
            })
        );
        assert!(matches!(
            policy.check_round("p03", Some(&setup(&roster, 6, 3))),
            Err(Refusal::LowThreshold { min: 4, .. })
        ));
        assert_eq!(
            policy.check_round("p03", Some(&setup(&roster, 6, 4))),
            Ok(())
        );
    }

    #[test]
    fn a_privacy_budget_refuses_rounds_without_noise_and_rounds_past_it() {
        let noised = |z: f64| {
            let mut setup = setup(&["a", "b", "c"], 2, 2);
            setup.privacy = Some(cairn_proto::v1::DifferentialPrivacy {
                clip_norm: 1.0,
                noise_multiplier: z,
                min_contributors: 3,
            });
            setup
        };
        let none = Ledger::default();
        // Without a budget, noise only when asked for; the settings are still checked.
        let open = Policy::default();
        assert_eq!(
            open.check_privacy(Some(&setup(&["a"], 2, 2)), 10, &none),
            Ok(None)
        );
        assert!(
            open.check_privacy(Some(&noised(1.0)), 10, &none)
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            open.check_privacy(Some(&noised(f64::NAN)), 10, &none),
            Err(Refusal::PrivacySetup(_))
        ));
        let strict = Policy {
            max_epsilon: Some(2.3),
            ..Policy::default()
        };
        assert_eq!(
            strict.check_privacy(Some(&setup(&["a"], 2, 2)), 10, &none),
            Err(Refusal::NoPrivacy { max: 2.3 })
        );
        assert_eq!(
            strict.check_privacy(None, 10, &none),
            Err(Refusal::NoPrivacy { max: 2.3 })
        );
        // z = 3 at δ = 1e-5: 1.386 for one round, 2.029 for two, 2.541 for three.
        let mechanism = strict
            .check_privacy(Some(&noised(3.0)), 10, &none)
            .unwrap()
            .unwrap();
        let spent = Ledger::after(&mechanism, 2);
        assert!(spent.epsilon(1e-5) < 2.3);
        let refusal = strict
            .check_privacy(Some(&noised(3.0)), 10, &spent)
            .unwrap_err();
        assert!(
            matches!(refusal, Refusal::PrivacyBudget { next, max: 2.3, .. } if next > 2.3),
            "{refusal}"
        );
        assert!(
            refusal
                .to_string()
                .contains("past its budget of 2.3 (--max-epsilon)")
        );
        // A coordinator that lowers the noise is charged for it by the site.
        assert!(matches!(
            strict.check_privacy(Some(&noised(0.5)), 10, &none),
            Err(Refusal::PrivacyBudget { .. })
        ));
    }

    #[test]
    fn rounds_never_go_back() {
        let mut started = Started::default();
        assert_eq!(started.admit(2, 3), Ok(()));
        assert_eq!(
            started.admit(2, 3),
            Ok(()),
            "a new attempt of the same round"
        );
        assert_eq!(
            started.admit(1, 3),
            Err(Refusal::Replayed {
                round: 1,
                latest: 2
            })
        );
        assert_eq!(started.admit(3, 3), Ok(()));
        assert!(started.admit(2, 3).is_err());
    }

    #[test]
    fn evaluations_go_in_the_clear_only_where_allowed_and_a_model_evaluated_is_the_one_trained_next()
     {
        let policy = Policy::default();
        assert_eq!(
            policy.check_evaluation("b", None),
            Err(Refusal::PlaintextEvaluation)
        );
        let roster = ["a", "b", "c"];
        assert_eq!(
            policy.check_evaluation("b", Some(&setup(&roster, 2, 2))),
            Ok(())
        );
        let relaxed = Policy {
            allow_plaintext: true,
            ..Policy::default()
        };
        assert_eq!(relaxed.check_evaluation("b", None), Ok(()));

        let mut started = Started::default();
        assert_eq!(
            started.continues(4, b"any"),
            Ok(()),
            "nothing evaluated yet"
        );
        started.evaluated(3, b"federation's".to_vec());
        assert_eq!(started.continues(4, b"federation's"), Ok(()));
        assert_eq!(
            started.continues(4, b"another"),
            Err(Refusal::NotEvaluatedModel {
                round: 4,
                evaluated: 3
            })
        );
        assert_eq!(
            started.continues(3, b"another"),
            Ok(()),
            "round 3 again, after a coordinator restart, starts from the model before it"
        );
    }

    #[test]
    fn a_round_is_started_at_most_as_often_as_the_site_allows() {
        // Each attempt draws a fresh graph: failing attempts on purpose is a way to draw again.
        let mut started = Started::default();
        for _ in 0..3 {
            assert_eq!(started.admit(4, 3), Ok(()));
        }
        assert_eq!(
            started.admit(4, 3),
            Err(Refusal::TooManyAttempts { round: 4, max: 3 })
        );
        assert_eq!(started.admit(5, 3), Ok(()), "the next round counts afresh");
    }

    #[test]
    fn partners_files_name_the_line_at_fault() {
        let fingerprint = format!("sha256:{}", "ab".repeat(32));
        let partners = Partners::parse(&format!(
            "# partners\nalpha {fingerprint}\nbravo  # unpinned\n"
        ))
        .unwrap();
        assert_eq!(partners.ids().collect::<Vec<_>>(), ["alpha", "bravo"]);
        assert_eq!(partners.fingerprint("alpha"), Some(fingerprint.as_str()));
        assert_eq!(partners.fingerprint("bravo"), None);
        for (text, error) in [
            ("alpha\nalpha\n", "line 2: \"alpha\" is listed twice"),
            (
                "alpha sha1:00\n",
                "line 1: \"sha1:00\" is not a certificate fingerprint",
            ),
            ("Alpha\n", "line 1: participant id \"Alpha\" is invalid"),
            (
                "alpha x y\n",
                "line 1: \"x\" is not a certificate fingerprint",
            ),
            ("# none\n", "lists no partner"),
        ] {
            let found = Partners::parse(text).unwrap_err();
            assert!(found.starts_with(error), "{text:?}: {found}");
        }
    }

    #[test]
    fn pinned_certificates_must_match() {
        let der = b"a certificate".to_vec();
        let pinned = cairn_identity::fingerprint(&der);
        let policy = Policy {
            partners: Some(Partners::parse(&format!("alpha {pinned}\nbravo\n")).unwrap()),
            ..Policy::default()
        };
        assert_eq!(policy.check_certificate("alpha", &der), Ok(()));
        assert_eq!(policy.check_certificate("bravo", b"anything"), Ok(()));
        assert!(matches!(
            policy.check_certificate("alpha", b"another certificate"),
            Err(Refusal::Unpinned { .. })
        ));
    }

    #[test]
    fn revoked_neighbours_are_refused() {
        let ca = cairn_identity::Authority::generate("test", 1).unwrap();
        let der = |id: &str| {
            let issued = ca.issue_participant(id, id, 1).unwrap();
            cairn_identity::certificate_der(&issued.cert_pem, id).unwrap()
        };
        let (alpha, bravo) = (der("alpha"), der("bravo"));
        let crl = ca.revoke(None, &[&alpha], 1).unwrap();
        let policy = Policy {
            revocations: Some(
                cairn_identity::RevocationList::from_pem(&crl, ca.cert_pem()).unwrap(),
            ),
            ..Policy::default()
        };
        let serial = cairn_identity::serial_of(&alpha).unwrap();
        assert_eq!(
            policy.check_certificate("alpha", &alpha),
            Err(Refusal::Revoked {
                id: "alpha".into(),
                serial: serial.clone()
            })
        );
        let refusal = policy
            .check_certificate("alpha", &alpha)
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains(&serial) && refusal.contains("--crl"),
            "{refusal}"
        );
        assert_eq!(policy.check_certificate("bravo", &bravo), Ok(()));
        assert_eq!(Policy::default().check_certificate("alpha", &alpha), Ok(()));
    }
}
