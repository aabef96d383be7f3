//! The one definition of residue's event stream, shared by the interposer (which encodes it
//! without allocating) and the collector (which decodes it, live from a pipe or from a file).
//!
//! # Layout
//! A stream is a 12-byte [header](HEADER_LEN) followed by records. Every record but two is
//! `tag: u8, len: varint, payload: [u8; len]`, so a reader can skip a record it does not know
//! (a newer interposer) and can tell a truncated record from a corrupt one.
//!
//! The commonest events, malloc and free of heap blocks, have records of their own
//! ([`tag::MALLOC`], [`tag::FREE`]): an acquire or release whose kind and API the tag implies.
//! Where such an event's sequence number is its batch's previous one plus one (a thread that
//! allocates alone, most events of most programs), it is written as [`tag::MALLOC_NEXT`] or
//! [`tag::FREE_NEXT`]: without the sequence number's delta and without a length, its fields
//! being varints that end themselves; shorter still, a malloc of the block the previous event
//! freed ([`tag::MALLOC_SAME`]: no id) and a free of one of the batch's four latest
//! acquisitions ([`tag::FREE_RECENT`]: the tag alone). These are the records a reader cannot
//! skip unread; an older reader refuses the stream (by its version) rather than meet them.
//!
//! Integers are LEB128 varints; deltas are zigzag-encoded. Acquire and release records are
//! delta-encoded against the previous event of the same [`Record::Batch`]: each batch holds
//! one thread's events, so consecutive sequence numbers and addresses are close together.
//!
//! The event model is generic over [`Kind`]: heap blocks, file descriptors, `FILE*` streams,
//! directory streams, mappings, user-declared handles and (later) Windows `HANDLE`s are all
//! `acquire(kind, id, size, stack)` and `release(kind, id)`. A new kind or API is a new
//! number, not a new record.

mod decode;
mod encode;
pub mod frame;
mod names;
mod varint;

pub use decode::{DecodeError, DecodeErrorKind, Decoder, Record, Segment, MAX_RECORD_LEN};
pub use encode::{Encoder, Recent, MAX_FRAMES, MAX_SMALL_RECORD, RECENT};
pub use names::{Api, Kind};

/// First eight bytes of every stream and trace file.
pub const MAGIC: [u8; 8] = *b"RESIDUE\0";
/// The format version this build writes, and the newest it reads. 2 added [`tag::MALLOC`] and
/// [`tag::FREE`]: a reader of version 1 would skip them as unknown, losing most events
/// silently, so it refuses the stream instead. 3 added [`tag::MALLOC_NEXT`] and
/// [`tag::FREE_NEXT`], which have no length: a reader of version 2 could not even skip them.
/// 4 added [`tag::MALLOC_SAME`] and [`tag::FREE_RECENT`], as short and as unskippable.
pub const VERSION: u16 = 4;
/// Magic, version (u16 little-endian), reserved flags (u16).
pub const HEADER_LEN: usize = 12;

/// The stream header written once, by the first process image, before any record.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Record tags. Stable: a tag is never reused for a different payload.
pub mod tag {
    /// A process image started (process start, or a new image after exec).
    pub const IMAGE_START: u8 = 0x01;
    /// The events that follow belong to one thread; delta state resets.
    pub const BATCH: u8 = 0x02;
    /// A module (executable or shared library) is mapped.
    pub const MODULE: u8 = 0x03;
    /// A module was unmapped (dlclose).
    pub const MODULE_UNLOAD: u8 = 0x04;
    /// A distinct native stack, sent once and referenced by id afterwards.
    pub const STACK: u8 = 0x05;
    /// A resource was acquired.
    pub const ACQUIRE: u8 = 0x06;
    /// A resource was released.
    pub const RELEASE: u8 = 0x07;
    /// The process forked a child that is not followed.
    pub const FORK: u8 = 0x08;
    /// The image is about to be replaced by exec.
    pub const EXEC: u8 = 0x09;
    /// The image finished cleanly: everything it recorded is in the stream.
    pub const IMAGE_EXIT: u8 = 0x0a;
    /// A one-line message from the interposer for the report.
    pub const NOTICE: u8 = 0x0b;
    /// Written by the collector, never the interposer: how the process ended (appended to a
    /// saved trace so that `residue report` knows the exit status).
    pub const PROCESS_END: u8 = 0x0c;
    /// What the resource acquired with a given seq is: a file path, a socket's peer, a pipe.
    pub const DESCRIBE: u8 = 0x0d;
    /// A Python code object, sent once; Python frames in stacks refer to it by id.
    pub const CODE: u8 = 0x0e;
    /// A resource still open when the image exited, as the process itself lists it (written at
    /// exit for every open descriptor, whether or not its acquisition was seen): lets a reader
    /// tell descriptors of unknown origin (inherited, or opened by a raw syscall) apart.
    pub const OPEN_AT_EXIT: u8 = 0x0f;
    /// A distinct stack given as its innermost frames and the number of outermost frames it
    /// shares with `base`, a stack the same thread sent before (consecutive stacks of a thread
    /// share most of their outer frames: the interpreter's, the program's main loop).
    pub const STACK_SHARED: u8 = 0x10;
    /// An [`ACQUIRE`] of a heap block by malloc, the commonest event by far, without the kind
    /// and API bytes (a fifth of a malloc/free pair's bytes, copied out of the target).
    pub const MALLOC: u8 = 0x11;
    /// A [`RELEASE`] of a heap block by free, without the kind and API bytes.
    pub const FREE: u8 = 0x12;
    /// The exec announced by the image's last [`EXEC`] failed: the image goes on. (Without it a
    /// reader learns that only from what follows, which an exit record does not settle: the
    /// old image's, or the new one's.)
    pub const EXEC_FAILED: u8 = 0x13;
    /// Written by the collector, never the interposer: the command `residue run` was given
    /// (appended to a saved trace before [`PROCESS_END`], so that `residue report` names the
    /// command the user ran, not the first image's argv: a launcher script's `env bash ...`).
    pub const COMMAND: u8 = 0x14;
    /// A [`MALLOC`] whose sequence number is the batch's previous one plus one: `id` delta,
    /// size, stack, as varints, with no length before them and no sequence delta (4 bytes of a
    /// W4 malloc/free pair's 13, copied out of the target and decoded by the collector).
    pub const MALLOC_NEXT: u8 = 0x15;
    /// A [`FREE`] whose sequence number is the batch's previous one plus one: the `id` delta
    /// alone, with no length.
    pub const FREE_NEXT: u8 = 0x16;
    /// A [`MALLOC_NEXT`] whose id is the previous event's (a block freed and handed straight
    /// back): size and stack, as varints, with no length.
    pub const MALLOC_SAME: u8 = 0x17;
    /// `FREE_RECENT + place` (place below [`crate::RECENT`]): a [`FREE_NEXT`] of the block in
    /// that place of the batch's latest acquisitions ([`crate::Recent`]). The tag alone.
    pub const FREE_RECENT: u8 = 0x18;
    /// The last of the [`FREE_RECENT`] tags.
    pub const FREE_RECENT_LAST: u8 = FREE_RECENT + crate::RECENT as u8 - 1;
}

#[cfg(test)]
mod tests;
