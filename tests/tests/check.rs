//! `residue check`: exit statuses, suppressions, limits, baselines, and the machine-readable
//! outputs (JSON `check` section, JUnit and SARIF validated against their schemas, GitHub
//! annotations), on the counted fixtures of `residue-fixtures`.
//!
//! The schema checks run `tests/schemas/validate.py` with python3 and the `jsonschema` and
//! `xmlschema` packages (installed by `.ci/run`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use residue_tests::{fixture, fixtures::leaky, repo_root, run_captured, tools, Finished, TempDir};
use serde_json::Value;

/// A finished `residue check`, with its JSON report.
struct Checked {
    finished: Finished,
    json: Value,
    what: String,
    /// The working directory it ran in, removed with the result.
    _tmp: TempDir,
}

impl Checked {
    fn code(&self) -> i32 {
        self.finished.code()
    }

    fn ctx(&self) -> String {
        format!(
            "{}\nexit {}\nstdout:\n{}\nstderr:\n{}\ncheck section:\n{}",
            self.what,
            self.code(),
            self.finished.stdout,
            self.finished.stderr,
            serde_json::to_string_pretty(&self.json["check"]).unwrap_or_default()
        )
    }

    fn check(&self) -> &Value {
        &self.json["check"]
    }

    /// The last line of stderr: the summary.
    fn summary(&self) -> &str {
        self.finished.stderr.lines().last().unwrap_or("")
    }

    /// `check.libraries[]` whose module's file name is `name`.
    fn lib(&self, name: &str) -> Option<&Value> {
        self.check()["libraries"]
            .as_array()?
            .iter()
            .find(|l| l["module"].as_str().is_some_and(|m| m.rsplit('/').next() == Some(name)))
    }

    /// (count, bytes) a library leaked of a kind, as counted by the check.
    fn leaked(&self, name: &str, kind: &str) -> (u64, u64) {
        self.lib(name)
            .map(|l| {
                (l["leaked"][kind]["count"].as_u64().unwrap_or(0), l["leaked"][kind]["bytes"].as_u64().unwrap_or(0))
            })
            .unwrap_or((0, 0))
    }
}

