//! `residue`: run a program under the interposer and report which native library left what
//! behind, or report from a saved trace.

mod check;
mod children;
mod dwarf;
mod error;
mod launch;
mod ledger;
mod noise;
mod owner;
mod report;
mod resolved;
mod session;
mod stream;
mod symbolize;
#[cfg(test)]
mod testutil;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use residue_protocol::{DecodeErrorKind, Encoder, MAX_SMALL_RECORD};

use crate::error::{Error, Result};
use crate::report::text::Limits;
use crate::report::ProcessInfo;

#[derive(Parser)]
#[command(
    name = "residue",
    version,
    about = "Which native library left what behind: heap blocks unreleased at exit, per library and per stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run CMD under the interposer and report what it left behind (on stderr).
    #[command(override_usage = "residue run [OPTIONS] -- CMD [ARGS]...")]
    Run {
        /// Save the trace here (for `residue report`).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also write the report as JSON here (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Deepest native stack to capture.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
        depth: u32,
        /// Show every library, stack and frame instead of the top ones, the Python interpreter's
        /// and the loader's residue included.
        #[arg(long)]
        all: bool,
        /// Set PYTHONMALLOC=malloc for the target, so that CPython's small objects (512 bytes or
        /// less, otherwise served by pymalloc from its own arenas) are seen one by one.
        #[arg(long)]
        python_malloc: bool,
        /// Do not follow child processes into sections of their own (they are then only listed).
        #[arg(long)]
        no_follow: bool,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Report from a trace saved by `residue run --output` (on stdout).
    Report {
        trace: PathBuf,
        /// Also write the report as JSON here (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Show every library, stack and frame instead of the top ones, the Python interpreter's
        /// and the loader's residue included.
        #[arg(long)]
        all: bool,
    },
    /// Run CMD under the interposer and pass or fail it on what it left behind (for CI).
    Check(check::cli::CheckArgs),
    /// Show the built-in suppressions of `residue check`.
    Suppressions(check::cli::SuppressionsArgs),
    /// Print every record of a trace, one per line (for debugging residue itself).
    #[command(hide = true)]
    Dump { trace: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run { output, json, depth, all, python_malloc, no_follow, cmd } => {
            if python_malloc {
                // Before any thread exists (set_var is unsound next to threads reading the
                // environment); the target inherits it through launch::spawn.
                std::env::set_var("PYTHONMALLOC", "malloc");
            }
            run(&cmd, output.as_deref(), json.as_deref(), depth, all, !no_follow)
        }
        Cmd::Report { trace, json, all } => report_file(&trace, json.as_deref(), all),
        Cmd::Check(a) => check::cli::run(a),
        Cmd::Suppressions(a) => check::cli::suppressions(a),
        Cmd::Dump { trace } => dump(&trace),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code);
        }
    }
}

fn limits(all: bool) -> Limits {
    if all {
        Limits::ALL
    } else {
        Limits::COMPACT
    }
}

/// Opens the `--output` file: created or truncated, never through a symlink (a planted link in
/// /tmp must not redirect our write).
fn open_output(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::new(format!("residue: {} is a symbolic link; name the trace file itself", path.display()))
            } else {
                Error::io(format!("residue: cannot create the trace file {}", path.display()), e)
            }
        })
}

