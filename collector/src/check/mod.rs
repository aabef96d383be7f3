//! `residue check`: run a command under the interposer and decide pass or fail for CI.
//!
//! The pipeline, per stack of the report: scope (`--library`, `--kind`, runtime noise) →
//! suppressions → baseline → pytest attribution → limits per library (or per test). What
//! survives is counted; a library (or a pytest test with a `residue` marker) whose count or
//! bytes of a kind exceed its limit fails the check. Everything in between is reported
//! (`check` section of the JSON report), so a CI log says why a stack did or did not count.
//!
//! Exit statuses ([`exit`]): see `residue check --help` and the README's CI section.

pub mod baseline;
pub mod cli;
pub mod config;
pub mod pattern;
pub mod pytest;
pub mod suppress;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use self::baseline::{Baseline, Change};
use self::config::{Config, Limit};
use self::pattern::{basename, glob_match};
use self::suppress::{Matched, Suppressions};
use crate::error::{Error, Result};
use crate::noise::Origin;
use crate::report::{self, Count, Library, Report, StackOut};

/// Exit statuses of `residue check`. A wrapper's convention (`timeout`, `env`, `git bisect
/// run`): 125-127 are the wrapper's own, everything else the target's or the verdict.
pub mod exit {
    /// Ran, and what it left behind is within limits.
    pub const PASS: i32 = 0;
    /// Usage error on the command line (clap's status), before anything ran.
    #[allow(dead_code)] // Set by clap; named for the documentation.
    pub const USAGE: i32 = 2;
    /// Leaks exceed the limits (LeakSanitizer's status), and the target itself succeeded.
    pub const LEAKED: i32 = 23;
    /// residue itself failed: bad suppression/config/baseline file, no interposer, the target
    /// could not be tracked, an output file could not be written.
    pub const RESIDUE_ERROR: i32 = 125;
    /// The command was found but could not be executed.
    #[allow(dead_code)] // Set by launch::spawn; named for the documentation.
    pub const CANNOT_EXECUTE: i32 = 126;
    /// The command was not found.
    #[allow(dead_code)] // Set by launch::spawn; named for the documentation.
    pub const NOT_FOUND: i32 = 127;
    // The target's own failure passes through: its exit status (1-255), or 128 + the signal
    // that killed it. It wins over LEAKED: a run whose tests failed is reported as failed
    // tests (its leak verdict is still printed and written to every report).
}

/// Everything `residue check` was asked.
#[derive(Debug, Default)]
pub struct Options {
    pub libraries: Vec<String>,
    pub kinds: Vec<String>,
    pub max_bytes: Vec<(Option<String>, u64)>,
    pub max_count: Vec<(Option<String>, u64)>,
    pub suppressions: Vec<PathBuf>,
    pub no_default_suppressions: bool,
    pub baseline: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub sarif: Option<PathBuf>,
    pub depth: u32,
    /// Show every frame of every counted stack.
    pub all: bool,
    pub cmd: Vec<OsString>,
}

/// Reads every input file before the target runs, so a typo fails in a second, not after a
/// 20-minute test suite.
pub struct Inputs {
    pub config: Config,
    pub suppressions: Suppressions,
    pub baseline: Option<Baseline>,
    pub libraries: Vec<String>,
    pub kinds: Vec<String>,
}

fn input_error(msg: impl std::fmt::Display) -> Error {
    let mut e = Error::new(format!("residue check: {msg}"));
    e.exit_code = exit::RESIDUE_ERROR;
    e
}

