//! The two synchronization tools usable inside malloc: a spinlock that yields, and a backoff.
//! `std::sync::Mutex` and `Once` can deadlock on re-entry and may allocate; these cannot.

use std::sync::atomic::{AtomicBool, Ordering};

pub struct SpinLock(AtomicBool);

impl SpinLock {
    pub const fn new() -> Self {
        SpinLock(AtomicBool::new(false))
    }

    #[inline(always)]
    pub fn lock(&self) {
        if self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        let mut spins = 0;
        while self.0.swap(true, Ordering::Acquire) {
            backoff(&mut spins);
        }
    }

    pub fn try_lock(&self) -> bool {
        !self.0.swap(true, Ordering::Acquire)
    }

    #[inline(always)]
    pub fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Spin briefly, then yield, then sleep 50 µs: waiting on another thread (or on the collector)
/// without burning a core the host needs.
pub fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 128 {
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    } else {
        // SAFETY: a valid timespec; an early wake-up by a signal is harmless.
        unsafe { libc::nanosleep(&libc::timespec { tv_sec: 0, tv_nsec: 50_000 }, std::ptr::null_mut()) };
    }
}
