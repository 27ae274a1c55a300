//! Chunked transfer of named tensors: a [`TransferHeader`] describing the tensors, the payload
//! size, its SHA-256 and the SHA-256 of every chunk, followed by [`Chunk`]s of at most
//! [`MAX_CHUNK_BYTES`]. The payload is every tensor's values as little-endian f32, concatenated
//! in header order, so a model of any size moves in messages far below gRPC's 4 MiB default.
//!
//! [`split`] produces the messages; [`Assembler`] takes them back in, checking the order, the
//! sizes and each chunk against the hash its header committed to, and refuses anything else
//! with a [`TransferError`] that says what was wrong and what was expected. Because the header
//! commits to every chunk, a receiver can use each chunk as it arrives ([`Assembler::accept_floats`],
//! [`Assembler::accept_words`]): the coordinator adds it into the round's sum and keeps nothing
//! else of it.

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
        /// Chunks of at most `MAX_CHUNK_BYTES` that this size needs.
        expected: u64,
    },
    /// A header's hash field is not a SHA-256 digest.
    #[error("transfer header's sha256 has {0} bytes, expected 32")]
    MalformedHash(usize),
    /// The header's chunk hashes are not one SHA-256 digest per chunk.
    #[error(
        "transfer header lists {listed} chunk hashes ({malformed} not of 32 bytes) for {n_chunks} chunks; expected one SHA-256 per chunk"
    )]
    MalformedChunkHashes {
        /// Hashes in `chunk_sha256`.
        listed: usize,
        /// Of those, how many are not 32 bytes long.
        malformed: usize,
        /// `n_chunks` from the header.
        n_chunks: u32,
    },
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
    /// A chunk arrived after the transfer was complete.
    #[error("chunk {index} arrived after the transfer's last chunk")]
    AfterLast {
        /// Index the chunk carries.
        index: u32,
    },
    /// A chunk is larger than `MAX_CHUNK_BYTES` or than what is left of the payload.
    #[error("chunk {index} has {actual} bytes, expected {expected}")]
    WrongChunkSize {
        /// Chunk index.
        index: u32,
        /// Bytes received.
        actual: usize,
        /// Bytes this chunk must have.
        expected: usize,
    },
    /// A chunk's data does not hash to the SHA-256 its header committed to.
    #[error("chunk {index}'s data does not match the sha256 its transfer header lists for it")]
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

/// As [`split`], without copying `values`: on a little-endian machine, where an f32's bytes in
/// memory are the wire's, every chunk is a view of `values` itself, which lives as long as a
/// chunk does. A model of gigabytes is then sent without a second copy of it.
pub fn split_owned<T>(round: u64, specs: &[TensorSpec], values: T) -> (TransferHeader, Vec<Chunk>)
where
    T: AsRef<[f32]> + Send + 'static,
{
    let n_given = values.as_ref().len();
    #[cfg(target_endian = "little")]
    let payload = bytes::Bytes::from_owner(WireFloats(values));
    #[cfg(not(target_endian = "little"))]
    let payload = bytes::Bytes::from(
        values
            .as_ref()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    split_bytes(round, specs, n_given, payload)
}

/// SHA-256 of `values` as a transfer carries them (little-endian f32, in order): the `sha256` of
/// the header [`split`] makes of them, which the round log names for each global model.
pub fn payload_sha256(values: &[f32]) -> [u8; 32] {
    let mut context = Context::new(&SHA256);
    #[cfg(target_endian = "little")]
    context.update(bytemuck::cast_slice(values));
    #[cfg(not(target_endian = "little"))]
    for value in values {
        context.update(&value.to_le_bytes());
    }
    let mut hash = [0; 32];
    hash.copy_from_slice(context.finish().as_ref());
    hash
}

/// Floats seen as their in-memory bytes, which on a little-endian machine are the wire's.
#[cfg(target_endian = "little")]
struct WireFloats<T>(T);

#[cfg(target_endian = "little")]
impl<T: AsRef<[f32]>> AsRef<[u8]> for WireFloats<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(self.0.as_ref())
    }
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
    split_bytes(
        round,
        specs,
        n_given,
        bytes::Bytes::from(bytes.collect::<Vec<u8>>()),
    )
}

