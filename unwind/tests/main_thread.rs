//! The main thread: its stack range comes from reading /proc/self/maps (as glibc's
//! pthread_getattr_np does for it), and its stack ends in `_start` (return address undefined),
//! not in `clone3` as spawned threads' do.
//! No harness, so this really runs on the main thread.

mod common;

use common::*;

fn main() {
    // SAFETY: gettid has no preconditions.
    let on_main = unsafe { libc::syscall(libc::SYS_gettid) } == i64::from(std::process::id());
    assert!(on_main, "not on the main thread");
    same_range_as_glibc();
    for depth in [0, 10, 60] {
        let p = check_rust_depth(depth, 100);
        assert!(p.ours.len() > depth);
        for _ in 0..100 {
            through_c(o2_recurse, depth as i32, || assert_same(&capture_both()));
            through_c(o0_recurse, depth as i32, || assert_same(&capture_both()));
        }
    }
    println!("main_thread: ok");
}

/// The range read from /proc/self/maps starts where glibc's does (as far down as the stack may
/// grow) and ends at the top of the `[stack]` mapping, which is at or above glibc's top (the
/// page above `__libc_stack_end`: the arguments and environment lie between).
fn same_range_as_glibc() {
    let (ours, glibc) = residue_unwind::stack_ranges();
    let (ours, glibc) = (ours.expect("the main thread's range from /proc"), glibc.expect("pthread's range"));
    assert_eq!(ours.0, glibc.0, "lowest address: ours {ours:x?}, glibc's {glibc:x?}");
    assert!(ours.1 >= glibc.1, "top: ours {ours:x?}, glibc's {glibc:x?}");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let stack = maps.lines().find(|l| l.ends_with("[stack]")).expect("a [stack] line");
    let top = usize::from_str_radix(stack.split(['-', ' ']).nth(1).unwrap(), 16).unwrap();
    assert_eq!(ours.1, top, "{stack}");
}
