//! Python under residue (issue 4): each leak names the script's file and line, a tail-called
//! wrapper is named by the function ctypes called, threads keep their own Python stacks, what
//! CPython frees during finalization is released, and the interpreter's and the loader's own
//! residue is summarized instead of listed.
//!
//! The script is fixtures-c/py/python_lines.py; its docstring has the table of leaks these
//! tests assert exactly. `python3` is the machine's CPython 3.11 (a pyenv shim that execs it);
//! 3.12 and 3.13 are run when installed (pyenv here), and say so when they are not.

use std::path::{Path, PathBuf};
use std::process::Command;

use residue_tests::{
    fixture, fixtures, fixtures::leaky, py_script, read_report, repo_root, run, run_captured, Amount, Outcome, Report,
    RunBuilder, TempDir,
};
use serde_json::Value;

const STDLIB_ONLY: &str = "import json, ssl, sqlite3, ctypes, decimal";

fn script() -> PathBuf {
    py_script("python_lines.py")
}

/// The line of python_lines.py that carries `# LEAK:<name>`.
fn line_of(name: &str) -> u64 {
    let text = std::fs::read_to_string(script()).expect("python_lines.py");
    let marker = format!("# LEAK:{name}");
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.ends_with(&marker)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "exactly one line of python_lines.py ends with {marker}");
    hits[0] as u64
}

fn lines_run(python: &str, mode: &str) -> RunBuilder {
    run([
        python.as_ref(),
        script().as_os_str(),
        fixture("libleaky.so").as_os_str(),
        fixture("libtail.so").as_os_str(),
        mode.as_ref(),
    ])
}

/// Runs without the shared harness's invariant check: under `--all` the report lists a module
/// once per origin, which `Report::library` (one entry per file name) does not expect.
fn go_raw(b: RunBuilder, label: &str) -> (residue_tests::Finished, Report, String) {
    let tmp = TempDir::new(label);
    let json = tmp.join("report.json");
    let finished = run_captured(b.command(&json), label);
    let report = read_report(&json, &finished, label);
    let ctx = format!(
        "{label}\nresidue exit {}\nstderr:\n{}\nreport:\n{}",
        finished.code(),
        finished.stderr,
        serde_json::to_string_pretty(&report.json).unwrap_or_default()
    );
    (finished, report, ctx)
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// `libraries[]` entries whose module's file name is `name`, as raw JSON.
fn entries<'a>(r: &'a Report, name: &str) -> Vec<&'a Value> {
    r.libraries().into_iter().filter(|l| l["module"].as_str().is_some_and(|m| file_name(m) == name)).collect()
}

fn stacks_of<'a>(r: &'a Report, name: &str) -> Vec<&'a Value> {
    entries(r, name).into_iter().flat_map(|l| l["stacks"].as_array().into_iter().flatten()).collect()
}

fn amount(v: &Value) -> Amount {
    Amount::new(v["count"].as_u64().unwrap_or(u64::MAX), v["bytes"].as_u64().unwrap_or(u64::MAX))
}