impl Inputs {
    pub fn load(o: &Options) -> Result<Inputs> {
        let mut config = match &o.config {
            Some(p) => Config::load(p).map_err(input_error)?,
            None if Path::new("residue.toml").is_file() => {
                Config::load(Path::new("residue.toml")).map_err(input_error)?
            }
            None => Config::default(),
        };
        for (k, n) in &o.max_bytes {
            config.add_cli(k.clone(), Limit { max_bytes: Some(*n), max_count: None });
        }
        for (k, n) in &o.max_count {
            config.add_cli(k.clone(), Limit { max_bytes: None, max_count: Some(*n) });
        }
        let mut suppressions = Suppressions::default();
        if !o.no_default_suppressions {
            suppressions.parse(suppress::DEFAULT, "default", true).map_err(input_error)?;
        }
        for p in config.suppressions.iter().chain(&o.suppressions) {
            let text = std::fs::read_to_string(p)
                .map_err(|e| input_error(format!("cannot read the suppressions file {}: {e}", p.display())))?;
            suppressions.parse(&text, &p.display().to_string(), false).map_err(input_error)?;
        }
        let baseline = o.baseline.as_deref().map(Baseline::load).transpose().map_err(input_error)?;
        let mut kinds = Vec::new();
        for k in o.kinds.iter().flat_map(|k| k.split(',')).map(str::trim).filter(|k| !k.is_empty()) {
            if residue_protocol::Kind::from_name(k).is_none() {
                return Err(input_error(format!("--kind {k}: not a resource kind (heap, fd, stream, dir, mapping)")));
            }
            kinds.push(k.to_owned());
        }
        Ok(Inputs { config, suppressions, baseline, libraries: o.libraries.clone(), kinds })
    }
}

/// One counted stack (or several with the same baseline key, added up).
#[derive(Debug, Serialize)]
pub struct StackCheck {
    /// Stable across runs and rebuilds: a hash of the baseline key.
    pub fingerprint: String,
    pub kind: String,
    pub api: String,
    /// What counts: the whole amount, or the increase over the baseline.
    pub count: u64,
    pub bytes: u64,
    /// `leak` (no baseline), `new` or `grew` (against the baseline).
    pub change: &'static str,
    pub baseline: Option<Count>,
    /// The report's stack ids of this library with this key.
    pub stack_ids: Vec<u32>,
    /// The pytest test whose body made it, when the pytest plugin ran.
    pub test: Option<String>,
    /// Where the stack is in the report: (list, library index, stack index); lists are
    /// `libraries`, `unattributed` and the unlisted runtime residue, in that order.
    #[serde(skip)]
    pub at: (usize, usize, usize),
    /// Judged by its test's marker limits rather than by its library's.
    #[serde(skip)]
    pub by_test: bool,
}

/// A library in scope.
#[derive(Debug, Serialize)]
pub struct LibCheck {
    pub module: String,
    /// What counts against its limits, per kind.
    pub leaked: BTreeMap<String, Count>,
    /// The limits in force, per kind that leaked (every other kind's limit is not needed).
    pub limits: BTreeMap<String, Limit>,
    /// Kinds over their limits.
    pub over: Vec<String>,
    pub pass: bool,
    pub stacks: Vec<StackCheck>,
}

#[derive(Debug, Default, Serialize)]
pub struct ScopeOut {
    /// `--library` globs (empty: every library but the runtime's own).
    pub libraries: Vec<String>,
    /// `--library` globs that matched no loaded module and no leak (a typo passes nothing).
    pub unmatched_libraries: Vec<String>,
    /// `--kind` (empty: every kind).
    pub kinds: Vec<String>,
    /// Left out as the runtime's own residue, per origin (`interpreter`, `loader`) and kind.
    pub runtime_noise: BTreeMap<String, BTreeMap<String, Count>>,
    /// Left out by `--library` or `--kind`, per kind.
    pub out_of_scope: BTreeMap<String, Count>,
}

#[derive(Debug, Serialize)]
pub struct BaselineOut {
    pub path: String,
    pub new_stacks: usize,
    pub grown_stacks: usize,
    /// Present in both and not grown: not counted.
    pub unchanged_stacks: usize,
    /// In the baseline, gone now (fixed leaks).
    pub gone_stacks: usize,
}

/// The `check` section of the JSON report.
#[derive(Debug, Serialize)]
pub struct CheckOut {
    /// `pass`, `leaked`, `target-failed`, `target-crashed`, `not-tracked`.
    pub verdict: &'static str,
    /// Whether the leaks are within limits, whatever the target did.
    pub leaks_within_limits: bool,
    pub exit_status: i32,
    pub summary: String,
    pub scope: ScopeOut,
    /// The `residue.toml` read, if any.
    pub config: Option<String>,
    pub libraries: Vec<LibCheck>,
    /// Every suppression rule with what it matched (default rules included).
    pub suppressions: Vec<Matched>,
    /// User rules (not the defaults) that matched nothing: stale, or misspelled.
    pub unmatched_suppressions: Vec<String>,
    pub baseline: Option<BaselineOut>,
    /// pytest tests, when the plugin ran (`python/residue_pytest.py`).
    pub tests: Vec<pytest::TestOut>,
}

