//! Benchmark of the plaintext weighted aggregation: n = 100 participants x d = 1M parameters
//! added into the running sum (fixed point, in the chunk-sized pieces updates arrive in), reported next to a memory-streaming floor measured in the same run
//! (reading the same bytes and summing them in the simplest loop), as a ratio.
//!
//! Run with `cargo bench -p cairn-coordinator --bench aggregation`.

use cairn_coordinator::config::{ServerAlgorithm, ServerOptimizerSpec};
use cairn_coordinator::strategy::{PlainSum, ServerOptimizer, UpdateSum};
use std::hint::black_box;
use std::time::Instant;

const N_PARTICIPANTS: usize = 100;
const N_VALUES: usize = 1_000_000;
const REPEATS: usize = 3;

fn best_of(mut run: impl FnMut()) -> f64 {
    (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let updates: Vec<Vec<f32>> = (0..N_PARTICIPANTS)
        .map(|p| {
            (0..N_VALUES)
                .map(|i| ((i + p) % 17) as f32 * 0.01)
                .collect()
        })
        .collect();
    let sum_of = |updates: &[Vec<f32>]| -> UpdateSum {
        let mut sum = PlainSum::new(N_VALUES);
        for (p, update) in updates.iter().enumerate() {
            for (i, piece) in update.chunks(cairn_proto::MAX_CHUNK_BYTES / 4).enumerate() {
                let offset = i * cairn_proto::MAX_CHUNK_BYTES / 4;
                sum.add(offset, piece).expect("updates have the right size");
            }
            sum.add_contributor(100 + p as u64, 1.0)
                .expect("a valid weight");
        }
        sum.finish()
    };
    let global = vec![0.0f32; N_VALUES];

    // Floor: stream every input byte once and add it into one f64 accumulator vector, the least
    // work any aggregation of these inputs must do.
    let floor = best_of(|| {
        let mut accumulator = vec![0.0f64; N_VALUES];
        for update in &updates {
            for (sum, value) in accumulator.iter_mut().zip(update) {
                *sum += f64::from(*value);
            }
        }
        black_box(&accumulator);
    });
    let fedavg = ServerOptimizer::new(&ServerOptimizerSpec::default(), N_VALUES);
    let aggregate = best_of(|| {
        let sum = sum_of(&updates);
        black_box(fedavg.step(&global, &sum).expect("non-empty sum"));
    });
    // The server step alone, on one round's sum: FedAdam reads and writes two moments more.
    let sum = sum_of(&updates);
    let fedadam = ServerOptimizer::new(
        &ServerOptimizerSpec {
            algorithm: ServerAlgorithm::FedAdam,
            ..ServerOptimizerSpec::default()
        },
        N_VALUES,
    );
    let fedavg_step = best_of(|| {
        black_box(fedavg.step(&global, &sum).expect("non-empty sum"));
    });
    let fedadam_step = best_of(|| {
        black_box(fedadam.step(&global, &sum).expect("non-empty sum"));
    });
    let bytes = (N_PARTICIPANTS * N_VALUES * 4) as f64;
    println!(
        "plain weighted aggregation, n = {N_PARTICIPANTS}, d = {N_VALUES} (best of {REPEATS})"
    );
    println!(
        "  floor (stream + add):   {:>8.1} ms  {:>6.2} GB/s",
        floor * 1e3,
        bytes / floor / 1e9
    );
    println!(
        "  PlainSum + FedAvg:      {:>8.1} ms  {:>6.2} GB/s",
        aggregate * 1e3,
        bytes / aggregate / 1e9
    );
    println!("  ratio to floor:         {:>8.2}x", aggregate / floor);
    println!(
        "  server step, d = {N_VALUES}: fedavg {:.1} ms, fedadam {:.1} ms ({:.2}x the floor per participant)",
        fedavg_step * 1e3,
        fedadam_step * 1e3,
        fedadam_step / (floor / N_PARTICIPANTS as f64)
    );
}
