//! Per-thread tables in anonymous pages of their own, for this crate's memo and the
//! interposer's per-thread caches and event chunks.
//!
//! Why not the heap: these tables are sized for the busiest thread (the memo is ~100 KiB), and
//! a zeroed heap block is zeroed by writing it, which makes every page of it resident at once,
//! on every thread that records anything, used or not. Fresh anonymous pages read as zero and
//! become resident only when first written, so a thread that meets four call sites pays for
//! the pages those four use. Measured with `bench_threads` (bench/threads_pairs.c: 64 threads
//! of 100 pairs each, 7.3 MiB peak before, 4.5 after) and W4, in README.md's Performance section.
//!
//! Raw system calls, not libc's `mmap`: inside the interposer, `mmap` is its own hook, which
//! records the host's mappings.

use std::mem::size_of;
use std::ptr;

/// A page-aligned static: a table of one page then lies on one page, not across two, and a
/// host that writes only its first level writes one page of it (the unwinder's rule table, the
/// interposer's stack table).
#[repr(C, align(4096))]
pub struct PageAligned<T>(pub T);

/// A zeroed `T` in pages of its own, or null if the kernel refuses (out of memory, or the
/// process at its limit of mappings): callers go on without the table or fall back to the heap.
/// `errno` is left as it was either way: this runs inside the host's calls.
///
/// `T` must be valid when all-zero, and no larger than the kernel gives in one mapping.
pub fn zeroed<T>() -> *mut T {
    const { assert!(size_of::<T>() > 0 && std::mem::align_of::<T>() <= 4096) };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; errno is saved and restored around the call, in this thread's own slot.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        let p = libc::syscall(
            libc::SYS_mmap,
            ptr::null_mut::<libc::c_void>(),
            size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1 as libc::c_long,
            0 as libc::c_long,
        );
        *errno = saved;
        if p == -1 {
            ptr::null_mut()
        } else {
            p as *mut T
        }
    }
}

/// Gives back pages from [`zeroed`].
///
/// # Safety
/// `p` came from `zeroed::<T>()`, is not released yet, and nothing uses it any more. `T` has
/// no destructor to run (none is run).
pub unsafe fn release<T>(p: *mut T) {
    // SAFETY: per the contract, the whole mapping is ours and unused; errno as in `zeroed`.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::syscall(libc::SYS_munmap, p as *mut libc::c_void, size_of::<T>());
        *errno = saved;
    }
}