fn add(c: &mut Count, o: Count) {
    c.count += o.count;
    c.bytes += o.bytes;
}

fn over(c: Count, l: Limit) -> bool {
    l.max_bytes.is_some_and(|m| c.bytes > m) || l.max_count.is_some_and(|m| c.count > m)
}

/// Whether `module` is named by a `--library` glob (its path or its file name).
pub fn in_library_scope(globs: &[String], module: &str) -> bool {
    globs.is_empty() || globs.iter().any(|g| glob_match(g, module) || glob_match(g, basename(module)))
}

/// The verdict on a report. `loaded` is every module the final image had loaded (for the
/// libraries in `--library` scope that left nothing); `tests` the pytest manifest, if any.
pub fn evaluate(r: &Report, loaded: &[String], inp: &Inputs, tests: Option<&pytest::Manifest>) -> CheckOut {
    let mut scope = ScopeOut { libraries: inp.libraries.clone(), kinds: inp.kinds.clone(), ..ScopeOut::default() };
    let mut matched: Vec<Matched> = inp
        .suppressions
        .rules
        .iter()
        .map(|rule| Matched {
            rule: rule.text.clone(),
            source: rule.source.clone(),
            default: rule.default,
            ..Matched::default()
        })
        .collect();
    let mut libs: Vec<LibCheck> = Vec::new();
    let mut baseline_out = inp.baseline.as_ref().map(|b| BaselineOut {
        path: b.path.clone(),
        new_stacks: 0,
        grown_stacks: 0,
        unchanged_stacks: 0,
        gone_stacks: 0,
    });
    let mut seen_keys = std::collections::HashSet::new();
    let mut test_acc = pytest::Accumulator::new(tests);

    for (list_index, list) in report_lists(r).into_iter().enumerate() {
        for (li, lib) in list.iter().enumerate() {
            let lib: &Library = lib;
            let named = in_library_scope(&inp.libraries, &lib.module);
            // Stacks that count, grouped by baseline key (insertion order = report order).
            let mut keyed: Vec<(String, Vec<(usize, &StackOut)>)> = Vec::new();
            for (si, s) in lib.stacks.iter().enumerate() {
                let amount = Count { count: s.count, bytes: s.bytes };
                let kind_ok = inp.kinds.is_empty() || inp.kinds.contains(&s.kind);
                if !named || !kind_ok {
                    add(scope.out_of_scope.entry(s.kind.clone()).or_default(), amount);
                    continue;
                }
                let origin = s.origin;
                // The loader's bookkeeping is nobody's to fix; the interpreter's is left out
                // unless the user named libraries (then `--library libpython*` means it).
                let excluded = match origin {
                    Origin::Loader => true,
                    Origin::Interpreter => inp.libraries.is_empty(),
                    Origin::User => false,
                };
                if excluded {
                    let by_kind = scope.runtime_noise.entry(origin.name().to_owned()).or_default();
                    add(by_kind.entry(s.kind.clone()).or_default(), amount);
                    continue;
                }
                if let Some(i) = inp.suppressions.find(&lib.module, s) {
                    let m = &mut matched[i];
                    m.stacks += 1;
                    m.count += s.count;
                    m.bytes += s.bytes;
                    continue;
                }
                if test_acc.is_warmup(s) {
                    continue;
                }
                let k = baseline::stack_key(s);
                match keyed.iter_mut().find(|(kk, _)| *kk == k) {
                    Some((_, v)) => v.push((si, s)),
                    None => keyed.push((k, vec![(si, s)])),
                }
            }
            let mut lc = LibCheck {
                module: lib.module.clone(),
                leaked: BTreeMap::new(),
                limits: BTreeMap::new(),
                over: Vec::new(),
                pass: true,
                stacks: Vec::new(),
            };
            for (k, members) in keyed {
                let now = members.iter().fold(Count::default(), |mut c, (_, s)| {
                    add(&mut c, Count { count: s.count, bytes: s.bytes });
                    c
                });
                seen_keys.insert(k.clone());
                let (counted, change, was) = match inp.baseline.as_ref().map(|b| b.compare(&k, now)) {
                    None => (now, "leak", None),
                    Some(Change::New) => {
                        if let Some(b) = baseline_out.as_mut() {
                            b.new_stacks += 1;
                        }
                        (now, "new", None)
                    }
                    Some(Change::Grew { was }) => {
                        if let Some(b) = baseline_out.as_mut() {
                            b.grown_stacks += 1;
                        }
                        let d = Count {
                            count: now.count.saturating_sub(was.count),
                            bytes: now.bytes.saturating_sub(was.bytes),
                        };
                        (d, "grew", Some(was))
                    }
                    Some(Change::Unchanged { .. }) => {
                        if let Some(b) = baseline_out.as_mut() {
                            b.unchanged_stacks += 1;
                        }
                        continue;
                    }
                };
                let (si, first) = members[0];
                let test = test_acc.attribute(&lib.module, first, counted);
                let by_test = test.as_ref().is_some_and(|t| t.1);
                if !by_test {
                    add(lc.leaked.entry(first.kind.clone()).or_default(), counted);
                }
                lc.stacks.push(StackCheck {
                    fingerprint: baseline::fingerprint(&k),
                    kind: first.kind.clone(),
                    api: first.api.clone(),
                    count: counted.count,
                    bytes: counted.bytes,
                    change,
                    baseline: was,
                    stack_ids: members.iter().map(|(_, s)| s.stack_id).collect(),
                    test: test.map(|t| t.0),
                    at: (list_index, li, si),
                    by_test,
                });
            }
            for (kind, c) in &lc.leaked {
                let limit = inp.config.limit(&lc.module, kind);
                lc.limits.insert(kind.clone(), limit);
                if over(*c, limit) {
                    lc.over.push(kind.clone());
                }
            }
            lc.pass = lc.over.is_empty();
            if !lc.stacks.is_empty() || (!inp.libraries.is_empty() && named) {
                libs.push(lc);
            }
        }
    }
    // Libraries in scope that were loaded but left nothing passed: with --library, those it
    // names; without, every one but the runtime's own (the interpreter's, the loader's) and
    // residue's.
    for m in loaded {
        let in_scope = if inp.libraries.is_empty() {
            !crate::noise::is_interpreter(m) && !crate::noise::is_loader(m) && !m.ends_with("/libresidue.so")
        } else {
            in_library_scope(&inp.libraries, m)
        };
        if in_scope && !libs.iter().any(|l| l.module == *m) {
            libs.push(LibCheck {
                module: m.clone(),
                leaked: BTreeMap::new(),
                limits: BTreeMap::new(),
                over: Vec::new(),
                pass: true,
                stacks: Vec::new(),
            });
        }
    }
    if !inp.libraries.is_empty() {
        scope.unmatched_libraries = inp
            .libraries
            .iter()
            .filter(|g| !libs.iter().any(|l| in_library_scope(std::slice::from_ref(*g), &l.module)))
            .cloned()
            .collect();
    }
    if let (Some(b), Some(out)) = (&inp.baseline, baseline_out.as_mut()) {
        out.gone_stacks = b.stacks.keys().filter(|k| !seen_keys.contains(*k)).count();
    }
    let unmatched_suppressions =
        matched.iter().filter(|m| !m.default && m.stacks == 0).map(|m| format!("{} ({})", m.rule, m.source)).collect();
    let tests_out = test_acc.finish(&libs);
    let leaks_ok = libs.iter().all(|l| l.pass) && tests_out.iter().all(|t| t.pass);
    CheckOut {
        verdict: if leaks_ok { "pass" } else { "leaked" },
        leaks_within_limits: leaks_ok,
        exit_status: if leaks_ok { exit::PASS } else { exit::LEAKED },
        summary: String::new(),
        scope,
        config: inp.config.path.as_ref().map(|p| p.display().to_string()),
        libraries: libs,
        suppressions: matched,
        unmatched_suppressions,
        baseline: baseline_out,
        tests: tests_out,
    }
}

