//! Clock reads through the vDSO's own `__vdso_clock_gettime`, not the C library's
//! `clock_gettime` (nor std's `Instant` and `SystemTime`, which call it).
//!
//! Why: the C library's function is a few instructions that call the vDSO, but it lies in a
//! part of libc's code that a C program need not run otherwise. Called for us (every 512 bytes
//! of events, and at start and exit), it kept a 64 KiB run of libc's code resident in W4 (the
//! kernel maps a file's pages in such runs around each one touched). The vDSO's page is mapped
//! and resident in every process. Its entry point is looked up once, at start; before that,
//! and where there is no vDSO, a clock read is a system call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type ClockGettimeFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// `__vdso_clock_gettime`, 0 until found.
static VDSO_CLOCK_GETTIME: AtomicUsize = AtomicUsize::new(0);

/// Looks the vDSO's clock_gettime up (at start, before any clock read that matters). The loader
/// keeps the vDSO among the loaded objects under this name, and never unloads it.
pub fn init() {
    if let Some([f]) = crate::ffi::loaded_symbols(c"linux-vdso.so.1", [c"__vdso_clock_gettime"]) {
        VDSO_CLOCK_GETTIME.store(f, Ordering::Relaxed);
    }
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    let f = VDSO_CLOCK_GETTIME.load(Ordering::Relaxed);
    if f != 0 {
        // SAFETY: `f` is the vDSO's clock_gettime, of this type; `ts` is a valid out-pointer.
        unsafe { std::mem::transmute::<usize, ClockGettimeFn>(f)(clock, &mut ts) };
    } else {
        // SAFETY: clock_gettime writes only `ts`, a valid out-pointer.
        unsafe { libc::syscall(libc::SYS_clock_gettime, clock as libc::c_long, &mut ts as *mut libc::timespec) };
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds (a few nanoseconds a read).
pub fn coarse_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// CLOCK_REALTIME in nanoseconds since the epoch.
pub fn realtime_ns() -> u64 {
    now_ns(libc::CLOCK_REALTIME)
}

/// A point on CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `after` from now.
    pub fn after(after: Duration) -> Deadline {
        Deadline(now_ns(libc::CLOCK_MONOTONIC).saturating_add(after.as_nanos() as u64))
    }

    pub fn passed(self) -> bool {
        now_ns(libc::CLOCK_MONOTONIC) > self.0
    }
}
