//! A target that replaces itself with exec is tracked on into the new image, and the report is
//! the final image's: nothing of the old image's heap survives an exec.

use residue_tests::{assert_leaky_exact, fixture, run};

#[test]
fn exec_is_followed_and_only_the_final_image_is_reported() {
    // host_exec leaks libleaky's table twice, then execs host_leaky, which leaks it once.
    let o = run([fixture("host_exec"), fixture("host_leaky")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "fixture host: done\n", "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 1);
}

#[test]
fn exec_after_marking_every_descriptor_close_on_exec_is_followed() {
    // Programs that exec themselves clean mark every descriptor close-on-exec first, the
    // stream's too (close_range's CLOSE_RANGE_CLOEXEC, fcntl on each), and execl is not hooked:
    // the stream must still reach the new image.
    let o = run([fixture("host_exec").as_os_str(), "--cloexec".as_ref(), fixture("host_leaky").as_os_str()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 1);
}

#[test]
fn exec_through_a_shell_is_followed() {
    // A launcher script that execs the real program, like the pyenv shim.
    let script = format!("exec '{}' 2", fixture("host_leaky").display());
    let o = run(["/bin/sh", "-c", &script]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 2);
}

#[test]
fn a_failed_exec_leaves_the_image_recording_with_new_stacks() {
    // The exec fails: host_exec runs libleaky's scenarios a third time, from another call site,
    // so their stacks are new ones, sent after the exec; they belong to the same image.
    let o = run([fixture("host_exec").as_os_str(), "/nonexistent/residue-test-program".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 127, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 3);
}

#[test]
fn an_exit_while_another_thread_tries_to_exec_is_complete_and_says_what_went_unrecorded() {
    // host_exec_race leaks libleaky's table, then one thread keeps trying to exec a program
    // that does not exist while the main thread allocates and frees, and exits mid-attempts.
    // Recording is off during an attempt: the exit waits the attempt out and writes its exit
    // record (before, the trace had none, and the report blamed an exec that never happened),
    // and a notice says that calls went unrecorded.
    let o = run([fixture("host_exec_race")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 1);
    let problems = o.report.json["problems"].to_string();
    assert!(!problems.contains("nothing followed"), "{ctx}");
    let notices = o.report.json["notices"].as_array().cloned().unwrap_or_default();
    assert!(
        notices
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("went unrecorded while an exec attempt was under way"))),
        "{ctx}"
    );
}
