//! Neighbourhoods (Bell et al. 2020, §3): each participant shares keys and masks only with its
//! neighbours. Small federations use the complete graph (Bonawitz et al. 2017). Larger ones use
//! a `k`-regular Harary graph whose labels are randomly permuted (as Google's production
//! implementation does; without the permutation, neighbours would be predictable from ids),
//! derived from a seed that every party computes from public round data, so all compute the
//! same graph.

use crate::Error;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

/// Who neighbours whom: `neighbours[i]` lists participant `i`'s neighbours, sorted, without `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    neighbours: Vec<Vec<u32>>,
}

/// A reasonable default degree for `n` participants: about `2 log2 n`, at least 8 (Bell et al.
/// 2020 take `O(log n)`; the constant keeps the graph connected with margin after dropouts).
pub fn default_degree(n: u32) -> u32 {
    let log = 32 - n.max(2).leading_zeros();
    (2 * log).max(8)
}

impl Graph {
    /// The complete graph on `n` participants.
    pub fn complete(n: u32) -> Graph {
        Graph {
            neighbours: (0..n)
                .map(|i| (0..n).filter(|&j| j != i).collect())
                .collect(),
        }
    }

    /// A `degree`-regular graph on `n` participants with labels permuted by `seed`; the
    /// complete graph when `degree >= n - 1`. An odd degree with an odd `n` is raised by one
    /// (no odd-degree regular graph has an odd number of vertices).
    pub fn regular(n: u32, degree: u32, seed: [u8; 32]) -> Result<Graph, Error> {
        if n < 2 {
            return Err(Error::Graph(format!(
                "{n} participants; a neighbourhood needs at least 2"
            )));
        }
        if degree < 2 {
            return Err(Error::Graph(format!(
                "degree {degree}; expected at least 2"
            )));
        }
        if degree >= n - 1 {
            return Ok(Graph::complete(n));
        }
        let degree = if degree % 2 == 1 && n % 2 == 1 {
            degree + 1
        } else {
            degree
        };
        if degree >= n - 1 {
            return Ok(Graph::complete(n));
        }
        let mut labels: Vec<u32> = (0..n).collect();
        labels.shuffle(&mut ChaCha20Rng::from_seed(seed));
        let mut neighbours = vec![Vec::with_capacity(degree as usize); n as usize];
        // Harary graph H(degree, n): position p is joined to p±1..p±degree/2, and for an odd
        // degree also to the opposite position p + n/2.
        for p in 0..n {
            let mut add = |q: u32| neighbours[labels[p as usize] as usize].push(labels[q as usize]);
            for offset in 1..=degree / 2 {
                add((p + offset) % n);
                add((p + n - offset) % n);
            }
            if degree % 2 == 1 {
                add((p + n / 2) % n);
            }
        }
        for list in &mut neighbours {
            list.sort_unstable();
            list.dedup();
        }
        Ok(Graph { neighbours })
    }

    /// Number of participants.
    pub fn len(&self) -> u32 {
        self.neighbours.len() as u32
    }

    /// Whether the graph has no participant.
    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty()
    }

    /// Participant `i`'s neighbours, sorted.
    pub fn neighbours(&self, i: u32) -> &[u32] {
        &self.neighbours[i as usize]
    }

    /// Whether `i` and `j` are neighbours.
    pub fn are_neighbours(&self, i: u32, j: u32) -> bool {
        self.neighbours[i as usize].binary_search(&j).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    #[test]
    fn small_federations_get_the_complete_graph() {
        let graph = Graph::regular(5, 8, [0; 32]).unwrap();
        assert_eq!(graph, Graph::complete(5));
        assert_eq!(graph.neighbours(2), &[0, 1, 3, 4]);
        assert!(Graph::regular(1, 2, [0; 32]).is_err());
    }

    #[test]
    fn the_default_degree_grows_logarithmically() {
        assert_eq!(default_degree(10), 8);
        assert_eq!(default_degree(1000), 20);
        assert_eq!(default_degree(100_000), 34);
    }

    proptest! {
        #[test]
        fn graphs_are_regular_symmetric_and_deterministic(n in 3u32..200, degree in 2u32..30, seed in proptest::array::uniform32(0u8..)) {
            let graph = Graph::regular(n, degree, seed).unwrap();
            prop_assert_eq!(&graph, &Graph::regular(n, degree, seed).unwrap());
            let expected = if degree >= n - 1 { n - 1 } else if degree % 2 == 1 && n % 2 == 1 { (degree + 1).min(n - 1) } else { degree };
            for i in 0..n {
                prop_assert_eq!(graph.neighbours(i).len() as u32, expected, "participant {}", i);
                prop_assert!(!graph.are_neighbours(i, i));
                for &j in graph.neighbours(i) {
                    prop_assert!(graph.are_neighbours(j, i), "{} -> {} not symmetric", i, j);
                }
            }
        }
    }
}
