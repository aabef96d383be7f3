//! Streaming decoder: fed whatever bytes have arrived, it returns whole records, asks for more
//! when a record is incomplete, and rejects corrupt input with an error that says where and
//! what. Hostile input cannot make it allocate more than the record it is reading claims, and
//! a record may claim at most [`MAX_RECORD_LEN`] bytes.

use std::fmt;

use crate::varint::{self, unzigzag};
use crate::{tag, Api, Kind, Recent, HEADER_LEN, MAGIC, VERSION};

/// Longest record payload the decoder accepts.
pub const MAX_RECORD_LEN: usize = 1 << 20;

/// A loadable segment of a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address in the module file (add the module's base for the runtime address).
    pub vaddr: u64,
    pub memsz: u64,
    /// Offset of the segment in the file.
    pub offset: u64,
    /// ELF `p_flags` (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

/// One decoded record. See the tags in [`crate::tag`] for what each means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Header {
        version: u16,
    },
    ImageStart {
        pid: u32,
        ppid: u32,
        root: bool,
        exec: bool,
        time_ns: u64,
        exe: String,
        argv: Vec<String>,
    },
    Batch {
        tid: u32,
    },
    Module {
        id: u32,
        base: u64,
        path: String,
        build_id: Vec<u8>,
        segments: Vec<Segment>,
    },
    ModuleUnload {
        seq: u64,
        id: u32,
    },
    Stack {
        id: u32,
        frames: Vec<u64>,
    },
    /// Stack `id` is `frames` followed by the outermost `shared` frames of stack `base`.
    StackShared {
        id: u32,
        base: u32,
        shared: usize,
        frames: Vec<u64>,
    },
    Acquire {
        seq: u64,
        kind: Kind,
        api: Api,
        id: u64,
        size: u64,
        stack: u32,
    },
    Release {
        seq: u64,
        kind: Kind,
        api: Api,
        id: u64,
    },
    Fork {
        seq: u64,
        child: u32,
    },
    Exec {
        seq: u64,
        path: String,
    },
    /// The exec announced by the last `Exec` failed: the image goes on.
    ExecFailed {
        seq: u64,
    },
    ImageExit {
        seq: u64,
    },
    Notice {
        text: String,
    },
    /// A Python code object (function `name` of `filename`, starting at `first_line`).
    Code {
        id: u32,
        first_line: u32,
        filename: String,
        name: String,
    },
    /// What the resource acquired with `seq` is (path, socket peer, pipe).
    Describe {
        seq: u64,
        text: String,
    },
    /// `kind` resource `id` was still open when the image exited (`seq` orders it after every
    /// event of the image); `text` is what it is (for a descriptor, its /proc/self/fd link).
    OpenAtExit {
        seq: u64,
        kind: Kind,
        id: u64,
        text: String,
    },
    /// The command `residue run` was given (written by the collector into saved traces).
    Command {
        argv: Vec<String>,
    },
    /// How the process ended (written by the collector into saved traces).
    ProcessEnd {
        pid: u32,
        code: i32,
        signal: u32,
    },
    /// A record of a tag this build does not know (written by a newer interposer); skipped.
    Unknown {
        tag: u8,
    },
}

/// Why a stream could not be read, and at which byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: u64,
    pub kind: DecodeErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The first bytes are not residue's magic.
    NotATrace,
    /// Written by a newer residue.
    NewerVersion(u16),
    /// The data ends inside a record.
    Truncated,
    /// A record does not parse; the text says which part.
    Corrupt(&'static str),
}

impl DecodeError {
    /// The stream ended at `offset` in the middle of a record.
    pub fn truncated(offset: u64) -> Self {
        DecodeError { offset, kind: DecodeErrorKind::Truncated }
    }

