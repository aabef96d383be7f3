//! Allocation-free encoding into a caller-owned buffer: the interposer calls this from inside
//! malloc, so nothing here may allocate, lock or panic on a buffer with room.
//!
//! Every method writes one record at `buf[pos..]` and returns the position after it. The caller
//! guarantees room: [`MAX_SMALL_RECORD`] bytes for acquire, release and the other fixed-size
//! records, [`Encoder::stack_len_bound`] for a stack, and the `*_len_bound` of the records that
//! carry strings.

use crate::varint::{self, zigzag, MAX_VARINT};
use crate::{tag, Api, Kind, Segment};

/// Room one fixed-size record (everything but stacks, modules, image starts, exec and notices)
/// needs at most.
pub const MAX_SMALL_RECORD: usize = 2 + 7 * MAX_VARINT;
/// Deepest native stack a record carries.
pub const MAX_FRAMES: usize = 256;

/// Delta state of one batch. `Encoder::default()` is the state right after a batch record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Encoder {
    last_seq: u64,
    last_id: u64,
    /// The batch's latest acquisitions (see [`Recent`]).
    recent: Recent,
}

/// The ids of a batch's latest [`RECENT`] acquisitions, of any kind, each in the place its
/// number in the batch (modulo [`RECENT`]) gives it; zero where none was yet. A free of one of
/// them is written as [`tag::FREE_RECENT`] plus its place: a block freed soon after it was
/// allocated (a loop's, an interpreter's short-lived objects) costs one byte instead of a
/// delta from wherever the previous event was. Encoder and decoder keep the same places.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recent {
    ids: [u64; RECENT],
    next: usize,
}

/// Acquisitions a batch's [`Recent`] holds.
pub const RECENT: usize = 4;

impl Recent {
    /// `id` was acquired.
    #[inline(always)]
    pub fn push(&mut self, id: u64) {
        self.ids[self.next % RECENT] = id;
        self.next = self.next.wrapping_add(1);
    }

    /// The place of `id` among the latest acquisitions, if it is there.
    #[inline(always)]
    pub fn place(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&r| r == id)
    }

    /// The id in `place` (less than [`RECENT`]).
    #[inline(always)]
    pub fn get(&self, place: usize) -> u64 {
        self.ids[place % RECENT]
    }
}

/// Writes `tag`, a length and the payload `body` writes. Small records (payload < 128 bytes)
/// reserve one length byte; others reserve three and write a padded varint, which any LEB128
/// reader accepts, so the payload never has to be moved.
#[inline(always)]
fn record(buf: &mut [u8], pos: usize, tag: u8, small: bool, body: impl FnOnce(&mut [u8], usize) -> usize) -> usize {
    buf[pos] = tag;
    let start = pos + if small { 2 } else { 4 };
    let end = body(buf, start);
    let len = end - start;
    if small {
        debug_assert!(len < 0x80);
        buf[pos + 1] = len as u8;
    } else {
        debug_assert!(len < 1 << 21);
        buf[pos + 1] = (len as u8 & 0x7f) | 0x80;
        buf[pos + 2] = ((len >> 7) as u8 & 0x7f) | 0x80;
        buf[pos + 3] = (len >> 14) as u8 & 0x7f;
    }
    end
}

/// The tag and one-byte length of a small record at `pos` whose payload, written first, ends at
/// `end`; returns `end`. The two hottest records (an acquisition, a release) are written this
/// way rather than through [`record`]'s closure, which the compiler left out of line: a call,
/// and the record's kind and API passed through memory instead of as constants.
#[inline(always)]
fn small_head(buf: &mut [u8], pos: usize, tag: u8, end: usize) -> usize {
    let len = end - (pos + 2);
    debug_assert!(len < 0x80);
    buf[pos] = tag;
    buf[pos + 1] = len as u8;
    end
}

/// A frame count, then the frames: the first as it is, each next one as a zigzag delta.
#[inline(always)]
fn deltas(b: &mut [u8], pos: usize, frames: &[u64]) -> usize {
    let mut p = varint::put(b, pos, frames.len() as u64);
    let mut prev = 0u64;
    for &f in frames {
        p = varint::put(b, p, zigzag(f.wrapping_sub(prev) as i64));
        prev = f;
    }
    p
}

