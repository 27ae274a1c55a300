//! Transfers being added into a round's sum chunk by chunk, as they arrive. The sum cannot be
//! taken apart again, so each participant's chunks, once added, are also appended to an
//! unlinked temporary file of its own: the kernel's page cache holds it, not the coordinator's
//! memory, and it disappears with the file handle, crash included. A transfer that completes
//! drops its file unread; one that breaks off (a bad chunk, a lost connection, a missed
//! deadline) is read back piece by piece and subtracted, which leaves the sum exactly as if the
//! participant had never sent anything, because both sums here are exact: wrapping `u32` for
//! masked inputs, fixed-point integers for plaintext updates ([`crate::strategy::PlainSum`]).
//! Memory per round is therefore the sum plus the chunks waiting in the sessions' queues, not
//! one update per participant.

use super::ParticipantId;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// A 4-byte value a transfer carries.
pub trait Word: Copy {
    /// Little-endian bytes.
    fn to_bytes(self) -> [u8; 4];
    /// From little-endian bytes.
    fn from_bytes(bytes: [u8; 4]) -> Self;
}

impl Word for f32 {
    fn to_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
    fn from_bytes(bytes: [u8; 4]) -> Self {
        f32::from_le_bytes(bytes)
    }
}

impl Word for u32 {
    fn to_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
    fn from_bytes(bytes: [u8; 4]) -> Self {
        u32::from_le_bytes(bytes)
    }
}

/// Values read back per piece when a transfer is taken out (a chunk's worth).
const PIECE_VALUES: usize = cairn_proto::MAX_CHUNK_BYTES / 4;

/// What has been added of one participant's transfer.
#[derive(Debug)]
struct Transfer {
    file: File,
    /// Values added (and kept) so far; the next chunk starts here.
    added: usize,
}

/// The incomplete transfers of one round, by participant.
#[derive(Debug)]
pub struct InFlight<W> {
    transfers: BTreeMap<ParticipantId, Transfer>,
    word: std::marker::PhantomData<W>,
}

impl<W: Word> Default for InFlight<W> {
    fn default() -> Self {
        InFlight {
            transfers: BTreeMap::new(),
            word: std::marker::PhantomData,
        }
    }
}

impl<W: Word> InFlight<W> {
    /// Where `id`'s next chunk must start: 0 before its first.
    pub fn next_offset(&self, id: &ParticipantId) -> usize {
        self.transfers.get(id).map_or(0, |t| t.added)
    }

    /// Keeps `values`, which were just added into the sum as the next piece of `id`'s
    /// transfer (starting a transfer at its first piece).
    pub fn keep(&mut self, id: &ParticipantId, values: &[W]) -> io::Result<()> {
        if !self.transfers.contains_key(id) {
            let file = tempfile::tempfile()?;
            self.transfers
                .insert(id.clone(), Transfer { file, added: 0 });
        }
        let transfer = self.transfers.get_mut(id).expect("inserted above");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_bytes()).collect();
        transfer.file.write_all(&bytes)?;
        transfer.added += values.len();
        Ok(())
    }

    /// Forgets `id`'s transfer: it completed, and what it added stays in the sum.
    pub fn complete(&mut self, id: &ParticipantId) {
        self.transfers.remove(id);
    }

    /// Participants whose transfer started and did not complete.
    pub fn incomplete(&self) -> Vec<ParticipantId> {
        self.transfers.keys().cloned().collect()
    }

    /// Reads back what `id`'s transfer added, in pieces from the start, handing each with its
    /// offset to `subtract`, and forgets the transfer. Nothing to take back is not an error.
    pub fn take_back(
        &mut self,
        id: &ParticipantId,
        mut subtract: impl FnMut(usize, &[W]),
    ) -> io::Result<()> {
        let Some(transfer) = self.transfers.remove(id) else {
            return Ok(());
        };
        let mut file = transfer.file;
        file.seek(SeekFrom::Start(0))?;
        let mut bytes = vec![0u8; PIECE_VALUES * 4];
        let mut values = Vec::with_capacity(PIECE_VALUES);
        let mut offset = 0;
        while offset < transfer.added {
            let n = PIECE_VALUES.min(transfer.added - offset);
            file.read_exact(&mut bytes[..n * 4])?;
            values.clear();
            values.extend(
                bytes[..n * 4]
                    .chunks_exact(4)
                    .map(|b| W::from_bytes([b[0], b[1], b[2], b[3]])),
            );
            subtract(offset, &values);
            offset += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_off_transfer_is_read_back_in_order_and_a_complete_one_is_forgotten() {
        let mut inflight = InFlight::<u32>::default();
        let (a, b) = ("a".to_string(), "b".to_string());
        let first: Vec<u32> = (0..PIECE_VALUES as u32 + 5).collect();
        let second: Vec<u32> = vec![7; 3];
        inflight.keep(&a, &first).unwrap();
        inflight.keep(&a, &second).unwrap();
        inflight.keep(&b, &[1, 2]).unwrap();
        assert_eq!(inflight.next_offset(&a), first.len() + 3);
        inflight.complete(&b);
        assert_eq!(inflight.incomplete(), vec![a.clone()]);

        let mut read = Vec::new();
        inflight
            .take_back(&a, |offset, values| {
                assert_eq!(offset, read.len());
                read.extend_from_slice(values);
            })
            .unwrap();
        assert_eq!(read, [first, second].concat());
        assert!(inflight.incomplete().is_empty());
        assert_eq!(inflight.next_offset(&a), 0);
        inflight
            .take_back(&b, |_, _| panic!("b completed"))
            .unwrap();
    }
}
