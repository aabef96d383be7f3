//! Sequence numbers: one global order of acquisitions and releases across threads (the
//! collector decides each resource by its highest number, so that a block freed by one thread
//! and handed to another by malloc is ordered correctly).
//!
//! A locked add on every malloc and free costs about as much as the rest of recording a free.
//! While a single thread takes numbers (most programs, most of their life), it takes them with
//! an unlocked add: one instruction, so still atomic against its own signal handlers, just not
//! against other CPUs. The first other thread to take a number switches everyone to the locked
//! add for good, with the same asymmetric handshake as the transport's slots: it announces the
//! switch, runs `membarrier` (a full barrier on every running thread of the process), and waits
//! until the owner is not between its check and its add. After that, the owner either saw the
//! switch or its unlocked add is complete and visible. Without `membarrier` (or with
//! `RESIDUE_LOCKED_SLOTS=1`) every number is taken with the locked add.

use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crate::state::Thread;

static SEQ: AtomicU64 = AtomicU64::new(1);

/// The owner takes numbers with the unlocked add.
const EXCLUSIVE: u8 = 0;
/// Another thread is switching everyone to the locked add.
const SWITCHING: u8 = 1;
/// Everyone takes numbers with the locked add.
const SHARED: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(SHARED);
static OWNER: AtomicPtr<Thread> = AtomicPtr::new(ptr::null_mut());
/// The owner is between its check of MODE and its add.
static TAKING: AtomicBool = AtomicBool::new(false);

// linux/membarrier.h
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

fn membarrier(cmd: libc::c_long) -> bool {
    // SAFETY: membarrier takes integer arguments only and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) == 0 }
}

/// Makes `t` the owner: from the constructor, and in a forked child that starts its own stream
/// (its only thread). Stays with the locked add where `membarrier` is missing or not wanted.
pub fn start_exclusive(t: &Thread) {
    let locked = crate::ffi::getenv(c"RESIDUE_LOCKED_SLOTS").is_some_and(|v| v == b"1");
    if locked || !membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) {
        MODE.store(SHARED, Ordering::Release);
        return;
    }
    OWNER.store(t as *const Thread as *mut Thread, Ordering::Relaxed);
    TAKING.store(false, Ordering::Relaxed);
    MODE.store(EXCLUSIVE, Ordering::Release);
}

/// The next number, for the thread `t` (the caller's own).
#[inline(always)]
pub fn next_for(t: &Thread) -> u64 {
    if ptr::eq(OWNER.load(Ordering::Relaxed), t) {
        TAKING.store(true, Ordering::Relaxed);
        // The CPU is kept from reordering the store and the load below by the switching
        // thread's membarrier; this keeps the compiler from doing it.
        compiler_fence(Ordering::SeqCst);
        if MODE.load(Ordering::Relaxed) == EXCLUSIVE {
            // SAFETY: `xadd` without `lock` on SEQ's own storage: a single instruction (no
            // signal handler of this thread can split it), and no other thread adds to SEQ
            // while MODE is EXCLUSIVE and TAKING is up (see the module comment).
            let s = unsafe {
                let mut v: u64 = 1;
                std::arch::asm!("xadd qword ptr [{p}], {v}", p = in(reg) SEQ.as_ptr(), v = inout(reg) v, options(nostack));
                v
            };
            compiler_fence(Ordering::SeqCst);
            TAKING.store(false, Ordering::Release);
            return s;
        }
        TAKING.store(false, Ordering::Release);
    } else if MODE.load(Ordering::Acquire) != SHARED {
        switch_to_shared();
    }
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// How long a switching thread waits for an owner stuck between its check and its add (a
/// signal handler that blocks there). Past it, the switch goes ahead: the worst outcome is two
/// events sharing a number, never a hang.
const OWNER_WAIT: Duration = Duration::from_millis(200);

#[cold]
#[inline(never)]
fn switch_to_shared() {
    let mut spins = 0;
    if MODE.compare_exchange(EXCLUSIVE, SWITCHING, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        // Registered in start_exclusive, so this does not fail; if it did, waiting for TAKING is
        // the best left to do.
        let _ = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
        let deadline = crate::clock::Deadline::after(OWNER_WAIT);
        while TAKING.load(Ordering::Acquire) && !deadline.passed() {
            crate::sync::backoff(&mut spins);
        }
        MODE.store(SHARED, Ordering::Release);
        return;
    }
    while MODE.load(Ordering::Acquire) != SHARED {
        crate::sync::backoff(&mut spins);
    }
}