/// Folds the target's own outcome into the verdict: its failure wins.
pub fn finish(c: &mut CheckOut, r: &Report) {
    let p = &r.process;
    // An exec into a program that could not be tracked (static, set-user-ID) leaves nothing
    // to judge: passing it would pass whatever it leaked.
    let untracked_end = r.images.last().is_some_and(|i| i.untracked);
    if !r.tracked || untracked_end {
        c.verdict = "not-tracked";
        c.exit_status = exit::RESIDUE_ERROR;
    } else if let Some(sig) = p.signal {
        c.verdict = "target-crashed";
        c.exit_status = 128 + sig as i32;
    } else if let Some(code) = p.exit_status.filter(|&s| s != 0) {
        c.verdict = "target-failed";
        c.exit_status = code;
    }
    c.summary = summary(c, r);
}

/// The report's lists of libraries a check looks at: the user's, the unattributed, and the
/// runtime's residue not listed (`noise`: empty once `Report::show_all` listed it).
fn report_lists(r: &Report) -> [&Vec<Library>; 3] {
    [&r.libraries, &r.unattributed, &r.runtime]
}

/// Look up the report's stack a check entry points at.
pub fn stack_of<'r>(r: &'r Report, s: &StackCheck) -> &'r StackOut {
    let (list, li, si) = s.at;
    &report_lists(r)[list][li].stacks[si]
}

