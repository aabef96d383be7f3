//! The current thread's stack range, fetched once per thread.
//!
//! Const-initialized `Cell`s with no `Drop`: plain TLS, no destructor registered (that would
//! allocate at first use and run before the thread's last frees).

use std::cell::Cell;

/// `hi` while the range is being fetched: a capture re-entered from inside
/// pthread_getattr_np (the main thread's reads /proc/self/maps, which mallocs) sees no range.
const FETCHING: usize = 1;

thread_local! {
    static LO: Cell<usize> = const { Cell::new(0) };
    static HI: Cell<usize> = const { Cell::new(0) };
}

/// `(lo, hi)`: the readable part of this thread's stack, `lo <= addr < hi`. `None` while the
/// range is unknown (being fetched, or pthread failed): the caller falls back to libgcc.
#[inline(always)]
pub(crate) fn bounds() -> Option<(usize, usize)> {
    let hi = HI.get();
    if hi > FETCHING {
        return Some((LO.get(), hi));
    }
    if hi == FETCHING {
        return None;
    }
    fetch()
}

#[cold]
#[inline(never)]
fn fetch() -> Option<(usize, usize)> {
    HI.set(FETCHING);
    let range = query();
    match range {
        Some((lo, hi)) if hi > FETCHING => {
            LO.set(lo);
            HI.set(hi);
            Some((lo, hi))
        }
        _ => {
            // Stay at FETCHING: retrying on every capture would re-read /proc each time.
            None
        }
    }
}

fn query() -> Option<(usize, usize)> {
    // SAFETY: a zeroed pthread_attr_t is a valid out-parameter for pthread_getattr_np, which
    // initializes it; it is destroyed exactly once after a successful init. The thread handle is
    // our own.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() {
            return None;
        }
        // glibc reports the lowest usable address (guard page excluded) and the size up to the
        // top, which for new threads includes the TCB: all mapped.
        let lo = addr as usize;
        Some((lo, lo.checked_add(size)?))
    }
}
