//! Plaintext updates (secure aggregation off) arriving piece by piece into the round's
//! [`PlainSum`]. Each piece is counted as its update's header says (its weight capped at
//! `max_weight`, its values scaled down with it), added at once, and set aside on disk
//! ([`InFlight`]) until the update is complete. Clipping needs the whole update's norm, which is
//! known only after its last piece: an update longer than `clip_norm` is then read back,
//! subtracted and added again scaled down. An update that breaks off is taken back out when
//! training ends, so the sum is exactly that of the complete updates. One whose session broke
//! is *interrupted*: it keeps what it added and goes on when the participant, reconnected,
//! sends the same header again from the first chunk the sum does not hold.

use super::ParticipantId;
use super::inflight::InFlight;
use crate::Error;
use crate::strategy::{
    PlainSum, UpdateSum, capped_weight, check_weight_and_loss, clip_factor, scaled,
};
use cairn_proto::transfer::Piece;
use std::collections::BTreeMap;

/// Values in a whole chunk of a transfer.
const CHUNK_VALUES: usize = cairn_proto::MAX_CHUNK_BYTES / 4;

/// What an update's header says about it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UpdateHeader {
    /// Examples it trained on.
    pub(super) weight: u64,
    /// Its weight times its mean training loss.
    pub(super) weighted_train_loss: f64,
    /// SHA-256 of its payload.
    pub(super) sha256: Vec<u8>,
    /// The chunk its pieces start at.
    pub(super) first_chunk: u32,
}

/// How one arriving update is counted, and how long it is so far.
#[derive(Debug)]
struct Arriving {
    /// Its header as first sent, which a resumed one must repeat.
    header: UpdateHeader,
    /// Its session broke; pieces are refused until it resumes.
    interrupted: bool,
    /// Its weight, capped.
    weight: u64,
    /// Its weighted loss, scaled with the cap.
    weighted_train_loss: f64,
    /// The cap's factor on its values (1 when within it).
    scale: f64,
    /// Squared L2 norm of its capped values so far.
    norm_sq: f64,
}

/// The plaintext updates of one training round.
#[derive(Debug)]
pub(super) struct PlainUpdates {
    sum: PlainSum,
    arriving: BTreeMap<ParticipantId, Arriving>,
    inflight: InFlight<f32>,
    max_weight: u64,
    clip_norm: Option<f32>,
    n_values: usize,
    /// Why the sum can no longer be trusted: an update being clipped could not be read back.
    broken: Option<String>,
}

impl PlainUpdates {
    /// No update yet, for a model of `n_values` parameters.
    pub(super) fn new(n_values: usize, max_weight: u32, clip_norm: Option<f32>) -> PlainUpdates {
        PlainUpdates {
            sum: PlainSum::new(n_values),
            arriving: BTreeMap::new(),
            inflight: InFlight::default(),
            max_weight: u64::from(max_weight),
            clip_norm,
            n_values,
            broken: None,
        }
    }

    /// Whether `id`'s update has started arriving.
    pub(super) fn has_started(&self, id: &ParticipantId) -> bool {
        self.arriving.contains_key(id)
    }

    /// Starts `id`'s update from its header.
    pub(super) fn start(&mut self, id: &ParticipantId, header: UpdateHeader) -> Result<(), Error> {
        check_weight_and_loss(header.weight, header.weighted_train_loss)?;
        let (weight, scale) = capped_weight(header.weight, self.max_weight);
        let arriving = Arriving {
            weighted_train_loss: header.weighted_train_loss * scale,
            header,
            interrupted: false,
            weight,
            scale,
            norm_sq: 0.0,
        };
        self.arriving.insert(id.clone(), arriving);
        Ok(())
    }

    /// Marks `id`'s update, if it has started, as cut off with its session: nothing more of it
    /// is taken until it resumes.
    pub(super) fn interrupt(&mut self, id: &ParticipantId) {
        if let Some(arriving) = self.arriving.get_mut(id) {
            arriving.interrupted = true;
        }
    }

    /// Whether `id`'s update was cut off with its session and has not resumed.
    pub(super) fn is_interrupted(&self, id: &ParticipantId) -> bool {
        self.arriving.get(id).is_some_and(|a| a.interrupted)
    }

    /// Where `id`'s started update would resume: its payload's SHA-256 and the first chunk the
    /// sum does not hold. `None` before its header.
    pub(super) fn resume_point(&self, id: &ParticipantId) -> Option<(&[u8], u32)> {
        let arriving = self.arriving.get(id)?;
        Some((arriving.header.sha256.as_slice(), self.next_chunk(id)))
    }

    /// The first chunk of `id`'s update that the sum does not hold: every piece but the last
    /// is a whole chunk, so the values held end on a chunk's boundary.
    fn next_chunk(&self, id: &ParticipantId) -> u32 {
        (self.inflight.next_offset(id) / CHUNK_VALUES) as u32
    }

    /// Takes `id`'s interrupted update up again from its header, sent again: the same update
    /// (payload hash, weight, loss), from the first chunk the sum does not hold.
    pub(super) fn resume(
        &mut self,
        id: &ParticipantId,
        header: &UpdateHeader,
    ) -> Result<(), Error> {
        let next_chunk = self.next_chunk(id);
        let arriving = self
            .arriving
            .get_mut(id)
            .expect("only a started update resumes");
        let first = &arriving.header;
        let same = first.sha256 == header.sha256
            && first.weight == header.weight
            && first.weighted_train_loss.to_bits() == header.weighted_train_loss.to_bits();
        if !same || header.first_chunk != next_chunk {
            return Err(Error::UpdateResume {
                first_chunk: header.first_chunk,
                expected: next_chunk,
                same_update: same,
            });
        }
        arriving.interrupted = false;
        Ok(())
    }