fn run(
    argv: &[OsString],
    output: Option<&Path>,
    json: Option<&Path>,
    depth: u32,
    all: bool,
    follow: bool,
) -> Result<i32> {
    let tee = output.map(open_output).transpose()?;
    let mut trace_end = tee
        .as_ref()
        .map(File::try_clone)
        .transpose()
        .map_err(|e| Error::io("residue: cannot duplicate the trace file", e))?;
    let session::Traced { state, children, info, mut problems, untracked } =
        session::trace(argv, depth, tee, "residue", follow)?;
    if let (Some(f), true) = (trace_end.as_mut(), state.error.is_none() && state.ledger.header_seen) {
        let mut tail = command_record(&info.argv);
        let mut buf = [0u8; MAX_SMALL_RECORD];
        let pid = info.pid.unwrap_or(0);
        let n = Encoder::default().process_end(&mut buf, 0, pid, info.code.unwrap_or(0), info.signal.unwrap_or(0));
        tail.extend_from_slice(&buf[..n]);
        if !children.is_empty() {
            // Children's streams are reported live but not saved: say so where the trace is read.
            let text = format!(
                "this trace does not hold the {} child process{} followed during the run (a saved trace holds the traced process and its exec'd images): run it again to see {}",
                children.len(),
                if children.len() == 1 { "" } else { "es" },
                if children.len() == 1 { "it" } else { "them" },
            );
            let mut rec = vec![0u8; text.len() + MAX_SMALL_RECORD];
            let m = Encoder::default().notice(&mut rec, 0, text.as_bytes());
            tail.extend_from_slice(&rec[..m]);
        }
        if let Err(e) = f.write_all(&tail) {
            problems.push(format!("appending the exit status to the trace file failed ({e})"));
        }
    }
    let status = info.status().unwrap_or(1);
    if let Some(sentence) = untracked {
        let r = report::build(&state.ledger, &info, problems);
        eprintln!("residue: {sentence}");
        write_json(&r, json);
        return Ok(status);
    }
    let mut sym = symbolize::Symbolizer::new();
    // Without --all the runtime's residue is summarized: its stacks' frames are not needed.
    let listed = report::Listed::with_all(all);
    // Without --all a launcher's helpers (pyenv's shim runs some 40) are counted, not listed:
    // one line of totals in the text, amounts per library in the JSON. Their stacks need no
    // more than deciding whose they are, which spares symbolizing tens of thousands of the
    // helpers' allocations at every run.
    let launcher = launcher_children(&state, &children);
    let listed_child = |i: usize| {
        if !all && launcher[i] {
            report::Listed::Counted
        } else {
            listed
        }
    };
    // Every process's addresses at once, each module file parsed once for all of them (a
    // multiprocessing pool is dozens of processes that loaded the same libraries).
    let processes: Vec<_> = std::iter::once((&state.ledger, None, listed))
        .chain(
            children.iter().enumerate().map(|(i, c)| (&c.ledger, forked_from(c, &state, &children), listed_child(i))),
        )
        .collect();
    report::prepare(&mut sym, &processes);
    drop(processes);
    let mut r = report::build_with(&state.ledger, &info, problems, &mut sym, None, listed);
    let pythonmalloc = std::env::var_os("PYTHONMALLOC");
    r.run_environment(pythonmalloc.as_deref());
    let child_reports = children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let inherited = forked_from(c, &state, &children);
            let mut cr = report::build_child(
                &c.ledger,
                c.error.iter().map(ToString::to_string).collect(),
                &mut sym,
                inherited,
                listed_child(i),
            );
            cr.run_environment(pythonmalloc.as_deref());
            if all {
                cr.show_all();
            }
            (cr, c.ledger.images.first().map_or(0, |i| i.time_ns))
        })
        .collect();
    r.attach_children(child_reports, state.ledger.final_image().map_or(0, |i| i.time_ns));
    r.collector_peak_rss_kib = peak_rss_kib();
    if all {
        r.show_all();
    }
    out(&mut std::io::stderr(), &report::text::render(&r, limits(all)));
    write_json(&r, json);
    // The process exits next (main): freeing the report, the symbol tables and the ledger one
    // allocation at a time would only delay the exit, by milliseconds after every run.
    std::mem::forget(r);
    std::mem::forget(sym);
    std::mem::forget(state);
    std::mem::forget(children);
    Ok(status)
}

/// The `Command` record for a saved trace: the command as the user gave it, which the trace's
/// first image may not show (a launcher script runs as `env bash ...`). Nothing for a command
/// too long for a record.
fn command_record(argv: &[String]) -> Vec<u8> {
    let args: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
    let len: usize = args.iter().map(|a| a.len() + MAX_SMALL_RECORD).sum();
    if len >= 1 << 20 {
        return Vec::new();
    }
    let mut rec = vec![0u8; len + MAX_SMALL_RECORD];
    let n = Encoder::default().command(&mut rec, 0, &args);
    rec.truncate(n);
    rec
}

/// Which of `children` a launcher started: as `Report::attach_children` decides, a process
/// (its streams by pid, the earliest start counting) that began before the root's final image.
fn launcher_children(root: &stream::StreamState, children: &[stream::StreamState]) -> Vec<bool> {
    let start = |c: &stream::StreamState| c.ledger.images.first().map_or(0, |i| i.time_ns);
    let pid = |c: &stream::StreamState| c.ledger.images.first().map(|i| i.pid).filter(|&p| p != 0);
    let final_start = root.ledger.final_image().map_or(0, |i| i.time_ns);
    children
        .iter()
        .map(|c| {
            let first = match pid(c) {
                Some(p) => children.iter().filter(|o| pid(o) == Some(p)).map(start).min().unwrap_or(start(c)),
                None => start(c),
            };
            first < final_start
        })
        .collect()
}

