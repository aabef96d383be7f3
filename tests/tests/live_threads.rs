//! "Everything is flushed when the process exits, by return from main, exit(), or the last
//! thread ending; events from threads still running are not lost" (issue 2).

use residue_tests::{fixture, fixtures::live_threads, run, Amount};

fn live_case(mode: &str) {
    live_case_with(mode, None);
}

fn live_case_with(mode: &str, env: Option<(&str, &str)>) {
    let mut r = run([fixture("host_live_threads").as_os_str(), mode.as_ref()]);
    if let Some((k, v)) = env {
        r = r.env(k, v);
    }
    let o = r.go();
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

/// Threads that end as the process exits: each hands its last events over from its TLS
/// destructor, which runs after the thread reported in and main called exit (Python's
/// `Thread.join` returns that early too). The self-test switch holds each handover open for
/// 300 ms, a window otherwise a few instructions wide: before the exit path waited for
/// handovers in progress, their events were queued behind the exit record and lost, in a trace
/// that said it was complete (tests/tests/python.rs, `threads_keep_their_own_python_stacks`,
/// failed that way about once in fifty runs on a busy machine).
#[test]
fn leaks_of_threads_ending_as_the_process_exits_are_not_lost() {
    live_case_with("ending", Some(("RESIDUE_SELF_TEST_SLOW_HANDOVER", "1")));
}
