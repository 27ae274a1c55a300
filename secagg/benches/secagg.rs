//! Secure-aggregation benchmark. For n in {10, 50, 100}, d in {100k, 1M}, dropout in {0, 10%},
//! on the complete graph and on a k-regular graph (k = `default_degree(n)`), it runs whole rounds
//! of the protocol machines and reports:
//!
//! - participant: one participant's compute over the round (key pairs, share generation and
//!   encryption, key agreements, masking its input with its self mask and a pairwise mask per
//!   neighbour), next to its floor: (1 + neighbours) keystream expansions of d values added into
//!   a vector, on one core;
//! - coordinator: adding the survivors' masked inputs (`on_masked_input`) and `finish`
//!   (reconstructions, key agreements, removing every mask), next to its floor: one keystream
//!   expansion per survivor self mask and per (dropped, surviving neighbour) pairwise mask, added
//!   into a vector, plus one pass adding the survivors' vectors, all on rayon's thread pool
//!   (every core), as the coordinator machine's work is.
//!
//! Floors are measured in the same run, right after what they bound, with the same keystream
//! calls, into a cache-resident block (so they pay for no memory traffic), on the same rayon
//! pool with one task per thread, and one key schedule per expansion and task. Each row is the fastest of a few rounds,
//! for both the work and its floor.
//!
//! Identity signatures are stubbed out: they are made and checked by the caller's certificate
//! keys through [`Signer`] and [`Verifier`], outside this crate.
//!
//! Run with `cargo bench -p cairn-secagg --bench secagg` (`-- --quick` for d = 100k only).

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use cairn_secagg::graph::{Graph, default_degree};
use cairn_secagg::protocol::{
    CoordinatorMachine, MaskedInput, ParticipantMachine, RoundConfig, Signer, Unmasked, Verifier,
    neighbourhood_size, threshold_for,
};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

type Aes128Ctr = ctr::Ctr64BE<aes::Aes128>;

/// Values the other participants mask. The coordinator's work depends only on its own vector
/// length, and in counter mode the first values of a long mask are the mask of a short vector, so
/// the others mask this prefix only (keeping a round of 100 participants cheap to set up) and pad
/// it to d values; the unmasked prefix then checks the round.
const PREFIX: usize = 16;

/// Values per keystream block, as in the PRG.
const BLOCK_VALUES: usize = 4096;

struct Unsigned;

impl Signer for Unsigned {
    fn sign(&self, _message: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

impl Verifier for Unsigned {
    fn verify(&self, _participant: u32, _message: &[u8], _signature: &[u8]) -> bool {
        true
    }
}

fn seconds<T>(run: impl FnOnce() -> T) -> (T, f64) {
    let started = Instant::now();
    let out = run();
    (out, started.elapsed().as_secs_f64())
}

/// Seconds to generate `n_values` u32s of AES-128-CTR keystream on one core.
fn keystream_seconds(n_values: usize) -> f64 {
    let mut cipher = Aes128Ctr::new(&[7u8; 16].into(), &[0u8; 16].into());
    let mut block = vec![0u8; 16 * 1024];
    let blocks = (n_values * 4).div_ceil(block.len());
    seconds(|| {
        for _ in 0..blocks {
            cipher.apply_keystream(&mut block);
        }
        black_box(&block);
    })
    .1
}

/// Adds the keystream of `key` from value `offset` on, `len` values of it, into `block`.
fn expand_into(block: &mut [u32; BLOCK_VALUES], key: &[u8; 16], offset: usize, len: usize) {
    const ZEROS: [u8; BLOCK_VALUES * 4] = [0u8; BLOCK_VALUES * 4];
    let mut cipher = Aes128Ctr::new(key.into(), &[0u8; 16].into());
    cipher.seek(offset as u64 * 4);
    let mut bytes = [0u8; BLOCK_VALUES * 4];
    let mut left = len;
    while left > 0 {
        let values = left.min(BLOCK_VALUES);
        let bytes = &mut bytes[..values * 4];
        cipher
            .apply_keystream_b2b(&ZEROS[..bytes.len()], bytes)
            .expect("equal buffer lengths");
        for (value, mask) in block.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = value.wrapping_add(u32::from_le_bytes([mask[0], mask[1], mask[2], mask[3]]));
        }
        left -= values;
    }
}

/// Seconds for `threads` tasks on rayon's pool to add `expansions` keystreams of `d` values each
/// into a cache-resident block, each task taking its share of every expansion's columns.
fn prg_floor(expansions: usize, d: usize, threads: usize) -> f64 {
    let per_thread = d.div_ceil(threads).div_ceil(4) * 4;
    seconds(|| {
        (0..threads).into_par_iter().for_each(|t| {
            let offset = t * per_thread;
            let len = per_thread.min(d.saturating_sub(offset));
            let mut block = [0u32; BLOCK_VALUES];
            for e in 0..expansions {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&(e as u64).to_le_bytes());
                expand_into(&mut block, &key, offset, len);
            }
            black_box(&block);
        });
    })
    .1
}

