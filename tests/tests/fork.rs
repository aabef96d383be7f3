//! A target that forks, with and without exec in the child (issue 7): residue does not hang,
//! follows the child into a section of its own, and keeps both exact (the child runs libleaky's
//! scenarios too: were its events in the parent's stream, the parent's counts would double).
//! A forked child that does not exec also holds what it inherited: that is in its report, on
//! the parent's stacks, and what it frees of it is matched. `--no-follow` leaves children out
//! and names them instead. The parent overwrites an argv entry before forking, as perf does: the
//! child still reports the arguments the process started with (reading the changed argv crashed
//! it).

use residue_tests::{assert_leaky_exact, fixture, fixtures::leaky, run, Amount, Outcome, Report};
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
    // host_fork cleared its argv[1] before forking (as perf's option parser does): the child is
    // reported with the arguments the process started with.
    let argv = o.report.json["process"]["argv"].clone();
    assert_eq!(argv.as_array().map(Vec::len), Some(2), "{ctx}");
    assert_eq!(child.json["process"]["argv"], argv, "{ctx}");
    (o, child)
}

/// A forked child's libleaky heap, split into its own and what it inherited (and whose stacks
/// are its parent's).
fn own_and_inherited(child: &Report, parent: u64) -> (Amount, Amount) {
    let (mut own, mut inherited) = (Amount::default(), Amount::default());
    for s in child.library("libleaky.so").and_then(|l| l["stacks"].as_array()).into_iter().flatten() {
        if s["kind"] != "heap" {
            continue;
        }
        let a = Amount::of(s);
        match s["inherited_from"].as_u64() {
            Some(p) => {
                assert_eq!(p, parent, "inherited from the parent: {s:#}");
                inherited = inherited + a;
            }
            None => own = own + a,
        }
    }
    (own, inherited)
}

fn forked_child_without_exec(mode: &str) {
    let (o, child) = fork_case(mode);
    let ctx = o.context();
    let parent = o.report.json["process"]["pid"].as_u64().expect("the parent's pid");
    // Its own run of libleaky's scenarios, and the parent's run it inherited and never freed.
    let (own, inherited) = own_and_inherited(&child, parent);
    assert_eq!(own, Amount::new(leaky::COUNT, leaky::BYTES), "{ctx}");
    assert_eq!(inherited, Amount::new(leaky::COUNT, leaky::BYTES), "{ctx}");
    // The block it freed of what it inherited (host_fork's fork_shared_block) is matched: not
    // in its report, not "origin unseen".
    assert_eq!(child.json["released_inherited"]["heap"].as_u64(), Some(1), "{ctx}");
    assert_eq!(child.json["released_origin_unseen"]["heap"].as_u64().unwrap_or(0), 0, "{ctx}");
    assert!(child.library("host_fork").is_none(), "the freed inherited block is not a leak\n{ctx}");
    // The parent keeps that block: it is the parent's leak.
    assert_eq!(o.report.heap("host_fork"), Amount::new(1, 200_000), "{ctx}");
}

#[test]
fn fork_child_exits_normally() {
    forked_child_without_exec("exit");
}

#[test]
fn fork_child_exits_with_underscore_exit() {
    forked_child_without_exec("_exit");
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
