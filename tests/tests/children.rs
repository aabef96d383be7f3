//! Children started by Python, followed into their own report sections (issue 7):
//! multiprocessing with the fork and the spawn start methods, subprocess, and the helpers a
//! launcher script (pyenv's `python3` shim) starts before it execs the interpreter, which are
//! told apart from the program's own children.

use residue_tests::{fixture, fixtures::leaky, leaky_expected, py_script, run, Amount, Outcome, Report};
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

/// Each library's unreleased amounts in a report, by module.
fn amounts(r: &Value) -> Vec<(String, Value)> {
    let libs = r["libraries"].as_array().cloned().unwrap_or_default();
    let mut v: Vec<(String, Value)> =
        libs.iter().map(|l| (l["module"].as_str().unwrap_or("").to_owned(), l["unreleased"].clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Without `--all` a launcher's helpers are counted, not listed (report::Listed::Counted):
/// their stacks are resolved only as far as whose they are, the text says their totals in one
/// line and the JSON each helper's amounts per library without stacks (`stacks_listed:
/// false`). The amounts are those of the report that lists them (`--all`). A shell as the
/// launcher: one helper, host_leaky, run before the shell execs host_clean.
#[test]
fn a_launchers_helpers_are_counted_as_listing_them_would() {
    let (leaky, clean) = (fixture("host_leaky"), fixture("host_clean"));
    let script = "\"$1\"; exec \"$2\"";
    let argv = ["sh".as_ref(), "-c".as_ref(), script.as_ref(), "sh".as_ref(), leaky.as_os_str(), clean.as_os_str()];
    let helpers =
        |o: &Outcome| -> Vec<Value> { children(o).into_iter().filter(|c| c["from_launcher"] == true).collect() };

    let counted = run(argv).go();
    let ctx = counted.context();
    assert_eq!(counted.finished.code(), 0, "{ctx}");
    let [helper] = &helpers(&counted)[..] else { panic!("one helper\n{ctx}") };
    assert_eq!(helper["stacks_listed"], false, "{ctx}");
    let libraries = helper["libraries"].as_array().cloned().unwrap_or_default();
    assert!(libraries.iter().all(|l| l["stacks"].as_array().is_some_and(Vec::is_empty)), "amounts, no stacks\n{ctx}");
    assert_eq!(Report { json: helper.clone() }.heap("libleaky.so"), Amount::new(leaky::COUNT, leaky::BYTES), "{ctx}");
    let line = launcher_line(&counted.finished.stderr).unwrap_or_else(|| panic!("no launcher line\n{ctx}"));
    let heap = format!("{} heap blocks ({:.1} KiB)", leaky::COUNT, leaky::BYTES as f64 / 1024.0);
    assert!(line.starts_with("residue: 1 process started before") && line.contains(&heap), "{line}\n{ctx}");

    let listed = run(argv).option("--all").go();
    let lctx = listed.context();
    let [full] = &helpers(&listed)[..] else { panic!("one helper\n{lctx}") };
    assert!(full.get("stacks_listed").is_none(), "{lctx}");
    let r = Report { json: full.clone() };
    assert_eq!(r.by_function("libleaky.so"), leaky_expected(1), "--all lists the helper's stacks\n{lctx}");
    assert_eq!(amounts(helper), amounts(full), "counted as listed\n{ctx}\n{lctx}");
    assert_eq!(helper["totals"], full["totals"], "{ctx}\n{lctx}");
}