/// One buffer; every chunk is a view of it, and so is every recipient's copy of a chunk.
fn split_bytes(
    round: u64,
    specs: &[TensorSpec],
    n_given: usize,
    payload: bytes::Bytes,
) -> (TransferHeader, Vec<Chunk>) {
    let n_values: u64 = specs.iter().map(spec_len).sum();
    assert_eq!(n_values, n_given as u64, "tensor specs and values disagree");
    let chunks: Vec<Chunk> = (0..payload.len())
        .step_by(MAX_CHUNK_BYTES)
        .enumerate()
        .map(|(index, start)| Chunk {
            round,
            index: index as u32,
            data: payload.slice(start..payload.len().min(start + MAX_CHUNK_BYTES)),
        })
        .collect();
    let header = TransferHeader {
        round,
        tensors: specs.to_vec(),
        total_bytes: payload.len() as u64,
        sha256: digest(&SHA256, &payload).as_ref().to_vec(),
        n_chunks: chunks.len() as u32,
        chunk_sha256: chunks
            .iter()
            .map(|c| digest(&SHA256, &c.data).as_ref().to_vec())
            .collect(),
    };
    (header, chunks)
}

/// One chunk of a transfer, checked against its header: its values and where they start.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece<T> {
    /// Position of its first value in the payload.
    pub offset: usize,
    /// Its values.
    pub values: Vec<T>,
    /// Whether it was the last chunk (and the whole payload's hash matched).
    pub last: bool,
}

