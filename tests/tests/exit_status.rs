//! `residue run` exits with the target's own status, however the target ends, and the report
//! records it. The target's stdin is untouched too.

use std::io::Write;
use std::process::Stdio;

use residue_tests::{
    drain_to_string, fixture, fixtures::exit_variants, read_report, run, wait_deadline, Finished, TempDir, DEADLINE,
};

fn variant(how: &str, code: &str) -> residue_tests::Outcome {
    run([fixture("host_exit_variants").as_os_str(), how.as_ref(), code.as_ref()]).go()
}

fn assert_exe_leak(o: &residue_tests::Outcome) {
    let seen: Vec<_> = o
        .report
        .all_stacks()
        .into_iter()
        .filter(|s| s.owner_function("host_exit_variants") == Some(exit_variants::FUNCTION))
        .collect();
    assert_eq!(seen.len(), 1, "{}", o.context());
    assert_eq!((seen[0].amount.count, seen[0].amount.bytes), (1, exit_variants::BYTES), "{}", o.context());
}

#[test]
fn exit_3_is_passed_through() {
    let o = variant("exit", "3");
    assert_eq!(o.finished.code(), 3, "{}", o.context());
    assert_eq!(o.report.exit_status(), Some(3), "{}", o.context());
    assert_eq!(o.report.complete(), Some(true), "exit() flushes everything\n{}", o.context());
    assert_exe_leak(&o);
}

#[test]
fn return_from_main_is_passed_through() {
    let o = variant("return", "4");
    assert_eq!(o.finished.code(), 4, "{}", o.context());
    assert_eq!(o.report.exit_status(), Some(4), "{}", o.context());
    assert_eq!(o.report.complete(), Some(true), "{}", o.context());
    assert_exe_leak(&o);
}

#[test]
fn exit_from_a_second_thread_after_main_thread_exits() {
    let o = variant("thread", "5");
    assert_eq!(o.finished.code(), 5, "{}", o.context());
    assert_eq!(o.report.exit_status(), Some(5), "{}", o.context());
    assert_eq!(o.report.complete(), Some(true), "{}", o.context());
    assert_exe_leak(&o);
}

#[test]
fn underscore_exit_status_is_passed_through() {
    // _exit skips atexit handlers and destructors, but it is a deliberate end (how forked
    // children leave): the interposer's _exit hook flushes everything recorded, so the trace is
    // complete, and what exit handlers would have released is reported, as it was not released.
    let o = variant("_exit", "6");
    assert_eq!(o.finished.code(), 6, "{}", o.context());
    assert_eq!(o.report.exit_status(), Some(6), "{}", o.context());
    assert_eq!(o.report.complete(), Some(true), "{}", o.context());
    assert_exe_leak(&o);
}

#[test]
fn abort_is_passed_through_as_signal() {
    let o = variant("abort", "0");
    assert_eq!(o.finished.code(), 128 + libc::SIGABRT, "{}", o.context());
    assert_eq!(o.report.exit_status(), Some(128 + i64::from(libc::SIGABRT)), "{}", o.context());
    // Cut short, so incomplete; flushed by the abort hook, so the leak before it is there.
    assert_eq!(o.report.complete(), Some(false), "{}", o.context());
    assert_exe_leak(&o);
}

#[test]
fn stdin_reaches_the_target_untouched() {
    let tmp = TempDir::new("stdin");
    let json = tmp.join("report.json");
    let mut cmd = run(["/bin/cat"]).command(&json);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning residue");
    let out = drain_to_string(child.stdout.take());
    let err = drain_to_string(child.stderr.take());
    let input = "line one\nline two\n".repeat(1000);
    child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("writing stdin");
    let status = wait_deadline(&mut child, DEADLINE, "residue run -- /bin/cat");
    let finished = Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    assert_eq!(finished.code(), 0, "{}", finished.stderr);
    assert!(
        finished.stdout == input,
        "cat's output differs from its input ({} vs {} bytes)",
        finished.stdout.len(),
        input.len()
    );
    let report = read_report(&json, &finished, "residue run -- /bin/cat");
    assert_eq!(report.complete(), Some(true), "{:#}", report.json);
}

#[test]
fn a_target_that_cannot_be_started_is_a_clear_error() {
    let tmp = TempDir::new("no-target");
    let missing = tmp.join("no-such-program");
    let f = residue_tests::run_captured(run([&missing]).command(&tmp.join("report.json")), "residue run -- <missing>");
    assert!(f.code() != 0 && f.code() != 101, "exit {}: {}", f.code(), f.stderr);
    assert!(f.stderr.contains("no-such-program"), "the error names the program: {}", f.stderr);
}

/// A fatal signal cuts the process short: the report is incomplete, but the interposer's
/// handler (installed only where the disposition was the default) flushed what was recorded
/// before re-raising, so the leak made before the crash is there and the status is the signal's.
#[test]
fn fatal_signals_flush_before_the_process_dies() {
    for (how, sig) in [("segv", libc::SIGSEGV), ("term", libc::SIGTERM)] {
        let o = variant(how, "0");
        assert_eq!(o.finished.code(), 128 + sig, "{how}\n{}", o.context());
        assert_eq!(o.report.complete(), Some(false), "{how}\n{}", o.context());
        assert_exe_leak(&o);
    }
}
