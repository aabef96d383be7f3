//! "Everything is flushed when the process exits, by return from main, exit(), or the last
//! thread ending; events from threads still running are not lost" (issue 2).

use residue_tests::{fixture, fixtures::live_threads, run, Amount};

fn live_case(mode: &str) {
    let o = run([fixture("host_live_threads").as_os_str(), mode.as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    let seen = o
        .report
        .all_stacks()
        .into_iter()
        .filter(|s| s.owner_function("host_live_threads") == Some(live_threads::FUNCTION))
        .fold(Amount::ZERO, |a, s| a + s.amount);
    assert_eq!(seen, Amount::new(live_threads::COUNT, live_threads::BYTES), "{ctx}");
}

#[test]
fn leaks_of_threads_still_running_at_exit_are_not_lost() {
    live_case("exit");
}

#[test]
fn leaks_are_flushed_when_the_last_thread_ends_the_process() {
    live_case("last-thread");
}
