//! The transfer of a plaintext round that a broken session leaves unfinished. It is kept across
//! sessions, and the next session's `Hello` names it (`ResumeTransfer`), so that the transfer
//! goes on from the first chunk the receiver does not hold instead of from zero: a model of
//! gigabytes is not sent again whole because a connection dropped near its end.
//!
//! Secure aggregation's transfers are not kept: its protocol state belongs to the session, and
//! a participant cut off there is a dropout, which the protocol tolerates.

use cairn_proto::transfer::Assembler;
use cairn_proto::v1::resume_transfer::Kind;
use cairn_proto::v1::{Chunk, ResumeTransfer, UpdateHeader};

/// A transfer of a plaintext round, under way when its session broke.
pub(super) enum Unfinished {
    /// The round's global model, arriving: the chunks so far, each checked against the header.
    GlobalModel(Box<Assembler>),
    /// This participant's trained update: its header and every chunk, of which the coordinator
    /// may hold some, all or none.
    Update {
        /// The header as first sent.
        header: UpdateHeader,
        /// The update's chunks (views of one buffer).
        chunks: Vec<Chunk>,
    },
}

impl Unfinished {
    /// What the next session's `Hello` asks to resume.
    pub(super) fn request(&self) -> ResumeTransfer {
        match self {
            Unfinished::GlobalModel(assembler) => ResumeTransfer {
                kind: Kind::GlobalModel.into(),
                round: assembler.header().round,
                sha256: assembler.header().sha256.clone(),
                next_chunk: assembler.next_index(),
            },
            Unfinished::Update { header, .. } => {
                let transfer = header.transfer.as_ref();
                ResumeTransfer {
                    kind: Kind::Update.into(),
                    round: transfer.map_or(0, |t| t.round),
                    sha256: transfer.map(|t| t.sha256.clone()).unwrap_or_default(),
                    next_chunk: 0,
                }
            }
        }
    }
}
