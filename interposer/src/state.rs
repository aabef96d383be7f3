//! Global and per-thread state. Everything here is reachable from inside malloc, so it is
//! atomics and const-initialized thread-locals without destructors: such a `thread_local!`
//! compiles to plain TLS access, never allocates, and is never torn down before the thread's
//! last free.

use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::near::NearCaches;
use crate::transport::Slot;

/// Not yet initialized: every hook passes straight through.
pub const UNINIT: u8 = 0;
/// Recording.
pub const ACTIVE: u8 = 1;
/// Not recording, for good: a child we do not follow, a process not launched by residue, a
/// collector that went away, or an internal error.
pub const PASSIVE: u8 = 2;
/// The image is exiting: the final flush has begun or is done.
pub const FINISHED: u8 = 3;
/// An exec is under way: its flush has run; recording resumes if exec fails.
pub const EXECUTING: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);

#[inline(always)]
pub fn state() -> u8 {
    STATE.load(Ordering::Acquire)
}

pub fn set_state(s: u8) {
    STATE.store(s, Ordering::Release);
}

/// Moves from `from` to `to`; false if the state was something else.
pub fn transition(from: u8, to: u8) -> bool {
    STATE.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Stop recording for good, unless the image is already finishing.
pub fn go_passive() {
    let _ = transition(ACTIVE, PASSIVE);
    let _ = transition(EXECUTING, PASSIVE);
}

/// The next global sequence number: the order of acquisitions and releases across threads
/// (module `seq`). Hooks that hold a [`Guard`] use `seq::next_for(guard.thread())`.
#[inline(always)]
pub fn next_seq() -> u64 {
    crate::seq::next_for(thread())
}

/// Per-thread state. `busy` is the re-entrancy guard: set while a hook records (so the
/// interposer's own allocations, and those of anything it calls, are never recorded) and
/// permanently on the writer thread.
pub struct Thread {
    pub busy: Cell<bool>,
    pub tid: Cell<u32>,
    pub slot: Cell<*mut Slot>,
    /// The slot is shared with other threads (every slot was taken).
    pub shared: Cell<bool>,
    pub writer: Cell<bool>,
    /// CLOCK_MONOTONIC_COARSE nanoseconds when this thread last handed its chunk over: without
    /// a writer thread, the thread writes out a chunk that has grown this old (transport.rs).
    pub handed_ns: Cell<u64>,
    /// CLOCK_MONOTONIC_COARSE nanoseconds when this thread last wrote its chunk out on going
    /// idle (transport::going_idle).
    pub idle_ns: Cell<u64>,
    /// The function a ctypes/cffi call (libffi's `ffi_call`) is calling, 0 outside one.
    pub foreign: Cell<u64>,
    /// The number of that call (`foreign_calls` when it began), 0 outside one.
    pub foreign_call: Cell<u64>,
    /// Foreign calls this thread has made.
    pub foreign_calls: Cell<u64>,
    /// Scratch space for one stack: reused, so that recording does not clear kilobytes of stack
    /// memory on every allocation.
    frames: UnsafeCell<[u64; FRAME_BUF]>,
    /// The thread's caches in front of the global tables: allocated on first use, freed at
    /// thread exit (see [`Thread::near`]).
    near: Cell<*mut NearCaches>,
    /// The thread's exit hook ran: later recordings (destructors that allocate) go without
    /// caches rather than allocate them again.
    retired: Cell<bool>,
    /// The unwinder's per-thread state, kept here so that a capture needs no TLS lookup of its
    /// own.
    pub unwind: residue_unwind::ThreadState,
}

/// Frames the per-thread scratch buffer holds: our own frames, the deepest native stack, the
/// deepest Python stack and a foreign call.
pub const FRAME_BUF: usize = 16 + residue_protocol::MAX_FRAMES + 128 + 1;

thread_local! {
    static THREAD: Thread = const {
        Thread {
            busy: Cell::new(false),
            tid: Cell::new(0),
            slot: Cell::new(ptr::null_mut()),
            shared: Cell::new(false),
            writer: Cell::new(false),
            handed_ns: Cell::new(0),
            idle_ns: Cell::new(0),
            foreign: Cell::new(0),
            foreign_call: Cell::new(0),
            foreign_calls: Cell::new(0),
            frames: UnsafeCell::new([0; FRAME_BUF]),
            near: Cell::new(ptr::null_mut()),
            retired: Cell::new(false),
            unwind: residue_unwind::ThreadState::new(),
        }
    };
}

/// This thread's state. The reference is valid for the life of the thread: the thread-local
/// has no destructor, so it is never torn down.
#[inline(always)]
pub fn thread() -> &'static Thread {
    // SAFETY: THREAD has no destructor (all fields are Cells of Copy types), so its storage
    // lives as long as the thread and is only touched from this thread; `Thread` is !Sync, so
    // the reference cannot leave the thread either.
    THREAD.with(|t| unsafe { &*(t as *const Thread) })
}