/// For a child that was forked and never exec'd (its memory is a copy of its parent's): the
/// image that forked it, found among every stream, and when.
fn forked_from<'a>(
    child: &stream::StreamState,
    root: &'a stream::StreamState,
    children: &'a [stream::StreamState],
) -> Option<report::Inherited<'a>> {
    let images = &child.ledger.images;
    let first = images.first()?;
    if images.len() != 1 || first.exec {
        return None;
    }
    std::iter::once(root).chain(children).flat_map(|s| s.ledger.images.iter()).find_map(|img| {
        let seq = img.fork_seqs.iter().find(|(c, _)| *c == first.pid)?.1;
        // Still the program that forked it (not an image it exec'd into).
        if img.exe != first.exe {
            return None;
        }
        Some(report::Inherited { parent: img, parent_pid: img.pid, fork_seq: seq })
    })
}

/// This process's peak resident memory (Linux reports ru_maxrss in KiB).
fn peak_rss_kib() -> Option<u64> {
    // SAFETY: getrusage fills a zeroed rusage for this process.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0).then_some(ru.ru_maxrss as u64)
}

/// After the target ran, a JSON file we cannot write is said, but the exit status stays the
/// target's (scripts rely on it more than on the report file).
fn write_json(r: &report::Report, json: Option<&Path>) {
    if let Some(j) = json {
        if let Err(e) = report::json::write(r, j) {
            eprintln!("{e}");
        }
    }
}

/// Decodes a saved trace into a report. A truncated trace still gives the report of what was
/// decoded (marked incomplete, with the decoder's sentence among its problems); anything else
/// the decoder rejects is an error.
fn load_trace(trace: &Path, all: bool) -> Result<(report::Report, Option<String>)> {
    let state =
        stream::read_file(trace).map_err(|e| Error::io(format!("residue: cannot read {}", trace.display()), e))?;
    let mut problems = Vec::new();
    let mut truncated = None;
    if let Some(e) = &state.error {
        if e.kind != DecodeErrorKind::Truncated || !state.ledger.header_seen {
            return Err(Error::new(format!("residue: {}: {e}", trace.display())));
        }
        problems.push(e.to_string());
        truncated = Some(format!("residue: {}: {e}", trace.display()));
    }
    if !state.ledger.header_seen {
        return Err(Error::new(format!(
            "residue: {} is empty, so it is not a residue trace (the target may not have been tracked at all)",
            trace.display()
        )));
    }
    let info = match state.ledger.process_end {
        Some((pid, code, signal)) => ProcessInfo {
            pid: Some(pid),
            argv: state.ledger.command.clone().unwrap_or_default(),
            code: (signal == 0).then_some(code),
            signal: (signal != 0).then_some(signal),
        },
        None => ProcessInfo::default(),
    };
    // As `residue run` does: without --all the runtime's residue is summarized, and its stacks'
    // frames (libpython's and the C library's debug information) are never read.
    let listed = report::Listed::with_all(all);
    let r = report::build_with(&state.ledger, &info, problems, &mut symbolize::Symbolizer::new(), None, listed);
    Ok((r, truncated))
}

/// `residue report`: the report on stdout. A truncated trace still gets the report of what
/// was decoded (marked incomplete), then the decoder's sentence on stderr and exit status 1,
/// so scripts notice the damage.
fn report_file(trace: &Path, json: Option<&Path>, all: bool) -> Result<i32> {
    let (mut r, truncated) = load_trace(trace, all)?;
    if all {
        r.show_all();
    }
    out(&mut std::io::stdout(), &report::text::render(&r, limits(all)));
    if let Some(j) = json {
        report::json::write(&r, j)?;
    }
    match truncated {
        Some(sentence) => {
            eprintln!("{sentence}");
            Ok(1)
        }
        None => Ok(0),
    }
}

/// Writes the report; a closed pipe (`residue report t | head`) is not an error worth a panic.
fn out(w: &mut dyn Write, text: &str) {
    let _ = w.write_all(text.as_bytes()).and_then(|()| w.flush());
}