/// Seconds for `threads` tasks on rayon's pool to add `count` vectors of `input`'s length into a
/// sum, each task taking its share of the columns.
fn sum_floor(input: &[u32], count: usize, threads: usize) -> f64 {
    let mut sum = vec![0u32; input.len()];
    let per_thread = input.len().div_ceil(threads).max(1);
    let time = seconds(|| {
        sum.par_chunks_mut(per_thread)
            .zip(input.par_chunks(per_thread))
            .for_each(|(sum, input)| {
                for _ in 0..count {
                    for (s, x) in sum.iter_mut().zip(input) {
                        *s = s.wrapping_add(*x);
                    }
                }
            });
    })
    .1;
    black_box(&sum);
    time
}

/// A participant's quantised input.
fn input(participant: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|j| j.wrapping_mul(2_654_435_761).wrapping_add(participant))
        .collect()
}

/// Seconds measured in one round, and the floors measured right after it.
#[derive(Clone, Copy)]
struct Sample {
    participant: f64,
    participant_floor: f64,
    sum: f64,
    unmask: f64,
    coordinator_floor: f64,
}

impl Sample {
    fn min(self, other: Sample) -> Sample {
        Sample {
            participant: self.participant.min(other.participant),
            participant_floor: self.participant_floor.min(other.participant_floor),
            sum: self.sum.min(other.sum),
            unmask: self.unmask.min(other.unmask),
            coordinator_floor: self.coordinator_floor.min(other.coordinator_floor),
        }
    }
}

/// Runs `f` on every item, spread over rayon's pool, the results in the order of `items`.
fn each_parallel<T: Send, R: Send>(items: &mut [T], f: impl Fn(&mut T) -> R + Sync) -> Vec<R> {
    items.par_iter_mut().map(&f).collect()
}

/// Masks the coordinator removes when `dropped` drop out after sharing their keys: each
/// survivor's self mask, and each dropped participant's pairwise masks with its surviving
/// neighbours.
fn masks_to_remove(graph: &Graph, dropped: &[u32]) -> usize {
    let survives = |u: &u32| !dropped.contains(u);
    let survivors = (0..graph.len()).filter(survives).count();
    let pairwise: usize = dropped
        .iter()
        .map(|&v| graph.neighbours(v).iter().filter(|u| survives(u)).count())
        .sum();
    survivors + pairwise
}