/// "23 heap blocks (14750 bytes)", "2 fds".
pub fn amount(kind: &str, c: Count) -> String {
    let noun = match kind {
        "heap" => "heap block",
        "fd" => "fd",
        "stream" => "FILE stream",
        "dir" => "DIR stream",
        "mapping" => "mapping",
        other => other,
    };
    let s = if c.count == 1 { "" } else { "s" };
    if kind == "heap" || kind == "mapping" || c.bytes > 0 {
        format!("{} {noun}{s} ({} bytes)", c.count, c.bytes)
    } else {
        format!("{} {noun}{s}", c.count)
    }
}

/// `max-count 0, max-bytes 4096`: the limit as residue.toml spells it.
pub fn limit_text(l: Limit) -> String {
    let mut parts = Vec::new();
    if let Some(c) = l.max_count {
        parts.push(format!("max-count {c}"));
    }
    if let Some(b) = l.max_bytes {
        parts.push(format!("max-bytes {b}"));
    }
    if parts.is_empty() {
        "no limit".into()
    } else {
        parts.join(", ")
    }
}

/// The line that always ends the run: what was checked, what leaked, pass or fail.
fn summary(c: &CheckOut, r: &Report) -> String {
    let verdict = match c.verdict {
        "pass" => "PASS".to_owned(),
        "leaked" => "FAIL (leaks over limits)".to_owned(),
        "target-failed" => format!("FAIL (the target failed: exit status {})", c.exit_status),
        "target-crashed" => {
            format!("FAIL (the target was killed by signal {})", r.process.signal.unwrap_or(0))
        }
        _ => "FAIL (the target could not be tracked)".to_owned(),
    };
    let mut s = format!("residue check: {verdict}: ");
    let n = c.libraries.len();
    let kinds = if c.scope.kinds.is_empty() { "all kinds".to_owned() } else { c.scope.kinds.join(",") };
    let _ = write!(
        s,
        "{n} {} in scope ({kinds}{})",
        if n == 1 { "library" } else { "libraries" },
        if c.scope.libraries.is_empty() { ", runtime noise excluded" } else { "" }
    );
    let mut leaked: BTreeMap<&str, Count> = BTreeMap::new();
    for l in &c.libraries {
        for (k, v) in &l.leaked {
            add(leaked.entry(k).or_default(), *v);
        }
    }
    for t in &c.tests {
        for (k, v) in &t.leaked_by_marker {
            add(leaked.entry(k).or_default(), *v);
        }
    }
    if leaked.is_empty() {
        s.push_str("; nothing leaked");
    } else {
        let parts: Vec<String> = leaked.iter().map(|(k, v)| amount(k, *v)).collect();
        let _ = write!(s, "; leaked {}", parts.join(", "));
    }
    let failing: Vec<String> = c
        .libraries
        .iter()
        .filter(|l| !l.pass)
        .map(|l| {
            let kinds: Vec<String> = l
                .over
                .iter()
                .map(|k| format!("{} (limit: {})", amount(k, l.leaked[k]), limit_text(l.limits[k])))
                .collect();
            format!("{} {}", basename(&l.module), kinds.join(", "))
        })
        .chain(c.tests.iter().filter(|t| !t.pass).map(|t| format!("test {}", t.nodeid)))
        .collect();
    if !failing.is_empty() {
        let _ = write!(s, "; over limits: {}", failing.join("; "));
    }
    let supp: u64 = c.suppressions.iter().map(|m| m.stacks).sum();
    if supp > 0 {
        let _ = write!(s, "; {supp} stack{} suppressed", if supp == 1 { "" } else { "s" });
    }
    if let Some(b) = &c.baseline {
        let _ =
            write!(s, "; baseline: {} new, {} grown, {} unchanged", b.new_stacks, b.grown_stacks, b.unchanged_stacks);
    }
    match (r.process.exit_status, r.process.signal) {
        (_, Some(sig)) => {
            let _ = write!(s, "; target killed by signal {sig}");
        }
        (Some(code), None) => {
            let _ = write!(s, "; target exited {code}");
        }
        _ => {}
    }
    if r.tracked && !r.process.complete {
        // Killed, crashed or _exit: releases after the last flush are missing, so some of
        // what counted may have been released.
        s.push_str("; trace incomplete");
    }
    if !c.leaks_within_limits && c.verdict != "leaked" {
        s.push_str("; leaks are also over limits");
    }
    s
}