/// `residue check OPTIONS --json OUT -- ARGV`, in a scratch directory (the working directory,
/// so no stray residue.toml is picked up), with extra environment.
fn check_env<I, S>(options: &[&OsStr], argv: I, env: &[(&str, &OsStr)]) -> Checked
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let tmp = TempDir::new("check");
    let json = tmp.join("report.json");
    let mut cmd = Command::new(&tools().residue);
    cmd.current_dir(tmp.path()).arg("check").args(options).arg("--json").arg(&json).arg("--").args(&argv);
    for var in ["RESIDUE_FD", "RESIDUE_PID", "GITHUB_ACTIONS"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let what = format!(
        "residue check {} -- {}",
        options.iter().map(|o| o.to_string_lossy()).collect::<Vec<_>>().join(" "),
        argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let finished = run_captured(cmd, &what);
    assert_ne!(finished.code(), 101, "{what}: residue panicked:\n{}", finished.stderr);
    let json = std::fs::read_to_string(&json).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    Checked { finished, json, what, _tmp: tmp }
}

fn check<I, S>(options: &[&OsStr], argv: I) -> Checked
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    check_env(options, argv, &[])
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn host_leaky() -> PathBuf {
    fixture("host_leaky")
}

/// Every heap stack the check counted for libleaky, as (owner function, count, bytes), sorted.
fn counted_heap(c: &Checked) -> Vec<(String, u64, u64)> {
    let stacks = c.lib("libleaky.so").and_then(|l| l["stacks"].as_array().cloned()).unwrap_or_default();
    let libs = c.json["libraries"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<(String, u64, u64)> = stacks
        .iter()
        .filter(|s| s["kind"] == "heap")
        .map(|s| {
            // The owner frame's function, from the report's stack with the first id.
            let id = s["stack_ids"][0].as_u64();
            let owner = libs
                .iter()
                .flat_map(|l| l["stacks"].as_array().cloned().unwrap_or_default())
                .find(|st| st["stack_id"].as_u64() == id)
                .and_then(|st| {
                    let i = st["owner_frame"].as_u64()? as usize;
                    st["frames"][i]["function"].as_str().map(str::to_owned)
                })
                .unwrap_or_default();
            (owner, s["count"].as_u64().unwrap_or(0), s["bytes"].as_u64().unwrap_or(0))
        })
        .collect();
    out.sort();
    out
}

// ---- exit statuses ----

#[test]
fn clean_target_passes_with_0() {
    let c = check(&[], [fixture("host_clean")]);
    assert_eq!(c.code(), 0, "{}", c.ctx());
    assert_eq!(c.check()["verdict"], "pass", "{}", c.ctx());
    assert_eq!(c.check()["leaks_within_limits"], true, "{}", c.ctx());
    assert!(c.summary().starts_with("residue check: PASS: "), "the summary ends the run\n{}", c.ctx());
    assert!(c.summary().contains("nothing leaked"), "{}", c.ctx());
    assert_eq!(c.json["schema"], "residue-report/1", "same schema, a check section added");
}

#[test]
fn leaky_target_fails_with_23_and_exact_counts() {
    let c = check(&[os("--kind"), os("heap")], [host_leaky()]);
    assert_eq!(c.code(), 23, "{}", c.ctx());
    assert_eq!(c.check()["verdict"], "leaked", "{}", c.ctx());
    assert_eq!(c.leaked("libleaky.so", "heap"), (leaky::COUNT, leaky::BYTES), "{}", c.ctx());
    assert_eq!(failing(&c), ["libleaky.so"], "only libleaky leaked\n{}", c.ctx());
    assert_eq!(c.lib("libleaky.so").unwrap()["over"], serde_json::json!(["heap"]), "{}", c.ctx());
    assert!(c.summary().starts_with("residue check: FAIL (leaks over limits): "), "{}", c.ctx());
    assert!(c.summary().contains("libleaky.so 23 heap blocks (14750 bytes)"), "{}", c.ctx());
    // The stacks are on stderr with the leaking function.
    for f in leaky::FUNCTIONS {
        assert!(c.finished.stderr.contains(f), "{f} missing from the stacks on stderr\n{}", c.ctx());
    }
}

#[test]
fn limits_pass_at_the_boundary_and_fail_one_past_it() {
    let at = check(
        &[os("--kind"), os("heap"), os("--max-bytes"), os("heap=14750"), os("--max-count"), os("heap=23")],
        [host_leaky()],
    );
    assert_eq!(at.code(), 0, "{}", at.ctx());
    assert_eq!(at.leaked("libleaky.so", "heap"), (23, 14750), "counted, within limits\n{}", at.ctx());
    let bytes = check(
        &[os("--kind"), os("heap"), os("--max-bytes"), os("heap=14749"), os("--max-count"), os("heap=23")],
        [host_leaky()],
    );
    assert_eq!(bytes.code(), 23, "{}", bytes.ctx());
    let count = check(
        &[os("--kind"), os("heap"), os("--max-bytes"), os("heap=1M"), os("--max-count"), os("22")],
        [host_leaky()],
    );
    assert_eq!(count.code(), 23, "a bare N limits every kind\n{}", count.ctx());
}

#[test]
fn residue_toml_sets_per_library_limits() {
    let tmp = TempDir::new("toml");
    let cfg = tmp.join("residue.toml");
    std::fs::write(
        &cfg,
        "[limits]\nheap = { max-bytes = 0 }\n\n[[library]]\nmatch = \"libleaky.so\"\nheap = { max-bytes = 14750, max-count = 23 }\nfd = { max-count = 1 }\nstream = { max-count = 1 }\n",
    )
    .unwrap();
    let c = check(&[os("--config"), cfg.as_os_str()], [host_leaky()]);
    assert_eq!(c.code(), 0, "{}", c.ctx());
    assert_eq!(c.lib("libleaky.so").unwrap()["limits"]["heap"]["max-bytes"], 14750, "{}", c.ctx());
    std::fs::write(&cfg, "[[library]]\nmatch = \"libleaky*\"\nheap = { max-bytes = 14749, max-count = 23 }\n").unwrap();
    let c = check(&[os("--config"), cfg.as_os_str(), os("--kind"), os("heap")], [host_leaky()]);
    assert_eq!(c.code(), 23, "{}", c.ctx());
    std::fs::write(&cfg, "[limits]\nheap = { max-bytez = 1 }\n").unwrap();
    let c = check(&[os("--config"), cfg.as_os_str()], [host_leaky()]);
    assert_eq!(c.code(), 125, "a bad config is residue's error, before the target runs\n{}", c.ctx());
    assert!(c.finished.stderr.contains("max-bytez"), "{}", c.ctx());
    assert!(!c.finished.stdout.contains("fixture host: done"), "the target must not have run\n{}", c.ctx());
}

#[test]
fn target_failure_wins_over_leaks() {
    // host_exit_variants leaks 77 bytes, then exits 3: the tests failed, and leaked.
    let c = check(&[], [fixture("host_exit_variants").as_os_str(), os("exit"), os("3")]);
    assert_eq!(c.code(), 3, "the target's own status passes through\n{}", c.ctx());
    assert_eq!(c.check()["verdict"], "target-failed", "{}", c.ctx());
    assert_eq!(c.check()["leaks_within_limits"], false, "{}", c.ctx());
    assert_eq!(c.leaked("host_exit_variants", "heap"), (1, 77), "{}", c.ctx());
    assert!(c.summary().starts_with("residue check: FAIL (the target failed: exit status 3)"), "{}", c.ctx());
    assert!(c.summary().ends_with("leaks are also over limits"), "{}", c.ctx());
}

#[test]
fn crashed_target_reports_128_plus_signal() {
    let c = check(&[], [fixture("host_exit_variants").as_os_str(), os("abort")]);
    assert_eq!(c.code(), 128 + libc::SIGABRT, "{}", c.ctx());
    assert_eq!(c.check()["verdict"], "target-crashed", "{}", c.ctx());
    assert_eq!(c.json["process"]["signal"], libc::SIGABRT, "{}", c.ctx());
    assert!(c.summary().contains("killed by signal 6"), "{}", c.ctx());
    // The interposer flushes in its abort hook: the block leaked before abort() is there, over
    // the limit, and the crash still decides the status.
    assert_eq!(c.leaked("host_exit_variants", "heap"), (1, 77), "{}", c.ctx());
    assert_eq!(c.check()["leaks_within_limits"], false, "{}", c.ctx());
    assert!(c.summary().contains("trace incomplete"), "{}", c.ctx());
}

#[test]
fn residue_own_errors_are_125_to_127_and_usage_2() {
    let missing = check(&[], ["/nonexistent/residue-no-such-program"]);
    assert_eq!(missing.code(), 127, "{}", missing.ctx());
    let tmp = TempDir::new("noexec");
    let f = tmp.join("not-executable");
    std::fs::write(&f, "#!/bin/sh\n").unwrap();
    let noexec = check(&[], [&f]);
    assert_eq!(noexec.code(), 126, "{}", noexec.ctx());
    let supp = check(&[os("--suppressions"), os("/nonexistent/x.supp")], [host_leaky()]);
    assert_eq!(supp.code(), 125, "{}", supp.ctx());
    assert!(supp.finished.stderr.contains("cannot read the suppressions file /nonexistent/x.supp"), "{}", supp.ctx());
    let usage = check(&[os("--max-bytes"), os("sockets=1")], [host_leaky()]);
    assert_eq!(usage.code(), 2, "{}", usage.ctx());
    let preload = check_env(&[], [host_leaky()], &[("RESIDUE_PRELOAD", os("/nonexistent/libresidue.so"))]);
    assert_eq!(preload.code(), 125, "no interposer\n{}", preload.ctx());
}

// ---- suppressions ----

#[test]
fn suppressions_remove_exactly_the_stacks_they_name() {
    let tmp = TempDir::new("supp");
    let supp = tmp.join("residue.supp");
    std::fs::write(
        &supp,
        "# LeakSanitizer syntax\nleak:leaky_strdup_names\nleak:^leaky_strndup$\nfd:leaky_open_file\nleak:no_such_function_anywhere\n",
    )
    .unwrap();
    let c = check(&[os("--suppressions"), supp.as_os_str()], [host_leaky()]);
    assert_eq!(c.code(), 23, "the other leaks remain\n{}", c.ctx());
    // strdup 10 x 24 and strndup 3 x 6 are gone; nothing else is.
    assert_eq!(c.leaked("libleaky.so", "heap"), (leaky::COUNT - 13, leaky::BYTES - 240 - 18), "{}", c.ctx());
    let left: Vec<String> = counted_heap(&c).into_iter().map(|s| s.0).collect();
    assert!(!left.iter().any(|f| f == "leaky_strdup_names" || f == "leaky_strndup"), "{left:?}\n{}", c.ctx());
    for f in ["leaky_make_struct", "leaky_calloc_image", "leaky_realloc_grow", "leaky_open_file", "leaky_aligned"] {
        assert!(left.iter().any(|x| x == f), "{f} was not named and must still count: {left:?}\n{}", c.ctx());
    }
    // fd: is kind-specific: the descriptor is gone, the FILE stream and heap of fopen are not.
    assert_eq!(c.leaked("libleaky.so", "fd"), (0, 0), "{}", c.ctx());
    assert_eq!(c.leaked("libleaky.so", "stream").0, 1, "{}", c.ctx());
    let rules = c.check()["suppressions"].as_array().unwrap();
    let rule = |t: &str| rules.iter().find(|r| r["rule"] == t).unwrap_or_else(|| panic!("{t}\n{}", c.ctx()));
    assert_eq!(
        (rule("leak:leaky_strdup_names")["count"].as_u64(), rule("leak:leaky_strdup_names")["bytes"].as_u64()),
        (Some(10), Some(240))
    );
    assert_eq!(rule("leak:^leaky_strndup$")["count"], 3);
    assert_eq!(rule("fd:leaky_open_file")["count"], 1);
    assert_eq!(rule("leak:no_such_function_anywhere")["stacks"], 0);
    let unmatched = c.check()["unmatched_suppressions"].as_array().unwrap();
    assert_eq!(unmatched.len(), 1, "{}", c.ctx());
    assert!(unmatched[0].as_str().unwrap().starts_with("leak:no_such_function_anywhere ("), "{}", c.ctx());
    assert!(c.finished.stderr.contains("suppression leak:no_such_function_anywhere"), "flagged on stderr\n{}", c.ctx());
    assert!(c.summary().contains("3 stacks suppressed"), "{}", c.ctx());
}

#[test]
fn module_suppression_and_library_scope() {
    let tmp = TempDir::new("supp-mod");
    let supp = tmp.join("m.supp");
    std::fs::write(&supp, "module:libleaky.so\n").unwrap();
    let c = check(&[os("--suppressions"), supp.as_os_str()], [host_leaky()]);
    assert_eq!(c.code(), 0, "{}", c.ctx());
    // --library scopes: a glob that names another library leaves libleaky out of scope.
    let c = check(&[os("--library"), os("libclean*")], [host_leaky()]);
    assert_eq!(c.code(), 0, "{}", c.ctx());
    assert_eq!(c.check()["scope"]["out_of_scope"]["heap"]["count"], leaky::COUNT, "{}", c.ctx());
    assert_eq!(c.check()["scope"]["unmatched_libraries"], serde_json::json!(["libclean*"]), "{}", c.ctx());
    let c = check(&[os("--library"), os("*/fixtures/libleaky.so"), os("--kind"), os("heap")], [host_leaky()]);
    assert_eq!(c.code(), 23, "{}", c.ctx());
    assert_eq!(c.leaked("libleaky.so", "heap"), (leaky::COUNT, leaky::BYTES), "{}", c.ctx());
}

#[test]
fn default_suppressions_print_and_parse() {
    let mut cmd = Command::new(&tools().residue);
    cmd.args(["suppressions", "--print-default"]);
    let out = run_captured(cmd, "residue suppressions --print-default");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.lines().any(|l| l == "leak:_dl_map_object"), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l == "leak:Py_InitializeFromConfig"), "{}", out.stdout);
    // The printed set is a valid suppressions file: used as one with the defaults off, the
    // same rules are in force.
    let tmp = TempDir::new("defaults");
    let f = tmp.join("default.supp");
    std::fs::write(&f, &out.stdout).unwrap();
    let c = check(&[os("--no-default-suppressions"), os("--suppressions"), f.as_os_str()], [fixture("host_clean")]);
    assert_eq!(c.code(), 0, "{}", c.ctx());
    let rules = c.check()["suppressions"].as_array().unwrap();
    let n = out.stdout.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count();
    assert_eq!(rules.len(), n, "{}", c.ctx());
    assert!(rules.iter().all(|r| r["default"] == false), "{}", c.ctx());
}

