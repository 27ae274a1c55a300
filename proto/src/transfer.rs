//! Chunked transfer of named tensors: a [`TransferHeader`] describing the tensors, the payload
//! size and its SHA-256, followed by [`Chunk`]s of at most [`MAX_CHUNK_BYTES`] that each carry
//! their own SHA-256. The payload is every tensor's values as little-endian f32, concatenated in
//! header order, so a model of any size moves in messages far below gRPC's 4 MiB default.
//!
//! [`split`] produces the messages; [`Assembler`] takes them back in, checking every hash, the
//! order and the sizes, and refuses anything else with a [`TransferError`] that says what was
//! wrong and what was expected.

use crate::MAX_CHUNK_BYTES;
use crate::v1::{Chunk, TensorSpec, TransferHeader};
use ring::digest::{Context, SHA256, digest};

/// Something wrong with a transfer; the message names the value and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The header's tensor list does not describe the payload size it announces.
    #[error(
        "transfer header announces {announced} bytes, but its tensors hold {from_tensors} bytes"
    )]
    SizeMismatch {
        /// `total_bytes` from the header.
        announced: u64,
        /// 4 bytes times the number of values of all tensors.
        from_tensors: u64,
    },
    /// The payload does not have the number of values the receiver expects.
    #[error("{what} has {actual} values, expected {expected}")]
    WrongLength {
        /// What was transferred ("model update for round 3").
        what: String,
        /// Values announced by the sender.
        actual: u64,
        /// Values the receiver expects.
        expected: u64,
    },
    /// The header's chunk count does not match the payload size.
    #[error("transfer of {total_bytes} bytes announces {announced} chunks, expected {expected}")]
    WrongChunkCount {
        /// Payload size.
        total_bytes: u64,
        /// `n_chunks` from the header.
        announced: u32,
        /// Chunks of at most 1 MiB that this size needs.
        expected: u64,
    },
    /// A header's hash field is not a SHA-256 digest.
    #[error("transfer header's sha256 has {0} bytes, expected 32")]
    MalformedHash(usize),
    /// A tensor spec has an empty name or a zero dimension.
    #[error("tensor {index} ({name:?}) is malformed: {reason}")]
    MalformedTensor {
        /// Position in the header.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header lists no tensors.
    #[error("transfer header lists no tensors; a model has at least one")]
    NoTensors,
    /// A chunk belongs to another round than its header.
    #[error("chunk is for round {chunk_round}, but the transfer is for round {header_round}")]
    WrongRound {
        /// Round in the chunk.
        chunk_round: u64,
        /// Round in the header.
        header_round: u64,
    },
    /// A chunk arrived out of order, or one was duplicated or lost.
    #[error("chunk {actual} arrived where chunk {expected} was expected")]
    OutOfOrder {
        /// Index the chunk carries.
        actual: u32,
        /// Index the receiver waited for.
        expected: u32,
    },
    /// A chunk is larger than the 1 MiB limit or than what is left of the payload.
    #[error("chunk {index} has {actual} bytes, expected {expected}")]
    WrongChunkSize {
        /// Chunk index.
        index: u32,
        /// Bytes received.
        actual: usize,
        /// Bytes this chunk must have.
        expected: usize,
    },
    /// A chunk's data does not hash to the SHA-256 it carries.
    #[error("chunk {index}'s data does not match its sha256")]
    ChunkHashMismatch {
        /// Chunk index.
        index: u32,
    },
    /// The reassembled payload does not hash to the header's SHA-256.
    #[error("payload does not match the sha256 in its transfer header")]
    PayloadHashMismatch,
    /// The payload holds a NaN or infinite value.
    #[error("{what} holds a non-finite value ({value}) at position {position}")]
    NonFinite {
        /// What was transferred.
        what: String,
        /// Index of the first offending value.
        position: usize,
        /// The value itself.
        value: f32,
    },
}

impl TensorSpec {
    /// The wire form of a named tensor's shape (`fc1.weight`, `[out, in]`); both roles build
    /// their layouts with it, so that they compare equal exactly when the tensors agree.
    pub fn new(name: impl Into<String>, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.iter().map(|&d| d as u64).collect(),
        }
    }
}

/// Name of the one tensor a secure-aggregation masked input is sent as.
pub const MASKED_INPUT_TENSOR: &str = "masked_input";

