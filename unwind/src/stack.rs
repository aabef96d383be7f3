//! The current thread's stack range, fetched once per thread into cells of its `memo`
//! (const-initialized TLS with no `Drop`: no destructor registered, which would allocate at
//! first use and run before the thread's last frees).

use std::cell::Cell;

/// `hi` while the range is being fetched: a capture re-entered from inside
/// pthread_getattr_np (the main thread's reads /proc/self/maps, which mallocs) sees no range.
const FETCHING: usize = 1;

/// `(lo, hi)`: the readable part of this thread's stack, `lo <= addr < hi`, kept in the
/// thread's `lo` and `hi` cells (module `memo` holds them, so that a capture reaches all its
/// thread-local state through one TLS access). `None` while the range is unknown (being
/// fetched, or pthread failed): the caller falls back to libgcc.
#[inline(always)]
pub(crate) fn bounds(lo: &Cell<usize>, hi: &Cell<usize>) -> Option<(usize, usize)> {
    let h = hi.get();
    if h > FETCHING {
        return Some((lo.get(), h));
    }
    if h == FETCHING {
        return None;
    }
    fetch(lo, hi)
}

#[cold]
#[inline(never)]
fn fetch(lo: &Cell<usize>, hi: &Cell<usize>) -> Option<(usize, usize)> {
    hi.set(FETCHING);
    match query() {
        Some((l, h)) if h > FETCHING => {
            lo.set(l);
            hi.set(h);
            Some((l, h))
        }
        // Stay at FETCHING: retrying on every capture would re-read /proc each time.
        _ => None,
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