    fn corrupt(offset: u64, what: &'static str) -> Self {
        DecodeError { offset, kind: DecodeErrorKind::Corrupt(what) }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::NotATrace => write!(f, "not a residue trace (the file does not start with residue's header); pass a file written by `residue run --output`"),
            DecodeErrorKind::NewerVersion(v) => write!(f, "trace format version {v} is newer than this residue reads (up to {VERSION}); report it with a newer residue"),
            DecodeErrorKind::Truncated => write!(f, "the trace is truncated at byte {}: the last record is incomplete (the target or residue was killed while writing)", self.offset),
            DecodeErrorKind::Corrupt(what) => write!(f, "the trace is corrupt at byte {}: {what}", self.offset),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decoding state across calls: the stream position and the current batch's delta state.
#[derive(Debug, Default)]
pub struct Decoder {
    offset: u64,
    header_seen: bool,
    last_seq: u64,
    last_id: u64,
    recent: Recent,
}

/// A cursor over one record's payload; every read is bounds-checked.
struct Payload<'a> {
    buf: &'a [u8],
    pos: usize,
    offset: u64,
}

impl<'a> Payload<'a> {
    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError::corrupt(self.offset + self.pos as u64, what)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        varint::get(self.buf, &mut self.pos).ok_or_else(|| self.err(what))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let v = self.u64(what)?;
        u32::try_from(v).map_err(|_| self.err(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.err(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(what)?;
        let rest = self.buf.len() - self.pos;
        if len > rest as u64 {
            return Err(self.err(what));
        }
        let b = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(b)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        Ok(String::from_utf8_lossy(self.bytes(what)?).into_owned())
    }

    /// A stack's frames: their count, the first, then zigzag deltas.
    fn frames(&mut self) -> Result<Vec<u64>, DecodeError> {
        let n = self.count("bad stack depth")?;
        let mut frames = Vec::with_capacity(n);
        let mut prev = 0u64;
        for _ in 0..n {
            prev = prev.wrapping_add(unzigzag(self.u64("bad stack frame")?) as u64);
            frames.push(prev);
        }
        Ok(frames)
    }

    /// A count of items each at least one byte long: never more than the bytes left.
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u64(what)?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(self.err(what));
        }
        Ok(n as usize)
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Decodes the next record from the start of `buf`. `Ok(None)`: `buf` ends inside the
    /// record; call again with more bytes (at end of input, that is [`DecodeError::truncated`]).
    /// `Ok(Some((record, n)))`: the record and how many bytes of `buf` it took.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<(Record, usize)>, DecodeError> {
        if !self.header_seen {
            let n = buf.len().min(MAGIC.len());
            if buf[..n] != MAGIC[..n] {
                return Err(DecodeError { offset: self.offset, kind: DecodeErrorKind::NotATrace });
            }
            if buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let version = u16::from_le_bytes([buf[8], buf[9]]);
            if version > VERSION {
                return Err(DecodeError { offset: 8, kind: DecodeErrorKind::NewerVersion(version) });
            }
            self.header_seen = true;
            self.offset += HEADER_LEN as u64;
            return Ok(Some((Record::Header { version }, HEADER_LEN)));
        }
        let Some(&tag) = buf.first() else { return Ok(None) };
        if matches!(
            tag,
            tag::MALLOC_NEXT | tag::FREE_NEXT | tag::MALLOC_SAME | tag::FREE_RECENT..=tag::FREE_RECENT_LAST
        ) {
            return self.next_event(tag, buf);
        }
        let mut pos = 1;
        let Some(len) = varint::get(buf, &mut pos) else {
            return if buf.len() < 1 + crate::varint::MAX_VARINT {
                Ok(None)
            } else {
                Err(DecodeError::corrupt(self.offset + 1, "a record length is not a valid number"))
            };
        };
        if len > MAX_RECORD_LEN as u64 {
            return Err(DecodeError::corrupt(self.offset + 1, "a record claims a length over 1 MiB"));
        }
        let end = pos + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        let mut p = Payload { buf: &buf[pos..end], pos: 0, offset: self.offset + pos as u64 };
        let record = self.payload(tag, &mut p)?;
        if p.pos != p.buf.len() && !matches!(record, Record::Unknown { .. }) {
            return Err(p.err("a record has bytes after its last field"));
        }
        self.offset += end as u64;
        Ok(Some((record, end)))
    }