/// `(function, file, line)` of a stack's `python` frames, innermost first.
fn python_frames(stack: &Value) -> Vec<(String, String, u64)> {
    stack["python"]
        .as_array()
        .expect("every stack has a `python` array")
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("").to_owned(),
                f["file"].as_str().unwrap_or("").to_owned(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn user_library_names(r: &Report) -> Vec<String> {
    let mut v: Vec<String> =
        r.libraries().iter().map(|l| file_name(l["module"].as_str().unwrap()).to_owned()).collect();
    v.sort();
    v
}

/// The innermost Python frame is `function` at the script's `marker` line.
fn assert_innermost(stack: &Value, function: &str, marker: &str, ctx: &str) {
    let py = python_frames(stack);
    let script = script();
    let want = (function.to_owned(), script.to_str().unwrap().to_owned(), line_of(marker));
    assert_eq!(py.first(), Some(&want), "innermost Python frame of a stack\n{ctx}");
}

fn assert_user_only(r: &Report, ctx: &str) {
    for l in r.libraries() {
        assert_eq!(l["origin"], "user", "the default report lists the user's libraries only\n{ctx}");
    }
}

#[test]
fn each_leak_names_the_scripts_line_and_the_noise_is_one_line_each() {
    let o = lines_run("python3", "lines").go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "python_lines: lines\n", "{ctx}");
    assert_eq!(r.complete(), Some(true), "{ctx}");
    // Exactly the script's libraries: nothing of libpython, _ctypes, the loader.
    assert_eq!(user_library_names(r), ["libc.so.6", "libleaky.so", "libtail.so"], "{ctx}");
    assert_user_only(r, &ctx);
    assert!(r.json["unattributed"].as_array().is_some_and(Vec::is_empty), "{ctx}");

    // libleaky: fx_strdup_names (10 x 24) from leak_names, fx_make_struct (16 + 100) from
    // leak_struct, each through its own line, called from main().
    let names = leaky::LEAKS.iter().find(|l| l.function == "leaky_strdup_names").unwrap();
    let strukt = leaky::LEAKS.iter().find(|l| l.function == "leaky_make_struct").unwrap();
    assert_eq!(
        r.heap("libleaky.so"),
        Amount::new(names.count + strukt.count, names.bytes + strukt.bytes),
        "libleaky.so: the two scenarios the script ran, nothing else\n{ctx}"
    );
    for s in stacks_of(r, "libleaky.so") {
        let (marker, func) = match s["api"].as_str() {
            Some("strdup") => ("names", "leak_names"),
            Some("malloc") => ("struct", "leak_struct"),
            other => panic!("unexpected api {other:?}\n{ctx}"),
        };
        assert_innermost(s, func, marker, &ctx);
        assert_eq!(python_frames(s)[1].0, "main", "{ctx}");
        assert_eq!(s["origin"], "user", "{ctx}");
    }
    let strdups: Vec<_> = stacks_of(r, "libleaky.so").into_iter().filter(|s| s["api"] == "strdup").collect();
    assert_eq!(strdups.len(), 1, "{ctx}");
    assert_eq!(amount(strdups[0]), Amount::new(names.count, names.bytes), "{ctx}");

    // libtail: tail_dup is `jmp strdup`: no frame of libtail on the stack, yet the leak is
    // libtail's, named by the function ctypes called. 3 x "tail-called!" + NUL; the 4 freed
    // ones and the buffer freed at finalization are not here.
    assert_eq!(r.heap("libtail.so"), Amount::new(3, 3 * 13), "{ctx}");
    let tail = stacks_of(r, "libtail.so");
    assert_eq!(tail.len(), 1, "{ctx}");
    let t = tail[0];
    assert_eq!(t["foreign_call"]["function"], "tail_dup", "{ctx}");
    assert_eq!(t["foreign_call"]["module"].as_str().map(file_name), Some("libtail.so"), "{ctx}");
    let frames = t["frames"].as_array().unwrap();
    let owner = &frames[t["owner_frame"].as_u64().expect("an owner frame") as usize];
    assert_eq!((owner["kind"].as_str(), owner["function"].as_str()), (Some("foreign"), Some("tail_dup")), "{ctx}");
    assert!(
        frames.iter().all(|f| f["kind"] == "foreign" || f["module"].as_str().map(file_name) != Some("libtail.so")),
        "tail_dup jumped to strdup: no native frame of libtail is on the stack\n{ctx}"
    );
    assert_innermost(t, "leak_tail", "tail", &ctx);

    // The C library's own strdup called from Python: tracked like any caller, and the 5
    // strdup/free pairs matched. 2 x "from-libc!" + NUL.
    assert_eq!(r.heap("libc.so.6"), Amount::new(2, 2 * 11), "{ctx}");
    let libc = stacks_of(r, "libc.so.6");
    assert_eq!(libc.len(), 1, "{ctx}");
    assert_eq!(libc[0]["foreign_call"]["function"], "strdup", "{ctx}");
    assert_innermost(libc[0], "leak_libc", "libc", &ctx);

    // The text report: Python frames inline, the foreign call named, the residue in one line each.
    let err = &o.finished.stderr;
    let script = script();
    let tail_line = format!("leak_tail at {}:{} [python]", script.display(), line_of("tail"));
    assert!(err.contains(&tail_line), "text report shows {tail_line:?}\n{ctx}");
    assert!(err.contains("foreign call: tail_dup (libtail.so)"), "{ctx}");
    for origin in ["interpreter", "loader"] {
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&format!("{origin} residue: "))).collect();
        assert_eq!(lines.len(), 1, "one summary line for the {origin}'s residue\n{ctx}");
        assert!(lines[0].ends_with("(--all shows it)"), "{ctx}");
        let s = &r.json["runtime_residue"][origin];
        assert!(s["count"].as_u64().unwrap_or(0) > 0, "{origin} residue was seen (and kept out)\n{ctx}");
        assert_eq!(s["listed"], false, "{ctx}");
    }
    assert!(!err.contains("libpython3.11.so.1.0:"), "libpython is not listed as a library\n{ctx}");
    let summary = format!("summary: 17 heap blocks ({} bytes) unreleased in 3 libraries", 356 + 39 + 22);
    assert!(err.contains(&summary), "{summary:?}\n{ctx}");
}

#[test]
fn what_finalization_frees_is_released() {
    // Same buffer, same call site: freed by __del__ during Py_FinalizeEx in `lines` mode (see the
    // test above: 3 blocks), kept in `nofree` mode: exactly one more block of 33 bytes.
    let o = lines_run("python3", "nofree").go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(r.heap("libtail.so"), Amount::new(4, 3 * 13 + 33), "{ctx}");
    let kept: Vec<_> = stacks_of(r, "libtail.so").into_iter().filter(|s| s["bytes"] == 33).collect();
    assert_eq!(kept.len(), 1, "{ctx}");
    assert_eq!(python_frames(kept[0])[0].0, "Kept.__init__", "{ctx}");

    let o = lines_run("python3", "lines").go();
    let ctx = o.context();
    assert!(
        stacks_of(&o.report, "libtail.so").iter().all(|s| s["bytes"] != 33),
        "the buffer __del__ freed at finalization is not reported\n{ctx}"
    );
    assert_eq!(o.report.heap("libtail.so"), Amount::new(3, 3 * 13), "{ctx}");
}

