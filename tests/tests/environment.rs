//! The environment residue gives its target (ARCHITECTURE.md, "Environment contract"): the
//! interposer first in LD_PRELOAD, then whatever the user had.

use residue_tests::{fixture, run, tools};

#[test]
fn user_ld_preload_is_kept_after_the_interposer() {
    let user = fixture("libcountevents.so");
    let o = run(["/usr/bin/env"]).env("LD_PRELOAD", &user).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    let preload = o
        .finished
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("LD_PRELOAD="))
        .unwrap_or_else(|| panic!("no LD_PRELOAD in the target's environment\n{ctx}"));
    let parts: Vec<&str> = preload.split([':', ' ']).filter(|p| !p.is_empty()).collect();
    let ours = tools().preload.canonicalize().expect("libresidue.so");
    assert_eq!(
        parts.first().and_then(|p| std::path::Path::new(p).canonicalize().ok()).as_deref(),
        Some(ours.as_path()),
        "libresidue.so comes first: {preload}\n{ctx}"
    );
    assert_eq!(parts.get(1).copied(), user.to_str(), "the user's preload follows: {preload}\n{ctx}");
}

#[test]
fn children_started_without_the_exec_hooks_do_not_inherit_the_stream() {
    // posix_spawn execs through glibc's internal __execve: the interposer's stream descriptor
    // is close-on-exec around it, so the shell it starts must not have it open. (Followed, the
    // shell would open a stream of its own and name it in RESIDUE_FD: --no-follow keeps this
    // about inheritance.)
    let o = run([fixture("host_spawn")]).option("--no-follow").go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "clean\n", "the spawned shell saw residue's stream descriptor\n{ctx}");
}

#[test]
fn interposer_without_a_collector_is_passive() {
    // libresidue.so preloaded by hand, no RESIDUE_FD: the program runs as it would without it.
    let mut cmd = std::process::Command::new(fixture("host_fork"));
    cmd.arg("exit").env("LD_PRELOAD", &tools().preload).env_remove("RESIDUE_FD").env_remove("RESIDUE_PID");
    let f = residue_tests::run_captured(cmd, "host_fork exit with libresidue.so preloaded alone");
    assert_eq!(f.code(), 0, "stderr:\n{}", f.stderr);
    assert!(f.stdout.starts_with("host_fork: child ") && f.stdout.ends_with(" done\n"), "stdout: {:?}", f.stdout);
}

#[test]
fn a_descriptor_handed_down_on_the_streams_number_reaches_the_program_untouched() {
    // The user's shell passes a file on descriptor 1021, the number residue prefers for its
    // stream: the program must read the user's file there, and the trace go on elsewhere.
    let tmp = residue_tests::TempDir::new("inherited-fd");
    let file = tmp.join("handed-down");
    std::fs::write(&file, "the user's data\n").unwrap();
    let input = std::fs::File::open(&file).unwrap();
    let json = tmp.join("report.json");
    let b = run(["bash".as_ref(), "-c".as_ref(), "cat <&1021".as_ref()] as [&std::ffi::OsStr; 3]);
    let mut cmd = b.command(&json);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&input);
    // SAFETY: dup2 in the forked child before exec, onto a number it then owns (no close-on-exec).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(fd, 1021) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let finished = residue_tests::run_captured(cmd, "residue run -- bash -c 'cat <&1021'");
    let report = residue_tests::read_report(&json, &finished, "inherited descriptor 1021");
    assert_eq!(finished.stdout, "the user's data\n", "{}", finished.stderr);
    assert_eq!(finished.code(), 0, "{}", finished.stderr);
    assert_eq!(report.complete(), Some(true), "{}", finished.stderr);
}

#[test]
fn an_unusable_tmpdir_does_not_keep_the_program_from_running() {
    // The socket children connect to lives in TMPDIR: where that cannot hold it, residue puts it
    // in /tmp, and the forked child is still followed.
    let o = run([fixture("host_fork").as_os_str(), "exit".as_ref()]).env("TMPDIR", "/nonexistent/residue-test").go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.json["children"].as_array().map(Vec::len), Some(1), "{ctx}");
}

#[test]
fn standard_descriptors_closed_for_residue_stay_closed_for_the_program() {
    // `residue run -- cmd <&-`: Rust's runtime opens /dev/null on a closed standard descriptor
    // before residue's main; the program must still find it closed.
    let tmp = residue_tests::TempDir::new("closed-stdin");
    let json = tmp.join("report.json");
    let script = "if [ -e /proc/self/fd/0 ]; then echo open; else echo closed; fi";
    let b = run(["sh".as_ref(), "-c".as_ref(), script.as_ref()] as [&std::ffi::OsStr; 3]);
    let mut cmd = b.command(&json);
    // SAFETY: close in the forked child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::close(0);
            Ok(())
        });
    }
    let finished = residue_tests::run_captured(cmd, "residue run -- sh -c ... <&-");
    assert_eq!(finished.stdout, "closed\n", "{}", finished.stderr);
    assert_eq!(finished.code(), 0, "{}", finished.stderr);
}

/// Starts `residue run -- sh -c SCRIPT`, waits for the script's first line, sends residue
/// (not the program) `sig` with kill, and returns the rest of the output and residue's status.
fn signal_residue_after_first_line(script: &str, sig: i32) -> (String, Option<i32>, String) {
    use std::io::{BufRead, Read};
    let tmp = residue_tests::TempDir::new("signal-residue");
    let json = tmp.join("report.json");
    let mut cmd = run(["sh".as_ref(), "-c".as_ref(), script.as_ref()] as [&std::ffi::OsStr; 3]).command(&json);
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("residue starts");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "ready\n");
    residue_tests::kill(child.id() as i32, sig);
    // The program ends on the signal, or never does if residue kept it: then fail, not hang.
    let deadline = std::time::Instant::now() + residue_tests::DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("signal {sig} sent to residue never ended the program");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (rest, status.code(), err)
}

#[test]
fn signals_sent_to_residue_reach_the_program() {
    // `timeout -s INT`, a supervisor's SIGUSR1: sent to residue's pid, meant for the program.
    // (Ctrl-C from a terminal reaches the program through its process group, and is not sent
    // twice.)
    for (sig, name) in [(libc::SIGINT, "INT"), (libc::SIGUSR1, "USR1")] {
        // The loop ends by itself after a few seconds, so that a residue that keeps the signal
        // fails the test instead of leaving the program running.
        let script = format!(
            "trap 'echo got-{name}; exit 3' {name}; echo ready; i=0; \
             while [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done; echo not-{name}; exit 9"
        );
        let (rest, code, err) = signal_residue_after_first_line(&script, sig);
        assert_eq!(rest, format!("got-{name}\n"), "{err}");
        assert_eq!(code, Some(3), "residue exits with the program's status\n{err}");
    }
}
