//! Neighbourhoods (Bell et al. 2020, §3): each participant shares keys and masks only with its
//! neighbours. Small federations use the complete graph (Bonawitz et al. 2017). Larger ones use
//! a `k`-regular Harary graph whose labels are randomly permuted (as Google's production
//! implementation does; without the permutation, neighbours would be predictable from ids),
//! derived from a seed that every party computes from public round data, so all compute the
//! same graph. The permutation is specified here ([`permutation`]), not taken from a random
//! number library: a library may change its sampling between versions, and two builds that
//! derived different graphs could never complete a secure round together.

use crate::Error;
use ring::digest::{Context, SHA256};

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
        let labels = permutation(n, &seed);
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

/// Domain separation of the permutation's random stream.
const PERMUTATION_LABEL: &[u8] = b"cairn-secagg graph permutation v1";

/// The permutation of `0..n` that `seed` selects. This is part of the protocol, so it is written
/// out precisely enough to reimplement:
///
/// - **Stream.** SHA-256 in counter mode: block `c` (for `c` = 0, 1, 2, ...) is
///   `SHA-256("cairn-secagg graph permutation v1" || seed || c)`, the label as ASCII bytes
///   without a terminator and `c` as 8 bytes big-endian. The stream is the blocks one after
///   the other, read as 4-byte big-endian words (8 words per block, in order).
/// - **Uniform index below `bound`.** Take the next word `w`; if `w >= 2^32 - (2^32 mod bound)`,
///   discard it and take the next (so that every index is equally likely); otherwise the index
///   is `w mod bound`.
/// - **Shuffle.** Fisher–Yates as Durstenfeld wrote it: start from `labels = [0, 1, ..., n-1]`;
///   for `i` from `n - 1` down to `1`, draw an index `j` below `i + 1` and swap `labels[i]` and
///   `labels[j]`. `labels[p]` is the participant placed at position `p`.
fn permutation(n: u32, seed: &[u8; 32]) -> Vec<u32> {
    let mut stream = PermutationStream {
        seed: *seed,
        counter: 0,
        block: [0; 32],
        used: 32,
    };
    let mut labels: Vec<u32> = (0..n).collect();
    for i in (1..n).rev() {
        let j = stream.below(i + 1);
        labels.swap(i as usize, j as usize);
    }
    labels
}

/// The random stream of [`permutation`].
struct PermutationStream {
    seed: [u8; 32],
    /// Counter of the next block to hash.
    counter: u64,
    block: [u8; 32],
    /// Bytes of `block` already read.
    used: usize,
}

impl PermutationStream {
    fn next_word(&mut self) -> u32 {
        if self.used == self.block.len() {
            let mut hash = Context::new(&SHA256);
            hash.update(PERMUTATION_LABEL);
            hash.update(&self.seed);
            hash.update(&self.counter.to_be_bytes());
            self.block.copy_from_slice(hash.finish().as_ref());
            self.counter += 1;
            self.used = 0;
        }
        let word = &self.block[self.used..self.used + 4];
        self.used += 4;
        u32::from_be_bytes([word[0], word[1], word[2], word[3]])
    }

