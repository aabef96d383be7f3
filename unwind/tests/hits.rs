//! Alone in its own process (one test), so the global counters are this test's: after a
//! warm-up, the same stacks are served from the rule cache without misses or fallbacks.

mod common;

use common::*;
use residue_unwind::{invalidate, stats, Stats};
use std::ffi::{c_int, c_void};
use std::hint::black_box;

extern "C" fn capturing_cmp(a: *const c_void, b: *const c_void) -> c_int {
    assert_same(&capture_both());
    // SAFETY: qsort passes pointers to two elements of the u32 array being sorted.
    let (a, b) = unsafe { (*(a as *const u32), *(b as *const u32)) };
    a.cmp(&b) as c_int
}

/// Stacks through the test binary, the C fixtures and libc (qsort): every module's tables
/// must be found and every frame compact, or `fallbacks` below is not 0.
#[inline(never)]
fn run() {
    check_rust_depth(40, 1);
    through_c(o2_recurse, 20, || assert_same(&capture_both()));
    through_c(o0_recurse, 20, || assert_same(&capture_both()));
    let mut v = [3u32, 1, 2];
    // SAFETY: a valid array of u32 with its length and element size, and a comparator for it.
    unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 4, Some(capturing_cmp)) };
    assert_eq!(v, [1, 2, 3]);
}

/// `total` rounds from one call site (opaque counts keep the compiler from peeling or
/// unrolling the loop into several copies of the call, each a new return address); the
/// counters after `warm` rounds and at the end.
#[inline(never)]
fn rounds(warm: usize, total: usize) -> (Stats, Stats) {
    let mut at_warm = Stats::default();
    for i in 0..total {
        run();
        if i + 1 == warm {
            at_warm = stats();
        }
    }
    (at_warm, stats())
}

#[test]
fn warm_cache_serves_repeated_stacks_without_misses_or_fallbacks() {
    let (warm, after) = rounds(black_box(8), black_box(500));
    assert!(warm.misses > 0, "the first rounds must have derived rules");
    assert_eq!(after.misses, warm.misses, "misses on a warm cache");
    assert_eq!(after.fallbacks, 0, "no frame here needs libgcc");
    // After invalidate the rules are derived again (misses grow), results unchanged.
    invalidate();
    run();
    assert!(stats().misses > after.misses);
    assert_eq!(stats().fallbacks, 0);
}