// ---- baselines ----

#[test]
fn baseline_passes_unchanged_and_fails_on_new_or_grown_stacks() {
    // The baseline comes from a copy of the host and library in another directory: other
    // paths, other addresses (ASLR), same symbolized stacks.
    let copy = TempDir::new("baseline-copy");
    for f in ["host_leaky", "libleaky.so"] {
        std::fs::copy(fixture(f), copy.join(f)).unwrap();
    }
    let old = check(&[], [copy.join("host_leaky")]);
    assert_eq!(old.code(), 23, "{}", old.ctx());
    let base = copy.join("baseline.json");
    std::fs::write(&base, serde_json::to_string(&old.json).unwrap()).unwrap();

    let same = check(&[os("--baseline"), base.as_os_str()], [host_leaky()]);
    assert_eq!(same.code(), 0, "an unchanged run passes\n{}", same.ctx());
    let b = &same.check()["baseline"];
    assert_eq!((b["new_stacks"].as_u64(), b["grown_stacks"].as_u64()), (Some(0), Some(0)), "{}", same.ctx());
    assert!(b["unchanged_stacks"].as_u64().unwrap() >= 11, "{}", same.ctx());
    let addr = |c: &Checked| {
        c.json["libraries"][0]["stacks"][0]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|f| f["address"].as_str().map(str::to_owned))
    };
    if std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").is_ok_and(|v| v.trim() != "0") {
        assert_ne!(addr(&old), addr(&same), "ASLR should have moved the stacks, or this test proves nothing");
    }

    // Twice the work: every stack grew by exactly one run's worth.
    let grown =
        check(&[os("--baseline"), base.as_os_str(), os("--kind"), os("heap")], [host_leaky().as_os_str(), os("2")]);
    assert_eq!(grown.code(), 23, "{}", grown.ctx());
    assert_eq!(
        grown.leaked("libleaky.so", "heap"),
        (leaky::COUNT, leaky::BYTES),
        "the increase counts\n{}",
        grown.ctx()
    );
    assert_eq!(grown.check()["baseline"]["new_stacks"], 0, "{}", grown.ctx());
    let stacks = grown.lib("libleaky.so").unwrap()["stacks"].as_array().unwrap();
    assert!(stacks.iter().all(|s| s["change"] == "grew"), "{}", grown.ctx());

    // A baseline from before leaky_strdup_names leaked: exactly that stack is new.
    let mut before = old.json.clone();
    for lib in before["libraries"].as_array_mut().unwrap() {
        lib["stacks"]
            .as_array_mut()
            .unwrap()
            .retain(|s| !s["frames"].as_array().unwrap().iter().any(|f| f["function"] == "leaky_strdup_names"));
    }
    let base2 = copy.join("before.json");
    std::fs::write(&base2, serde_json::to_string(&before).unwrap()).unwrap();
    let new = check(&[os("--baseline"), base2.as_os_str()], [host_leaky()]);
    assert_eq!(new.code(), 23, "{}", new.ctx());
    assert_eq!(counted_heap(&new), [("leaky_strdup_names".to_owned(), 10, 240)], "{}", new.ctx());
    assert_eq!(new.leaked("libleaky.so", "fd"), (0, 0), "{}", new.ctx());
    assert_eq!(new.check()["baseline"]["new_stacks"], 1, "{}", new.ctx());
    assert!(new.summary().contains("baseline: 1 new, 0 grown"), "{}", new.ctx());

    let bad = copy.join("bad.json");
    std::fs::write(&bad, "{\"schema\": \"something-else/3\"}").unwrap();
    let c = check(&[os("--baseline"), bad.as_os_str()], [host_leaky()]);
    assert_eq!(c.code(), 125, "{}", c.ctx());
}

