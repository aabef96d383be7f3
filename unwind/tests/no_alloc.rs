//! The contract the interposer relies on: after the first call on a thread, `capture` never
//! allocates, on the hit path and on the miss path (rules derived from .eh_frame with gimli).
//! Counted by a global allocator in this test process, which sees Rust allocations (gimli's
//! included); the C calls on the miss path (`_dl_find_object`) are documented not to allocate.

mod common;

use common::*;
use residue_unwind::{capture, invalidate};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Allocations made by this thread while `WATCH` is set. Const-initialized Cells: reading
    /// them from inside the allocator allocates nothing.
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static WATCH: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCH.get() {
            COUNT.set(COUNT.get() + 1);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCH.get() {
            COUNT.set(COUNT.get() + 1);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.set(0);
    WATCH.set(true);
    f();
    WATCH.set(false);
    COUNT.get()
}

#[test]
fn capture_allocates_nothing_after_the_first_call() {
    // The buffer lives outside the watched region; only capture runs inside it.
    let mut buf = [0u64; MAX];
    let mut first = 0;
    let mut later = 0;
    let mut misses_path = 0;
    through_c(o2_recurse, 10, || {
        rust_recurse(10, &mut || {
            first = allocations(|| {
                capture(&mut buf);
            });
            later = allocations(|| {
                for _ in 0..100 {
                    capture(&mut buf);
                }
            });
            // Cold cache: every frame takes the miss path (gimli on a stack-allocated context).
            misses_path = allocations(|| {
                for _ in 0..10 {
                    invalidate();
                    capture(&mut buf);
                }
            });
        });
    });
    // The first call may allocate (pthread_getattr_np on the main thread reads /proc); a test
    // thread's first call does not, but the contract allows it.
    let _ = first;
    assert_eq!(later, 0, "allocations on the hit path");
    assert_eq!(misses_path, 0, "allocations on the miss path");
    // A deliberately failing sanity check of the counter itself.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 16]))), 1);
}