/// One frame as a line: `function at file:line (module)`.
pub fn frame_text(f: &report::FrameOut) -> String {
    let mut s = f.function.clone().unwrap_or_else(|| f.address.map_or_else(|| "?".into(), |a| format!("{a:#x}")));
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        let _ = write!(s, " at {file}:{line}");
    }
    match (&f.module, f.kind) {
        (Some(m), _) => {
            let _ = write!(s, " ({})", basename(m));
        }
        (None, "python") => s.push_str(" [python]"),
        _ => {}
    }
    s
}

/// A stack as indented lines, from its owner frame on (the allocator's frames above it are the
/// same in every stack); at most `max` frames, then the first Python frames left out (where a
/// Python program called in from: the test, the script line).
pub fn stack_text(s: &StackOut, max: usize) -> String {
    let start = s.owner_frame.unwrap_or(0);
    let mut out = String::new();
    for (i, f) in s.frames.iter().enumerate().skip(start) {
        if i - start == max {
            let rest = &s.frames[i..];
            let py: Vec<(usize, &report::FrameOut)> =
                rest.iter().enumerate().filter(|(_, f)| f.kind == "python").take(4).collect();
            let _ = writeln!(out, "      ... {} more frames", rest.len() - py.len());
            for (j, f) in py {
                let _ = writeln!(out, "      #{:<2} {}", i + j, frame_text(f));
            }
            break;
        }
        let _ = writeln!(out, "      #{i:<2} {}", frame_text(f));
    }
    out
}