    /// A uniform index in `0..bound`, by rejection sampling; `bound` is at least 1.
    fn below(&mut self, bound: u32) -> u32 {
        let range = 1u64 << 32;
        // The largest multiple of `bound` that fits in a word: words at or above it would make
        // the smallest indices more likely than the others.
        let limit = range - range % u64::from(bound);
        loop {
            let word = self.next_word();
            if u64::from(word) < limit {
                return word % bound;
            }
        }
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

    /// The seed `00 01 02 .. 1f`.
    fn counting_seed() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    // The expected values below were computed by an independent reimplementation of the
    // specification in [`permutation`]'s documentation (testdata/derivations.py). They must
    // never change: every party of a round has to derive the same graph, whatever its build.

    #[test]
    fn the_permutation_is_the_specified_one() {
        assert_eq!(permutation(10, &[0; 32]), [9, 1, 4, 6, 8, 3, 5, 0, 7, 2]);
        assert_eq!(
            permutation(16, &counting_seed()),
            [1, 0, 7, 15, 8, 5, 6, 3, 10, 4, 9, 13, 11, 12, 2, 14]
        );
        assert_eq!(permutation(1, &[0; 32]), [0]);
        assert_eq!(permutation(0, &[0; 32]), [] as [u32; 0]);
    }

    #[test]
    fn a_permutation_draws_every_index_below_its_bound_without_bias() {
        // 2^32 mod 3 = 1, so exactly one word (2^32 - 1) is rejected for bound 3; the rest map
        // to 0, 1, 2 in turn. Checking the boundary words directly pins the rejection rule.
        let mut stream = PermutationStream {
            seed: [0; 32],
            counter: 0,
            block: [0; 32],
            used: 0,
        };
        // Words: 2^32 - 2 (accepted: the limit is 2^32 - 1), then 2^32 - 1 (rejected), then 5.
        stream.block[..4].copy_from_slice(&(u32::MAX - 1).to_be_bytes());
        stream.block[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        stream.block[8..12].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(stream.below(3), (u32::MAX - 1) % 3);
        assert_eq!(stream.below(3), 5 % 3, "the word 2^32 - 1 is rejected");
        assert_eq!(stream.used, 12);
    }

    #[test]
    fn regular_graphs_are_the_specified_ones() {
        let expected: [&[u32]; 12] = [
            &[3, 6, 9, 11],
            &[5, 7, 8, 10],
            &[6, 8, 10, 11],
            &[0, 4, 9, 11],
            &[3, 5, 7, 9],
            &[1, 4, 7, 10],
            &[0, 2, 8, 11],
            &[1, 4, 5, 9],
            &[1, 2, 6, 10],
            &[0, 3, 4, 7],
            &[1, 2, 5, 8],
            &[0, 2, 3, 6],
        ];
        let graph = Graph::regular(12, 4, counting_seed()).unwrap();
        for (i, neighbours) in expected.iter().enumerate() {
            assert_eq!(graph.neighbours(i as u32), *neighbours, "participant {i}");
        }
        // An odd degree joins opposite positions.
        let expected: [&[u32]; 10] = [
            &[1, 2, 7],
            &[0, 8, 9],
            &[0, 6, 9],
            &[5, 6, 9],
            &[5, 6, 8],
            &[3, 4, 7],
            &[2, 3, 4],
            &[0, 5, 8],
            &[1, 4, 7],
            &[1, 2, 3],
        ];
        let graph = Graph::regular(10, 3, counting_seed()).unwrap();
        for (i, neighbours) in expected.iter().enumerate() {
            assert_eq!(graph.neighbours(i as u32), *neighbours, "participant {i}");
        }
        // An odd degree with an odd number of participants is raised by one.
        let expected: [&[u32]; 9] = [
            &[2, 3, 5, 7],
            &[2, 4, 6, 8],
            &[0, 1, 4, 5],
            &[0, 5, 6, 7],
            &[1, 2, 5, 8],
            &[0, 2, 3, 4],
            &[1, 3, 7, 8],
            &[0, 3, 6, 8],
            &[1, 4, 6, 7],
        ];
        let graph = Graph::regular(9, 3, [0; 32]).unwrap();
        for (i, neighbours) in expected.iter().enumerate() {
            assert_eq!(graph.neighbours(i as u32), *neighbours, "participant {i}");
        }
    }

    proptest! {
        #[test]
        fn every_permutation_is_a_permutation(n in 0u32..300, seed in proptest::array::uniform32(0u8..)) {
            let mut labels = permutation(n, &seed);
            labels.sort_unstable();
            prop_assert_eq!(labels, (0..n).collect::<Vec<u32>>());
        }

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