/// Takes in one transfer from its header and chunks, verifying everything on the way.
pub struct Assembler {
    header: TransferHeader,
    what: String,
    /// The values kept so far ([`Assembler::push`]), as their bits: each chunk is decoded (and
    /// checked) as it arrives, so a model is held once, never as bytes and values side by side.
    values: Vec<u32>,
    /// Bytes accepted so far.
    received: u64,
    next_index: u32,
    /// SHA-256 of the payload so far; `None` for a transfer resumed by another receiver
    /// ([`Assembler::resume_at`]), which never saw the chunks before its first.
    hash: Option<Context>,
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
        let malformed = header.chunk_sha256.iter().filter(|h| h.len() != 32).count();
        if header.chunk_sha256.len() != header.n_chunks as usize || malformed > 0 {
            return Err(TransferError::MalformedChunkHashes {
                listed: header.chunk_sha256.len(),
                malformed,
                n_chunks: header.n_chunks,
            });
        }
        // Reserve lazily: a hostile header must not make us allocate its announced size up front.
        Ok(Self {
            header,
            what,
            values: Vec::new(),
            received: 0,
            next_index: 0,
            hash: Some(Context::new(&SHA256)),
        })
    }

    /// Takes the transfer up at chunk `first_chunk`, its chunks before held elsewhere: the
    /// coordinator resumes an update whose first chunks reached the sum through the participant's
    /// previous session. Each chunk from there is checked against the hash the header lists for
    /// it; the whole payload's hash cannot be, since this receiver never saw its beginning.
    pub fn resume_at(&mut self, first_chunk: u32) -> Result<(), TransferError> {
        if self.next_index != 0 || first_chunk > self.header.n_chunks {
            return Err(TransferError::OutOfOrder {
                actual: first_chunk,
                expected: self.next_index,
            });
        }
        self.next_index = first_chunk;
        self.received =
            (u64::from(first_chunk) * MAX_CHUNK_BYTES as u64).min(self.header.total_bytes);
        self.hash = None;
        Ok(())
    }

    /// Index of the next chunk due: the number of chunks accepted so far (for a resumed
    /// transfer, counting those held elsewhere).
    pub fn next_index(&self) -> u32 {
        self.next_index
    }

    /// The header this transfer started from.
    pub fn header(&self) -> &TransferHeader {
        &self.header
    }

    /// Number of values the transfer carries.
    pub fn n_values(&self) -> usize {
        (self.header.total_bytes / 4) as usize
    }

    /// Takes the next chunk and keeps it. Returns the values once the last chunk has arrived
    /// and every check passed, `None` while more chunks are due.
    pub fn push(&mut self, chunk: Chunk) -> Result<Option<Vec<f32>>, TransferError> {
        let (offset, data, last) = self.accept(chunk)?;
        let values = self.floats(&data, offset)?;
        self.values.extend(values.iter().map(|v| v.to_bits()));
        // Collected in place: a Vec<u32> becomes a Vec<f32> without a second allocation.
        Ok(last.then(|| {
            std::mem::take(&mut self.values)
                .into_iter()
                .map(f32::from_bits)
                .collect()
        }))
    }

    /// As [`Assembler::push`], for a payload of unsigned 32-bit values (see [`split_words`]).
    pub fn push_words(&mut self, chunk: Chunk) -> Result<Option<Vec<u32>>, TransferError> {
        let (_, data, last) = self.accept(chunk)?;
        self.values.extend(words(&data));
        Ok(last.then(|| std::mem::take(&mut self.values)))
    }

    /// Takes the next chunk of a float payload and hands it back checked, without keeping it:
    /// every value finite, the data matching the hash the header lists for it (and, with the
    /// last chunk, the whole payload matching the header's hash).
    pub fn accept_floats(&mut self, chunk: Chunk) -> Result<Piece<f32>, TransferError> {
        let (offset, data, last) = self.accept(chunk)?;
        Ok(Piece {
            offset,
            values: self.floats(&data, offset)?,
            last,
        })
    }

    /// As [`Assembler::accept_floats`], for a payload of unsigned 32-bit values.
    pub fn accept_words(&mut self, chunk: Chunk) -> Result<Piece<u32>, TransferError> {
        let (offset, data, last) = self.accept(chunk)?;
        Ok(Piece {
            offset,
            values: words(&data),
            last,
        })
    }

    /// `data`'s little-endian f32 values, which start at value `offset` of the payload, if all
    /// are finite.
    fn floats(&self, data: &[u8], offset: usize) -> Result<Vec<f32>, TransferError> {
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        match values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            Some((i, &value)) => Err(TransferError::NonFinite {
                what: self.what.clone(),
                position: offset + i,
                value,
            }),
            None => Ok(values),
        }
    }

    /// Checks the next chunk: its offset in values, its data, and whether it was the last.
    fn accept(&mut self, chunk: Chunk) -> Result<(usize, bytes::Bytes, bool), TransferError> {
        if chunk.round != self.header.round {
            return Err(TransferError::WrongRound {
                chunk_round: chunk.round,
                header_round: self.header.round,
            });
        }
        if self.next_index == self.header.n_chunks {
            return Err(TransferError::AfterLast { index: chunk.index });
        }
        if chunk.index != self.next_index {
            return Err(TransferError::OutOfOrder {
                actual: chunk.index,
                expected: self.next_index,
            });
        }
        let remaining = (self.header.total_bytes - self.received) as usize;
        let expected_size = remaining.min(MAX_CHUNK_BYTES);
        if chunk.data.len() != expected_size {
            return Err(TransferError::WrongChunkSize {
                index: chunk.index,
                actual: chunk.data.len(),
                expected: expected_size,
            });
        }
        let committed = &self.header.chunk_sha256[chunk.index as usize];
        if digest(&SHA256, &chunk.data).as_ref() != committed.as_slice() {
            return Err(TransferError::ChunkHashMismatch { index: chunk.index });
        }
        if let Some(hash) = &mut self.hash {
            hash.update(&chunk.data);
        }
        let offset = (self.received / 4) as usize;
        self.received += chunk.data.len() as u64;
        self.next_index += 1;
        let last = self.next_index == self.header.n_chunks;
        if last
            && let Some(hash) = self.hash.take()
            && hash.finish().as_ref() != self.header.sha256.as_slice()
        {
            return Err(TransferError::PayloadHashMismatch);
        }
        Ok((offset, chunk.data, last))
    }
}

