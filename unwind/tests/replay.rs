//! The thread's previous walk is replayed only while the stack still holds what it held: each
//! capture here follows one made through a different path that shares part of its stack (same
//! depth and frames inside, different callers outside; different frame sizes; different
//! depths), and must still equal libgcc's walk frame for frame.

mod common;

use common::*;
use std::hint::black_box;

const REPS: usize = 300;

#[inline(never)]
fn inner(f: &mut dyn FnMut()) -> usize {
    f();
    black_box(1)
}

#[inline(never)]
fn middle(f: &mut dyn FnMut()) -> usize {
    black_box(inner(f) + 1)
}

// Same bodies, so `middle` and `inner` run at the same stack addresses under either: the inner
// part of the two stacks is identical word for word, the callers differ.
#[inline(never)]
fn via_a(f: &mut dyn FnMut()) -> usize {
    black_box(middle(f) + 2)
}

#[inline(never)]
fn via_b(f: &mut dyn FnMut()) -> usize {
    black_box(middle(f) + 3)
}

#[test]
fn same_inner_frames_under_different_callers() {
    // Through -O0 C frames (rbp-based: rbp is the same under either caller, so the walks'
    // states are equal up to the callers), then through Rust ones.
    let in_c = &mut || through_c(o0_recurse, 3, || assert_same(&capture_both()));
    let in_rust = &mut || assert_same(&capture_both());
    for i in 0..REPS {
        for check in [&mut *in_c as &mut dyn FnMut(), &mut *in_rust] {
            // Consecutive captures at the same depth under different callers.
            via_a(check);
            via_b(check);
            // And one level further out.
            rust_recurse(i % 3, &mut || {
                via_b(check);
                via_a(check);
            });
        }
    }
}

#[test]
fn alternating_frame_sizes_and_depths() {
    for i in 0..REPS {
        // rbp-based frames whose size (alloca) changes from one capture to the next.
        through_c(o0_with_alloca, 16 + (i % 5) as i32 * 40, || assert_same(&capture_both()));
        through_c(o2_with_alloca, 16 + (i % 7) as i32 * 24, || assert_same(&capture_both()));
        // One frame more or less, C without frame pointers and -O0.
        through_c(o2_recurse, 10 + (i % 2) as i32, || assert_same(&capture_both()));
        through_c(o0_recurse, 3 + (i % 3) as i32, || assert_same(&capture_both()));
    }
}

#[test]
fn deeper_than_the_memo_then_shallower() {
    // The memo keeps the innermost 80 steps; deeper stacks walk the rest with lookups.
    for i in 0..REPS {
        let depth = [5, 150, 79, 81, 5][i % 5];
        rust_recurse(depth, &mut || assert_same(&capture_both()));
    }
}
