//! `cairn-proto`: the `cairn.v1` gRPC schema, the tonic/prost code generated from it, and the
//! chunked tensor transfer that is part of that wire format; with the `secagg` feature, the
//! conversions of secure-aggregation messages to and from `cairn-secagg`'s types. Only the
//! coordinator's `grpc/` module and the participant's `client/` module use these types;
//! everything else works on the crates' own domain types. [`metrics`] defines what an evaluation's
//! sums mean, so that participants compute them and the coordinator adds and finishes them by one
//! rule.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly by design.

pub mod metrics;
#[cfg(feature = "secagg")]
pub mod secagg;
pub mod transfer;

/// Version 1 of the wire protocol (generated code).
#[allow(missing_docs)] // Generated code; the .proto file documents every message.
pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

/// The wire protocol version this build speaks; sent in `Hello` and `Welcome`, and a party of
/// another version is refused at `Hello`. Version 2: secure aggregation's neighbourhood graph is
/// permuted by the shuffle `cairn-secagg` specifies, and its context label is
/// `cairn secagg round setup v2`, so a version-1 party would derive another graph and context and
/// every secure round with it would fail midway; unread fields were removed (`reserved`).
/// Version 3: the job's `TaskSpec` (metrics, feature standardisation) arrives in `Welcome`, and an
/// evaluation reports the sums of each metric it names instead of a fixed loss and accuracy.
/// Version 4: secure aggregation's graph is drawn from nonces the participants commit to in their
/// advertisements and reveal in `GraphNonce`, and neighbours' certificates travel in
/// `GraphNonces`. Version 5: under secure aggregation an evaluation travels only as a secure
/// sum (`EvaluateInstruction.secure_aggregation`), so a version-4 participant would answer in
/// the clear and be ignored. Version 6: `TrainingConfig.proximal_mu` (FedProx), which a
/// version-5 participant would not read, training without the proximal term. Version 7:
/// `SecureAggregation.privacy` (distributed differential privacy), which a version-6 participant
/// would not read, sending its update without noise. Version 8: a transfer's header commits to
/// every chunk's SHA-256 (`TransferHeader.chunk_sha256`) and chunks no longer carry their own,
/// so the coordinator adds each chunk into the round's sum as it arrives. Version 9: transfers
/// of a plaintext round resume after a dropped connection (`Hello.resume`, `ResumeUpdate`,
/// `first_chunk`); a version-8 participant would send its chunks from zero where the
/// coordinator expects the rest. Version 10: participants countersign the round log
/// (`Welcome.chain`, `SignedThrough`, `RoundRecord`, `Countersignature`), messages a version-9
/// participant would take for ones without a body.
pub const PROTOCOL_VERSION: u32 = 10;

/// Largest chunk payload in bytes (256 KiB). Every session buffers a chunk or two each way, so
/// the chunk's size, times the sessions, is most of what a round costs the coordinator beyond
/// the sum itself.
pub const MAX_CHUNK_BYTES: usize = 256 << 10;

/// Largest message either side accepts (4 MiB, gRPC's default): a chunk and its envelope, or a
/// transfer header listing every chunk's hash (34 bytes each: a 30 GB model's fit).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Metadata (key, value) a coordinator adds to a `PERMISSION_DENIED` refusal whose only cause is
/// that its current job does not list the participant: a later job may, so a participant that
/// waits for jobs (`join --keep-going`) keeps trying instead of giving up.
pub const NOT_IN_JOB: (&str, &str) = ("cairn-refusal", "not-in-job");
