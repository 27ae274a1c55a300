//! Partitioners: split one dataset among `count` participants, deterministically by seed, so that
//! several participants on one machine (or `simulate`) each get their own disjoint share.
//!
//! - IID: a seeded shuffle cut into `count` nearly equal parts.
//! - Dirichlet(α) label skew (Hsu et al. 2019): for each label, the examples are shuffled and
//!   divided among participants in proportions drawn from Dirichlet(α, …, α). Small α gives each
//!   participant few labels; large α approaches IID.
//! - Shards, McMahan et al. 2017's "pathological non-IID": the examples sorted by label, cut
//!   into `count × k` equal shards, and `k` shards dealt to each participant at random (their
//!   MNIST setup, 100 participants with 2 shards of 300, is `shards:2`). Most participants
//!   then hold examples of only `k` labels.

use crate::Error;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Gamma};

/// How a dataset is divided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// Keep the whole dataset.
    Whole,
    /// Independent, identically distributed shares.
    Iid,
    /// Label skew drawn from a symmetric Dirichlet distribution with this concentration.
    Dirichlet {
        /// Concentration α > 0.
        alpha: f64,
    },
    /// Label-sorted shards, this many per participant.
    Shards {
        /// Shards each participant gets, at least 1.
        per_participant: usize,
    },
}

/// This participant's share of a dataset: share `index` of `count`, under `scheme`, with `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partition {
    /// How the dataset is divided.
    pub scheme: Scheme,
    /// Which share this participant keeps, `0..count`.
    pub index: usize,
    /// Into how many shares the dataset is divided.
    pub count: usize,
    /// Seed; every participant of a federation must use the same one to get disjoint shares.
    pub seed: u64,
}

impl Partition {
    /// The whole dataset, undivided.
    pub fn whole() -> Partition {
        Partition {
            scheme: Scheme::Whole,
            index: 0,
            count: 1,
            seed: 0,
        }
    }

    /// Parses a scheme from the command line: `iid`, `dirichlet:ALPHA`, `shards:K` or `none`.
    pub fn parse_scheme(text: &str) -> Result<Scheme, Error> {
        let unknown = || Error::UnknownPartitionScheme {
            scheme: text.into(),
        };
        match text.split_once(':') {
            None if text == "iid" => Ok(Scheme::Iid),
            None if text == "none" => Ok(Scheme::Whole),
            Some(("dirichlet", alpha)) => match alpha.parse::<f64>() {
                Ok(alpha) if alpha > 0.0 && alpha.is_finite() => Ok(Scheme::Dirichlet { alpha }),
                _ => Err(Error::DirichletConcentration {
                    alpha: alpha.into(),
                }),
            },
            Some(("shards", k)) => match k.parse::<usize>() {
                Ok(per_participant @ 1..=1000) => Ok(Scheme::Shards { per_participant }),
                _ => Err(Error::ShardsPerParticipant { k: k.into() }),
            },
            _ => Err(unknown()),
        }
    }