/// The line of `script` that ends with `# LEAK:<name>`.
fn marked_line(script: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(script).expect("fixture script");
    let marker = format!("# LEAK:{name}");
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.ends_with(&marker)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "exactly one line of {} ends with {marker}", script.display());
    hits[0] as u64
}

#[test]
fn cffi_calls_are_named_by_the_function_python_called() {
    // cffi's ABI mode calls through libffi; the wheel from PyPI carries its own copy of libffi
    // inside _cffi_backend (`cffistatic_ffi_call`), which residue hooks under that name.
    let script = py_script("cffi_calls.py");
    let o = run([
        "python3".as_ref(),
        script.as_os_str(),
        fixture("libleaky.so").as_os_str(),
        fixture("libtail.so").as_os_str(),
    ])
    .go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "cffi must be installed (.ci/run installs it)\n{ctx}");
    assert!(o.finished.stdout.starts_with("cffi_calls: cffi "), "{ctx}");
    assert_eq!(user_library_names(r), ["libleaky.so", "libtail.so"], "{ctx}");
    assert_user_only(r, &ctx);
    let innermost_python = |s: &Value, function: &str, marker: &str| {
        let want = (function.to_owned(), script.to_str().unwrap().to_owned(), marked_line(&script, marker));
        assert_eq!(python_frames(s).first(), Some(&want), "innermost Python frame\n{ctx}");
    };

    // fx_strdup_names has frames of its own: the owner rule finds them; the foreign call is
    // still recorded.
    let names = leaky::LEAKS.iter().find(|l| l.function == "leaky_strdup_names").unwrap();
    assert_eq!(r.heap("libleaky.so"), Amount::new(names.count, names.bytes), "{ctx}");
    let s = stacks_of(r, "libleaky.so");
    assert_eq!(s.len(), 1, "{ctx}");
    assert_eq!(s[0]["foreign_call"]["function"], "fx_strdup_names", "{ctx}");
    innermost_python(s[0], "leak_names", "cffi_names");

    // tail_dup is `jmp strdup`: no libtail frame on the stack, and libffi's frames are
    // _cffi_backend's, not a libffi module's. The foreign call owns it. 3 x 16 bytes; the 4
    // blocks freed through cffi are matched.
    assert_eq!(r.heap("libtail.so"), Amount::new(3, 3 * 16), "{ctx}");
    let t = stacks_of(r, "libtail.so");
    assert_eq!(t.len(), 1, "{ctx}");
    assert_eq!(t[0]["foreign_call"]["function"], "tail_dup", "{ctx}");
    assert_eq!(t[0]["foreign_call"]["module"].as_str().map(file_name), Some("libtail.so"), "{ctx}");
    let frames = t[0]["frames"].as_array().unwrap();
    let owner = &frames[t[0]["owner_frame"].as_u64().expect("an owner frame") as usize];
    assert_eq!((owner["kind"].as_str(), owner["function"].as_str()), (Some("foreign"), Some("tail_dup")), "{ctx}");
    assert!(
        frames.iter().all(|f| !f["module"].as_str().is_some_and(|m| file_name(m).starts_with("libresidue"))),
        "the interposer's hook frames are not shown\n{ctx}"
    );
    innermost_python(t[0], "leak_tail", "cffi_tail");
    assert!(o.finished.stderr.contains("foreign call: tail_dup (libtail.so)"), "{ctx}");
    let summary = format!("summary: 13 heap blocks ({} bytes) unreleased in 2 libraries", names.bytes + 48);
    assert!(o.finished.stderr.contains(&summary), "{summary:?}\n{ctx}");
}

#[test]
fn code_objects_that_reuse_memory_keep_their_own_names_and_lines() {
    // Each round's functions are compiled afresh and dropped, so later rounds' code objects
    // (and their name and file strings) tend to land where earlier ones were. Each thread
    // remembers what a (code object, instruction) turned into; that must never outlive the code
    // object it was made for.
    let rounds = 12u64;
    let script = py_script("generated_code.py");
    let o =
        run(["python3".as_ref(), script.as_os_str(), fixture("libtail.so").as_os_str(), rounds.to_string().as_ref()])
            .go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, format!("generated_code: {rounds} rounds\n"), "{ctx}");
    assert_eq!(user_library_names(r), ["libtail.so"], "{ctx}");
    assert_eq!(r.heap("libtail.so"), Amount::new(2 * rounds, 2 * rounds * 4), "{ctx}");
    let mut seen: Vec<(String, String, u64)> = stacks_of(r, "libtail.so")
        .into_iter()
        .map(|s| {
            assert_eq!(amount(s), Amount::new(1, 4), "one block per generated function\n{ctx}");
            python_frames(s).into_iter().next().expect("a Python frame")
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String, u64)> = (0..rounds)
        .flat_map(|i| [(format!("f_{i}"), format!("gen_{i}.py"), 2), ("g".to_owned(), "same.py".to_owned(), i + 2)])
        .collect();
    want.sort();
    assert_eq!(seen, want, "{ctx}");
}

