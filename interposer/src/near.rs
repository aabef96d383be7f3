//! Per-thread direct-mapped caches in front of the global intern tables (stacks, Python code
//! objects, Python lines). A thread's caches live on the heap (`Thread::near`), zeroed: all
//! zero is empty. The global tables are megabytes of hashed slots shared by every
//! thread, so each probe is likely a cache miss; a thread's hot keys are a few hundred and fit
//! here, in its own memory. Entries are copies of what the global tables answered: keys carry
//! everything that makes them unique (generation included), so an entry is never stale, only
//! evicted.

/// A table of `N` (key, value) pairs, in sets of two: a key lives in one set, at either place;
/// key 0 is empty (callers' keys are never 0). Two ways rather than one: with one, two keys of
/// a loop that land on the same entry would evict each other on every turn.
pub struct Near<const N: usize> {
    entries: [(u64, u32); N],
}

impl<const N: usize> Near<N> {
    /// The first place of `key`'s set; the other is the next one.
    #[inline(always)]
    fn index(key: u64) -> usize {
        const { assert!(N.is_power_of_two() && N >= 2) };
        // The keys are already hashes (with the lowest bit set): any other bits are as good.
        (key >> 1) as usize & (N - 2)
    }

    #[inline(always)]
    pub fn get(&self, key: u64) -> Option<u32> {
        let i = Self::index(key);
        let (a, b) = (self.entries[i], self.entries[i + 1]);
        if a.0 == key {
            Some(a.1)
        } else {
            (b.0 == key).then_some(b.1)
        }
    }

    /// Puts `key` first in its set; what was first moves second, and what was second goes.
    #[inline(always)]
    pub fn put(&mut self, key: u64, value: u32) {
        let i = Self::index(key);
        self.entries[i + 1] = self.entries[i];
        self.entries[i] = (key, value);
    }
}

/// The fields of a code object that tell it from another that later occupies the same memory
/// (python.rs hashes them into its identity key): the addresses of its file and name objects,
/// the name's length and cached hash, and the word holding its first line.
#[derive(Clone, Copy)]
pub struct CodeFields {
    pub filename: u64,
    pub qualname: u64,
    pub name_len: u64,
    pub name_hash: u64,
    pub first_line: u64,
}

/// What a thread last saw a Python frame at (code object, instruction) turn into: the frame's
/// recorded value (code id and line, without the entry mark), with the code object's fields then
/// (a code object freed and replaced at the same address has other fields).
#[derive(Clone, Copy)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u64,
    pub fields: CodeFields,
    pub value: u64,
}

const EMPTY_FIELDS: CodeFields = CodeFields { filename: 0, qualname: 0, name_len: 0, name_hash: 0, first_line: 0 };
const EMPTY_FRAME: PyFrame = PyFrame { code: 0, instr: 0, fields: EMPTY_FIELDS, value: 0 };

/// Entries of [`PyFrames`]: a loop's Python call sites, times the frames above them. (With 64
/// direct-mapped entries W1's loop missed on 0.8 frames a capture: its allocation sites are
/// about as many as the entries.)
const PY_FRAMES: usize = 256;

/// A two-way table of [`PyFrame`]s (a key lives in one set of two, as in [`Near`]), tagged with
/// the Python module's stream generation (a forked child's stream needs every code object sent
/// again), and the Python stack seen last inside the thread's innermost foreign call
/// ([`CallFrames`]).
pub struct PyFrames {
    generation: u64,
    entries: [PyFrame; PY_FRAMES],
    call: CallFrames,
    chain: [Link; CHAIN],
}

/// Entries of [`PyFrames`]' table of frames by address. Frames live one after the other in the
/// thread's frame stack (3.11 on; a generator's elsewhere), each larger than 16 bytes: a frame's
/// address divided by 16 picks its entry, so the frames of 2 KiB of that stack never share one
/// (a hash of the address made two of W1's three frames share an entry, and each walk missed
/// both).
pub const CHAIN: usize = 128;

/// A frame the thread's walks met, by its address: what it ran, what the code's identifying
/// fields were, and the value it was recorded as (with its entry mark). A frame's address is its
/// depth in the thread's frame stack, counted from the outermost, so consecutive walks meet most
/// of the same frames at the same addresses (only the innermost moved on, or a call or return
/// changed the top): one that finds the same words there takes the value without the table's
/// hashed lookup of (code, instruction).
#[derive(Clone, Copy)]
pub struct Link {
    pub frame: u64,
    pub code: u64,
    pub instr: u64,
    /// The frame's entry byte where the layout has one (3.11), else 0.
    pub entry: u8,
    pub fields: CodeFields,
    pub value: u64,
}

const EMPTY_LINK: Link = Link { frame: 0, code: 0, instr: 0, entry: 0, fields: EMPTY_FIELDS, value: 0 };

/// Python frames a stack holds at most (python.rs asserts it is its own limit).
pub const CALL_FRAMES: usize = 128;