    /// Indices of this participant's examples, given every example's label. `split` (0 for
    /// training, 1 for test) varies the seed so the two splits are cut independently.
    pub fn indices(&self, labels: &[u32], split: u64) -> Result<Vec<usize>, Error> {
        if self.count == 0 || self.index >= self.count {
            return Err(Error::Partition(format!(
                "partition index {} is out of range for {} partitions (expected 0..{})",
                self.index, self.count, self.count
            )));
        }
        let mut rng =
            ChaCha20Rng::seed_from_u64(self.seed ^ split.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let indices = match self.scheme {
            Scheme::Whole => (0..labels.len()).collect(),
            Scheme::Iid => {
                let mut all: Vec<usize> = (0..labels.len()).collect();
                all.shuffle(&mut rng);
                let (start, end) = bounds(all.len(), self.count, self.index);
                all[start..end].to_vec()
            }
            Scheme::Dirichlet { alpha } => {
                let gamma = Gamma::new(alpha, 1.0).map_err(|e| {
                    Error::Partition(format!("Dirichlet concentration {alpha} is invalid: {e}"))
                })?;
                let n_labels = labels.iter().max().map_or(0, |&max| max + 1);
                let mut by_label: Vec<Vec<usize>> = (0..n_labels)
                    .map(|label| (0..labels.len()).filter(|&i| labels[i] == label).collect())
                    .filter(|of_label: &Vec<usize>| !of_label.is_empty())
                    .collect();
                // Small α often leaves a participant with nothing; such a draw is drawn again
                // (as is usual for this partition), from the same seeded stream, so that every
                // participant still computes the same shares.
                let mut draws = 0;
                let cuts = loop {
                    let cuts: Vec<Vec<usize>> = by_label
                        .iter_mut()
                        .map(|of_label| {
                            of_label.shuffle(&mut rng);
                            dirichlet_cuts(&gamma, self.count, of_label.len(), &mut rng)
                        })
                        .collect();
                    let empty = (0..self.count).any(|p| {
                        cuts.iter().all(|c| {
                            let (start, end) = share_of(c, p);
                            start == end
                        })
                    });
                    draws += 1;
                    if !empty || draws == MAX_DIRICHLET_DRAWS {
                        break cuts;
                    }
                };
                let mut mine = Vec::new();
                for (of_label, cuts) in by_label.iter().zip(&cuts) {
                    let (start, end) = share_of(cuts, self.index);
                    mine.extend_from_slice(&of_label[start..end]);
                }
                mine.sort_unstable();
                mine
            }
            Scheme::Shards { per_participant } => {
                // Shuffled first so that the stable sort leaves each label's examples in a
                // seeded order; then sorted by label and cut.
                let mut sorted: Vec<usize> = (0..labels.len()).collect();
                sorted.shuffle(&mut rng);
                sorted.sort_by_key(|&i| labels[i]);
                let n_shards = self.count * per_participant;
                let mut shards: Vec<usize> = (0..n_shards).collect();
                shards.shuffle(&mut rng);
                let dealt = &shards[self.index * per_participant..][..per_participant];
                let mut mine = Vec::new();
                for &shard in dealt {
                    let (start, end) = bounds(sorted.len(), n_shards, shard);
                    mine.extend_from_slice(&sorted[start..end]);
                }
                mine.sort_unstable();
                mine
            }
        };
        if indices.is_empty() {
            return Err(Error::Partition(format!(
                "partition {} of {} ({:?}) holds no example of {} (use fewer partitions or a larger α)",
                self.index,
                self.count,
                self.scheme,
                labels.len()
            )));
        }
        Ok(indices)
    }
}

/// Draws of a Dirichlet partition before one that leaves nobody empty is given up on (the
/// participant left empty then says so).
const MAX_DIRICHLET_DRAWS: usize = 1000;

/// Cut points of `len` examples among `count` participants in proportions drawn from a
/// symmetric Dirichlet (normalised Gamma draws): participant `p` gets `cuts[p - 1]..cuts[p]`,
/// the last one up to `len`, so that the shares are disjoint and cover every example.
fn dirichlet_cuts(
    gamma: &Gamma<f64>,
    count: usize,
    len: usize,
    rng: &mut ChaCha20Rng,
) -> Vec<usize> {
    let weights: Vec<f64> = (0..count).map(|_| gamma.sample(rng)).collect();
    let total: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let mut cumulative = 0.0;
    let mut cuts: Vec<usize> = weights
        .iter()
        .map(|w| {
            cumulative += w / total;
            ((cumulative * len as f64).round() as usize).min(len)
        })
        .collect();
    if let Some(last) = cuts.last_mut() {
        *last = len;
    }
    cuts
}

/// Start and end of participant `index`'s share under `cuts` (from [`dirichlet_cuts`]).
fn share_of(cuts: &[usize], index: usize) -> (usize, usize) {
    let start = if index == 0 { 0 } else { cuts[index - 1] };
    (start, cuts[index].max(start))
}

/// Start and end of share `index` when `len` items are cut into `count` nearly equal parts.
fn bounds(len: usize, count: usize, index: usize) -> (usize, usize) {
    (len * index / count, len * (index + 1) / count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(n: usize) -> Vec<u32> {
        (0..n).map(|i| (i * 7 % 10) as u32).collect()
    }

    fn all_shares(scheme: Scheme, count: usize, seed: u64, labels: &[u32]) -> Vec<Vec<usize>> {
        (0..count)
            .map(|index| {
                Partition {
                    scheme,
                    index,
                    count,
                    seed,
                }
                .indices(labels, 0)
                .unwrap()
            })
            .collect()
    }

    fn assert_disjoint_cover(shares: &[Vec<usize>], n: usize) {
        let mut seen: Vec<usize> = shares.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn iid_shares_are_disjoint_equal_and_deterministic() {
        let labels = labels(1000);
        let shares = all_shares(Scheme::Iid, 4, 9, &labels);
        assert_disjoint_cover(&shares, 1000);
        assert!(shares.iter().all(|s| s.len() == 250));
        assert_eq!(shares, all_shares(Scheme::Iid, 4, 9, &labels));
        assert_ne!(shares, all_shares(Scheme::Iid, 4, 10, &labels));
    }

    #[test]
    fn a_draw_that_leaves_a_participant_empty_is_drawn_again() {
        // Dirichlet(0.1) among 100 participants often leaves someone with no example (seed 0's
        // first draw does, on this many examples); every share is non-empty all the same.
        let labels = labels(10_000);
        let shares = all_shares(Scheme::Dirichlet { alpha: 0.1 }, 100, 0, &labels);
        assert_disjoint_cover(&shares, 10_000);
        assert!(shares.iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn small_alpha_skews_labels() {
        let labels = labels(5000);
        let shares = all_shares(Scheme::Dirichlet { alpha: 0.1 }, 5, 3, &labels);
        assert_disjoint_cover(&shares, 5000);
        // With α = 0.1 a participant sees few labels in strength: its most common label takes a
        // far larger share than the 10% an IID split gives.
        let top_share = |share: &Vec<usize>| {
            let mut counts = [0usize; 10];
            share.iter().for_each(|&i| counts[labels[i] as usize] += 1);
            *counts.iter().max().unwrap() as f64 / share.len() as f64
        };
        let mean_top: f64 = shares.iter().map(top_share).sum::<f64>() / 5.0;
        assert!(mean_top > 0.3, "mean top-label share {mean_top}");
        let iid = all_shares(Scheme::Iid, 5, 3, &labels);
        let iid_top: f64 = iid.iter().map(top_share).sum::<f64>() / 5.0;
        assert!(iid_top < 0.15, "IID top-label share {iid_top}");
    }

    #[test]
    fn shards_give_each_participant_few_labels_as_in_mcmahan_et_al() {
        // 100 participants with 2 shards each of 20000 examples: shards of 100, as the paper's
        // MNIST split has 200 shards of 300.
        let labels = labels(20_000);
        let scheme = Scheme::Shards { per_participant: 2 };
        let shares = all_shares(scheme, 100, 5, &labels);
        assert_disjoint_cover(&shares, 20_000);
        assert!(shares.iter().all(|s| s.len() == 200));
        let distinct = |share: &Vec<usize>| {
            let mut seen: Vec<u32> = share.iter().map(|&i| labels[i]).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len()
        };
        assert!(
            shares.iter().all(|s| distinct(s) <= 2),
            "at most 2 labels each"
        );
        let with_one = shares.iter().filter(|s| distinct(s) == 1).count();
        assert!(
            with_one < 30,
            "{with_one} participants drew two shards of one label"
        );
        assert_eq!(shares, all_shares(scheme, 100, 5, &labels));
        assert_ne!(shares, all_shares(scheme, 100, 6, &labels));
    }

    #[test]
    fn bad_flags_are_refused_with_what_is_allowed() {
        assert_eq!(
            Partition::parse_scheme("shards:2").unwrap(),
            Scheme::Shards { per_participant: 2 }
        );
        for bad in ["shards:0", "shards:two", "shards:-1"] {
            let err = Partition::parse_scheme(bad).unwrap_err().to_string();
            assert!(err.contains("as in shards:2"), "{bad}: {err}");
        }
        assert_eq!(
            Partition::parse_scheme("dirichlet:0.5").unwrap(),
            Scheme::Dirichlet { alpha: 0.5 }
        );
        assert!(
            Partition::parse_scheme("dirichlet:-1")
                .unwrap_err()
                .to_string()
                .contains("positive")
        );
        assert!(
            Partition::parse_scheme("zipf")
                .unwrap_err()
                .to_string()
                .contains("iid, dirichlet:ALPHA, shards:K")
        );
        let err = Partition {
            scheme: Scheme::Iid,
            index: 4,
            count: 4,
            seed: 0,
        }
        .indices(&labels(10), 0)
        .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = Partition {
            scheme: Scheme::Iid,
            index: 0,
            count: 20,
            seed: 0,
        }
        .indices(&labels(10), 0)
        .unwrap_err();
        assert!(err.to_string().contains("holds no example"), "{err}");
    }

    proptest! {
        #[test]
        fn dirichlet_shares_always_cover_the_dataset(n in 50usize..400, count in 1usize..6, seed in 0u64..1000, alpha in 0.05f64..10.0) {
            let labels = labels(n);
            let shares: Vec<Vec<usize>> = (0..count)
                .map(|index| Partition { scheme: Scheme::Dirichlet { alpha }, index, count, seed }
                    .indices(&labels, 0).unwrap_or_default())
                .collect();
            assert_disjoint_cover(&shares, n);
        }
    }
}