    fn payload(&mut self, t: u8, p: &mut Payload<'_>) -> Result<Record, DecodeError> {
        Ok(match t {
            tag::IMAGE_START => {
                let pid = p.u32("bad pid in an image-start record")?;
                let ppid = p.u32("bad parent pid in an image-start record")?;
                let flags = p.u64("bad flags in an image-start record")?;
                let time_ns = p.u64("bad time in an image-start record")?;
                let exe = p.string("bad executable path in an image-start record")?;
                let n = p.count("bad argument count in an image-start record")?;
                let mut argv = Vec::with_capacity(n);
                for _ in 0..n {
                    argv.push(p.string("bad argument in an image-start record")?);
                }
                Record::ImageStart { pid, ppid, root: flags & 1 != 0, exec: flags & 2 != 0, time_ns, exe, argv }
            }
            tag::BATCH => {
                self.last_seq = 0;
                self.last_id = 0;
                self.recent = Recent::default();
                Record::Batch { tid: p.u32("bad thread id in a batch record")? }
            }
            tag::MODULE => {
                let id = p.u32("bad module id")?;
                let base = p.u64("bad module base address")?;
                let path = p.string("bad module path")?;
                let build_id = p.bytes("bad module build-id")?.to_vec();
                let n = p.count("bad module segment count")?;
                let mut segments = Vec::with_capacity(n);
                for _ in 0..n {
                    segments.push(Segment {
                        vaddr: p.u64("bad segment address")?,
                        memsz: p.u64("bad segment size")?,
                        offset: p.u64("bad segment offset")?,
                        flags: p.u32("bad segment flags")?,
                    });
                }
                Record::Module { id, base, path, build_id, segments }
            }
            tag::MODULE_UNLOAD => Record::ModuleUnload {
                seq: p.u64("bad sequence number in a module-unload record")?,
                id: p.u32("bad module id in a module-unload record")?,
            },
            tag::STACK => {
                let id = p.u32("bad stack id")?;
                Record::Stack { id, frames: p.frames()? }
            }
            tag::STACK_SHARED => {
                let id = p.u32("bad stack id")?;
                let base = p.u32("bad base stack id")?;
                // Not bytes of this record: bounded by what a stack can hold instead.
                let shared = p.u32("bad count of shared frames")?;
                if shared > 1 << 16 {
                    return Err(p.err("bad count of shared frames"));
                }
                Record::StackShared { id, base, shared: shared as usize, frames: p.frames()? }
            }
            tag::ACQUIRE => {
                let seq = self.seq(p)?;
                let kind = Kind(p.u8("missing kind in an acquire record")?);
                let api = Api(p.u8("missing api in an acquire record")?);
                let id = self.id(p)?;
                let size = p.u64("bad size in an acquire record")?;
                let stack = p.u32("bad stack id in an acquire record")?;
                self.recent.push(id);
                Record::Acquire { seq, kind, api, id, size, stack }
            }
            tag::RELEASE => {
                let seq = self.seq(p)?;
                let kind = Kind(p.u8("missing kind in a release record")?);
                let api = Api(p.u8("missing api in a release record")?);
                let id = self.id(p)?;
                Record::Release { seq, kind, api, id }
            }
            tag::MALLOC => {
                let seq = self.seq(p)?;
                let id = self.id(p)?;
                let size = p.u64("bad size in a malloc record")?;
                let stack = p.u32("bad stack id in a malloc record")?;
                self.recent.push(id);
                Record::Acquire { seq, kind: Kind::HEAP, api: Api::MALLOC, id, size, stack }
            }
            tag::FREE => {
                let seq = self.seq(p)?;
                let id = self.id(p)?;
                Record::Release { seq, kind: Kind::HEAP, api: Api::FREE, id }
            }
            tag::FORK => Record::Fork {
                seq: p.u64("bad sequence number in a fork record")?,
                child: p.u32("bad child pid in a fork record")?,
            },
            tag::EXEC => Record::Exec {
                seq: p.u64("bad sequence number in an exec record")?,
                path: p.string("bad path in an exec record")?,
            },
            tag::EXEC_FAILED => Record::ExecFailed { seq: p.u64("bad sequence number in an exec-failed record")? },
            tag::IMAGE_EXIT => Record::ImageExit { seq: p.u64("bad sequence number in an exit record")? },
            tag::NOTICE => Record::Notice { text: p.string("bad text in a notice record")? },
            tag::CODE => Record::Code {
                id: p.u32("bad code id")?,
                first_line: p.u32("bad first line in a code record")?,
                filename: p.string("bad file name in a code record")?,
                name: p.string("bad function name in a code record")?,
            },
            tag::DESCRIBE => Record::Describe {
                seq: p.u64("bad sequence number in a describe record")?,
                text: p.string("bad text in a describe record")?,
            },
            tag::OPEN_AT_EXIT => Record::OpenAtExit {
                seq: p.u64("bad sequence number in an open-at-exit record")?,
                kind: Kind(p.u8("missing kind in an open-at-exit record")?),
                id: p.u64("bad resource id in an open-at-exit record")?,
                text: p.string("bad text in an open-at-exit record")?,
            },
            tag::COMMAND => {
                let n = p.count("bad argument count in a command record")?;
                let argv = (0..n).map(|_| p.string("bad argument in a command record")).collect::<Result<_, _>>()?;
                Record::Command { argv }
            }
            tag::PROCESS_END => {
                let pid = p.u32("bad pid in a process-end record")?;
                let code = i32::try_from(unzigzag(p.u64("bad exit code in a process-end record")?))
                    .map_err(|_| p.err("bad exit code in a process-end record"))?;
                Record::ProcessEnd { pid, code, signal: p.u32("bad signal in a process-end record")? }
            }
            0 => return Err(p.err("a record has tag 0, which residue never writes")),
            other => Record::Unknown { tag: other },
        })
    }

