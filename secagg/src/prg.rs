//! The mask PRG: AES-128 in counter mode (AES-NI where the CPU has it, detected at run time),
//! as in Bonawitz et al. 2017 §6 and Google's production implementation. A mask is the keystream
//! read as little-endian `u32`s; it is generated in cache-sized blocks and added to (or
//! subtracted from) the vector in the same pass, so a 1M-element mask never exists in memory.

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use rayon::prelude::*;

type Aes128Ctr = ctr::Ctr64BE<aes::Aes128>;

/// A 128-bit PRG key; derive it with [`crate::mask`]'s key derivation, never use a raw secret.
pub type PrgKey = [u8; 16];

/// Whether a mask is added or subtracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// `vector += mask`.
    Add,
    /// `vector -= mask`.
    Subtract,
}

/// Values per keystream block: 16 KiB, which stays in L1/L2 cache.
const BLOCK_VALUES: usize = 4096;

/// Adds (or subtracts) the mask expanded from `key` to `vector`, modulo 2^32.
pub fn apply_mask(vector: &mut [u32], key: &PrgKey, sign: Sign) {
    apply_mask_at(vector, 0, key, sign);
}

/// Like [`apply_mask`] for the part of a longer vector that starts at value `offset`: counter
/// mode can start anywhere, so threads can each take a range of columns.
pub fn apply_mask_at(vector: &mut [u32], offset: usize, key: &PrgKey, sign: Sign) {
    // The IV is fixed: every key is derived for one mask of one session and used once.
    let mut cipher = Aes128Ctr::new(key.into(), &[0u8; 16].into());
    cipher.seek(offset as u64 * 4);
    // Encrypting a constant zero block into a second buffer yields the keystream without a pass
    // to clear the buffer first.
    const ZEROS: [u8; BLOCK_VALUES * 4] = [0u8; BLOCK_VALUES * 4];
    let mut block = [0u8; BLOCK_VALUES * 4];
    for values in vector.chunks_mut(BLOCK_VALUES) {
        let bytes = &mut block[..values.len() * 4];
        // Invariant: both buffers have the same length, the only way this can fail.
        cipher
            .apply_keystream_b2b(&ZEROS[..bytes.len()], bytes)
            .expect("equal buffer lengths");
        let masks = bytes
            .chunks_exact(4)
            .map(|mask| u32::from_le_bytes([mask[0], mask[1], mask[2], mask[3]]));
        // One loop per sign: with the sign tested inside, subtraction does not vectorise and
        // costs a quarter more.
        match sign {
            Sign::Add => {
                for (value, mask) in values.iter_mut().zip(masks) {
                    *value = value.wrapping_add(mask);
                }
            }
            Sign::Subtract => {
                for (value, mask) in values.iter_mut().zip(masks) {
                    *value = value.wrapping_sub(mask);
                }
            }
        }
    }
}

/// Values per tile: a tile is the unit of work of [`apply_masks`] and [`apply_masks_parallel`],
/// small enough to stay in cache while every mask is applied to it, large enough that setting
/// up a cipher per mask and tile costs little.
const TILE_VALUES: usize = 4 * BLOCK_VALUES;

/// Applies `masks` to one tile that starts at value `offset` of the whole vector.
fn apply_masks_to_tile(tile: &mut [u32], offset: usize, masks: &[(PrgKey, Sign)]) {
    for (key, sign) in masks {
        apply_mask_at(tile, offset, key, *sign);
    }
}

/// Applies many masks to `vector` on the calling thread, one cache-sized tile at a time, every
/// mask to a tile before moving on, so the vector is read and written once rather than once per
/// mask.
pub fn apply_masks(vector: &mut [u32], masks: &[(PrgKey, Sign)]) {
    for (index, tile) in vector.chunks_mut(TILE_VALUES).enumerate() {
        apply_masks_to_tile(tile, index * TILE_VALUES, masks);
    }
}