fn dump(trace: &Path) -> Result<i32> {
    let data = std::fs::read(trace).map_err(|e| Error::io(format!("residue: cannot read {}", trace.display()), e))?;
    let mut d = residue_protocol::Decoder::new();
    let mut pos = 0;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let offset = d.offset();
        match d.next(&data[pos..]) {
            Ok(Some((r, n))) => {
                pos += n;
                if writeln!(out, "{offset}: {r:?}").is_err() {
                    return Ok(0);
                }
            }
            Ok(None) if pos == data.len() => return Ok(0),
            Ok(None) => {
                return Err(Error::new(format!("residue: {}", residue_protocol::DecodeError::truncated(offset))))
            }
            Err(e) => return Err(Error::new(format!("residue: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use residue_protocol::{header, Api, Kind, HEADER_LEN};

    fn trace(with_exit: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 14];
        buf[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let mut pos = HEADER_LEN;
        let argv: [&[u8]; 1] = [b"host"];
        pos = e.image_start(&mut buf, pos, 77, 1, true, false, 0, b"/opt/host", &argv);
        pos = e.batch(&mut buf, pos, 77);
        pos = e.acquire(&mut buf, pos, 1, Kind::HEAP, Api::STRDUP, 0x1000, 6, 5);
        pos = e.acquire(&mut buf, pos, 2, Kind::HEAP, Api::MALLOC, 0x2000, 100, 5);
        pos = e.release(&mut buf, pos, 3, Kind::HEAP, Api::FREE, 0x2000);
        if with_exit {
            pos = e.image_exit(&mut buf, pos, 4);
            pos = e.process_end(&mut buf, pos, 77, 0, 6);
        }
        buf.truncate(pos);
        buf
    }

    fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("residue-main-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn complete_trace_reports_exit_signal_and_leak() {
        let p = write_temp("complete", &trace(true));
        let (r, truncated) = load_trace(&p, true).unwrap();
        assert!(truncated.is_none());
        assert!(r.process.complete);
        assert_eq!((r.process.pid, r.process.exit_status, r.process.signal), (Some(77), Some(134), Some(6)));
        assert_eq!(r.process.command, "host");
        assert_eq!((r.totals.count, r.totals.bytes), (1, 6));
        // Stack 5 never arrived: frames unknown, said so.
        assert!(r.libraries.is_empty(), "only absolute module paths are libraries");
        assert_eq!(r.unattributed[0].module, "[stack not in trace]");
        assert!(r.unattributed[0].stacks[0].stack_missing);
        assert!(r.problems.iter().any(|p| p.contains("never arrived")), "{:?}", r.problems);
        let text = report::text::render(&r, Limits::COMPACT);
        assert!(text.contains("trace complete") && text.contains("killed by signal 6"), "{text}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn truncated_trace_gives_partial_report_and_the_sentence() {
        let t = trace(true);
        // Cut inside the release record, before ImageExit (3 bytes) and ProcessEnd (5 bytes).
        let p = write_temp("truncated", &t[..t.len() - 9]);
        let (r, truncated) = load_trace(&p, true).unwrap();
        assert!(truncated.unwrap().contains("truncated"));
        assert!(!r.process.complete);
        assert_eq!(r.totals.count, 2, "the release was cut off");
        assert!(r.problems.iter().any(|s| s.contains("truncated")), "{:?}", r.problems);
        let text = report::text::render(&r, Limits::COMPACT);
        assert!(text.contains("INCOMPLETE") && text.contains("truncated at byte"), "{text}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn corrupt_and_foreign_files_are_one_sentence_errors() {
        let mut t = trace(true);
        t[HEADER_LEN] = 0; // tag 0 is never written
        let p = write_temp("corrupt", &t);
        let e = load_trace(&p, true).unwrap_err();
        assert!(e.to_string().contains("is corrupt at byte"), "{e}");
        assert_eq!(e.exit_code, 2);
        let p2 = write_temp("foreign", b"\x7fELF not a trace at all");
        let e = load_trace(&p2, true).unwrap_err();
        assert!(e.to_string().contains("not a residue trace"), "{e}");
        let p3 = write_temp("empty", b"");
        assert!(load_trace(&p3, true).unwrap_err().to_string().contains("is empty"));
        // Cut inside the header: nothing to report, an error.
        let p4 = write_temp("cut-header", &header()[..6]);
        let e = load_trace(&p4, true).unwrap_err();
        assert!(e.to_string().contains("truncated") && e.exit_code == 2, "{e}");
        std::fs::remove_file(p4).unwrap();
        let e = load_trace(Path::new("/nonexistent/trace.residue"), true).unwrap_err();
        assert!(e.to_string().starts_with("residue: cannot read /nonexistent/trace.residue"), "{e}");
        for p in [p, p2, p3] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