impl Thread {
    /// The thread's stack scratch buffer.
    ///
    /// # Safety
    /// Only while holding this thread's [`Guard`], and not twice at once: the guard keeps
    /// every other hook on this thread (a signal handler's allocation included) from recording.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn frame_buf(&self) -> &mut [u64; FRAME_BUF] {
        // SAFETY: the caller guarantees exclusive use (see above); the storage is this thread's.
        unsafe { &mut *self.frames.get() }
    }

    /// The thread's caches in front of the global intern tables, or `None` (allocation failed,
    /// or the thread is ending). On the heap, not in TLS: the static TLS block of a preloaded
    /// library comes out of every thread's stack, and a thread asking for a 16 KiB stack must
    /// still get one.
    ///
    /// # Safety
    /// As [`Thread::frame_buf`]: only under this thread's [`Guard`], one borrow at a time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn near(&self) -> Option<&mut NearCaches> {
        let mut p = self.near.get();
        if p.is_null() && !self.retired.get() {
            // Our own allocation (the guard is held): LibcAlloc, zeroed, which is empty.
            // SAFETY: a non-zero-sized layout.
            p = unsafe { std::alloc::alloc_zeroed(std::alloc::Layout::new::<NearCaches>()) }.cast();
            self.near.set(p);
        }
        // SAFETY: null or this thread's own block, freed only by `retire` (which clears the
        // pointer first); the caller guarantees exclusive use.
        unsafe { p.as_mut() }
    }

    /// The thread is ending: free its caches (and the unwinder's memo); later recordings on it
    /// go without them. Called by the transport's thread-exit hook, under the guard.
    pub fn retire(&self) {
        self.retired.set(true);
        let p = self.near.replace(ptr::null_mut());
        if !p.is_null() {
            // SAFETY: allocated in `near` with this layout, and no longer reachable.
            unsafe { std::alloc::dealloc(p.cast(), std::alloc::Layout::new::<NearCaches>()) };
        }
        residue_unwind::thread_exit_in(&self.unwind);
    }

    pub fn tid(&self) -> u32 {
        let t = self.tid.get();
        if t != 0 {
            return t;
        }
        let t = crate::ffi::gettid();
        self.tid.set(t);
        t
    }
}

/// Entered a hook that may record: released on drop.
pub struct Guard(&'static Thread);

impl Guard {
    /// `Some` when this call should be recorded: the interposer is active and this thread is
    /// not already inside a hook.
    #[inline(always)]
    pub fn enter() -> Option<Guard> {
        if state() != ACTIVE {
            return None;
        }
        let t = thread();
        if t.busy.replace(true) {
            return None;
        }
        Some(Guard(t))
    }

    /// Like `enter`, but regardless of the state (for exit and exec paths).
    pub fn enter_any() -> Option<Guard> {
        let t = thread();
        if t.busy.replace(true) {
            return None;
        }
        Some(Guard(t))
    }

    pub fn thread(&self) -> &'static Thread {
        self.0
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}