/// The layout of a masked input of `len` values: one tensor [`MASKED_INPUT_TENSOR`] of shape
/// `[len]`, its payload little-endian `u32` ([`split_words`]).
pub fn masked_input_layout(len: usize) -> Vec<TensorSpec> {
    vec![TensorSpec::new(MASKED_INPUT_TENSOR, &[len])]
}

/// Number of values a tensor spec describes.
pub fn spec_len(spec: &TensorSpec) -> u64 {
    spec.shape.iter().product()
}

/// Splits `values` (laid out as `specs` describe) into a header and its chunks for `round`.
///
/// # Panics
/// If `values.len()` differs from the number of values `specs` describe: the caller builds both
/// from the same model, so a mismatch is a bug, not bad input.
pub fn split(round: u64, specs: &[TensorSpec], values: &[f32]) -> (TransferHeader, Vec<Chunk>) {
    split_payload(
        round,
        specs,
        values.len(),
        values.iter().flat_map(|v| v.to_le_bytes()),
    )
}

/// Splits a vector of unsigned 32-bit values (a masked input of secure aggregation, which is
/// not a float tensor) the same way as [`split`]; [`Assembler::push_words`] takes it back in.
///
/// # Panics
/// As [`split`].
pub fn split_words(
    round: u64,
    specs: &[TensorSpec],
    values: &[u32],
) -> (TransferHeader, Vec<Chunk>) {
    split_payload(
        round,
        specs,
        values.len(),
        values.iter().flat_map(|v| v.to_le_bytes()),
    )
}

fn split_payload(
    round: u64,
    specs: &[TensorSpec],
    n_given: usize,
    bytes: impl Iterator<Item = u8>,
) -> (TransferHeader, Vec<Chunk>) {
    let n_values: u64 = specs.iter().map(spec_len).sum();
    assert_eq!(n_values, n_given as u64, "tensor specs and values disagree");
    let payload: Vec<u8> = bytes.collect();
    let chunks: Vec<Chunk> = payload
        .chunks(MAX_CHUNK_BYTES)
        .enumerate()
        .map(|(index, data)| Chunk {
            round,
            index: index as u32,
            sha256: digest(&SHA256, data).as_ref().to_vec(),
            data: bytes::Bytes::copy_from_slice(data),
        })
        .collect();
    let header = TransferHeader {
        round,
        tensors: specs.to_vec(),
        total_bytes: payload.len() as u64,
        sha256: digest(&SHA256, &payload).as_ref().to_vec(),
        n_chunks: chunks.len() as u32,
    };
    (header, chunks)
}

/// Reassembles one transfer from its header and chunks, verifying everything on the way.
pub struct Assembler {
    header: TransferHeader,
    what: String,
    payload: Vec<u8>,
    next_index: u32,
    hash: Context,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("what", &self.what)
            .field("next_index", &self.next_index)
            .field("n_chunks", &self.header.n_chunks)
            .finish_non_exhaustive()
    }
}

impl Assembler {
    /// Starts a transfer described by `header`. `what` names it in errors ("model update for
    /// round 3"); `expected_values`, when given, is the exact number of values the receiver accepts.
    pub fn new(
        header: TransferHeader,
        what: impl Into<String>,
        expected_values: Option<u64>,
    ) -> Result<Self, TransferError> {
        let what = what.into();
        if header.tensors.is_empty() {
            return Err(TransferError::NoTensors);
        }
        for (index, spec) in header.tensors.iter().enumerate() {
            let reason = if spec.name.is_empty() {
                Some("empty name")
            } else if spec.shape.is_empty() || spec.shape.contains(&0) {
                Some("a shape needs at least one dimension and no zero dimension")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(TransferError::MalformedTensor {
                    index,
                    name: spec.name.clone(),
                    reason,
                });
            }
        }
        let n_values = header
            .tensors
            .iter()
            .try_fold(0u64, |sum, spec| {
                spec.shape
                    .iter()
                    .try_fold(1u64, |p, &d| p.checked_mul(d))
                    .and_then(|n| sum.checked_add(n))
            })
            .unwrap_or(u64::MAX);
        if let Some(expected) = expected_values
            && n_values != expected
        {
            return Err(TransferError::WrongLength {
                what,
                actual: n_values,
                expected,
            });
        }
        let from_tensors = n_values.saturating_mul(4);
        if header.total_bytes != from_tensors {
            return Err(TransferError::SizeMismatch {
                announced: header.total_bytes,
                from_tensors,
            });
        }
        let expected_chunks = header.total_bytes.div_ceil(MAX_CHUNK_BYTES as u64);
        if u64::from(header.n_chunks) != expected_chunks {
            return Err(TransferError::WrongChunkCount {
                total_bytes: header.total_bytes,
                announced: header.n_chunks,
                expected: expected_chunks,
            });
        }
        if header.sha256.len() != 32 {
            return Err(TransferError::MalformedHash(header.sha256.len()));
        }
        // Reserve lazily: a hostile header must not make us allocate its announced size up front.
        Ok(Self {
            header,
            what,
            payload: Vec::new(),
            next_index: 0,
            hash: Context::new(&SHA256),
        })
    }

