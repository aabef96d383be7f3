//! The thread's previous walk, kept so that the next one can replay it instead of looking up
//! a rule for every frame.
//!
//! A walk is a pure function of its state (return address, CFA, rbp) after each step, of the
//! rules (fixed until the rule cache is invalidated: [`Walk::generation`]), and of the stack
//! words it reads. When a new walk reaches a state the previous walk also passed through, the
//! previous walk's next steps tell where the next reads are (the CFA follows from the state and
//! the rule; the rbp slot from the CFA and the rule): the replay reads the same words and, as
//! long as they hold what they held last time, the state stays equal and no rule is looked up.
//! The first word that differs is still read correctly, and the walk goes on with lookups from
//! there (and may fall back in step further out). So the result is exactly the plain walk's;
//! only the rule lookups (a random access into a 1 MiB table) are saved.
//!
//! Consecutive allocations share most of their stack (the program's outer frames, the
//! interpreter's evaluation loop), so most frames are replayed.

use std::cell::{Cell, UnsafeCell};

/// Steps remembered per walk: the interposer's default depth (64) plus its own frames. Deeper
/// frames are walked with lookups.
pub(crate) const CAP: usize = 80;

/// One step of a walk: the frame's CFA, the return address read at CFA-8, rbp after the step
/// and where it was read (0: the rule left rbp unchanged).
#[derive(Clone, Copy)]
pub(crate) struct Step {
    pub cfa: u64,
    pub ra: u64,
    pub fp: u64,
    pub fp_slot: u64,
}

pub(crate) struct Walk {
    /// The rule cache's generation the walk ran under.
    pub generation: u64,
    /// Steps recorded (at most CAP).
    pub len: usize,
    pub steps: [Step; CAP],
}

const EMPTY_STEP: Step = Step { cfa: 0, ra: 0, fp: 0, fp_slot: 0 };
const EMPTY_WALK: Walk = Walk { generation: u64::MAX, len: 0, steps: [EMPTY_STEP; CAP] };

/// Entries of the thread's own rule cache: enough for the return addresses an allocation-heavy
/// loop keeps meeting, small enough to stay in L1.
const NEAR: usize = 256;

/// A direct-mapped cache of rules in front of the global table (module `cache`): the global
/// table is a megabyte of hashed slots, so each of its lookups is likely a cache miss; a
/// thread's hot return addresses are a few hundred. Tagged with the generation like a `Walk`.
pub(crate) struct Near {
    generation: u64,
    entries: [(u64, u64); NEAR],
}

impl Near {
    /// The rule for `key`, from here or from `slow` (which is then remembered here).
    #[inline(always)]
    pub(crate) fn rule(&mut self, key: u64, generation: u64, slow: impl FnOnce(u64) -> Option<u64>) -> Option<u64> {
        if self.generation != generation {
            self.entries = [(0, 0); NEAR];
            self.generation = generation;
        }
        let e = &mut self.entries[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - NEAR.trailing_zeros())) as usize];
        if e.0 == key {
            return Some(e.1);
        }
        let rule = slow(key)?;
        *e = (key, rule);
        Some(rule)
    }
}

struct Memo {
    /// The thread's stack range (module `stack`).
    lo: Cell<usize>,
    hi: Cell<usize>,
    near: UnsafeCell<Near>,
    walks: UnsafeCell<[Walk; 2]>,
    /// Which of `walks` is the previous walk.
    last: Cell<usize>,
    busy: Cell<bool>,
}

thread_local! {
    // Const-initialized, no Drop: plain TLS, nothing registered, usable until the thread's
    // last instruction.
    static MEMO: Memo = const {
        Memo {
            lo: Cell::new(0),
            hi: Cell::new(0),
            near: UnsafeCell::new(Near { generation: u64::MAX, entries: [(0, 0); NEAR] }),
            walks: UnsafeCell::new([EMPTY_WALK; 2]),
            last: Cell::new(0),
            busy: Cell::new(false),
        }
    };
}

/// Runs a walk with this thread's stack range, rule cache, previous walk and room for the new one; a successful walk
/// (`Some`) becomes the previous one. `None` without calling `walk` if re-entered (a signal
/// handler capturing while this thread captures): the caller falls back to libgcc.
#[inline(always)]
pub(crate) fn with(walk: impl FnOnce((usize, usize), &mut Near, &Walk, &mut Walk) -> Option<usize>) -> Option<usize> {
    MEMO.with(|m| {
        if m.busy.replace(true) {
            return None;
        }
        // Fetching the range may allocate and so re-enter (the main thread's reads
        // /proc/self/maps): `busy` sends that capture to libgcc.
        let Some(bounds) = crate::stack::bounds(&m.lo, &m.hi) else {
            m.busy.set(false);
            return None;
        };
        let last = m.last.get();
        // SAFETY: `busy` makes this the only live borrow of the walks on this thread (a nested
        // call returns above), and the TLS is only reachable from this thread.
        let (walks, near) = unsafe { (&mut *m.walks.get(), &mut *m.near.get()) };
        let (a, b) = walks.split_at_mut(1);
        let (prev, next) = if last == 0 { (&a[0], &mut b[0]) } else { (&b[0], &mut a[0]) };
        let r = walk(bounds, near, prev, next);
        if r.is_some() {
            m.last.set(1 - last);
        }
        m.busy.set(false);
        r
    })
}
