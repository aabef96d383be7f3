//! Global and per-thread state. Everything here is reachable from inside malloc, so it is
//! atomics and const-initialized thread-locals without destructors: such a `thread_local!`
//! compiles to plain TLS access, never allocates, and is never torn down before the thread's
//! last free.

use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

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

/// Calls that went unrecorded because another thread's exec attempt was under way (see
/// [`missed_while_executing`]).
static MISSED: AtomicU64 = AtomicU64::new(0);

/// A hook on a thread other than the exec'ing one, outside any hook, during an exec attempt:
/// recording is off until the exec fails (if it succeeds the image is gone, and with it what
/// such calls did). Counted, so that a failed attempt can say what went unrecorded.
#[cold]
#[inline(never)]
fn missed_while_executing() {
    if !thread().busy.get() {
        MISSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many calls went unrecorded during exec attempts so far.
pub fn missed_while_executing_count() -> u64 {
    MISSED.load(Ordering::Relaxed)
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
    /// The foreign call (0: none) in which the thread's Python state was last looked up, and
    /// that state: a capture in the same call takes it from here (python.rs).
    pub py_tstate: Cell<(u64, u64)>,
    /// The foreign call (0: none) a capture last hashed the frames after the native ones of
    /// (its Python frames and the foreign function, the same for every capture made in the
    /// call), and that hash: a later capture in the same call compares it (stacks.rs, `quick`).
    pub call_rest: Cell<(u64, u64)>,
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

/// What every thread's [`Thread`] starts as: all zero bytes, which is what lets it live in the
/// zero-filled TLS section below.
#[cfg_attr(all(target_arch = "x86_64", target_os = "linux"), allow(dead_code))]
const fn empty() -> Thread {
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
        py_tstate: Cell::new((0, 0)),
        call_rest: Cell::new((0, 0)),
        frames: UnsafeCell::new([0; FRAME_BUF]),
        near: Cell::new(ptr::null_mut()),
        retired: Cell::new(false),
        unwind: residue_unwind::ThreadState::new(),
    }
}

// Every hook starts by finding its thread's `Thread`. A `thread_local!` in a shared library is
// reached with the general-dynamic model: a call to ld.so's `__tls_get_addr` on every malloc
// and free (measured: 3.5% of the traced process's CPU time on a C malloc/free loop). The
// interposer is always loaded at start-up (LD_PRELOAD), so its TLS is in the static block, at
// a fixed offset from the thread pointer that the dynamic linker writes into a GOT slot: the
// initial-exec model, two loads. Stable Rust has no way to ask for it, so the variable is
// declared here and read in `thread()`. (The linker marks the library STATIC_TLS: a dlopen of
// it would need room in the static block, which LD_PRELOAD never does.) It goes to .tbss:
// each thread's copy starts as zero bytes, which is `empty()` (all its fields are zero, null
// or false; `tests::zero_bytes_are_the_empty_thread` checks it).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
std::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    // Global for the other codegen units of this crate, hidden from everything outside it.
    ".globl residue_thread_state",
    ".hidden residue_thread_state",
    ".type residue_thread_state,@object",
    ".size residue_thread_state,{size}",
    "residue_thread_state:",
    ".zero {size}",
    ".popsection",
    size = const std::mem::size_of::<Thread>(),
);

const _: () = assert!(std::mem::align_of::<Thread>() <= 64);

/// This thread's state. The reference is valid for the life of the thread: the TLS block is
/// the thread's own until its last instruction (no destructor is registered for it).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
pub fn thread() -> &'static Thread {
    let p: *const Thread;
    // SAFETY: the initial-exec access sequence for `residue_thread_state` (declared above with
    // `Thread`'s size): the GOT slot holds its offset from the thread pointer, which is at
    // %fs:0. The result is this thread's own copy, zero-initialized by the loader (= `empty()`),
    // only ever touched from this thread (`Thread` is !Sync, so the reference cannot leave
    // it), and never freed while the thread runs.
    unsafe {
        std::arch::asm!(
            "mov {p}, qword ptr [rip + residue_thread_state@GOTTPOFF]",
            "add {p}, qword ptr fs:[0]",
            p = out(reg) p,
            options(pure, readonly, nostack),
        );
        &*p
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
thread_local! {
    static THREAD: Thread = const { empty() };
}

/// This thread's state. The reference is valid for the life of the thread: the thread-local
/// has no destructor, so it is never torn down.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
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
    /// or the thread is ending). Not in TLS: the static TLS block of a preloaded library comes
    /// out of every thread's stack, and a thread asking for a 16 KiB stack must still get one.
    /// In pages of their own (`residue_unwind::pages`), which become resident as entries are
    /// written: a zeroed heap block would make all 26 KiB resident on every recording thread.
    ///
    /// # Safety
    /// As [`Thread::frame_buf`]: only under this thread's [`Guard`], one borrow at a time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn near(&self) -> Option<&mut NearCaches> {
        let mut p = self.near.get();
        if p.is_null() && !self.retired.get() {
            // Zeroed, which is empty; a system call, so no hook re-enters.
            p = residue_unwind::pages::zeroed::<NearCaches>();
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
            // SAFETY: allocated in `near`, and no longer reachable; NearCaches has no
            // destructor.
            unsafe { residue_unwind::pages::release(p) };
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
        let s = state();
        if s != ACTIVE {
            if s == EXECUTING {
                missed_while_executing();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS section holding every thread's `Thread` is zero-filled: zero bytes must read as
    /// `empty()` (the unwinder's part is checked in its own crate).
    #[test]
    fn zero_bytes_are_the_empty_thread() {
        // SAFETY: every field is a Cell or UnsafeCell of integers, bools and raw pointers (and
        // the unwinder's state, made of the same), for all of which zero bytes are valid.
        let z: Thread = unsafe { std::mem::zeroed() };
        let e = empty();
        assert_eq!(
            (z.busy.get(), z.tid.get(), z.slot.get(), z.shared.get(), z.writer.get(), z.handed_ns.get()),
            (e.busy.get(), e.tid.get(), e.slot.get(), e.shared.get(), e.writer.get(), e.handed_ns.get())
        );
        assert_eq!(
            (z.idle_ns.get(), z.foreign.get(), z.foreign_call.get(), z.foreign_calls.get()),
            (e.idle_ns.get(), e.foreign.get(), e.foreign_call.get(), e.foreign_calls.get())
        );
        assert_eq!((z.near.get(), z.retired.get()), (e.near.get(), e.retired.get()));
        // SAFETY: both are local values; no other reference to their buffers exists.
        assert!(unsafe { (*z.frames.get()) == (*e.frames.get()) });
    }

    /// Each thread gets its own state, zero at start.
    #[test]
    fn each_thread_has_its_own_state() {
        let here = thread() as *const Thread as usize;
        thread().foreign_calls.set(7);
        let there =
            std::thread::spawn(|| (thread() as *const Thread as usize, thread().foreign_calls.get())).join().unwrap();
        assert_ne!(here, there.0);
        assert_eq!(there.1, 0);
        assert_eq!(thread().foreign_calls.get(), 7);
    }
}
