//! Harness for residue's integration tests: real processes under the real interposer.
//!
//! The tests run the `residue` binary and `libresidue.so` that `cargo build` put next to the
//! test executable's profile directory (target/<profile>/), the way a user runs them, and
//! read the JSON report (`residue run --json`, schema `residue-report/1`). The fixtures come
//! from `residue-fixtures` (target/<profile>/fixtures/), whose constants give the exact
//! numbers to expect.
//!
//! Every process is run with a deadline: a hang (the failure mode of a broken fork or exit
//! path) fails the test with a message instead of stalling the suite. Deadlines are generous
//! and never asserted on as timings.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use residue_fixtures as fixtures;

/// Longest a single `residue run` may take before the test calls it a hang.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The residue build under test.
#[derive(Debug)]
pub struct Tools {
    /// target/<profile>
    pub profile_dir: PathBuf,
    /// target/<profile>/residue
    pub residue: PathBuf,
    /// target/<profile>/libresidue.so
    pub preload: PathBuf,
}

/// Finds `residue` and `libresidue.so` in the profile directory of the running test binary
/// (target/<profile>/deps/<test> → target/<profile>). Panics with what to do when they are
/// missing: `cargo test` builds the test's dependencies, not the workspace's binaries.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's own path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test binary lives in target/<profile>/deps/")
            .to_path_buf();
        let residue = profile_dir.join("residue");
        let preload = profile_dir.join("libresidue.so");
        for (what, p) in [("the residue binary", &residue), ("the interposer", &preload)] {
            assert!(
                p.exists(),
                "{what} is missing at {}: run `cargo build` (same profile as the tests) before `cargo test`, \
                 i.e. `cargo build && cargo test`",
                p.display()
            );
        }
        Tools { profile_dir, residue, preload }
    })
}

/// The path of a fixture program or library (target/<profile>/fixtures/NAME).
pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures::path(name);
    assert!(p.exists(), "fixture {} was not built (residue-fixtures' build.rs)", p.display());
    p
}

/// A fixture's Python script (fixtures-c/py/NAME).
pub fn py_script(name: &str) -> PathBuf {
    repo_root().join("fixtures-c").join("py").join(name)
}

/// The repository root (the parent of this package's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A scratch directory, removed when dropped (kept when RESIDUE_KEEP_TMP is set, for
/// looking at a failing test's report and trace).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("residue-test-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("RESIDUE_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What a finished process left: status and captured output.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code, or 128 + signal as a shell reports it.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => unreachable!("a process ends by exit or signal"),
        }
    }
}