/// The human part on stderr: each counted stack of a failing library or test, warnings, and
/// the summary line last.
pub fn render(c: &CheckOut, r: &Report, all: bool) -> String {
    let mut out = String::new();
    let frames = if all { usize::MAX } else { 10 };
    for l in &c.libraries {
        if l.stacks.is_empty() {
            continue;
        }
        let total: Vec<String> = l.leaked.iter().map(|(k, v)| amount(k, *v)).collect();
        let state = if l.pass { "within limits" } else { "OVER LIMITS" };
        let _ = writeln!(out, "\nresidue check: {}: {} ({state})", l.module, total.join(", "));
        for s in &l.stacks {
            let change = match (s.change, s.baseline) {
                ("new", _) => " [new since the baseline]".to_owned(),
                ("grew", Some(b)) => format!(" [grew from {} blocks / {} bytes]", b.count, b.bytes),
                _ => String::new(),
            };
            let test = s.test.as_deref().map(|t| format!(" in test {t}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} from {}{change}{test}",
                amount(&s.kind, Count { count: s.count, bytes: s.bytes }),
                s.api
            );
            out.push_str(&stack_text(stack_of(r, s), frames));
        }
    }
    for t in c.tests.iter().filter(|t| !t.pass) {
        let parts: Vec<String> = t.leaked.iter().map(|(k, v)| amount(k, *v)).collect();
        let why: Vec<String> = t
            .over
            .iter()
            .map(|k| match t.limits.get(k) {
                Some(l) => format!("{k} over its marker ({})", limit_text(*l)),
                None => format!("{k} counted against a library over its limits"),
            })
            .collect();
        let _ = writeln!(out, "residue check: test {} leaked {}: {}", t.nodeid, parts.join(", "), why.join("; "));
    }
    for g in &c.scope.unmatched_libraries {
        let _ = writeln!(out, "residue check: warning: --library {g} matched no loaded library");
    }
    for u in &c.unmatched_suppressions {
        let _ = writeln!(out, "residue check: warning: suppression {u} matched nothing");
    }
    for p in &r.problems {
        let _ = writeln!(out, "residue check: note: {p}");
    }
    let _ = writeln!(out, "{}", c.summary);
    out
}

/// The JSON report with the `check` section added (same schema: fields are only added).
pub fn json_text(r: &Report, c: &CheckOut) -> String {
    let mut v = serde_json::to_value(r).expect("the report model always serializes");
    v["check"] = serde_json::to_value(c).expect("the check model always serializes");
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON value always serializes");
    s.push('\n');
    s
}

fn write_file(path: &Path, what: &str, text: &str) -> std::result::Result<(), String> {
    if path == Path::new("-") {
        use std::io::Write;
        return std::io::stdout().write_all(text.as_bytes()).map_err(|e| format!("cannot write the {what}: {e}"));
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write the {what} to {}: {e}", path.display()))
}

/// Runs the target, traces it, and builds the report (what `residue run` does, without its
/// text output). Also returns the modules the final image had loaded.
fn trace(argv: &[OsString], depth: u32) -> Result<(Report, Vec<String>)> {
    // residue's own failures (no interposer, a command line it cannot launch) are 125 here, so
    // that CI can tell them from the target's statuses.
    let traced = crate::session::trace(argv, depth, None, "residue check", false).map_err(|mut e| {
        if e.exit_code == 2 {
            e.exit_code = exit::RESIDUE_ERROR;
        }
        e
    })?;
    let loaded = traced
        .state
        .ledger
        .final_image()
        .map(|img| img.modules.iter().map(|m| m.path.clone()).filter(|p| p.starts_with('/')).collect())
        .unwrap_or_default();
    Ok((report::build(&traced.state.ledger, &traced.info, traced.problems), loaded))
}

/// `residue check`.
pub fn run(o: &Options) -> Result<i32> {
    let inputs = Inputs::load(o)?;
    let manifest_dir = pytest::ManifestDir::create().map_err(|e| {
        input_error(format!("cannot create a private directory in {}: {e}", std::env::temp_dir().display()))
    })?;
    let manifest_path = manifest_dir.manifest();
    // The pytest plugin (if the target runs pytest with it) writes its tests there. Set on our
    // own environment before any thread starts, so the child inherits it.
    std::env::set_var(pytest::MANIFEST_ENV, &manifest_path);
    let traced = trace(&o.cmd, o.depth);
    let manifest = pytest::Manifest::load(&manifest_path);
    drop(manifest_dir);
    let (mut r, loaded) = traced?;
    let manifest = manifest.map_err(input_error)?;
    if !inputs.libraries.is_empty() {
        // Named libraries may be the interpreter's own (`--library 'libpython*'`): list the
        // runtime's entries with the rest, so the JSON report shows every stack counted.
        r.show_all();
    }
    let mut c = evaluate(&r, &loaded, &inputs, manifest.as_ref());
    finish(&mut c, &r);

    let mut write_errors = Vec::new();
    if let Some(p) = &o.json {
        write_errors.extend(write_file(p, "JSON report", &json_text(&r, &c)).err());
    }
    if let Some(p) = &o.junit {
        write_errors.extend(write_file(p, "JUnit report", &report::junit::render(&r, &c)).err());
    }
    if let Some(p) = &o.sarif {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        write_errors.extend(write_file(p, "SARIF report", &report::sarif::render(&r, &c, &cwd)).err());
    }
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        let root = std::env::var_os("GITHUB_WORKSPACE")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        // Workflow commands are read from stdout.
        print!("{}", report::github::render(&r, &c, &root));
    }
    let mut text = render(&c, &r, o.all);
    for e in &write_errors {
        text.insert_str(0, &format!("residue check: {e}\n"));
    }
    eprint!("{text}");
    if !write_errors.is_empty() && c.exit_status == exit::PASS {
        return Ok(exit::RESIDUE_ERROR);
    }
    Ok(c.exit_status)
}