#[test]
fn the_same_native_stack_under_other_python_lines_is_another_stack() {
    // Each fx_make_struct's two native stacks are the ones of the call before it, at the same
    // depth, so the interposer takes each stack's id from what it kept with the walk if the
    // Python frames hash as they did then (stacks.rs, `Derived`), and the second of a call's
    // two from what the first hashed in the same call (`quick`): here the first never matches
    // what was kept, and each of the four places keeps its own blocks.
    let o = lines_run("python3", "alternate").go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(user_library_names(r), ["libleaky.so"], "{ctx}");
    assert_eq!(r.heap("libleaky.so"), Amount::new(56, 28 * 116), "{ctx}");
    let mut seen: Vec<(u64, u64, Amount)> = stacks_of(r, "libleaky.so")
        .into_iter()
        .map(|s| {
            let py = python_frames(s);
            (py[0].2, py.get(1).map_or(0, |f| f.2), amount(s))
        })
        .collect();
    seen.sort_by_key(|s| (s.0, s.1, s.2.bytes));
    let mut want = Vec::new();
    for (line, caller, calls) in [
        (line_of("odd"), line_of("alternate_call"), 8),
        (line_of("even"), line_of("alternate_call"), 8),
        (line_of("dup_from"), line_of("caller_one"), 6),
        (line_of("dup_from"), line_of("caller_two"), 6),
    ] {
        want.extend([(line, caller, Amount::new(calls, calls * 16)), (line, caller, Amount::new(calls, calls * 100))]);
    }
    want.sort_by_key(|s| (s.0, s.1, s.2.bytes));
    assert_eq!(seen, want, "(innermost Python line, its caller's line, amount) of each stack\n{ctx}");
}

#[test]
fn threads_keep_their_own_python_stacks() {
    let o = lines_run("python3", "threads").go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(user_library_names(r), ["libleaky.so"], "{ctx}");
    let names = leaky::LEAKS.iter().find(|l| l.function == "leaky_strdup_names").unwrap();
    assert_eq!(r.heap("libleaky.so"), Amount::new(2 * names.count, 2 * names.bytes), "{ctx}");
    let stacks = stacks_of(r, "libleaky.so");
    assert_eq!(stacks.len(), 2, "one stack per thread: same native stack, different Python stacks\n{ctx}");
    let mut seen = Vec::new();
    for s in stacks {
        assert_eq!(amount(s), Amount::new(names.count, names.bytes), "{ctx}");
        let py = python_frames(s);
        let func = py[0].0.clone();
        assert!(func == "thread_a" || func == "thread_b", "{ctx}");
        assert_innermost(s, &func, &func, &ctx);
        // The thread's own stack: it starts in threading's bootstrap, not in main().
        assert_eq!(py.last().map(|f| f.0.as_str()), Some("Thread._bootstrap"), "{ctx}");
        assert!(py.iter().all(|f| f.0 != "main" && f.0 != "<module>"), "{ctx}");
        seen.push(func);
    }
    seen.sort();
    assert_eq!(seen, ["thread_a", "thread_b"], "{ctx}");
}

fn interpreter_only(python: &str, extra: &[&str]) -> Outcome {
    let mut b = run([python, "-c", STDLIB_ONLY]);
    for e in extra {
        b = b.option(e);
    }
    b.go()
}

fn assert_nothing_reported(o: &Outcome) {
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(r.complete(), Some(true), "{ctx}");
    assert!(r.libraries().is_empty(), "an interpreter-only script leaks nothing of the user's\n{ctx}");
    assert!(r.json["unattributed"].as_array().is_some_and(Vec::is_empty), "{ctx}");
    assert_eq!(r.json["totals"]["count"], 0, "{ctx}");
    // Not vacuous: the interpreter ran under residue and its residue was seen and kept apart.
    assert!(r.json["runtime_residue"]["interpreter"]["count"].as_u64().unwrap_or(0) > 0, "{ctx}");
    assert!(r.json["runtime_residue"]["loader"]["count"].as_u64().unwrap_or(0) > 0, "{ctx}");
    assert!(o.finished.stderr.contains("\nsummary: no unreleased resources"), "{ctx}");
}

