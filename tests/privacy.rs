//! The privacy accountant against Google's `dp_accounting` (the reference the DDG paper's own
//! code is built on): for the same noise and rounds, `RdpAccountant` with the Gaussian mechanism
//! gives the `ε` Cairn reports, since at Cairn's noise levels the distributed discrete Gaussian
//! is accounted as a Gaussian (its `τ` is 0). Needs the venv with `dp_accounting`.

use cairn_secagg::privacy::{DistributedDp, Ledger};

/// (noise multiplier, rounds, δ): a single release, tens and thousands of rounds.
const CASES: [(f64, u64, f64); 6] = [
    (0.5, 1, 1e-5),
    (1.0, 10, 1e-5),
    (1.1, 100, 1e-5),
    (2.0, 100, 1e-6),
    (5.0, 1000, 1e-5),
    (20.0, 5000, 1e-3),
];

#[test]
fn the_accountant_gives_dp_accountings_epsilon() {
    let Some(python) = cairn_tests::venv_python(&["dp_accounting"]) else {
        return;
    };
    let cases: Vec<String> = CASES
        .iter()
        .map(|(z, rounds, delta)| format!("({z:?}, {rounds}, {delta:e})"))
        .collect();
    let script = format!(
        "import dp_accounting\n\
         for z, rounds, delta in [{}]:\n\
         \x20   accountant = dp_accounting.rdp.RdpAccountant()\n\
         \x20   accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)\n\
         \x20   print(repr(float(accountant.get_epsilon(delta))))\n",
        cases.join(", ")
    );
    let reference: Vec<f64> = cairn_tests::python_output(&python, &script, &[])
        .lines()
        .map(|line| line.parse().expect("an epsilon"))
        .collect();
    assert_eq!(reference.len(), CASES.len());
    for ((z, rounds, delta), expected) in CASES.iter().zip(reference) {
        // The 2NN's 199,210 parameters, 10 sites' noise per sum.
        let mechanism = DistributedDp::new(1.0, *z, 10, 199_210).expect("mechanism");
        let epsilon = Ledger::after(&mechanism, *rounds).epsilon(*delta);
        assert!(
            (epsilon - expected).abs() <= 1e-9 * expected,
            "z {z}, {rounds} rounds, delta {delta}: {epsilon} against dp_accounting's {expected}"
        );
    }
}
