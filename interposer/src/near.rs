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

/// What a thread last saw a Python frame at (code object, instruction) turn into: the frame's
/// recorded value (code id and line, without the entry mark), under the code object's identity
/// key then (a code object freed and replaced at the same address has another key).
#[derive(Clone, Copy)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u64,
    pub identity: u64,
    pub value: u64,
}

/// Entries of [`PyFrames`]: a loop's Python call sites, times the frames above them.
const PY_FRAMES: usize = 64;

/// A direct-mapped table of [`PyFrame`]s, tagged with the Python module's stream generation
/// (a forked child's stream needs every code object sent again), and the Python stack seen last
/// inside the thread's innermost foreign call ([`CallFrames`]).
pub struct PyFrames {
    generation: u64,
    entries: [PyFrame; PY_FRAMES],
    call: CallFrames,
}

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
    #[inline(always)]
    fn index(code: u64, instr: u64) -> usize {
        let h = (code ^ instr.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - PY_FRAMES.trailing_zeros())) as usize
    }

    /// Empties the table if `generation` is not the one its entries were made under.
    #[inline(always)]
    pub fn check(&mut self, generation: u64) {
        if self.generation != generation {
            self.entries = [PyFrame { code: 0, instr: 0, identity: 0, value: 0 }; PY_FRAMES];
            self.call.call = 0;
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
        out[..c.len].copy_from_slice(&c.values[..c.len]);
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
        c.values[..values.len()].copy_from_slice(values);
    }

    /// The value of a frame at (`code`, `instr`) if this table has it under `identity`.
    #[inline(always)]
    pub fn get(&self, code: u64, instr: u64, identity: u64) -> Option<u64> {
        let e = &self.entries[Self::index(code, instr)];
        (e.code == code && e.instr == instr && e.identity == identity && code != 0).then_some(e.value)
    }

    #[inline(always)]
    pub fn put(&mut self, e: PyFrame) {
        self.entries[Self::index(e.code, e.instr)] = e;
    }
}

/// The caches of one thread (see [`crate::state::Thread::near`]).
pub struct NearCaches {
    /// (code object, instruction) -> the Python frame's value.
    pub py_frames: PyFrames,
    /// Stack hash -> stack id.
    pub stacks: Near<256>,
    /// Code identity key -> code id.
    pub codes: Near<64>,
    /// (code, instruction) key -> line + 1.
    pub lines: Near<64>,
}