    /// A record without a length at the start of `buf` ([`tag::MALLOC_NEXT`],
    /// [`tag::MALLOC_SAME`], [`tag::FREE_NEXT`], [`tag::FREE_RECENT`]): its end is where its
    /// last varint ends.
    fn next_event(&mut self, t: u8, buf: &[u8]) -> Result<Option<(Record, usize)>, DecodeError> {
        // The varints each carries: the id delta (but where the id is implied), size, stack.
        let (malloc, fields) = match t {
            tag::MALLOC_NEXT => (true, 3),
            tag::MALLOC_SAME => (true, 2),
            tag::FREE_NEXT => (false, 1),
            _ => (false, 0),
        };
        let mut pos = 1;
        let mut v = [0u64; 3];
        for f in v.iter_mut().take(fields) {
            match varint::get(buf, &mut pos) {
                Some(x) => *f = x,
                // Out of bytes inside a varint: more may come. A varint that runs past its
                // longest encoding with bytes left is corrupt.
                None if pos >= buf.len() && buf.len() < 1 + fields * crate::varint::MAX_VARINT => return Ok(None),
                None => {
                    return Err(DecodeError::corrupt(self.offset + 1, "a malloc or free record is not valid numbers"))
                }
            }
        }
        // The id delta first where there is one.
        let (delta, size, stack) = match t {
            tag::MALLOC_NEXT => (v[0], v[1], v[2]),
            tag::MALLOC_SAME => (0, v[0], v[1]),
            _ => (v[0], 0, 0),
        };
        let stack = u32::try_from(stack)
            .map_err(|_| DecodeError::corrupt(self.offset + 1, "bad stack id in a malloc record"))?;
        self.last_seq = self.last_seq.wrapping_add(1);
        self.last_id = match t {
            tag::FREE_RECENT..=tag::FREE_RECENT_LAST => self.recent.get(usize::from(t - tag::FREE_RECENT)),
            _ => self.last_id.wrapping_add(unzigzag(delta) as u64),
        };
        let (seq, id) = (self.last_seq, self.last_id);
        let record = if malloc {
            self.recent.push(id);
            Record::Acquire { seq, kind: Kind::HEAP, api: Api::MALLOC, id, size, stack }
        } else {
            Record::Release { seq, kind: Kind::HEAP, api: Api::FREE, id }
        };
        self.offset += pos as u64;
        Ok(Some((record, pos)))
    }

    fn seq(&mut self, p: &mut Payload<'_>) -> Result<u64, DecodeError> {
        let d = unzigzag(p.u64("bad sequence number")?);
        self.last_seq = self.last_seq.wrapping_add(d as u64);
        Ok(self.last_seq)
    }

    fn id(&mut self, p: &mut Payload<'_>) -> Result<u64, DecodeError> {
        let d = unzigzag(p.u64("bad resource id")?);
        self.last_id = self.last_id.wrapping_add(d as u64);
        Ok(self.last_id)
    }
}
