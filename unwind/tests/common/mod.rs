//! Shared by the integration tests: capture both ways from one helper and compare.
#![allow(dead_code)]

use residue_unwind::{capture, capture_libgcc};
use std::ffi::{c_int, c_void};
use std::hint::black_box;

pub const MAX: usize = 256;

pub type Callback = extern "C" fn(*mut c_void);

#[link(name = "residue_unwind_fixtures", kind = "static")]
extern "C" {
    pub fn o2_recurse(depth: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o0_recurse(depth: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o2_with_alloca(n: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o0_with_alloca(n: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o2_realigned(unused: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o0_realigned(unused: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o2_big_frame(depth: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    pub fn o0_big_frame(depth: c_int, cb: Callback, arg: *mut c_void) -> c_int;
    /// `RESIDUE_UNWIND_MANY` generated functions (build.rs), each its own call site and frame size.
    pub static many_table: [Fixture; MANY];
}

/// Entries in `many_table`.
pub const MANY: usize = const_parse(env!("RESIDUE_UNWIND_MANY"));

const fn const_parse(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    n
}

/// One stack captured by both walkers from the same function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub ours: Vec<u64>,
    pub reference: Vec<u64>,
}

/// Both captures, one after the other, from this one function: their first frames are two
/// different call sites in here, every frame after that must be identical.
#[inline(never)]
pub fn capture_both() -> Pair {
    let mut a = [0u64; MAX];
    let na = capture(&mut a);
    let mut b = [0u64; MAX];
    let nb = capture_libgcc(&mut b);
    black_box(Pair { ours: a[..na].to_vec(), reference: b[..nb].to_vec() })
}

/// `Err` describes the first difference.
pub fn check(p: &Pair) -> Result<(), String> {
    let here = capture_both as *const () as usize as u64;
    let (Some(&a0), Some(&b0)) = (p.ours.first(), p.reference.first()) else {
        return Err(format!("empty capture: ours {} frames, libgcc {}", p.ours.len(), p.reference.len()));
    };
    for (who, first) in [("ours", a0), ("libgcc", b0)] {
        if !(here < first && first < here + 0x1000) {
            return Err(format!("{who}: first frame {first:#x} is not in capture_both ({here:#x})"));
        }
    }
    if p.ours.len() >= MAX || p.reference.len() >= MAX {
        return Err("stack deeper than the buffer: the outermost frame was not reached".into());
    }
    if p.ours[1..] != p.reference[1..] {
        let i = p.ours[1..].iter().zip(&p.reference[1..]).position(|(a, b)| a != b).map_or_else(
            || format!("lengths differ: ours {} libgcc {}", p.ours.len(), p.reference.len()),
            |i| format!("frame {}: ours {:#x} libgcc {:#x}", i + 1, p.ours[i + 1], p.reference[i + 1]),
        );
        return Err(format!("{i}\nours:   {:x?}\nlibgcc: {:x?}", p.ours, p.reference));
    }
    Ok(())
}

pub fn assert_same(p: &Pair) {
    if let Err(e) = check(p) {
        panic!("capture != capture_libgcc: {e}");
    }
}

/// Rust recursion `depth` deep, then `f`.
#[inline(never)]
pub fn rust_recurse(depth: usize, f: &mut dyn FnMut()) -> usize {
    if depth == 0 {
        f();
        return 0;
    }
    let r = rust_recurse(depth - 1, f);
    // Work after the call: no tail call, no loop.
    black_box(r + 1)
}

/// What `call_closure` receives: the closure, and where a panic inside it is parked (a panic
/// must not unwind through C; it is resumed once the C frames have returned).
struct Callee<'a> {
    f: &'a mut dyn FnMut(),
    panic: Option<Box<dyn std::any::Any + Send>>,
}

/// Trampoline for C callbacks: `arg` is a `&mut Callee`.
pub extern "C" fn call_closure(arg: *mut c_void) {
    // SAFETY: every caller passes a pointer to a live `Callee`, not otherwise borrowed.
    let callee = unsafe { &mut *(arg as *mut Callee<'_>) };
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut callee.f)) {
        callee.panic = Some(p);
    }
}

/// The C fixtures' shape: `fixture(n, callback, arg)` calls `callback(arg)` at the bottom.
pub type Fixture = unsafe extern "C" fn(c_int, Callback, *mut c_void) -> c_int;

/// Run `f` below the C fixture `c` (argument `n`).
pub fn through_c(c: Fixture, n: c_int, mut f: impl FnMut()) {
    let mut callee = Callee { f: &mut f, panic: None };
    // SAFETY: the fixtures only call the callback with the argument, a live `Callee`.
    black_box(unsafe { c(n, call_closure, &mut callee as *mut Callee<'_> as *mut c_void) });
    if let Some(p) = callee.panic {
        std::panic::resume_unwind(p);
    }
}

/// Captures at the bottom of `depth` Rust frames, `reps` times; every pair must match.
pub fn check_rust_depth(depth: usize, reps: usize) -> Pair {
    let mut last = None;
    for _ in 0..reps {
        rust_recurse(depth, &mut || {
            let p = capture_both();
            assert_same(&p);
            last = Some(p);
        });
    }
    last.expect("ran")
}

/// A plugin's entry point: `call(callback, arg)` calls `callback(arg)`.
pub type PluginCall = unsafe extern "C" fn(Callback, *mut c_void) -> c_int;

/// Run `f` below a plugin function loaded at run time.
pub fn through_plugin(c: PluginCall, mut f: impl FnMut()) {
    let mut callee = Callee { f: &mut f, panic: None };
    // SAFETY: the plugin only calls the callback with the argument, a live `Callee`.
    black_box(unsafe { c(call_closure, &mut callee as *mut Callee<'_> as *mut c_void) });
    if let Some(p) = callee.panic {
        std::panic::resume_unwind(p);
    }
}
