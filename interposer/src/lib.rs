//! `libresidue.so`: preloaded into the target, it records every acquisition and release of the
//! resources it hooks, with the native stack, and streams them to the collector.
//!
//! Layout: `hooks/` (the exported stand-ins for libc's functions), `state` (global and
//! per-thread state, the re-entrancy guard), `stacks` (capture and interning), `near`
//! (per-thread caches in front of the intern tables), `level_table` (the Python intern tables,
//! which grow by levels), `modules`
//! (loaded-module records), `transport` (per-thread batches, channel, writer thread),
//! `lifecycle` (constructor, exit, fork, exec), `seq` (the global order of events), `sync` (lock and backoff usable inside malloc),
//! `ffi` (glibc entry points).
//!
//! Never harm the host: every hook forwards to the real function whatever happens here;
//! panics are caught at the hook boundary and turn the interposer passive; write errors
//! (collector gone) do the same.

mod clock;
mod ffi;
mod hooks;
mod level_table;
mod libgcc;
mod lifecycle;
mod modules;
mod near;
mod python;
mod seq;
mod stacks;
mod state;
mod sync;
mod transport;

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The interposer's own allocations go straight to glibc, never through its own hooks.
struct LibcAlloc;

/// malloc's guaranteed alignment on x86_64 and aarch64 glibc.
const MALLOC_ALIGN: usize = 16;

// SAFETY: forwards to glibc's allocator, which satisfies GlobalAlloc's contract for the layouts
// passed to it (memalign for alignments beyond malloc's guarantee).
unsafe impl GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: glibc's allocator entry points accept any size.
        unsafe {
            if l.align() <= MALLOC_ALIGN {
                ffi::__libc_malloc(l.size()).cast()
            } else {
                ffi::__libc_memalign(l.align(), l.size()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as alloc; calloc zeroes.
        unsafe {
            if l.align() <= MALLOC_ALIGN {
                ffi::__libc_calloc(1, l.size()).cast()
            } else {
                let p = ffi::__libc_memalign(l.align(), l.size()).cast::<u8>();
                if !p.is_null() {
                    std::ptr::write_bytes(p, 0, l.size());
                }
                p
            }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: p came from this allocator.
        unsafe { ffi::__libc_free(p.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if l.align() <= MALLOC_ALIGN {
            // SAFETY: p came from __libc_malloc (alignment within malloc's guarantee).
            return unsafe { ffi::__libc_realloc(p.cast(), new_size) }.cast();
        }
        // SAFETY: a fresh block of the new size and the old alignment, then copy and free.
        unsafe {
            let q = self.alloc(Layout::from_size_align_unchecked(new_size, l.align()));
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                self.dealloc(p, l);
            }
            q
        }
    }
}

#[global_allocator]
static ALLOC: LibcAlloc = LibcAlloc;