/// Like [`apply_masks`], with the tiles spread over rayon's thread pool. Counter mode makes each
/// tile's mask depend only on its position, so the result is the same bit for bit whatever the
/// number of threads.
pub fn apply_masks_parallel(vector: &mut [u32], masks: &[(PrgKey, Sign)]) {
    vector
        .par_chunks_mut(TILE_VALUES)
        .enumerate()
        .for_each(|(index, tile)| apply_masks_to_tile(tile, index * TILE_VALUES, masks));
}

/// The mask itself (for tests and benchmarks).
pub fn expand(key: &PrgKey, len: usize) -> Vec<u32> {
    let mut mask = vec![0u32; len];
    apply_mask(&mut mask, key, Sign::Add);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keystream_is_aes_128_ctr() {
        // The first counter block is all zeros, so the first keystream block is AES-128 of the
        // zero block; with the all-zero key that is 66e94bd4ef8a2c3b884cfa59ca342b2e (the
        // well-known AES-128 known-answer value).
        let mask = expand(&[0u8; 16], 4);
        let bytes: Vec<u8> = mask.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "66e94bd4ef8a2c3b884cfa59ca342b2e");
    }

    #[test]
    fn adding_then_subtracting_restores_the_vector_across_blocks() {
        let original: Vec<u32> = (0..10_000).map(|i| i * 7).collect();
        let mut vector = original.clone();
        apply_mask(&mut vector, &[9u8; 16], Sign::Add);
        assert_ne!(vector, original);
        apply_mask(&mut vector, &[9u8; 16], Sign::Subtract);
        assert_eq!(vector, original);
    }

    #[test]
    fn the_keystream_counter_and_word_order_are_pinned() {
        // AES-128 (key 00 01 .. 0f) of the counter blocks 0, 1 and 2 (a 64-bit big-endian
        // counter in the last 8 bytes), computed with `openssl enc -aes-128-ecb`; the mask is
        // that keystream read as little-endian words.
        let key: PrgKey = std::array::from_fn(|i| i as u8);
        let keystream = "c6a13b37878f5b826f4f8162a1c8d879\
                         7346139595c0b41e497bbde365f42d0a\
                         49d68753999ba68ce3897a686081b09d";
        let hex = |mask: &[u32]| -> String {
            mask.iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(hex(&expand(&key, 12)), keystream);
        // From value 5 on, inside the second block.
        let mut tail = vec![0u32; 6];
        apply_mask_at(&mut tail, 5, &key, Sign::Add);
        assert_eq!(hex(&tail), keystream[5 * 8..11 * 8]);
    }

    #[test]
    fn masks_applied_by_range_or_in_parallel_equal_the_whole() {
        let masks = [
            ([1u8; 16], Sign::Add),
            ([2u8; 16], Sign::Subtract),
            ([3u8; 16], Sign::Add),
        ];
        for len in [0, 1, 3, 4, 4097, 10_001, TILE_VALUES, 3 * TILE_VALUES + 5] {
            let mut whole = vec![5u32; len];
            for (key, sign) in &masks {
                apply_mask(&mut whole, key, *sign);
            }
            let mut tiled = vec![5u32; len];
            apply_masks(&mut tiled, &masks);
            assert_eq!(tiled, whole, "len {len}, tiled");
            for threads in [1, 2, 3, 7] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut parallel = vec![5u32; len];
                pool.install(|| apply_masks_parallel(&mut parallel, &masks));
                assert_eq!(parallel, whole, "len {len}, {threads} threads");
            }
            let mut tail = vec![5u32; len.saturating_sub(1)];
            apply_mask_at(&mut tail, 1, &masks[0].0, Sign::Add);
            let mut expected = vec![5u32; len];
            apply_mask(&mut expected, &masks[0].0, Sign::Add);
            assert_eq!(tail, expected.get(1..).unwrap_or_default());
        }
    }

    #[test]
    fn different_keys_give_different_masks_and_a_long_mask_continues_a_short_one() {
        assert_ne!(expand(&[1u8; 16], 64), expand(&[2u8; 16], 64));
        let long = expand(&[3u8; 16], 5000);
        assert_eq!(&long[..100], expand(&[3u8; 16], 100).as_slice());
    }
}
