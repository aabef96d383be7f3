//! A target that forks, with and without exec in the child (issue 7): residue does not hang,
//! follows the child into a section of its own, and keeps both exact (the child runs libleaky's
//! scenarios too: were its events in the parent's stream, the parent's counts would double).
//! `--no-follow` leaves children out and names them instead.

use residue_tests::{assert_leaky_exact, assert_leaky_report, fixture, run, Outcome, Report};
use serde_json::Value;

fn child_pid(o: &Outcome) -> u64 {
    o.finished
        .stdout
        .strip_prefix("host_fork: child ")
        .and_then(|r| r.strip_suffix(" done\n"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("host_fork's stdout: {:?}\n{}", o.finished.stdout, o.context()))
}

/// The one followed child's report.
fn the_child(o: &Outcome, pid: u64) -> Report {
    let ctx = o.context();
    let children = o.report.json["children"].as_array().unwrap_or_else(|| panic!("no children\n{ctx}"));
    assert_eq!(children.len(), 1, "one child followed\n{ctx}");
    let c = &children[0];
    assert_eq!(c["process"]["pid"].as_u64(), Some(pid), "{ctx}");
    assert_eq!(c["from_launcher"].as_bool(), Some(false), "the program forked it\n{ctx}");
    assert_eq!(o.report.json["children_not_followed"].as_array().map(Vec::len), Some(0), "{ctx}");
    Report { json: c.clone() }
}

fn fork_case(mode: &str) -> (Outcome, Report) {
    let o = run([fixture("host_fork").as_os_str(), mode.as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "the child exited 0 and so did the parent\n{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 1);
    let pid = child_pid(&o);
    let child = the_child(&o, pid);
    assert_eq!(child.complete(), Some(true), "{ctx}");
    (o, child)
}

#[test]
fn fork_child_exits_normally() {
    let (o, child) = fork_case("exit");
    // Its own scenarios, exactly; what it inherited from the parent is the parent's.
    assert_leaky_report(&child, 1, &o.context());
}

#[test]
fn fork_child_exits_with_underscore_exit() {
    let (o, child) = fork_case("_exit");
    assert_leaky_report(&child, 1, &o.context());
}

#[test]
fn fork_child_execs_true() {
    // The child execs /bin/true with execl (no hook sees it): the exec'd image continues the
    // child's stream, and the child's report is that final image's.
    let (o, child) = fork_case("exec");
    let ctx = o.context();
    let last = child.json["images"].as_array().and_then(|i| i.last()).cloned().unwrap_or(Value::Null);
    assert!(last["exe"].as_str().is_some_and(|e| e.ends_with("/true")), "{last:#}\n{ctx}");
    assert!(child.libraries().is_empty(), "/bin/true leaves nothing\n{ctx}");
}

#[test]
fn no_follow_names_the_child_instead() {
    let o = run([fixture("host_fork").as_os_str(), "exit".as_ref()]).option("--no-follow").go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_leaky_exact(&o, 1);
    let pid = child_pid(&o);
    assert_eq!(o.report.json["children"].as_array().map(Vec::len), Some(0), "{ctx}");
    assert_eq!(
        o.report.json["children_not_followed"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>()),
        Some(vec![pid]),
        "{ctx}"
    );
    assert!(o.finished.stderr.contains(&pid.to_string()), "the text names it\n{ctx}");
}
