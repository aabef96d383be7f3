//! The target killed with SIGKILL mid-run: residue still reports what reached it, marks the
//! report incomplete, and passes the death on as its own status.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use residue_tests::{
    drain_to_string, fixture, fixtures, kill, read_report, run, wait_deadline, Amount, Finished, Report, TempDir,
    DEADLINE,
};

/// `residue run -- FIXTURE`, its stdout read line by line while it runs.
struct Traced {
    _tmp: TempDir,
    json: std::path::PathBuf,
    child: std::process::Child,
    stderr: thread::JoinHandle<String>,
    stdout: BufReader<std::process::ChildStdout>,
    name: &'static str,
}

impl Traced {
    fn start(name: &'static str) -> Traced {
        Traced::start_with(name, &[])
    }

    fn start_with(name: &'static str, args: &[&str]) -> Traced {
        let tmp = TempDir::new(&format!("sigkill-{name}"));
        let json = tmp.join("report.json");
        let mut argv = vec![fixture(name).into_os_string()];
        argv.extend(args.iter().map(std::ffi::OsString::from));
        let mut cmd = run(argv).command(&json);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning residue");
        let stderr = drain_to_string(child.stderr.take());
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Traced { _tmp: tmp, json, child, stderr, stdout, name }
    }

    /// The target's next line, parsed by `parse`; on anything else, residue is killed and the
    /// test fails with what the target printed.
    fn line<T>(&mut self, expected: &str, parse: impl FnOnce(&str) -> Option<T>) -> T {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading the target's stdout");
        if let Some(v) = parse(line.trim()) {
            return v;
        }
        kill(self.child.id() as i32, libc::SIGKILL);
        let _ = self.child.wait();
        let err = std::mem::replace(&mut self.stderr, thread::spawn(String::new)).join().unwrap();
        panic!("expected `{expected}` from {}, got {line:?}; residue stderr:\n{err}", self.name);
    }

    /// SIGKILLs the target `pid`; residue's status, stderr and report.
    fn kill_target(mut self, pid: i32) -> (Finished, Report) {
        kill(pid, libc::SIGKILL);
        let status = wait_deadline(&mut self.child, DEADLINE, "residue after its target was SIGKILLed");
        let finished = Finished { status, stdout: String::new(), stderr: self.stderr.join().expect("stderr reader") };
        let report = read_report(&self.json, &finished, &format!("residue run -- {} (SIGKILLed)", self.name));
        (finished, report)
    }
}

/// The blocks in the report that `function` of `module` left: what reached the collector.
fn blocks_of(report: &Report, module: &str, function: &str) -> Amount {
    report
        .all_stacks()
        .into_iter()
        .filter(|s| s.owner_function(module) == Some(function))
        .fold(Amount::ZERO, |a, s| a + s.amount)
}

/// Runs host_idle with `args` and SIGKILLs it `wait` after it has printed its pid. Returns the
/// blocks it had made by 400 ms, the blocks it made in all (if it said: the idle mode), what
/// the report holds of them, and the context for messages; the checks common to both modes
/// done.
fn killed_host_idle(args: &[&str], wait: Duration) -> (u64, Option<u64>, Amount, String) {
    let mut t = Traced::start_with("host_idle", args);
    let first: u64 = t.line("first <n>", |l| l.strip_prefix("first ")?.parse().ok());
    let (pid, total): (i32, Option<u64>) = t.line("idle <pid> <total> or busy <pid>", |l| {
        if let Some(pid) = l.strip_prefix("busy ") {
            return Some((pid.parse().ok()?, None));
        }
        let (pid, total) = l.strip_prefix("idle ")?.split_once(' ')?;
        Some((pid.parse().ok()?, Some(total.parse().ok()?)))
    });
    thread::sleep(wait);
    let (finished, report) = t.kill_target(pid);
    let ctx =
        format!("first {first}, total {total:?}\nresidue stderr:\n{}\nreport:\n{:#}", finished.stderr, report.json);
    assert_eq!(report.complete(), Some(false), "a SIGKILLed target's trace is incomplete\n{ctx}");
    let seen = blocks_of(&report, "host_idle", fixtures::idle::FUNCTION);
    assert_eq!(seen.bytes, seen.count * fixtures::idle::BLOCK_BYTES, "{ctx}");
    assert!(first > 0, "{ctx}");
    (first, total, seen, ctx)
}

