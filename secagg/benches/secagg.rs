//! Secure-aggregation arithmetic benchmark. For n in {10, 50, 100}, d in {100k, 1M}, dropout in
//! {0, 10%}, on the complete graph and on a k-regular graph (k = `default_degree(n)`):
//!
//! - participant: masking its input (1 self mask + k pairwise masks), next to the floor of
//!   generating the same AES-CTR keystream without using it;
//! - coordinator: summing the survivors' masked vectors and removing every mask (survivors' self
//!   masks, and each dropped participant's pairwise masks with its surviving neighbours) on all
//!   cores, next to the floor of the same number of keystream bytes generated on all cores plus
//!   one streaming pass over the survivors' vectors.
//!
//! Run with `cargo bench -p cairn-secagg --bench secagg` (`-- --quick` for d = 100k only).

use aes::cipher::{KeyIvInit, StreamCipher};
use cairn_secagg::graph::{Graph, default_degree};
use cairn_secagg::mask::{SessionId, mask_input, pairwise_mask_key, self_mask_key};
use cairn_secagg::prg::{Sign, apply_masks_parallel};
use std::hint::black_box;
use std::time::Instant;

type Aes128Ctr = ctr::Ctr64BE<aes::Aes128>;

fn seconds(run: impl FnOnce()) -> f64 {
    let started = Instant::now();
    run();
    started.elapsed().as_secs_f64()
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
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Keystream cost per value on one core, measured once on 64M values.
    let per_value = keystream_seconds(1 << 26) / (1u64 << 26) as f64;
    println!(
        "AES-128-CTR keystream floor: {:.2} GB/s per core; {threads} cores",
        4.0 / per_value / 1e9
    );
    println!(
        "{:>4} {:>8} {:>7} {:>9} | {:>12} {:>6} | {:>14} {:>6}",
        "n", "d", "dropout", "graph", "participant", "ratio", "coordinator", "ratio"
    );
    let session = SessionId([3u8; 32]);
    let dims: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &n in &[10u32, 50, 100] {
        for &d in dims {
            let survivors_max: Vec<Vec<u32>> = (0..n)
                .map(|i| {
                    (0..d as u32)
                        .map(|j| j.wrapping_mul(2_654_435_761).wrapping_add(i))
                        .collect()
                })
                .collect();
            for &dropout in &[0.0f64, 0.1] {
                for regular in [false, true] {
                    let graph = if regular {
                        Graph::regular(n, default_degree(n), [1u8; 32]).expect("graph")
                    } else {
                        Graph::complete(n)
                    };
                    if regular && graph == Graph::complete(n) {
                        continue; // k-regular is the complete graph at this size
                    }
                    let n_dropped = (f64::from(n) * dropout).round() as u32;
                    let dropped: Vec<u32> =
                        (0..n_dropped).map(|i| i * (n / n_dropped.max(1))).collect();
                    let survivors: Vec<u32> = (0..n).filter(|i| !dropped.contains(i)).collect();

                    // Participant 0's masking.
                    let k = graph.neighbours(0).len();
                    let secrets: Vec<(u32, [u8; 32])> = graph
                        .neighbours(0)
                        .iter()
                        .map(|&v| (v, [v as u8; 32]))
                        .collect();
                    let mut input = survivors_max[0].clone();
                    let participant =
                        seconds(|| mask_input(&mut input, 0, &[9u8; 32], &secrets, &session));
                    let participant_floor = per_value * ((k + 1) * d) as f64;

                    // Coordinator: sum the survivors' vectors, then remove every mask in parallel.
                    let mut masks = Vec::new();
                    for &u in &survivors {
                        masks.push((self_mask_key(&[u as u8; 32], &session, u), Sign::Subtract));
                    }
                    for &v in &dropped {
                        for &u in graph.neighbours(v).iter().filter(|u| !dropped.contains(u)) {
                            let sign = if v > u { Sign::Subtract } else { Sign::Add };
                            masks.push((pairwise_mask_key(&[7u8; 32], &session, u, v), sign));
                        }
                    }
                    let mut sum = vec![0u32; d];
                    let coordinator = seconds(|| {
                        for &u in &survivors {
                            for (s, x) in sum.iter_mut().zip(&survivors_max[u as usize]) {
                                *s = s.wrapping_add(*x);
                            }
                        }
                        apply_masks_parallel(&mut sum, &masks, threads);
                    });
                    black_box(&sum);
                    let mut stream = vec![0u32; d];
                    let streaming = seconds(|| {
                        for &u in &survivors {
                            for (s, x) in stream.iter_mut().zip(&survivors_max[u as usize]) {
                                *s = s.wrapping_add(*x);
                            }
                        }
                    });
                    black_box(&stream);
                    let coordinator_floor =
                        per_value * (masks.len() * d) as f64 / threads as f64 + streaming;
                    println!(
                        "{n:>4} {d:>8} {:>6.0}% {:>9} | {:>10.1}ms {:>5.2}x | {:>12.1}ms {:>5.2}x",
                        dropout * 100.0,
                        if regular {
                            format!("k={}", default_degree(n))
                        } else {
                            "complete".into()
                        },
                        participant * 1e3,
                        participant / participant_floor,
                        coordinator * 1e3,
                        coordinator / coordinator_floor,
                    );
                }
            }
        }
    }
}