    /// The header this transfer started from.
    pub fn header(&self) -> &TransferHeader {
        &self.header
    }

    /// Takes the next chunk. Returns the values once the last chunk has arrived and every check
    /// passed, `None` while more chunks are due.
    pub fn push(&mut self, chunk: Chunk) -> Result<Option<Vec<f32>>, TransferError> {
        let Some(payload) = self.push_bytes(chunk)? else {
            return Ok(None);
        };
        let values: Vec<f32> = payload
            .chunks_exact(4)
            .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .collect();
        if let Some((position, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(TransferError::NonFinite {
                what: self.what.clone(),
                position,
                value,
            });
        }
        Ok(Some(values))
    }

    /// As [`Assembler::push`], for a payload of unsigned 32-bit values (see [`split_words`]).
    pub fn push_words(&mut self, chunk: Chunk) -> Result<Option<Vec<u32>>, TransferError> {
        Ok(self.push_bytes(chunk)?.map(|payload| {
            payload
                .chunks_exact(4)
                .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                .collect()
        }))
    }

    fn push_bytes(&mut self, chunk: Chunk) -> Result<Option<Vec<u8>>, TransferError> {
        if chunk.round != self.header.round {
            return Err(TransferError::WrongRound {
                chunk_round: chunk.round,
                header_round: self.header.round,
            });
        }
        if chunk.index != self.next_index {
            return Err(TransferError::OutOfOrder {
                actual: chunk.index,
                expected: self.next_index,
            });
        }
        let remaining = self.header.total_bytes as usize - self.payload.len();
        let expected_size = remaining.min(MAX_CHUNK_BYTES);
        if chunk.data.len() != expected_size {
            return Err(TransferError::WrongChunkSize {
                index: chunk.index,
                actual: chunk.data.len(),
                expected: expected_size,
            });
        }
        if digest(&SHA256, &chunk.data).as_ref() != chunk.sha256.as_slice() {
            return Err(TransferError::ChunkHashMismatch { index: chunk.index });
        }
        self.hash.update(&chunk.data);
        self.payload.extend_from_slice(&chunk.data);
        self.next_index += 1;
        if self.next_index < self.header.n_chunks {
            return Ok(None);
        }
        let payload_hash = std::mem::replace(&mut self.hash, Context::new(&SHA256)).finish();
        if payload_hash.as_ref() != self.header.sha256.as_slice() {
            return Err(TransferError::PayloadHashMismatch);
        }
        Ok(Some(std::mem::take(&mut self.payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn specs(lengths: &[u64]) -> Vec<TensorSpec> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| TensorSpec::new(format!("t{i}"), &[n as usize]))
            .collect()
    }

    fn receive(header: TransferHeader, chunks: Vec<Chunk>) -> Result<Vec<f32>, TransferError> {
        let mut assembler = Assembler::new(header, "test payload", None)?;
        let mut result = None;
        for chunk in chunks {
            result = assembler.push(chunk)?;
        }
        Ok(result.expect("all chunks pushed"))
    }

    #[test]
    fn a_payload_larger_than_four_mib_round_trips_in_one_mib_chunks() {
        let values: Vec<f32> = (0..1_500_000).map(|i| i as f32 * 0.5).collect();
        let (header, chunks) = split(7, &specs(&[1_000_000, 500_000]), &values);
        assert_eq!(chunks.len(), 6);
        assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK_BYTES));
        assert_eq!(receive(header, chunks).unwrap(), values);
    }

    #[test]
    fn a_tampered_chunk_is_refused() {
        let values = vec![1.0f32; 1000];
        let (header, mut chunks) = split(1, &specs(&[1000]), &values);
        let mut data = chunks[0].data.to_vec();
        data[5] ^= 1;
        chunks[0].data = data.into();
        assert_eq!(
            receive(header, chunks),
            Err(TransferError::ChunkHashMismatch { index: 0 })
        );
    }

    #[test]
    fn a_chunk_whose_own_hash_was_recomputed_still_fails_the_payload_hash() {
        let values = vec![1.0f32; 1000];
        let (header, mut chunks) = split(1, &specs(&[1000]), &values);
        let mut data = chunks[0].data.to_vec();
        data[5] ^= 1;
        chunks[0].sha256 = digest(&SHA256, &data).as_ref().to_vec();
        chunks[0].data = data.into();
        assert_eq!(
            receive(header, chunks),
            Err(TransferError::PayloadHashMismatch)
        );
    }

    #[test]
    fn wrong_length_reordered_and_stale_chunks_are_refused() {
        let values = vec![0.25f32; 600_000];
        let (header, chunks) = split(3, &specs(&[600_000]), &values);
        let err =
            Assembler::new(header.clone(), "model update for round 3", Some(7850)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model update for round 3 has 600000 values, expected 7850"
        );

        let mut assembler = Assembler::new(header.clone(), "x", None).unwrap();
        assert_eq!(
            assembler.push(chunks[1].clone()),
            Err(TransferError::OutOfOrder {
                actual: 1,
                expected: 0
            })
        );
        let mut stale = chunks[0].clone();
        stale.round = 2;
        let mut assembler = Assembler::new(header, "x", None).unwrap();
        assert_eq!(
            assembler.push(stale),
            Err(TransferError::WrongRound {
                chunk_round: 2,
                header_round: 3
            })
        );
    }

    #[test]
    fn non_finite_values_are_refused_with_their_position() {
        let mut values = vec![0.0f32; 10];
        values[4] = f32::NAN;
        let (header, chunks) = split(1, &specs(&[10]), &values);
        let err = receive(header, chunks).unwrap_err();
        assert!(
            matches!(err, TransferError::NonFinite { position: 4, .. }),
            "{err}"
        );
        values[4] = f32::INFINITY;
        let (header, chunks) = split(1, &specs(&[10]), &values);
        assert!(matches!(
            receive(header, chunks),
            Err(TransferError::NonFinite { position: 4, .. })
        ));
    }

    #[test]
    fn unsigned_words_round_trip_without_a_finiteness_check() {
        // 0x7fc0_0000 is a NaN as f32 and an ordinary masked value as u32.
        let values: Vec<u32> = (0..300_000u32)
            .map(|i| i.wrapping_mul(0x7fc0_0001))
            .collect();
        let (header, chunks) = split_words(2, &specs(&[300_000]), &values);
        let mut assembler = Assembler::new(header, "masked input", Some(300_000)).unwrap();
        let mut result = None;
        for chunk in chunks {
            result = assembler.push_words(chunk).unwrap();
        }
        assert_eq!(result.unwrap(), values);
    }

    #[test]
    fn inconsistent_headers_are_refused() {
        let (mut header, _) = split(1, &specs(&[10]), &[0.0; 10]);
        header.total_bytes = 44;
        assert!(matches!(
            Assembler::new(header, "x", None),
            Err(TransferError::SizeMismatch { .. })
        ));
        let (mut header, _) = split(1, &specs(&[10]), &[0.0; 10]);
        header.n_chunks = 3;
        assert!(matches!(
            Assembler::new(header, "x", None),
            Err(TransferError::WrongChunkCount { .. })
        ));
        let (mut header, _) = split(1, &specs(&[10]), &[0.0; 10]);
        header.tensors[0].shape = vec![u64::MAX, u64::MAX];
        assert!(Assembler::new(header, "x", None).is_err());
    }

    proptest! {
        #[test]
        fn any_layout_round_trips(lengths in proptest::collection::vec(1u64..2000, 1..6), round in 0u64..100) {
            let n: u64 = lengths.iter().sum();
            let values: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
            let (header, chunks) = split(round, &specs(&lengths), &values);
            prop_assert_eq!(receive(header, chunks).unwrap(), values);
        }
    }
}