#[inline(always)]
fn bytes(buf: &mut [u8], pos: usize, b: &[u8]) -> usize {
    let pos = varint::put(buf, pos, b.len() as u64);
    buf[pos..pos + b.len()].copy_from_slice(b);
    pos + b.len()
}

impl Encoder {
    /// Starts a batch of events from thread `tid` and resets the delta state.
    pub fn batch(&mut self, buf: &mut [u8], pos: usize, tid: u32) -> usize {
        *self = Encoder::default();
        record(buf, pos, tag::BATCH, true, |b, p| varint::put(b, p, u64::from(tid)))
    }

    #[inline(always)]
    fn seq(&mut self, buf: &mut [u8], pos: usize, seq: u64) -> usize {
        let d = seq.wrapping_sub(self.last_seq) as i64;
        self.last_seq = seq;
        varint::put(buf, pos, zigzag(d))
    }

    #[inline(always)]
    fn id(&mut self, buf: &mut [u8], pos: usize, id: u64) -> usize {
        let d = id.wrapping_sub(self.last_id) as i64;
        self.last_id = id;
        varint::put(buf, pos, zigzag(d))
    }

    /// `kind` resource `id` of `size` bytes (0 where size means nothing) was acquired through
    /// `api`, with the native stack interned as `stack`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn acquire(
        &mut self,
        buf: &mut [u8],
        pos: usize,
        seq: u64,
        kind: Kind,
        api: Api,
        id: u64,
        size: u64,
        stack: u32,
    ) -> usize {
        self.acquire_inline(buf, pos, seq, kind, api, id, size, stack)
    }

    /// [`Encoder::acquire`], always inlined: for the one caller on the busiest path (a C
    /// program's loop), where a call would pass half its arguments through memory.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn acquire_inline(
        &mut self,
        buf: &mut [u8],
        pos: usize,
        seq: u64,
        kind: Kind,
        api: Api,
        id: u64,
        size: u64,
        stack: u32,
    ) -> usize {
        let malloc = kind == Kind::HEAP && api == Api::MALLOC;
        self.recent.push(id);
        if malloc && seq == self.last_seq.wrapping_add(1) {
            self.last_seq = seq;
            // The block the previous event named, handed straight back (a free, then a malloc
            // of the same size): no id delta.
            let p = if id == self.last_id {
                buf[pos] = tag::MALLOC_SAME;
                pos + 1
            } else {
                buf[pos] = tag::MALLOC_NEXT;
                self.id(buf, pos + 1, id)
            };
            let p = varint::put(buf, p, size);
            return varint::put(buf, p, u64::from(stack));
        }
        let start = pos + 2;
        let p = self.event_head(buf, start, seq, (kind, api), malloc);
        let p = self.id(buf, p, id);
        let p = varint::put(buf, p, size);
        let end = varint::put(buf, p, u64::from(stack));
        small_head(buf, pos, if malloc { tag::MALLOC } else { tag::ACQUIRE }, end)
    }

    /// `kind` resource `id` was released through `api`. Always inlined, so that free's record
    /// (the interposer's `stacks::freed`) is encoded with its tag known.
    #[inline(always)]
    pub fn release(&mut self, buf: &mut [u8], pos: usize, seq: u64, kind: Kind, api: Api, id: u64) -> usize {
        let free = kind == Kind::HEAP && api == Api::FREE;
        if free && seq == self.last_seq.wrapping_add(1) {
            self.last_seq = seq;
            if let Some(place) = self.recent.place(id) {
                self.last_id = id;
                buf[pos] = tag::FREE_RECENT + place as u8;
                return pos + 1;
            }
            buf[pos] = tag::FREE_NEXT;
            return self.id(buf, pos + 1, id);
        }
        let p = self.event_head(buf, pos + 2, seq, (kind, api), free);
        let end = self.id(buf, p, id);
        small_head(buf, pos, if free { tag::FREE } else { tag::RELEASE }, end)
    }

    /// An event record's sequence number, then its kind and API unless its tag implies them
    /// (`implied`: a malloc or free record).
    #[inline(always)]
    fn event_head(&mut self, b: &mut [u8], p: usize, seq: u64, (kind, api): (Kind, Api), implied: bool) -> usize {
        let p = self.seq(b, p, seq);
        if implied {
            return p;
        }
        b[p] = kind.0;
        b[p + 1] = api.0;
        p + 2
    }

    /// Room [`Encoder::stack`] needs for `frames` return addresses.
    pub const fn stack_len_bound(frames: usize) -> usize {
        4 + 2 * MAX_VARINT + frames * MAX_VARINT
    }

    /// Room [`Encoder::stack_shared`] needs for `frames` return addresses.
    pub const fn stack_shared_len_bound(frames: usize) -> usize {
        Self::stack_len_bound(frames) + 2 * MAX_VARINT
    }

    /// A distinct stack, innermost frame first; frames after the first are deltas.
    pub fn stack(&mut self, buf: &mut [u8], pos: usize, id: u32, frames: &[u64]) -> usize {
        record(buf, pos, tag::STACK, false, |b, p| {
            let p = varint::put(b, p, u64::from(id));
            deltas(b, p, frames)
        })
    }

    /// A distinct stack: `frames` (innermost first), then the outermost `shared` frames of stack
    /// `base`, which this thread sent before.
    pub fn stack_shared(
        &mut self,
        buf: &mut [u8],
        pos: usize,
        id: u32,
        base: u32,
        shared: usize,
        frames: &[u64],
    ) -> usize {
        record(buf, pos, tag::STACK_SHARED, false, |b, p| {
            let mut p = varint::put(b, p, u64::from(id));
            p = varint::put(b, p, u64::from(base));
            p = varint::put(b, p, shared as u64);
            deltas(b, p, frames)
        })
    }

    /// Room [`Encoder::module`] needs.
    pub const fn module_len_bound(path: usize, build_id: usize, segments: usize) -> usize {
        4 + 6 * MAX_VARINT + path + build_id + segments * 4 * MAX_VARINT
    }

    /// Module `id` is mapped at `base` (the ELF load bias) from `path`.
    #[allow(clippy::too_many_arguments)]
    pub fn module(
        &mut self,
        buf: &mut [u8],
        pos: usize,
        id: u32,
        base: u64,
        path: &[u8],
        build_id: &[u8],
        segments: &[Segment],
    ) -> usize {
        record(buf, pos, tag::MODULE, false, |b, p| {
            let mut p = varint::put(b, p, u64::from(id));
            p = varint::put(b, p, base);
            p = bytes(b, p, path);
            p = bytes(b, p, build_id);
            p = varint::put(b, p, segments.len() as u64);
            for s in segments {
                p = varint::put(b, p, s.vaddr);
                p = varint::put(b, p, s.memsz);
                p = varint::put(b, p, s.offset);
                p = varint::put(b, p, u64::from(s.flags));
            }
            p
        })
    }

    /// Module `id` was unmapped; events before `seq` may still refer to it.
    pub fn module_unload(&mut self, buf: &mut [u8], pos: usize, seq: u64, id: u32) -> usize {
        record(buf, pos, tag::MODULE_UNLOAD, true, |b, p| {
            let p = varint::put(b, p, seq);
            varint::put(b, p, u64::from(id))
        })
    }

    /// Room [`Encoder::image_start`] needs.
    pub fn image_start_len_bound(exe: &[u8], argv: &[&[u8]]) -> usize {
        4 + 7 * MAX_VARINT + exe.len() + argv.iter().map(|a| a.len() + MAX_VARINT).sum::<usize>()
    }

    /// A process image started: `root` for the process residue launched, `exec` when an
    /// earlier image of the same process exec'd into this one.
    #[allow(clippy::too_many_arguments)]
    pub fn image_start(
        &mut self,
        buf: &mut [u8],
        pos: usize,
        pid: u32,
        ppid: u32,
        root: bool,
        exec: bool,
        time_ns: u64,
        exe: &[u8],
        argv: &[&[u8]],
    ) -> usize {
        record(buf, pos, tag::IMAGE_START, false, |b, p| {
            let mut p = varint::put(b, p, u64::from(pid));
            p = varint::put(b, p, u64::from(ppid));
            p = varint::put(b, p, u64::from(root) | u64::from(exec) << 1);
            p = varint::put(b, p, time_ns);
            p = bytes(b, p, exe);
            p = varint::put(b, p, argv.len() as u64);
            for a in argv {
                p = bytes(b, p, a);
            }
            p
        })
    }

    /// The process forked `child`, which is not followed.
    pub fn fork(&mut self, buf: &mut [u8], pos: usize, seq: u64, child: u32) -> usize {
        record(buf, pos, tag::FORK, true, |b, p| {
            let p = varint::put(b, p, seq);
            varint::put(b, p, u64::from(child))
        })
    }

    /// The image is about to exec `path`. Room: `path.len() + 4 + 2 * MAX_VARINT`.
    pub fn exec(&mut self, buf: &mut [u8], pos: usize, seq: u64, path: &[u8]) -> usize {
        record(buf, pos, tag::EXEC, false, |b, p| {
            let p = varint::put(b, p, seq);
            bytes(b, p, path)
        })
    }

    /// The exec announced last failed; the image goes on.
    pub fn exec_failed(&mut self, buf: &mut [u8], pos: usize, seq: u64) -> usize {
        record(buf, pos, tag::EXEC_FAILED, true, |b, p| varint::put(b, p, seq))
    }

    /// The image ends cleanly; nothing it recorded is missing.
    pub fn image_exit(&mut self, buf: &mut [u8], pos: usize, seq: u64) -> usize {
        record(buf, pos, tag::IMAGE_EXIT, true, |b, p| varint::put(b, p, seq))
    }

    /// A one-line message for the report. Room: `text.len() + 4 + MAX_VARINT`.
    pub fn notice(&mut self, buf: &mut [u8], pos: usize, text: &[u8]) -> usize {
        record(buf, pos, tag::NOTICE, false, |b, p| bytes(b, p, text))
    }

    /// The command `residue run` was given. Room: the arguments' lengths plus
    /// `(argv.len() + 2) * MAX_VARINT + 4`; at most 2 MiB of record.
    pub fn command(&mut self, buf: &mut [u8], pos: usize, argv: &[&[u8]]) -> usize {
        record(buf, pos, tag::COMMAND, false, |b, p| {
            let mut p = varint::put(b, p, argv.len() as u64);
            for a in argv {
                p = bytes(b, p, a);
            }
            p
        })
    }

    /// How process `pid` ended: `code` from exit, or the `signal` that killed it (0: none).
    pub fn process_end(&mut self, buf: &mut [u8], pos: usize, pid: u32, code: i32, signal: u32) -> usize {
        record(buf, pos, tag::PROCESS_END, true, |b, p| {
            let p = varint::put(b, p, u64::from(pid));
            let p = varint::put(b, p, zigzag(i64::from(code)));
            varint::put(b, p, u64::from(signal))
        })
    }

    /// Describes the resource whose acquisition carried `seq` (a path, a socket's peer).
    /// Room: `text.len() + 4 + 2 * MAX_VARINT`.
    pub fn describe(&mut self, buf: &mut [u8], pos: usize, seq: u64, text: &[u8]) -> usize {
        record(buf, pos, tag::DESCRIBE, false, |b, p| {
            let p = varint::put(b, p, seq);
            bytes(b, p, text)
        })
    }

    /// Room [`Encoder::code`] needs.
    pub const fn code_len_bound(filename: usize, name: usize) -> usize {
        4 + 4 * MAX_VARINT + filename + name
    }

    /// Python code object `id`: function `name` defined at `filename:first_line`.
    pub fn code(
        &mut self,
        buf: &mut [u8],
        pos: usize,
        id: u32,
        first_line: u32,
        filename: &[u8],
        name: &[u8],
    ) -> usize {
        record(buf, pos, tag::CODE, false, |b, p| {
            let p = varint::put(b, p, u64::from(id));
            let p = varint::put(b, p, u64::from(first_line));
            let p = bytes(b, p, filename);
            bytes(b, p, name)
        })
    }

    /// `kind` resource `id` is still open as the image exits; `text` says what it is.
    /// Room: `text.len() + 4 + 3 * MAX_VARINT + 1`.
    pub fn open_at_exit(&mut self, buf: &mut [u8], pos: usize, seq: u64, kind: Kind, id: u64, text: &[u8]) -> usize {
        record(buf, pos, tag::OPEN_AT_EXIT, false, |b, p| {
            let p = varint::put(b, p, seq);
            b[p] = kind.0;
            let p = varint::put(b, p + 1, id);
            bytes(b, p, text)
        })
    }
}