/// Drains a pipe on a thread so a chatty child cannot block on a full pipe.
pub fn drain_to_string<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for `child` until `deadline`; on expiry kills it (and its process group) and panics
/// naming `what`.
pub fn wait_deadline(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("waiting for a child") {
            return st;
        }
        if start.elapsed() > deadline {
            kill(child.id() as i32, libc::SIGKILL);
            let _ = child.wait();
            panic!("{what} did not finish within {deadline:?}: it hangs");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with captured stdout/stderr, under [`DEADLINE`].
pub fn run_captured(mut cmd: Command, what: &str) -> Finished {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let out = drain_to_string(child.stdout.take());
    let err = drain_to_string(child.stderr.take());
    let status = wait_deadline(&mut child, DEADLINE, what);
    Finished { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// `residue run [extra] --json FILE -- argv...`
#[derive(Debug)]
pub struct RunBuilder {
    argv: Vec<OsString>,
    extra: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    label: String,
}

/// A `residue run` to configure: `run(["prog", "arg"])`.
pub fn run<I, S>(argv: I) -> RunBuilder
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let label = Path::new(&argv[0]).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    RunBuilder { argv, extra: Vec::new(), env: Vec::new(), label }
}

impl RunBuilder {
    /// Extra `residue run` options, before `--`.
    pub fn option<S: AsRef<OsStr>>(mut self, opt: S) -> Self {
        self.extra.push(opt.as_ref().to_owned());
        self
    }

    /// An environment variable for the target (set on residue, which passes it on).
    pub fn env<K: AsRef<OsStr>, V: AsRef<OsStr>>(mut self, k: K, v: V) -> Self {
        self.env.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// The command, with the JSON report going to `json`.
    pub fn command(&self, json: &Path) -> Command {
        let mut cmd = Command::new(&tools().residue);
        cmd.arg("run").args(&self.extra).arg("--json").arg(json).arg("--").args(&self.argv);
        // A suite itself run under residue must not hand its stream to the target. Inherited
        // RESIDUE_PRELOAD is kept: it is how a developer points the suite at another interposer.
        for var in ["RESIDUE_FD", "RESIDUE_PID"] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs to completion; panics if residue hangs, crashes (panics), or writes no report.
    pub fn go(self) -> Outcome {
        let tmp = TempDir::new(&self.label);
        let json = tmp.join("report.json");
        let what =
            format!("residue run -- {}", self.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        let finished = run_captured(self.command(&json), &what);
        let report = read_report(&json, &finished, &what);
        let o = Outcome { finished, report, what, _tmp: tmp };
        check_invariants(&o);
        o
    }
}

/// What holds for every report, whatever the target did: the schema; the interposer's own
/// allocations are never recorded (no libresidue.so entry); each library's unreleased heap is
/// the sum of its heap stacks (nothing lost or double-counted between the two views).
pub fn check_invariants(o: &Outcome) {
    let r = &o.report;
    assert_eq!(r.schema(), Some("residue-report/1"), "{}", o.context());
    assert!(
        r.library_entries("libresidue.so").is_empty(),
        "the interposer's own allocations were recorded\n{}",
        o.context()
    );
    for lib in r.libraries() {
        let module = lib["module"].as_str().unwrap_or("");
        assert!(module.starts_with('/'), "library modules are absolute paths: {module:?}\n{}", o.context());
        let name = file_name(module);
        let sum = parse_stacks(&lib["stacks"])
            .into_iter()
            .filter(|s| s.kind == "heap")
            .fold(Amount::ZERO, |a, s| a + s.amount);
        assert_eq!(r.heap(name), sum, "{module}: unreleased heap vs the sum of its stacks\n{}", o.context());
    }
}

/// Parses the JSON report at `path`, explaining the failure with residue's own output.
pub fn read_report(path: &Path, finished: &Finished, what: &str) -> Report {
    assert_ne!(finished.code(), 101, "{what}: residue panicked:\n{}", finished.stderr);
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{what}: no JSON report at {} ({e}); residue exited {}, stderr:\n{}",
            path.display(),
            finished.code(),
            finished.stderr
        )
    });
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: the report is not JSON ({e}):\n{text}"));
    Report { json }
}

/// A finished `residue run`.
#[derive(Debug)]
pub struct Outcome {
    /// residue's own status and output (the target's stdout passes through residue's).
    pub finished: Finished,
    pub report: Report,
    pub what: String,
    _tmp: TempDir,
}

impl Outcome {
    /// Everything worth seeing when an assertion fails.
    pub fn context(&self) -> String {
        format!(
            "{}\nresidue exit {}\nstderr:\n{}\nreport:\n{}",
            self.what,
            self.finished.code(),
            self.finished.stderr,
            serde_json::to_string_pretty(&self.report.json).unwrap_or_default()
        )
    }
}

/// Count and bytes of a set of blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub count: u64,
    pub bytes: u64,
}

impl Amount {
    pub const ZERO: Amount = Amount { count: 0, bytes: 0 };

    pub fn new(count: u64, bytes: u64) -> Amount {
        Amount { count, bytes }
    }

    pub fn of(v: &Value) -> Amount {
        Amount { count: v["count"].as_u64().unwrap_or(0), bytes: v["bytes"].as_u64().unwrap_or(0) }
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, o: Amount) -> Amount {
        Amount { count: self.count + o.count, bytes: self.bytes + o.bytes }
    }
}

/// One frame of a stack in the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u64>,
}

/// One stack of a library in the report.
#[derive(Clone, Debug)]
pub struct Stack {
    pub kind: String,
    pub api: String,
    pub amount: Amount,
    /// Innermost first.
    pub frames: Vec<Frame>,
}

impl Stack {
    /// The innermost frame in the module named `module_file` (a file name such as
    /// "libleaky.so"): the frame the report attributes the leak to.
    pub fn owner_frame(&self, module_file: &str) -> Option<&Frame> {
        self.frames.iter().find(|f| f.module.as_deref().is_some_and(|m| file_name(m) == module_file))
    }

    /// The owner frame's function name.
    pub fn owner_function(&self, module_file: &str) -> Option<&str> {
        self.owner_frame(module_file).and_then(|f| f.function.as_deref())
    }

    /// Whether any frame names `function`.
    pub fn mentions(&self, function: &str) -> bool {
        self.frames.iter().any(|f| f.function.as_deref() == Some(function))
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The JSON report (`residue-report/1`).
#[derive(Debug)]
pub struct Report {
    pub json: Value,
}

impl Report {
    pub fn schema(&self) -> Option<&str> {
        self.json["schema"].as_str()
    }

    pub fn complete(&self) -> Option<bool> {
        self.json["process"]["complete"].as_bool()
    }

    /// `process.exit_status`: the exit code, or 128 + signal.
    pub fn exit_status(&self) -> Option<i64> {
        self.json["process"]["exit_status"].as_i64()
    }

    pub fn command(&self) -> Option<&str> {
        self.json["process"]["command"].as_str()
    }

    /// Every library entry.
    pub fn libraries(&self) -> Vec<&Value> {
        self.json["libraries"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }

    /// The library entries whose module's file name is `module_file` (e.g. "libleaky.so").
    /// Normally one; more would mean the report split one library in two.
    pub fn library_entries(&self, module_file: &str) -> Vec<&Value> {
        self.libraries()
            .into_iter()
            .filter(|l| l["module"].as_str().is_some_and(|m| file_name(m) == module_file))
            .collect()
    }

    /// The single entry of `module_file`, if it has one; panics if it has several.
    pub fn library(&self, module_file: &str) -> Option<&Value> {
        let e = self.library_entries(module_file);
        assert!(e.len() <= 1, "{module_file} has {} library entries in the report", e.len());
        e.into_iter().next()
    }

    /// `unreleased.<kind>` of a library (zero when the library is absent).
    pub fn unreleased(&self, module_file: &str, kind: &str) -> Amount {
        self.library(module_file).map(|l| Amount::of(&l["unreleased"][kind])).unwrap_or_default()
    }

    /// Heap blocks a library left behind.
    pub fn heap(&self, module_file: &str) -> Amount {
        self.unreleased(module_file, "heap")
    }

    /// The stacks listed under a library (empty when the library is absent).
    pub fn stacks(&self, module_file: &str) -> Vec<Stack> {
        self.library(module_file).map(|l| parse_stacks(&l["stacks"])).unwrap_or_default()
    }

    /// Every stack of every library.
    pub fn all_stacks(&self) -> Vec<Stack> {
        self.libraries().into_iter().flat_map(|l| parse_stacks(&l["stacks"])).collect()
    }

    /// Sum of a library's heap stacks grouped by (owner function, api), sorted.
    pub fn by_function(&self, module_file: &str) -> Vec<(String, String, Amount)> {
        let mut out: Vec<(String, String, Amount)> = Vec::new();
        for s in self.stacks(module_file).into_iter().filter(|s| s.kind == "heap") {
            let f = s.owner_function(module_file).unwrap_or("<no frame in the library>").to_owned();
            match out.iter_mut().find(|(of, oa, _)| *of == f && *oa == s.api) {
                Some(e) => e.2 = e.2 + s.amount,
                None => out.push((f, s.api.clone(), s.amount)),
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

fn parse_stacks(v: &Value) -> Vec<Stack> {
    let Some(a) = v.as_array() else { return Vec::new() };
    a.iter()
        .map(|s| Stack {
            kind: s["kind"].as_str().unwrap_or("").to_owned(),
            api: s["api"].as_str().unwrap_or("").to_owned(),
            amount: Amount::of(s),
            frames: s["frames"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| Frame {
                            function: f["function"].as_str().map(str::to_owned),
                            module: f["module"].as_str().map(str::to_owned),
                            file: f["file"].as_str().map(str::to_owned),
                            line: f["line"].as_u64(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// libleaky's expected (function, api, amount) table for `reps` runs of its scenarios, sorted
/// like [`Report::by_function`].
pub fn leaky_expected(reps: u64) -> Vec<(String, String, Amount)> {
    let mut out: Vec<(String, String, Amount)> = Vec::new();
    for l in fixtures::leaky::LEAKS {
        let a = Amount::new(l.count * reps, l.bytes * reps);
        match out.iter_mut().find(|(f, api, _)| f == l.function && api == l.api) {
            Some(e) => e.2 = e.2 + a,
            None => out.push((l.function.to_owned(), l.api.to_owned(), a)),
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// Asserts libleaky's entry is exactly `reps` runs of its scenarios: totals, per function
/// and api, the module path, and that each leak's owner frame has a source location.
pub fn assert_leaky_exact(o: &Outcome, reps: u64) {
    assert_leaky_report(&o.report, reps, &o.context());
}

/// [`assert_leaky_exact`] on a report alone; `ctx` is printed on failure.
pub fn assert_leaky_report(r: &Report, reps: u64, ctx: &str) {
    use fixtures::leaky;
    let lib = r.library("libleaky.so").unwrap_or_else(|| panic!("no libleaky.so entry in the report\n{ctx}"));
    let module = lib["module"].as_str().unwrap_or("");
    let expected_path = fixtures::libleaky().canonicalize().expect("libleaky.so exists");
    assert_eq!(
        Path::new(module).canonicalize().ok().as_deref(),
        Some(expected_path.as_path()),
        "libleaky's module should be the absolute path of the fixture\n{ctx}"
    );
    assert_eq!(
        r.heap("libleaky.so"),
        Amount::new(leaky::COUNT * reps, leaky::BYTES * reps),
        "libleaky.so's unreleased heap (count, bytes)\n{ctx}"
    );
    assert_eq!(r.by_function("libleaky.so"), leaky_expected(reps), "libleaky.so per (owner function, api)\n{ctx}");
    for s in r.stacks("libleaky.so") {
        let f = s.owner_frame("libleaky.so").expect("checked by by_function");
        assert!(
            f.file.as_deref().is_some_and(|p| p.ends_with("libleaky.c")) && f.line.unwrap_or(0) > 0,
            "the owner frame of every libleaky stack has a source location in libleaky.c: {f:?}\n{ctx}"
        );
    }
}

/// `residue run --output` writes an 8-byte magic (`RESIDUER`: a resolved trace; `RESIDUEZ`
/// before it: the raw stream), its records as one zstd frame, then the exit status as raw
/// records after the frame. This gives the records uncompressed, which `residue report` reads
/// as well: for a resolved trace, the magic followed by its records; for a `RESIDUEZ` one, the
/// raw stream, whose record boundaries the protocol's decoder walks.
pub fn raw_trace(file: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let magic = &file[..8];
    assert!(magic == b"RESIDUEZ" || magic == b"RESIDUER", "a compressed trace");
    let mut z = zstd::stream::read::Decoder::new(&file[8..]).expect("zstd").single_frame();
    let mut raw = if magic == b"RESIDUER" { magic.to_vec() } else { Vec::new() };
    z.read_to_end(&mut raw).expect("the compressed frame decodes");
    z.finish().read_to_end(&mut raw).expect("the raw tail");
    raw
}