/// One whole round in which `dropped` never send their masked input; participant 0 masks a full
/// input and is timed, the others mask [`PREFIX`] values.
fn round(config: &RoundConfig, dropped: &[u32], threads: usize) -> Sample {
    let d = config.vector_len;
    let short = RoundConfig {
        vector_len: PREFIX,
        ..config.clone()
    };
    let me = 0u32;
    let mut participant = 0.0;
    let mut coordinator = CoordinatorMachine::new(config.clone());

    let my_config = config.clone();
    let ((mut mine, my_ad), t) = seconds(|| ParticipantMachine::new(my_config, me, &Unsigned));
    participant += t;
    coordinator
        .on_advertisement(me, my_ad)
        .expect("advertisement");
    let mut others: Vec<(u32, ParticipantMachine)> = (1..config.n_participants)
        .map(|i| {
            let (machine, ad) = ParticipantMachine::new(short.clone(), i, &Unsigned);
            coordinator.on_advertisement(i, ad).expect("advertisement");
            (i, machine)
        })
        .collect();
    let ads = coordinator.close_advertisements().expect("advertisements");

    let (my_nonce, t) = seconds(|| mine.on_advertisements(ads.clone()));
    participant += t;
    coordinator
        .on_nonce(me, my_nonce.expect("nonce"))
        .expect("nonce");
    for (i, machine) in &mut others {
        let nonce = machine.on_advertisements(ads.clone()).expect("nonce");
        coordinator.on_nonce(*i, nonce).expect("nonce");
    }
    let nonces = coordinator.close_nonces().expect("graph");
    let graph = coordinator.graph().expect("graph").clone();

    let (my_shares, t) = seconds(|| mine.on_nonces(nonces.clone(), &Unsigned));
    participant += t;
    coordinator
        .on_shares(me, my_shares.expect("shares"))
        .expect("shares");
    let shares = each_parallel(&mut others, |(_, machine)| {
        machine
            .on_nonces(nonces.clone(), &Unsigned)
            .expect("shares")
    });
    for ((i, _), shares) in others.iter().zip(shares) {
        coordinator.on_shares(*i, shares).expect("shares");
    }
    let mut routed = coordinator.close_shares().expect("routing");

    let my_input = input(me, d);
    let my_mail = routed.remove(&me).expect("mail");
    let (my_masked, t) = seconds(|| mine.on_shares(my_mail, &my_input));
    participant += t;
    let mail: Vec<_> = others
        .iter()
        .map(|(i, _)| routed.remove(i).expect("mail"))
        .collect();
    let mut work: Vec<_> = others.iter_mut().zip(mail).collect();
    let masked = each_parallel(&mut work, |((i, machine), mail)| {
        machine
            .on_shares(std::mem::take(mail), &input(*i, PREFIX))
            .expect("masked input")
    });

    // Inputs are padded to full length just before they arrive, as a decoder would write them.
    let mut sum = 0.0;
    let mut exact = vec![0u32; PREFIX];
    let mut add = |values: Vec<u32>, from: u32, coordinator: &mut CoordinatorMachine| {
        for (e, x) in exact.iter_mut().zip(input(from, PREFIX)) {
            *e = e.wrapping_add(x);
        }
        let (result, t) = seconds(|| coordinator.on_masked_input(MaskedInput { from, values }));
        result.expect("masked input");
        sum += t;
    };
    add(
        my_masked.expect("masked input").values,
        me,
        &mut coordinator,
    );
    let padding = input(u32::MAX, d);
    for short_masked in masked {
        if dropped.contains(&short_masked.from) {
            continue;
        }
        let mut values = padding.clone();
        values[..PREFIX].copy_from_slice(&short_masked.values);
        add(values, short_masked.from, &mut coordinator);
    }
    let survivors = coordinator.close_masked_inputs().expect("survivors");

    let (signature, t) = seconds(|| mine.on_survivors(survivors.clone(), &Unsigned));
    participant += t;
    coordinator
        .on_signature(signature.expect("signature"))
        .expect("signature");
    for (i, machine) in &mut others {
        if survivors.contains(i) {
            let signature = machine
                .on_survivors(survivors.clone(), &Unsigned)
                .expect("signature");
            coordinator.on_signature(signature).expect("signature");
        }
    }
    let signatures = coordinator.close_signatures().expect("signatures");
    let (reveal, t) = seconds(|| mine.on_signatures(signatures.clone(), &Unsigned));
    participant += t;
    coordinator
        .on_reveal(reveal.expect("reveal"))
        .expect("reveal");
    for (i, machine) in &mut others {
        if survivors.contains(i) {
            let reveal = machine
                .on_signatures(signatures.clone(), &Unsigned)
                .expect("reveal");
            coordinator.on_reveal(reveal).expect("reveal");
        }
    }
    let (Unmasked { sum: unmasked, .. }, unmask) =
        seconds(|| coordinator.finish().expect("unmasking"));
    assert_eq!(
        unmasked[..PREFIX],
        exact,
        "the unmasked sum is the survivors' sum"
    );
    black_box(&unmasked);

    let neighbours = graph.neighbours(me).len();
    let participant_floor = prg_floor(1 + neighbours, d, 1);
    let coordinator_floor = prg_floor(masks_to_remove(&graph, dropped), d, threads)
        + sum_floor(&padding, survivors.len(), threads);
    Sample {
        participant,
        participant_floor,
        sum,
        unmask,
        coordinator_floor,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // The coordinator machine works on rayon's global pool; its floors use that pool too, with
    // one task per thread of it.
    let threads = rayon::current_num_threads();
    // Keystream cost per value on one core, measured once on 64M values.
    let per_value = keystream_seconds(1 << 26) / (1u64 << 26) as f64;
    println!(
        "AES-128-CTR keystream: {:.2} GB/s per core; {threads} cores; times are the fastest of the rounds run",
        4.0 / per_value / 1e9
    );
    println!();
    println!(
        "| {:>3} | {:>4} | {:>7} | {:>8} | {:>6} | {:>14} | {:>8} | {:>5} | {:>5} | {:>6} | {:>9} | {:>14} | {:>8} | {:>5} |",
        "n",
        "d",
        "dropout",
        "graph",
        "rounds",
        "participant ms",
        "floor ms",
        "ratio",
        "masks",
        "sum ms",
        "unmask ms",
        "coordinator ms",
        "floor ms",
        "ratio"
    );
    println!(
        "|----:|-----:|--------:|---------:|-------:|---------------:|---------:|------:|------:|-------:|----------:|---------------:|---------:|------:|"
    );
    let dims: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    let started = Instant::now();
    for &n in &[10u32, 50, 100] {
        let roster: Vec<String> = (0..n).map(|i| format!("participant-{i}")).collect();
        for &d in dims {
            for &dropout in &[0.0f64, 0.1] {
                for regular in [false, true] {
                    let degree = if regular { default_degree(n) } else { n - 1 };
                    let neighbours = neighbourhood_size(n, degree).expect("graph");
                    if regular && neighbours == n as usize - 1 {
                        continue; // k-regular is the complete graph at this size
                    }
                    let threshold = threshold_for(neighbours, 0.5);
                    let config = RoundConfig::derive("bench", 1, 0, &roster, degree, threshold, d)
                        .expect("round configuration");
                    let n_dropped = (f64::from(n) * dropout).round() as u32;
                    let step = n / n_dropped.max(1);
                    // Spread out, and never participant 0, which is timed.
                    let dropped: Vec<u32> = (0..n_dropped).map(|i| i * step + step / 2).collect();
                    // Few rounds for the big cases: each sets up a whole federation.
                    let rounds = if d >= 1_000_000 { 5 } else { 7 };
                    let best = (0..rounds)
                        .map(|_| round(&config, &dropped, threads))
                        .reduce(Sample::min)
                        .expect("at least one round");
                    let coordinator = best.sum + best.unmask;
                    // Each round draws its own graph; the count is that of one of the same shape.
                    let shape = config.graph([0; 32]).expect("graph");
                    let masks = masks_to_remove(&shape, &dropped);
                    println!(
                        "| {n:>3} | {:>4} | {:>6.0}% | {:>8} | {rounds:>6} | {:>14.1} | {:>8.1} | {:>4.2}x | {masks:>5} | {:>6.1} | {:>9.1} | {:>14.1} | {:>8.1} | {:>4.2}x |",
                        if d >= 1_000_000 {
                            format!("{}M", d / 1_000_000)
                        } else {
                            format!("{}k", d / 1_000)
                        },
                        dropout * 100.0,
                        if regular {
                            format!("k={degree}")
                        } else {
                            "complete".into()
                        },
                        best.participant * 1e3,
                        best.participant_floor * 1e3,
                        best.participant / best.participant_floor,
                        best.sum * 1e3,
                        best.unmask * 1e3,
                        coordinator * 1e3,
                        best.coordinator_floor * 1e3,
                        coordinator / best.coordinator_floor,
                    );
                }
            }
        }
    }
    println!();
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