/// `data`'s little-endian u32 values.
fn words(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
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
    fn a_payload_larger_than_four_mib_round_trips_in_chunks_of_at_most_256_kib() {
        let values: Vec<f32> = (0..1_500_000).map(|i| i as f32 * 0.5).collect();
        let (header, chunks) = split(7, &specs(&[1_000_000, 500_000]), &values);
        assert_eq!(chunks.len(), 23);
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
    fn the_payload_hash_is_the_headers() {
        let values = [1.5f32, -2.0, 0.0, f32::MAX];
        let specs = [TensorSpec::new("w", &[4])];
        let (header, _) = split(3, &specs, &values);
        assert_eq!(payload_sha256(&values).as_slice(), header.sha256.as_slice());
        assert_ne!(payload_sha256(&values[..3]), payload_sha256(&values));
    }

    #[test]
    fn a_header_whose_chunk_hash_was_recomputed_still_fails_the_payload_hash() {
        let values = vec![1.0f32; 1000];
        let (mut header, mut chunks) = split(1, &specs(&[1000]), &values);
        let mut data = chunks[0].data.to_vec();
        data[5] ^= 1;
        header.chunk_sha256[0] = digest(&SHA256, &data).as_ref().to_vec();
        chunks[0].data = data.into();
        assert_eq!(
            receive(header, chunks),
            Err(TransferError::PayloadHashMismatch)
        );
    }

    #[test]
    fn each_chunk_is_checked_on_its_own_and_handed_over_with_its_offset() {
        let values: Vec<f32> = (0..600_000).map(|i| i as f32).collect();
        let (header, mut chunks) = split(4, &specs(&[600_000]), &values);
        let mut bad = chunks[2].data.to_vec();
        bad[0] ^= 1;
        chunks[2].data = bad.into();
        let mut assembler = Assembler::new(header, "update", Some(600_000)).unwrap();
        let first = assembler.accept_floats(chunks[0].clone()).unwrap();
        assert_eq!((first.offset, first.last), (0, false));
        assert_eq!(first.values[..], values[..MAX_CHUNK_BYTES / 4]);
        let second = assembler.accept_floats(chunks[1].clone()).unwrap();
        assert_eq!(second.offset, MAX_CHUNK_BYTES / 4);
        // The third is refused before the transfer is over: its hash is the header's, not its own.
        assert_eq!(
            assembler.accept_floats(chunks[2].clone()),
            Err(TransferError::ChunkHashMismatch { index: 2 })
        );
    }

    #[test]
    fn a_model_split_without_a_copy_is_the_same_transfer() {
        let values: Vec<f32> = (0..150_000).map(|i| (i as f32).sqrt()).collect();
        let copied = split(5, &specs(&[150_000]), &values);
        let owned = split_owned(5, &specs(&[150_000]), values.clone());
        assert_eq!(owned, copied);
        assert_eq!(receive(owned.0, owned.1).unwrap(), values);
    }

    #[test]
    fn a_resumed_transfer_takes_the_chunks_from_where_it_resumed_each_checked() {
        let values: Vec<f32> = (0..150_000).map(|i| i as f32).collect();
        let (header, mut chunks) = split(4, &specs(&[150_000]), &values);
        assert_eq!(chunks.len(), 3);
        let mut assembler = Assembler::new(header.clone(), "update", Some(150_000)).unwrap();
        assembler.resume_at(1).unwrap();
        assert_eq!(assembler.next_index(), 1);
        assert_eq!(
            assembler.accept_floats(chunks[0].clone()),
            Err(TransferError::OutOfOrder {
                actual: 0,
                expected: 1
            })
        );
        let second = assembler.accept_floats(chunks[1].clone()).unwrap();
        assert_eq!((second.offset, second.last), (MAX_CHUNK_BYTES / 4, false));
        let mut bad = chunks[2].data.to_vec();
        bad[0] ^= 1;
        chunks[2].data = bad.into();
        assert_eq!(
            assembler.accept_floats(chunks[2].clone()),
            Err(TransferError::ChunkHashMismatch { index: 2 })
        );

        // Only a transfer that has taken nothing yet resumes, and within its chunks.
        let mut assembler = Assembler::new(header.clone(), "update", None).unwrap();
        assert!(assembler.resume_at(4).is_err());
        assembler.resume_at(3).unwrap();
        assert!(assembler.resume_at(1).is_err());
    }

    #[test]
    fn a_header_must_list_one_hash_per_chunk() {
        let (mut header, _) = split(1, &specs(&[100_000]), &vec![0.0; 100_000]);
        header.chunk_sha256.pop();
        assert_eq!(
            Assembler::new(header.clone(), "x", None).unwrap_err(),
            TransferError::MalformedChunkHashes {
                listed: 1,
                malformed: 0,
                n_chunks: 2
            }
        );
        header.chunk_sha256.push(vec![0; 31]);
        let err = Assembler::new(header, "x", None).unwrap_err();
        assert!(err.to_string().contains("1 not of 32 bytes"), "{err}");
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
