//! Feeds arbitrary bytes to the secret-share decoder and combiner: malformed shares are refused,
//! never a panic.

#![no_main]

use cairn_secagg::shamir::{Share, combine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let shares: Vec<Share> = data
        .chunks(33)
        .filter_map(|bytes| Share::from_bytes(bytes.to_vec()).ok())
        .collect();
    if let Some(&threshold) = data.first() {
        let _ = combine(&shares, usize::from(threshold % 8));
    }
});