#[test]
fn interpreter_only_script_reports_nothing() {
    let o = interpreter_only("python3", &[]);
    assert_nothing_reported(&o);
    let ctx = o.context();
    assert_eq!(o.report.json["python"]["pymalloc"], true, "{ctx}");
    assert!(o.finished.stderr.contains("`residue run --python-malloc` (PYTHONMALLOC=malloc) shows them"), "{ctx}");

    // Every small object seen one by one: far more residue, still none of it the user's.
    let m = interpreter_only("python3", &["--python-malloc"]);
    assert_nothing_reported(&m);
    let ctx = m.context();
    assert_eq!(m.report.json["python"]["pymalloc"], false, "{ctx}");
    assert!(!m.finished.stderr.contains("--python-malloc"), "no hint once it is on\n{ctx}");
    let count = |o: &Outcome| o.report.json["runtime_residue"]["interpreter"]["count"].as_u64().unwrap();
    assert!(count(&m) > 5 * count(&o), "PYTHONMALLOC=malloc shows the small objects\n{ctx}");
}

#[test]
fn a_static_interpreter_is_the_interpreter_too() {
    // Debian's /usr/bin/python3.11 has libpython linked in: the executable is the interpreter.
    let debian = Path::new("/usr/bin/python3.11");
    if !debian.exists() {
        eprintln!("skipped: no /usr/bin/python3.11 here");
        return;
    }
    assert_nothing_reported(&interpreter_only(debian.to_str().unwrap(), &[]));
}

#[test]
fn python_malloc_flag_reaches_the_target() {
    let code = "import os; print(os.environ.get('PYTHONMALLOC'))";
    let o = run(["python3", "-c", code]).option("--python-malloc").go();
    assert_eq!(o.finished.stdout, "malloc\n", "{}", o.context());
    let o = run(["python3", "-c", code]).go();
    assert_eq!(o.finished.stdout, "None\n", "{}", o.context());
}