/// The Python stack (its frames' values, innermost first) of a capture inside foreign call
/// `call` (a ctypes or cffi call, numbered per thread) while `at` was the thread's current
/// Python frame: its address, instruction and code object's identity key. While that call runs,
/// the Python frame that made it waits in it and nothing under it can change: a later capture
/// in the same call, with the same frame current at the same point of the same code, has the
/// same Python stack.
struct CallFrames {
    call: u64,
    at: (u64, u64, u64),
    len: usize,
    values: [u64; CALL_FRAMES],
}

impl PyFrames {
    /// The first place of the set of (`code`, `instr`); the other is the next one.
    #[inline(always)]
    fn index(code: u64, instr: u64) -> usize {
        let h = (code ^ instr.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - PY_FRAMES.trailing_zeros())) as usize & (PY_FRAMES - 2)
    }

    /// Empties the table if `generation` is not the one its entries were made under.
    #[inline(always)]
    pub fn check(&mut self, generation: u64) {
        if self.generation != generation {
            self.entries = [EMPTY_FRAME; PY_FRAMES];
            self.call.call = 0;
            self.chain = [EMPTY_LINK; CHAIN];
            self.generation = generation;
        }
    }

    /// The Python stack kept for foreign call `call` (non-zero) with `at` current (see
    /// [`CallFrames`]), copied into `out`; its length, or `None` if another was kept.
    #[inline(always)]
    pub fn in_call(&self, call: u64, at: (u64, u64, u64), out: &mut [u64]) -> Option<usize> {
        let c = &self.call;
        if c.call != call || c.at != at || c.len > out.len() {
            return None;
        }
        residue_unwind::copy_short(&mut out[..c.len], &c.values[..c.len]);
        Some(c.len)
    }

    /// Keeps `values` as the Python stack of foreign call `call` with `at` current.
    #[inline(always)]
    pub fn keep_call(&mut self, call: u64, at: (u64, u64, u64), values: &[u64]) {
        let c = &mut self.call;
        if values.len() > CALL_FRAMES {
            c.call = 0;
            return;
        }
        (c.call, c.at, c.len) = (call, at, values.len());
        residue_unwind::copy_short(&mut c.values[..values.len()], values);
    }

    /// The value of a frame at (`code`, `instr`) if this table has it with these `fields`.
    #[inline(always)]
    pub fn get(&self, code: u64, instr: u64, fields: &CodeFields) -> Option<u64> {
        let i = Self::index(code, instr);
        // One test of all the words rather than a branch per word.
        let is = |e: &PyFrame| {
            let f = &e.fields;
            (e.code ^ code)
                | (e.instr ^ instr)
                | (f.filename ^ fields.filename)
                | (f.qualname ^ fields.qualname)
                | (f.name_len ^ fields.name_len)
                | (f.name_hash ^ fields.name_hash)
                | (f.first_line ^ fields.first_line)
                == 0
                && code != 0
        };
        if is(&self.entries[i]) {
            Some(self.entries[i].value)
        } else {
            is(&self.entries[i + 1]).then_some(self.entries[i + 1].value)
        }
    }

    #[inline(always)]
    fn link_index(frame: u64) -> usize {
        (frame >> 4) as usize % CHAIN
    }

    /// What the thread's walks last met at frame address `frame`, if they kept it.
    #[inline(always)]
    pub fn link(&self, frame: u64) -> Option<&Link> {
        Some(&self.chain[Self::link_index(frame)]).filter(|l| l.frame == frame)
    }

    /// Keeps `link` for its frame address (in place of whatever shared its entry).
    #[inline(always)]
    pub fn set_link(&mut self, link: Link) {
        self.chain[Self::link_index(link.frame)] = link;
    }

    /// Puts `e` first in its set; what was first moves second, and what was second goes.
    #[inline(always)]
    pub fn put(&mut self, e: PyFrame) {
        let i = Self::index(e.code, e.instr);
        self.entries[i + 1] = self.entries[i];
        self.entries[i] = e;
    }
}

/// Frames [`LastSent`] keeps: as many as a stack has at most.
pub const LAST_SENT: usize = crate::state::FRAME_BUF;

/// The stack this thread sent last: its next new stack is sent as the frames that differ and
/// how many outer frames the two share (`STACK_SHARED`). Valid in the base epoch it was sent in
/// (stacks.rs: a base never lies across a fork's new stream or an exec).
pub struct LastSent {
    pub epoch: u64,
    pub id: u32,
    pub len: usize,
    pub frames: [u64; LAST_SENT],
}

/// The caches of one thread (see [`crate::state::Thread::near`]).
pub struct NearCaches {
    /// The stack this thread sent last.
    pub last_sent: LastSent,
    /// (code object, instruction) -> the Python frame's value.
    pub py_frames: PyFrames,
    /// Stack hash -> stack id.
    pub stacks: Near<256>,
    /// Code identity key -> code id.
    pub codes: Near<64>,
    /// (code, instruction) key -> line + 1.
    pub lines: Near<64>,
}