#[test]
fn sigkilled_target_gives_an_incomplete_report_of_what_was_seen() {
    let mut t = Traced::start("host_sleep");
    // host_sleep prints "leaked <pid>" once its blocks are allocated.
    let pid: i32 = t.line("leaked <pid>", |l| l.strip_prefix("leaked ")?.parse().ok());
    // Not a timing assertion: a moment for whatever the interposer writes late to arrive. The
    // assertions hold whatever it managed (host_sleep is single-threaded: no writer thread
    // takes its last, partly filled batch; the full ones before it were written).
    thread::sleep(Duration::from_millis(300));
    let (finished, report) = t.kill_target(pid);
    let ctx = format!("residue stderr:\n{}\nreport:\n{:#}", finished.stderr, report.json);

    assert_eq!(finished.code(), 128 + libc::SIGKILL, "residue passes the target's death on as 128 + 9\n{ctx}");
    assert_eq!(report.exit_status(), Some(128 + i64::from(libc::SIGKILL)), "{ctx}");
    assert_eq!(report.complete(), Some(false), "a SIGKILLed target's trace is incomplete\n{ctx}");

    // What was seen: host_sleep's blocks that reached the collector, each of 16 bytes and no
    // more than were allocated; some must have (100,000 allocations fill many batches).
    let seen = blocks_of(&report, "host_sleep", fixtures::sleep::FUNCTION);
    assert!(
        seen.count > 0 && seen.count <= fixtures::sleep::DEFAULT_BLOCKS,
        "between 1 and {} blocks of sleep_leak_block reported, got {}\n{ctx}",
        fixtures::sleep::DEFAULT_BLOCKS,
        seen.count
    );
    assert_eq!(seen.bytes, seen.count * fixtures::sleep::BLOCK_BYTES, "{ctx}");
    // libleaky's leaks happened before those blocks, on the same thread: once later events
    // arrived, all of these had arrived too.
    assert_eq!(
        report.heap("libleaky.so"),
        Amount::new(fixtures::leaky::COUNT, fixtures::leaky::BYTES),
        "events of one thread arrive in order: libleaky's earlier leaks are all there\n{ctx}"
    );
}

/// A single-threaded program has no writer thread to take its partly filled batch while it
/// sleeps: it writes the batch out itself when its events are 100 ms old, checked as it records,
/// and as it goes to sleep. host_idle allocates slowly for 800 ms without a sleep call (fewer
/// events than fill one batch), reporting how many blocks it had made after 400 ms, then sleeps
/// 10 ms, says so and sleeps on; killed then, every block must be in the report.
#[test]
fn a_sigkilled_idle_program_without_threads_loses_nothing() {
    let (first, total, seen, ctx) = killed_host_idle(&[], Duration::ZERO);
    let total = total.expect("host_idle says how many blocks it made");
    assert!(first < total, "{ctx}");
    assert_eq!(seen.count, total, "every block of idle_leak_block, written out as it went idle\n{ctx}");
}

/// The same program killed while it is still busy, never idle: what it recorded more than
/// 100 ms before was written out by the 100 ms rule, checked as it records.
#[test]
fn a_sigkilled_busy_program_without_threads_loses_only_its_last_100_ms() {
    // Not a timing assertion: the program goes on recording while the test waits; the wait
    // only makes it record past the 100 ms of its first blocks.
    let (first, _, seen, ctx) = killed_host_idle(&["busy"], Duration::from_millis(300));
    assert!(seen.count >= first, "at least the first {first} blocks, got {}\n{ctx}", seen.count);
}