#[test]
fn summarized_residue_is_classified_as_when_listed() {
    // Without --all the runtime's stacks are resolved only as far as their owner and origin
    // (their modules' debug information is never read); with --all every frame is. Both must
    // classify every stack alike: the same summaries, the same user libraries.
    let (f1, r1, ctx1) = go_raw(lines_run("python3", "lines"), "python-summary");
    let (f2, r2, ctx2) = go_raw(lines_run("python3", "lines").option("--all"), "python-summary-all");
    let ctx = format!("{ctx1}\n---- with --all ----\n{ctx2}");
    assert_eq!((f1.code(), f2.code()), (0, 0), "{ctx}");
    for origin in ["interpreter", "loader"] {
        let (a, b) = (&r1.json["runtime_residue"][origin], &r2.json["runtime_residue"][origin]);
        for field in ["unreleased", "count", "bytes", "stacks", "modules"] {
            assert_eq!(a[field], b[field], "{origin} {field}\n{ctx}");
        }
        assert!(a["count"].as_u64().unwrap_or(0) > 0, "the interpreter leaves residue at exit\n{ctx}");
    }
    // Two runs: addresses and stack ids differ; what the report says of each stack must not.
    let user = |r: &Report| -> Vec<String> {
        let mut v: Vec<String> = r
            .libraries()
            .into_iter()
            .filter(|l| l["origin"] == "user")
            .flat_map(|l| {
                l["stacks"].as_array().into_iter().flatten().map(move |st| {
                    let functions: Vec<&str> = st["frames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| f["function"].as_str().unwrap_or("?"))
                        .collect();
                    format!(
                        "{} {} {} {} x{} {}B owner {} {:?} {}",
                        l["module"],
                        st["origin"],
                        st["kind"],
                        st["api"],
                        st["count"],
                        st["bytes"],
                        st["owner_frame"],
                        functions,
                        st["python"]
                    )
                })
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(user(&r1), user(&r2), "{ctx}");
    assert_eq!(r1.json["python"], r2.json["python"], "{ctx}");
}

#[test]
fn all_lists_the_runtime_residue_with_its_origin() {
    let (f, r, ctx) = go_raw(run(["python3", "-c", STDLIB_ONLY]).option("--all"), "python-all");
    assert_eq!(f.code(), 0, "{ctx}");
    let libs = r.libraries();
    assert!(!libs.is_empty(), "{ctx}");
    let mut sum = [Amount::ZERO, Amount::ZERO];
    for l in &libs {
        let module = l["module"].as_str().unwrap();
        let i = match l["origin"].as_str() {
            Some("interpreter") => 0,
            Some("loader") => 1,
            other => panic!("{module}: origin {other:?} in an interpreter-only run\n{ctx}"),
        };
        for s in l["stacks"].as_array().unwrap() {
            assert_eq!(s["origin"], l["origin"], "{ctx}");
            sum[i] = sum[i] + amount(s);
        }
        if i == 1 {
            assert!(file_name(module).starts_with("ld-linux"), "the loader's entry is the loader's\n{ctx}");
        }
    }
    for (i, origin) in ["interpreter", "loader"].iter().enumerate() {
        let s = &r.json["runtime_residue"][origin];
        assert_eq!(sum[i], amount(s), "{origin}: listed stacks vs summary\n{ctx}");
        assert_eq!(s["listed"], true, "{ctx}");
    }
    assert_eq!(r.json["totals"]["count"].as_u64(), Some(sum[0].count + sum[1].count), "{ctx}");
    assert!(f.stderr.contains("libpython3.11.so.1.0 [interpreter residue]:"), "{ctx}");
    assert!(!f.stderr.contains("(--all shows it)"), "{ctx}");
}

/// `pythonX.Y` when it runs here, else `None` and a line saying so. pyenv installs several, but
/// its shims run only the selected ones: look in its versions directory first.
fn python_version(v: &str) -> Option<String> {
    let exe = format!("python{v}");
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    let mut candidates: Vec<PathBuf> = root
        .and_then(|r| std::fs::read_dir(r.join("versions")).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&format!("{v}."))))
        .map(|e| e.path().join("bin").join(&exe))
        .collect();
    candidates.sort();
    candidates.push(PathBuf::from(&exe));
    let found = candidates
        .into_iter()
        .find(|c| Command::new(c).args(["-c", "pass"]).output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        eprintln!("skipped: {exe} is not installed here");
    }
    found.map(|p| p.to_string_lossy().into_owned())
}

#[test]
fn python_312_and_313_frames_name_the_lines() {
    // 3.12 from its layout; 3.13 from the offsets it publishes in _PyRuntime.
    for v in ["3.12", "3.13"] {
        let Some(py) = python_version(v) else { continue };
        lines_of_a_version(&py);
    }
}

fn lines_of_a_version(py: &str) {
    let o = lines_run(py, "lines").go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(user_library_names(r), ["libc.so.6", "libleaky.so", "libtail.so"], "{ctx}");
    assert_eq!(r.heap("libtail.so"), Amount::new(3, 3 * 13), "{ctx}");
    assert_innermost(stacks_of(r, "libtail.so")[0], "leak_tail", "tail", &ctx);
    for s in stacks_of(r, "libleaky.so") {
        let (marker, func) = if s["api"] == "strdup" { ("names", "leak_names") } else { ("struct", "leak_struct") };
        assert_innermost(s, func, marker, &ctx);
    }
}

/// A call site's first call and its later ones can leave CPython's loop from different
/// instructions (3.13 specializes a site after its first call): two stacks that differ only in
/// that return address, which the report shows as the Python line, are one entry in every
/// version. The README's example: three leaking calls from one line.
#[test]
fn a_line_that_leaks_on_every_call_is_one_entry_in_every_python() {
    let example = repo_root().join("examples").join("ctypes_leak.py");
    let mut pythons = vec!["python3".to_string()];
    pythons.extend(["3.12", "3.13"].into_iter().filter_map(python_version));
    for py in pythons {
        let o = run([std::ffi::OsStr::new(&py), example.as_os_str()])
            .env("RESIDUE_EXAMPLE_LIB", fixtures::libexample())
            .go();
        let ctx = o.context();
        assert_eq!(o.finished.code(), 0, "{py}\n{ctx}");
        let stacks = o.report.stacks("libexample.so");
        assert_eq!(stacks.len(), 1, "{py}: one entry\n{ctx}");
        let bytes = ["Hello, ada!", "Hello, grace!", "Hello, linus!"].iter().map(|s| s.len() as u64 + 1).sum();
        assert_eq!(stacks[0].amount, Amount::new(3, bytes), "{py}\n{ctx}");
        assert!(o.finished.stderr.contains("in 1 library (1 distinct stack)"), "{py}\n{ctx}");
    }
}

/// CPython 3.12+ counts the process's threads (/proc/self/stat) at every os.fork() and warns
/// when there is more than one: a writer thread of ours would set the warning off in a program
/// that has none (multiprocessing's fork start method; under `-W error` an error, under
/// pytest's `filterwarnings = error` a failed test). A program without threads has no writer;
/// one that starts a thread gets it, with the thread; once the program's threads have ended,
/// the writer steps aside at its next fork.
#[test]
fn os_fork_in_a_program_without_threads_does_not_warn() {
    const FORK: &str = "import os, sys\n\
        threads = lambda: int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[17])\n\
        print('before', threads())\n\
        pid = os.fork()\n\
        if pid == 0:\n    os._exit(0)\n\
        os.waitpid(pid, 0)\n\
        import threading\n\
        t = threading.Thread(target=lambda: print('with a thread', threads())); t.start(); t.join()\n\
        import time\n\
        while len(os.listdir('/proc/self/task')) > 2:\n    time.sleep(0.001)\n\
        pid = os.fork()\n\
        if pid == 0:\n    os._exit(0)\n\
        os.waitpid(pid, 0)\n\
        print('after', threads())\n";
    let mut pythons = vec!["python3".to_string()];
    pythons.extend(["3.12", "3.13"].into_iter().filter_map(python_version));
    for py in pythons {
        let o = run([py.as_str(), "-W", "always", "-c", FORK]).go();
        let ctx = o.context();
        assert_eq!(o.finished.code(), 0, "{ctx}");
        // With a thread: it, the main one and our writer. After it has gone, at the fork, the
        // writer too (the loop waits for the thread to leave the thread group: a joined thread
        // may still be in it for a moment, plain too).
        assert_eq!(o.finished.stdout, "before 1\nwith a thread 3\nafter 1\n", "{py}\n{ctx}");
        assert!(!o.finished.stderr.contains("multi-threaded"), "{py}: no fork warning\n{ctx}");
        assert_eq!(o.report.complete(), Some(true), "{ctx}");
    }
}

#[test]
fn unknown_python_versions_degrade_with_one_notice() {
    // 3.10: no Py_Version (found through Py_GetVersion), no layout residue reads.
    for v in ["3.10"] {
        let Some(py) = python_version(v) else { continue };
        let o = lines_run(&py, "lines").go();
        let (r, ctx) = (&o.report, o.context());
        assert_eq!(o.finished.code(), 0, "{ctx}");
        let notices: Vec<&str> = r.json["notices"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        let about: Vec<&&str> = notices.iter().filter(|n| n.starts_with(&format!("Python {v} "))).collect();
        assert_eq!(about.len(), 1, "one notice about the version\n{ctx}");
        let line = format!("residue: note: {}", about[0]);
        assert_eq!(o.finished.stderr.matches(&line).count(), 1, "printed once: {line:?}\n{ctx}");
        // Native-only stacks, the same leaks, the foreign call still named.
        assert_eq!(user_library_names(r), ["libc.so.6", "libleaky.so", "libtail.so"], "{ctx}");
        assert_eq!(r.heap("libtail.so"), Amount::new(3, 3 * 13), "{ctx}");
        for s in stacks_of(r, "libtail.so").into_iter().chain(stacks_of(r, "libleaky.so")) {
            assert!(python_frames(s).is_empty(), "no Python frames from an unknown layout\n{ctx}");
        }
        assert_eq!(stacks_of(r, "libtail.so")[0]["foreign_call"]["function"], "tail_dup", "{ctx}");
    }
}

/// Compiles fixtures-c/py/leakyext.c against `python`'s headers into `dir` (the tests build it:
/// the fixture build does not assume Python headers). `None` when there are no headers.
fn build_extension(python: &str, dir: &Path) -> Option<PathBuf> {
    let q = "import sysconfig; print(sysconfig.get_paths()['include']); print(sysconfig.get_config_var('EXT_SUFFIX'))";
    let out = Command::new(python).args(["-c", q]).output().expect("running python3");
    let text = String::from_utf8(out.stdout).expect("utf-8 paths");
    let mut lines = text.lines();
    let (include, suffix) = (lines.next()?, lines.next()?);
    if !Path::new(include).join("Python.h").exists() {
        eprintln!("skipped: no Python.h under {include}");
        return None;
    }
    let so = dir.join(format!("leakyext{suffix}"));
    let src = py_script("leakyext.c");
    // Like the C fixtures: the leaking function's frame stays on the stack.
    let st = Command::new("gcc")
        .args(["-g", "-O1", "-fno-optimize-sibling-calls", "-fPIC", "-shared", "-Wall"])
        .arg(format!("-I{include}"))
        .arg("-o")
        .arg(&so)
        .arg(&src)
        .status()
        .expect("gcc runs");
    assert!(st.success(), "gcc failed on {}", src.display());
    Some(so)
}

#[test]
fn an_extension_modules_leaks_are_its_own_even_through_pymem_malloc() {
    // An in-place build next to the script: neither site-packages nor the standard library.
    // PyMem_Malloc's malloc is made by libpython's allocator; the block is the extension's.
    let tmp = TempDir::new("leakyext");
    let Some(so) = build_extension("python3", tmp.path()) else { return };
    let ext = so.file_name().unwrap().to_str().unwrap().to_owned();
    let script = tmp.join("use_ext.py");
    let text = "import leakyext\n\
                for _ in range(3):\n    leakyext.pymem(1000)\n\
                leakyext.raw(2000)\n\
                for _ in range(5):\n    leakyext.clean(1000)\n";
    std::fs::write(&script, text).unwrap();
    for extra in [None, Some("--python-malloc")] {
        let mut b = run(["python3".as_ref(), script.as_os_str()]);
        if let Some(e) = extra {
            b = b.option(e);
        }
        let o = b.go();
        let (r, ctx) = (&o.report, o.context());
        assert_eq!(o.finished.code(), 0, "{ctx}");
        assert_eq!(user_library_names(r), std::slice::from_ref(&ext), "{ctx}");
        assert_eq!(r.heap(&ext), Amount::new(4, 3 * 1000 + 2000), "{ctx}");
        let mut by: Vec<(String, Amount)> =
            r.stacks(&ext).iter().map(|s| (s.owner_function(&ext).unwrap_or("?").to_owned(), s.amount)).collect();
        by.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(by, [("pymem".to_owned(), Amount::new(3, 3000)), ("raw".to_owned(), Amount::new(1, 2000))], "{ctx}");
        for s in stacks_of(r, &ext) {
            // The owner frame is the extension's function, not libpython's allocator.
            let frames = s["frames"].as_array().unwrap();
            let owner = &frames[s["owner_frame"].as_u64().unwrap() as usize];
            assert_eq!(owner["module"].as_str().map(file_name), Some(ext.as_str()), "{ctx}");
            let line = if s["bytes"] == 3000 { 3 } else { 4 };
            let want = ("<module>".to_owned(), script.to_str().unwrap().to_owned(), line);
            assert_eq!(python_frames(s).first(), Some(&want), "{ctx}");
        }
    }
}

/// Python calling the C library's own allocator through ctypes (`CDLL("libc.so.6").malloc`
/// binds to glibc's definition, not the interposer's): tracked like any caller, and its frees
/// matched. The script mallocs 5 blocks of 123 bytes from `grab` and frees 3 with libc's free.
#[test]
fn libc_malloc_and_free_called_through_ctypes_are_tracked_and_matched() {
    let dir = residue_tests::TempDir::new("ctypes-libc");
    let script = dir.join("libc_direct.py");
    std::fs::write(
        &script,
        "import ctypes\n\
         libc = ctypes.CDLL('libc.so.6')\n\
         libc.malloc.restype = ctypes.c_void_p\n\
         libc.malloc.argtypes = [ctypes.c_size_t]\n\
         libc.free.argtypes = [ctypes.c_void_p]\n\
         def grab():\n\
         \x20   return libc.malloc(123)\n\
         blocks = [grab() for _ in range(5)]\n\
         for b in blocks[:3]:\n\
         \x20   libc.free(b)\n",
    )
    .expect("writing the script");
    let o = run([std::ffi::OsStr::new("python3"), script.as_os_str()]).go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    let mine: Vec<&Value> = r.json["libraries"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["stacks"].as_array().into_iter().flatten())
        .filter(|s| python_frames(s).first().map(|f| f.0.as_str()) == Some("grab"))
        .collect();
    assert_eq!(mine.len(), 1, "one stack from grab\n{ctx}");
    assert_eq!((mine[0]["count"].as_u64(), mine[0]["bytes"].as_u64()), (Some(2), Some(246)), "{ctx}");
    assert_eq!(mine[0]["foreign_call"]["function"], "malloc", "{ctx}");
    assert_eq!(r.json["released_origin_unseen"]["heap"].as_u64().unwrap_or(0), 0, "every free matched\n{ctx}");
}

#[test]
fn blocks_around_a_callback_into_python_keep_their_own_python_stacks() {
    // A foreign call's Python stack is the same for every capture made while the frame that
    // called it is current (the interposer keeps it per call): the blocks made before and after
    // a callback into Python share it, the callback's own (made in a nested call) have the
    // callback's, and no call's stack is another's, even from the same frame.
    let script = py_script("callbacks.py");
    let o = run(["python3".as_ref(), script.as_os_str(), fixture("libcallback.so").as_os_str()]).go();
    let (r, ctx) = (&o.report, o.context());
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "callbacks: done\n", "{ctx}");
    assert_eq!(user_library_names(r), ["libcallback.so"], "{ctx}");
    assert_eq!(r.heap("libcallback.so"), Amount::new(10, 101 + 103 + 111 + 113 + 121 + 123 + 2 * (201 + 203)), "{ctx}");
    let at = |marker: &str| marked_line(&script, marker);
    // Per block size: the (function, line) of each Python frame above `main`, innermost first.
    let mut seen: Vec<(u64, Vec<(String, u64)>)> = stacks_of(r, "libcallback.so")
        .into_iter()
        .map(|s| {
            assert_eq!(s["count"], 1, "{s:#}\n{ctx}");
            assert_eq!(s["foreign_call"]["function"], "cb_around", "{ctx}");
            let frames = python_frames(s);
            let upto = frames.iter().position(|f| f.0 == "main").unwrap_or_else(|| panic!("main in {frames:?}\n{ctx}"));
            assert!(frames.iter().all(|f| f.1 == script.to_str().unwrap()), "{frames:?}\n{ctx}");
            (amount(s).bytes, frames[..upto].iter().map(|f| (f.0.clone(), f.2)).collect())
        })
        .collect();
    seen.sort();
    let outer_a = ("main.<locals>.outer_a".to_owned(), at("outer_a"));
    let outer_b = ("main.<locals>.outer_b".to_owned(), at("outer_b"));
    let again = ("main.<locals>.outer_b".to_owned(), at("outer_b_again"));
    let inner = ("main.<locals>.callback".to_owned(), at("inner"));
    let want = vec![
        (101, vec![outer_a.clone()]),
        (103, vec![outer_a.clone()]),
        (111, vec![outer_b.clone()]),
        (113, vec![outer_b.clone()]),
        (121, vec![again.clone()]),
        (123, vec![again]),
        (201, vec![inner.clone(), outer_a.clone()]),
        (201, vec![inner.clone(), outer_b.clone()]),
        (203, vec![inner.clone(), outer_a]),
        (203, vec![inner, outer_b]),
    ];
    assert_eq!(seen, want, "{ctx}");
}