    /// Adds the next piece of `id`'s update, which has started. `Ok(true)`: that was its last
    /// piece, and the update is counted. An error refuses the update; what it added so far is
    /// taken out in [`PlainUpdates::finish`].
    pub(super) fn add(&mut self, id: &ParticipantId, piece: Piece<f32>) -> Result<bool, Error> {
        let arriving = self
            .arriving
            .get_mut(id)
            .expect("pieces are added to started updates only");
        let expected = self.inflight.next_offset(id);
        if piece.offset != expected {
            return Err(Error::UpdatePieceOrder {
                offset: piece.offset,
                expected,
            });
        }
        let values = match arriving.scale < 1.0 {
            true => scaled(&piece.values, arriving.scale),
            false => piece.values,
        };
        self.sum.add(piece.offset, &values)?;
        if let Err(error) = self.inflight.keep(id, &values) {
            self.sum.subtract(piece.offset, &values);
            return Err(Error::Spill(error));
        }
        arriving.norm_sq += values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>();
        if !piece.last {
            return Ok(false);
        }
        let length = piece.offset + values.len();
        if length != self.n_values {
            return Err(Error::UpdateLength {
                what: "model update",
                values: length,
                expected: self.n_values,
            });
        }
        let Arriving {
            weight,
            weighted_train_loss,
            norm_sq,
            ..
        } = *arriving;
        self.sum.add_contributor(weight, weighted_train_loss)?;
        self.arriving.remove(id);
        let factor = self
            .clip_norm
            .and_then(|norm| clip_factor(norm_sq.sqrt(), weight, norm));
        let Some(factor) = factor else {
            self.inflight.complete(id);
            return Ok(true);
        };
        let sum = &mut self.sum;
        let rescaled = self.inflight.take_back(id, |offset, values| {
            sum.subtract(offset, values);
            sum.add(offset, &scaled(values, factor))
                .expect("values scaled down stay in range");
        });
        if let Err(error) = rescaled {
            self.broken = Some(format!("clipping {id}'s update failed midway: {error}"));
            return Err(Error::Spill(error));
        }
        Ok(true)
    }

    /// Takes every update that did not complete back out of the sum and hands the sum over.
    pub(super) fn finish(mut self) -> Result<UpdateSum, Error> {
        if let Some(reason) = self.broken {
            return Err(Error::BrokenSum(reason));
        }
        for id in self.inflight.incomplete() {
            let sum = &mut self.sum;
            self.inflight
                .take_back(&id, |offset, values| sum.subtract(offset, values))
                .map_err(Error::Spill)?;
        }
        Ok(self.sum.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(weighted_train_loss: f64) -> UpdateHeader {
        UpdateHeader {
            weight: 1,
            weighted_train_loss,
            sha256: vec![0; 32],
            first_chunk: 0,
        }
    }

    fn send(updates: &mut PlainUpdates, id: &str, values: &[f32], sent: usize) {
        let id = id.to_string();
        updates.start(&id, header(0.5)).unwrap();
        for (offset, &value) in values[..sent].iter().enumerate() {
            let piece = Piece {
                offset,
                values: vec![value],
                last: offset + 1 == values.len(),
            };
            updates.add(&id, piece).unwrap();
        }
    }

    #[test]
    fn an_update_cut_off_halfway_leaves_the_sum_exactly_as_if_it_had_never_been_sent() {
        // Values whose f64 sum would not come back to the bit after subtracting c's.
        let a = [0.1f32, 1e-8, 3.3, -7.77];
        let b = [1e-3f32, 2.5e-7, -0.4, 1e3];
        let c = [12345.678f32, -9876.5, 1e-2, 5.0];
        let sum = |c_sent: usize| {
            let mut updates = PlainUpdates::new(4, 100, None);
            send(&mut updates, "a", &a, 4);
            send(&mut updates, "c", &c, c_sent);
            send(&mut updates, "b", &b, 4);
            updates.finish().unwrap()
        };
        let (cut, never) = (sum(2), sum(0));
        let bits = |s: &UpdateSum| -> Vec<u64> {
            s.weighted_delta().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&cut), bits(&never));
        assert_eq!((cut.weight(), cut.n_contributors()), (2, 2));
        assert_ne!(
            bits(&sum(4)),
            bits(&never),
            "c's values count once complete"
        );
    }

    #[test]
    fn an_update_longer_than_the_clip_norm_is_scaled_down_whole_after_its_last_piece() {
        let mut updates = PlainUpdates::new(2, 100, Some(5.0));
        send(&mut updates, "a", &[30.0, 40.0], 2);
        let sum = updates.finish().unwrap();
        assert_eq!(sum.weighted_delta(), [3.0, 4.0]);
    }

    #[test]
    fn a_piece_out_of_place_is_refused() {
        let mut updates = PlainUpdates::new(4, 100, None);
        let id = "a".to_string();
        updates.start(&id, header(0.0)).unwrap();
        let piece = Piece {
            offset: 2,
            values: vec![1.0],
            last: false,
        };
        let err = updates.add(&id, piece).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid update: a piece starts at value 2, expected 0"
        );
    }
}
