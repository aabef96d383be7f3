//! ns per capture and per frame, `capture` (cached rules) against `capture_libgcc`, at about
//! 16, 40 and 70 frames; plus the cost of a cold capture (every rule derived from .eh_frame).
//! Run: cargo run --release -p residue-unwind --example bench

use residue_unwind::{capture, capture_libgcc, invalidate, stats};
use std::ffi::{c_int, c_void};
use std::hint::black_box;
use std::time::Instant;

#[link(name = "residue_unwind_fixtures", kind = "static")]
extern "C" {
    fn o2_recurse(depth: c_int, cb: extern "C" fn(*mut c_void), arg: *mut c_void) -> c_int;
}

#[inline(never)]
fn recurse(depth: usize, f: &mut dyn FnMut()) -> usize {
    if depth == 0 {
        f();
        return 0;
    }
    black_box(recurse(depth - 1, f) + 1)
}

extern "C" fn call_closure(arg: *mut c_void) {
    // SAFETY: `arg` is the `&mut &mut dyn FnMut()` passed below.
    let f = unsafe { &mut *(arg as *mut &mut dyn FnMut()) };
    f();
}

/// Run `f` under `rust` Rust frames and `c` C frames (-O2, no frame pointer) below them.
fn at(rust: usize, c: usize, f: &mut dyn FnMut()) {
    recurse(rust, &mut || {
        let mut g: &mut dyn FnMut() = &mut *f;
        // SAFETY: the fixture only calls the callback with the argument.
        unsafe { o2_recurse(c as c_int, call_closure, &mut g as *mut &mut dyn FnMut() as *mut c_void) };
    });
}

/// ns per call: the best of 7 runs of `iters` calls (the machine is shared: the minimum is
/// the cost, the rest is other load).
fn time(iters: u32, f: &mut dyn FnMut() -> usize) -> (f64, usize) {
    let mut n = 0;
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..iters {
            n = f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    (best, n)
}

fn main() {
    println!(
        "{:>7} {:>14} {:>12} {:>14} {:>12} {:>8}",
        "frames", "capture ns", "ns/frame", "libgcc ns", "ns/frame", "speedup"
    );
    for (rust, c) in [(5, 3), (18, 14), (33, 29)] {
        at(rust, c, &mut || {
            let mut buf = [0u64; 256];
            let ours = |b: &mut [u64; 256]| capture(b);
            let (_, warm) = time(10, &mut || ours(&mut buf));
            let (t_ours, frames) = time(50_000, &mut || ours(&mut buf));
            let mut ref_buf = [0u64; 256];
            let (t_ref, ref_frames) = time(500, &mut || capture_libgcc(&mut ref_buf));
            assert_eq!(warm, frames);
            assert_eq!(frames, ref_frames, "walkers disagree on depth");
            println!(
                "{:>7} {:>14.1} {:>12.2} {:>14.1} {:>12.2} {:>7.0}x",
                frames,
                t_ours,
                t_ours / frames as f64,
                t_ref,
                t_ref / frames as f64,
                t_ref / t_ours
            );
        });
    }
    // Cold: every return address misses and is derived from .eh_frame via _dl_find_object + gimli.
    at(33, 29, &mut || {
        let mut buf = [0u64; 256];
        let before = stats();
        let iters: u32 = 200;
        let t = Instant::now();
        let mut frames = 0;
        for _ in 0..iters {
            invalidate();
            frames = capture(&mut buf);
        }
        let per = t.elapsed().as_nanos() as f64 / f64::from(iters);
        let misses = (stats().misses - before.misses) / u64::from(iters);
        println!(
            "cold (invalidate + capture, {frames} frames, {misses} misses): {per:.0} ns, {:.0} ns/miss",
            per / misses as f64
        );
    });
    let s = stats();
    println!("stats: {s:?}");
}
