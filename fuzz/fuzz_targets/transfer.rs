//! Feeds arbitrary bytes to the participant-message decoder and, when they decode to an update
//! header followed by chunks, to the chunked-transfer assembler: nothing may panic, every piece
//! it hands over starts where the previous ended, and a completed transfer holds exactly the
//! values its header announced.

#![no_main]

use cairn_proto::transfer::Assembler;
use cairn_proto::v1::ParticipantMessage;
use cairn_proto::v1::participant_message::Body;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // Length-prefixed messages, as many as the input holds.
    let mut messages = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let (message, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        if let Ok(decoded) = ParticipantMessage::decode(message) {
            messages.push(decoded);
        }
    }
    // The assembler and the values it has handed over, as the coordinator takes them.
    let mut assembler: Option<(Assembler, usize)> = None;
    for message in messages {
        match message.body {
            Some(Body::Update(header)) => {
                if let Some(transfer) = header.transfer {
                    assembler = Assembler::new(transfer, "fuzzed update", Some(1 << 16))
                        .ok()
                        .map(|a| (a, 0));
                }
            }
            Some(Body::Chunk(chunk)) => {
                if let Some((current, received)) = assembler.as_mut() {
                    match current.accept_floats(chunk) {
                        Ok(piece) => {
                            assert_eq!(piece.offset, *received);
                            assert!(piece.values.iter().all(|v| v.is_finite()));
                            *received += piece.values.len();
                            if piece.last {
                                assert_eq!(*received, current.n_values());
                                assembler = None;
                            }
                        }
                        Err(_) => assembler = None,
                    }
                }
            }
            _ => {}
        }
    }
});