// ---- JUnit, SARIF, GitHub ----

fn python_validators() {
    let ok = Command::new("python3").args(["-c", "import jsonschema, xmlschema"]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "the schema checks need python3 with jsonschema and xmlschema: python3 -m pip install jsonschema xmlschema"
    );
}

/// Runs tests/schemas/validate.py; `Ok` when valid, `Err(violations)` otherwise.
fn validate(format: &str, schema: &str, file: &Path) -> Result<(), String> {
    let schemas = repo_root().join("tests").join("schemas");
    let mut cmd = Command::new("python3");
    cmd.arg(schemas.join("validate.py")).arg(format).arg(schemas.join(schema)).arg(file);
    let out = run_captured(cmd, "validate.py");
    match out.code() {
        0 if out.stdout.trim() == "valid" => Ok(()),
        1 => Err(out.stdout),
        c => panic!("validate.py failed ({c}): {}\n{}", out.stdout, out.stderr),
    }
}

#[test]
fn junit_and_sarif_conform_to_their_schemas() {
    python_validators();
    let out = TempDir::new("outputs");
    let (xml, sarif) = (out.join("leaky.xml"), out.join("leaky.sarif"));
    let c = check(
        &[os("--kind"), os("heap"), os("--junit"), xml.as_os_str(), os("--sarif"), sarif.as_os_str()],
        [host_leaky()],
    );
    assert_eq!(c.code(), 23, "{}", c.ctx());
    validate("junit", "junit.xsd", &xml).unwrap_or_else(|e| panic!("JUnit invalid:\n{e}"));
    validate("sarif", "sarif-2.1.0-rtm.5.json", &sarif).unwrap_or_else(|e| panic!("SARIF invalid:\n{e}"));

    let x = std::fs::read_to_string(&xml).unwrap();
    // One case per library in scope: libleaky fails, a clean one in scope (libc) passes.
    assert!(x.contains("failures=\"1\" errors=\"0\""), "{x}");
    assert!(x.contains("<testcase name=\"libc.so.6\" classname=\"residue.libraries\"/>"), "{x}");
    assert!(x.contains("<testcase name=\"libleaky.so\" classname=\"residue.libraries\">"), "{x}");
    assert!(x.contains("<failure message=\"libleaky.so: 23 heap blocks (14750 bytes) leaked"), "{x}");
    assert!(x.contains("leaky_strdup_names at "), "the stacks are the failure's text\n{x}");

    let s: Value = serde_json::from_str(&std::fs::read_to_string(&sarif).unwrap()).unwrap();
    let results = s["runs"][0]["results"].as_array().unwrap();
    let stacks = c.lib("libleaky.so").unwrap()["stacks"].as_array().unwrap().len();
    assert_eq!(results.len(), stacks, "one result per counted stack\n{}", c.ctx());
    let total: u64 = results.iter().map(|r| r["properties"]["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, leaky::BYTES);
    for r in results {
        assert_eq!(r["level"], "error");
        let loc = &r["locations"][0]["physicalLocation"];
        let uri = loc["artifactLocation"]["uri"].as_str().unwrap();
        assert!(uri.ends_with("fixtures-c/c/libleaky.c"), "located at the leaking source line: {r}");
        assert!(loc["region"]["startLine"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["partialFingerprints"]["residueStack/v1"].as_str().unwrap().len(), 16);
    }

    // The validators do reject what breaks the schemas (so "valid" above means something).
    let broken_xml = out.join("broken.xml");
    std::fs::write(&broken_xml, x.replacen("errors=\"0\"", "errors=\"none\"", 1)).unwrap();
    assert!(validate("junit", "junit.xsd", &broken_xml).is_err());
    let mut broken = s.clone();
    broken["runs"][0]["results"][0]["level"] = "fatal".into();
    let broken_sarif = out.join("broken.sarif");
    std::fs::write(&broken_sarif, broken.to_string()).unwrap();
    assert!(validate("sarif", "sarif-2.1.0-rtm.5.json", &broken_sarif).is_err());

    // A clean run and a failed target are valid too (no results; an error test case).
    let (xml2, sarif2) = (out.join("failed.xml"), out.join("failed.sarif"));
    let f = check(
        &[os("--junit"), xml2.as_os_str(), os("--sarif"), sarif2.as_os_str()],
        [fixture("host_exit_variants").as_os_str(), os("exit"), os("3")],
    );
    assert_eq!(f.code(), 3, "{}", f.ctx());
    validate("junit", "junit.xsd", &xml2).unwrap_or_else(|e| panic!("JUnit invalid:\n{e}"));
    validate("sarif", "sarif-2.1.0-rtm.5.json", &sarif2).unwrap_or_else(|e| panic!("SARIF invalid:\n{e}"));
    let x2 = std::fs::read_to_string(&xml2).unwrap();
    assert!(x2.contains("<error message=\"the target exited with status 3\" type=\"target-failed\"/>"), "{x2}");
    let (xml3, sarif3) = (out.join("clean.xml"), out.join("clean.sarif"));
    let k = check(&[os("--junit"), xml3.as_os_str(), os("--sarif"), sarif3.as_os_str()], [fixture("host_clean")]);
    assert_eq!(k.code(), 0, "{}", k.ctx());
    validate("junit", "junit.xsd", &xml3).unwrap_or_else(|e| panic!("JUnit invalid:\n{e}"));
    validate("sarif", "sarif-2.1.0-rtm.5.json", &sarif3).unwrap_or_else(|e| panic!("SARIF invalid:\n{e}"));
}

#[test]
fn github_annotations_when_running_in_actions() {
    let root = repo_root();
    let c = check_env(
        &[os("--kind"), os("heap")],
        [host_leaky()],
        &[("GITHUB_ACTIONS", os("true")), ("GITHUB_WORKSPACE", root.as_os_str())],
    );
    assert_eq!(c.code(), 23, "{}", c.ctx());
    let lines: Vec<&str> = c.finished.stdout.lines().filter(|l| l.starts_with("::error ")).collect();
    let stacks = c.lib("libleaky.so").unwrap()["stacks"].as_array().unwrap().len();
    assert_eq!(lines.len(), stacks, "one annotation per counted stack\n{}", c.ctx());
    for l in &lines {
        assert!(l.starts_with("::error file=fixtures-c/c/libleaky.c,line="), "{l}");
        assert!(!l["::error ".len()..].split("::").nth(1).unwrap_or("").contains('\n'));
    }
    assert!(
        lines.iter().any(|l| l.contains("title=residue%3A 10 heap blocks (240 bytes) leaked by libleaky.so")),
        "{lines:#?}"
    );
    let quiet = check(&[os("--kind"), os("heap")], [host_leaky()]);
    assert!(!quiet.finished.stdout.contains("::error"), "only under GitHub Actions\n{}", quiet.ctx());
}

// ---- the pytest plugin ----

const SUITE: &str = r#"import ctypes
import os

import pytest

leaky = ctypes.CDLL(os.environ["LIBLEAKY"])
clean = ctypes.CDLL(os.environ["LIBCLEAN"])
_cache = []
_marked_cache = []


def test_clean():
    clean.fx_run_all()


def test_leaks():
    leaky.fx_strdup_names()


@pytest.mark.residue(max_bytes=1000, max_count=3)
def test_within_marker():
    leaky.fx_strndup()


@pytest.mark.residue(max_bytes=10)
def test_over_marker():
    leaky.fx_reallocarray()


def test_warm_cache():
    # Fills a cache on first use only: a leak without --residue-repeat, none with it.
    if not _cache:
        leaky.fx_make_struct()
        _cache.append(1)


@pytest.mark.residue(repeat=True)
def test_marked_warm_cache():
    if not _marked_cache:
        leaky.fx_calloc_image()
        _marked_cache.append(1)
"#;

fn pytest_available() {
    let ok = Command::new("python3").args(["-c", "import pytest"]).status().is_ok_and(|s| s.success());
    assert!(ok, "the pytest plugin test needs pytest: python3 -m pip install pytest");
}

fn pytest_run(extra: &[&str]) -> Checked {
    let suite = TempDir::new("pytest-suite");
    std::fs::write(suite.join("test_suite.py"), SUITE).unwrap();
    let mut argv: Vec<OsString> = ["python3", "-m", "pytest", "-p", "residue_pytest", "-p", "no:cacheprovider", "-q"]
        .iter()
        .map(OsString::from)
        .collect();
    argv.extend(extra.iter().map(OsString::from));
    argv.push(suite.join("test_suite.py").into());
    let python_dir = repo_root().join("python");
    let c = check_env(
        &[],
        &argv,
        &[
            ("PYTHONPATH", python_dir.as_os_str()),
            ("LIBLEAKY", fixture("libleaky.so").as_os_str()),
            ("LIBCLEAN", fixture("libclean.so").as_os_str()),
        ],
    );
    drop(suite);
    c
}

/// (nodeid suffix, pass, heap (count, bytes)) of every test, in run order.
fn tests_of(c: &Checked) -> Vec<(String, bool, (u64, u64))> {
    c.check()["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("no tests section\n{}", c.ctx()))
        .iter()
        .map(|t| {
            let name = t["nodeid"].as_str().unwrap().rsplit("::").next().unwrap().to_owned();
            let h = &t["leaked"]["heap"];
            (name, t["pass"].as_bool().unwrap(), (h["count"].as_u64().unwrap_or(0), h["bytes"].as_u64().unwrap_or(0)))
        })
        .collect()
}

#[test]
fn pytest_plugin_attributes_leaks_to_tests() {
    pytest_available();
    let c = pytest_run(&[]);
    assert_eq!(c.code(), 23, "{}", c.ctx());
    assert!(c.finished.stdout.contains("6 passed"), "pytest itself passed every test\n{}", c.ctx());
    let t = |s: &str| s.to_owned();
    assert_eq!(
        tests_of(&c),
        [
            (t("test_clean"), true, (0, 0)),
            (t("test_leaks"), false, (10, 240)),
            (t("test_within_marker"), true, (3, 18)),
            (t("test_over_marker"), false, (1, 80)),
            (t("test_warm_cache"), false, (2, 116)),
            (t("test_marked_warm_cache"), true, (0, 0)),
        ],
        "{}",
        c.ctx()
    );
    // The library is judged on what no marker judged: strdup and the warm cache's struct.
    assert_eq!(c.leaked("libleaky.so", "heap"), (12, 356), "{}", c.ctx());
    let over = &c.check()["tests"][3];
    assert_eq!(over["over"], serde_json::json!(["heap"]), "{}", c.ctx());
    assert!(c.summary().contains("test ") && c.summary().contains("test_over_marker"), "{}", c.ctx());
    // Every counted stack names its test.
    let stacks = c.lib("libleaky.so").unwrap()["stacks"].as_array().unwrap();
    assert!(stacks.iter().all(|s| s["test"].as_str().is_some_and(|t| t.contains("test_suite.py::"))), "{}", c.ctx());
}

#[test]
fn pytest_repeat_leaves_warm_up_caches_out() {
    pytest_available();
    let c = pytest_run(&["--residue-repeat"]);
    assert_eq!(c.code(), 23, "test_leaks leaks on every call\n{}", c.ctx());
    let t = |s: &str| s.to_owned();
    assert_eq!(
        tests_of(&c),
        [
            (t("test_clean"), true, (0, 0)),
            (t("test_leaks"), false, (10, 240)),
            (t("test_within_marker"), true, (3, 18)),
            (t("test_over_marker"), false, (1, 80)),
            (t("test_warm_cache"), true, (0, 0)),
            (t("test_marked_warm_cache"), true, (0, 0)),
        ],
        "only the second call counts\n{}",
        c.ctx()
    );
    assert_eq!(c.leaked("libleaky.so", "heap"), (10, 240), "{}", c.ctx());
}

// ---- Python: the runtime's own residue is out of scope ----

#[test]
fn python_runtime_noise_is_left_out_and_ctypes_leaks_count_exactly() {
    let quiet = check(&[], ["python3", "-c", "pass"]);
    assert_eq!(quiet.code(), 0, "an interpreter that does nothing passes\n{}", quiet.ctx());
    let noise = &quiet.check()["scope"]["runtime_noise"]["interpreter"]["heap"]["count"];
    assert!(noise.as_u64().unwrap_or(0) > 0, "the interpreter's residue was seen and left out\n{}", quiet.ctx());

    let script = residue_tests::py_script("ctypes_fixture.py");
    let c = check(&[], [OsStr::new("python3"), script.as_os_str(), fixture("libleaky.so").as_os_str()]);
    assert_eq!(c.code(), 23, "{}", c.ctx());
    assert_eq!(failing(&c), ["libleaky.so"], "only libleaky\n{}", c.ctx());
    assert_eq!(c.leaked("libleaky.so", "heap"), (leaky::COUNT, leaky::BYTES), "{}", c.ctx());
    assert_eq!(c.leaked("libleaky.so", "fd").0, 1, "{}", c.ctx());
    assert_eq!(c.leaked("libleaky.so", "stream").0, 1, "{}", c.ctx());
}

/// The file names of the libraries that failed the check (`check.libraries` lists every library
/// in scope, the clean ones as passing).
fn failing(c: &Checked) -> Vec<String> {
    c.check()["libraries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["pass"] == false)
        .filter_map(|l| l["module"].as_str().map(|m| m.rsplit('/').next().unwrap_or(m).to_owned()))
        .collect()
}
