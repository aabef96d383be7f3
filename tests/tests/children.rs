//! Children started by Python, followed into their own report sections (issue 7):
//! multiprocessing with the fork and the spawn start methods, subprocess, and the helpers a
//! launcher script (pyenv's `python3` shim) starts before it execs the interpreter, which are
//! told apart from the program's own children.

use residue_tests::{fixture, fixtures::leaky, py_script, run, Amount, Outcome, Report};
use serde_json::Value;

fn children(o: &Outcome) -> Vec<Value> {
    o.report.json["children"].as_array().cloned().unwrap_or_default()
}

/// The program's own children (not the launcher's).
fn program_children(o: &Outcome) -> Vec<Report> {
    children(o).into_iter().filter(|c| c["from_launcher"] == false).map(|json| Report { json }).collect()
}

fn children_run(mode: &str) -> Outcome {
    let o = run([
        "python3".as_ref(),
        py_script("children.py").as_os_str(),
        fixture("libleaky.so").as_os_str(),
        mode.as_ref(),
        fixture("host_leaky").as_os_str(),
    ])
    .go();
    assert_eq!(o.finished.code(), 0, "{}", o.context());
    o
}

fn multiprocessing(method: &str) {
    let o = children_run(method);
    let ctx = o.context();
    let mine = program_children(&o);
    // Two tasks of libleaky's scenarios, wherever the pool ran them: exact in sum, each worker
    // a multiple of one run, every worker's trace complete.
    let mut total = Amount::default();
    for c in &mine {
        assert_eq!(c.complete(), Some(true), "{:#}\n{ctx}", c.json);
        let h = c.heap("libleaky.so");
        assert_eq!(h.count % leaky::COUNT, 0, "{ctx}");
        total = total + h;
    }
    assert_eq!(total, Amount::new(2 * leaky::COUNT, 2 * leaky::BYTES), "{ctx}");
    assert!(o.report.library("libleaky.so").is_none(), "the parent leaked none of it\n{ctx}");
}

#[test]
fn multiprocessing_fork_workers_are_followed() {
    multiprocessing("fork");
}

#[test]
fn multiprocessing_spawn_workers_are_followed() {
    multiprocessing("spawn");
}

#[test]
fn a_subprocess_is_followed() {
    let o = children_run("subprocess");
    let ctx = o.context();
    let mine = program_children(&o);
    let host: Vec<&Report> = mine
        .iter()
        .filter(|c| c.json["process"]["argv"][0].as_str().is_some_and(|a| a.ends_with("/host_leaky")))
        .collect();
    assert_eq!(host.len(), 1, "{ctx}");
    assert_eq!(host[0].heap("libleaky.so"), Amount::new(leaky::COUNT, leaky::BYTES), "{ctx}");
    assert_eq!(host[0].complete(), Some(true), "{ctx}");
}

#[test]
fn a_launchers_helpers_are_not_the_programs_children() {
    // python3 is pyenv's shim here: bash scripts that fork helpers, then exec the interpreter.
    let o = run(["python3", "-c", "pass"]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert!(program_children(&o).is_empty(), "python -c pass starts no child\n{ctx}");
    if !children(&o).is_empty() {
        assert!(o.finished.stderr.contains("started before the final exec (the launcher's helpers)"), "{ctx}");
        assert!(!o.finished.stderr.contains("\nchild process "), "helpers are summarized, not listed\n{ctx}");
    }
}

/// The launcher's line of a text report, from `residue: N process... followed too:` to its end.
fn launcher_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.contains("started before the final exec (the launcher's helpers)"))
}

/// A text report without `--json` or `--all` only counts the launcher's helpers, and resolves
/// their stacks no further than whose they are (report::Listed::Counted): its line says what
/// the report that lists them (with `--json`) says. A shell as the launcher: one helper,
/// host_leaky, run before the shell execs host_clean.
#[test]
fn a_launchers_helpers_count_the_same_when_only_counted() {
    let (leaky, clean) = (fixture("host_leaky"), fixture("host_clean"));
    let argv = [
        "sh".as_ref(),
        "-c".as_ref(),
        "\"$1\"; exec \"$2\"".as_ref(),
        "sh".as_ref(),
        leaky.as_os_str(),
        clean.as_os_str(),
    ];
    let listed = run(argv).go();
    let ctx = listed.context();
    assert_eq!(listed.finished.code(), 0, "{ctx}");
    let helpers: Vec<Report> =
        children(&listed).into_iter().filter(|c| c["from_launcher"] == true).map(|json| Report { json }).collect();
    assert_eq!(helpers.len(), 1, "{ctx}");
    assert_eq!(helpers[0].heap("libleaky.so"), Amount::new(leaky::COUNT, leaky::BYTES), "{ctx}");

    let mut cmd = std::process::Command::new(&residue_tests::tools().residue);
    cmd.arg("run").arg("--").args(argv);
    for var in ["RESIDUE_FD", "RESIDUE_PID"] {
        cmd.env_remove(var);
    }
    let counted = residue_tests::run_captured(cmd, "residue run (text only) -- sh -c ...");
    assert_eq!(counted.code(), 0, "{}", counted.stderr);
    let line = launcher_line(&counted.stderr).unwrap_or_else(|| panic!("no launcher line:\n{}", counted.stderr));
    assert_eq!(Some(line), launcher_line(&listed.finished.stderr), "{ctx}");
    let heap = format!("{} heap blocks ({:.1} KiB)", leaky::COUNT, leaky::BYTES as f64 / 1024.0);
    assert!(line.starts_with("residue: 1 process started before") && line.contains(&heap), "{line}\n{ctx}");
}
