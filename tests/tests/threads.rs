//! 8 threads x 200,000 allocations, half freed by another thread while allocations go on
//! (freed addresses are reused across threads): exact totals. A collector that orders events
//! by arrival instead of sequence number, or an interposer that loses a batch, is off here.

use residue_tests::{fixture, fixtures::threads, run, Amount};

#[test]
fn cross_thread_frees_leave_exact_totals() {
    let o = run([fixture("host_threads")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.heap("libthreadwork.so"), Amount::new(threads::COUNT, threads::BYTES), "{ctx}");
    let stacks = o.report.stacks("libthreadwork.so");
    assert!(!stacks.is_empty(), "{ctx}");
    for s in &stacks {
        assert_eq!(s.api, "malloc", "{ctx}");
        assert_eq!(s.owner_function("libthreadwork.so"), Some(threads::FUNCTION), "{s:?}\n{ctx}");
    }
    let sum = stacks.iter().fold(Amount::ZERO, |a, s| a + s.amount);
    assert_eq!(sum, Amount::new(threads::COUNT, threads::BYTES), "the stacks add up to the library's total\n{ctx}");
}
