//! The main thread: its stack range comes from glibc reading /proc/self/maps, and its stack
//! ends in `_start` (return address undefined), not in `clone3` as spawned threads' do.
//! No harness, so this really runs on the main thread.

mod common;

use common::*;

fn main() {
    // SAFETY: gettid has no preconditions.
    let on_main = unsafe { libc::syscall(libc::SYS_gettid) } == i64::from(std::process::id());
    assert!(on_main, "not on the main thread");
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
