//! The collector (`residue`) killed mid-run: the target must run on untracked and finish with
//! its own exit status (no SIGPIPE death, no hang on a pipe nobody reads).
//!
//! The target is residue's child; once residue dies it is reparented. This test makes its own
//! process a child subreaper (prctl), so the orphan is reparented to it and its real exit
//! status can be collected with waitpid. Its tests are alone in this file because that
//! attribute is process-wide (each reaps only the orphan it waits for).

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use residue_tests::{fixture, kill, run, TempDir, DEADLINE};

#[test]
fn target_finishes_with_its_own_status_after_the_collector_is_killed() {
    collector_killed(false);
}

/// The collector stopped first (SIGSTOP): the target fills the socket and waits in its write
/// for the collector to read. Killed then, the collector never will: the target must notice
/// (the write fails) and run on.
#[test]
fn target_waiting_for_a_stopped_collector_finishes_once_it_is_killed() {
    collector_killed(true);
}

fn collector_killed(stop_first: bool) {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");

    let tmp = TempDir::new("collector-killed");
    let marker = tmp.join("finished");
    let mut cmd =
        run([fixture("host_victim").as_os_str(), marker.as_os_str(), "7".as_ref()]).command(&tmp.join("report.json"));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut residue = cmd.spawn().expect("spawning residue");
    let mut stdin = residue.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(residue.stdout.take().expect("piped stdout"));

    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading the target's stdout");
    let pid: i32 = match line.trim().strip_prefix("pid ").and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            kill(residue.id() as i32, libc::SIGKILL);
            let _ = residue.wait();
            panic!("expected `pid <pid>` from host_victim, got {line:?}");
        }
    };

    if stop_first {
        kill(residue.id() as i32, libc::SIGSTOP);
        // The target holds residue's stdin and stdout pipes; let it go on now, and fill the
        // socket to the stopped collector.
        stdin.write_all(b"go\n").expect("writing to the target's stdin");
        drop(stdin);
        thread::sleep(Duration::from_millis(300));
        kill(residue.id() as i32, libc::SIGKILL);
        let st = residue.wait().expect("waiting for residue");
        assert!(!st.success(), "residue was killed");
    } else {
        kill(residue.id() as i32, libc::SIGKILL);
        let st = residue.wait().expect("waiting for residue");
        assert!(!st.success(), "residue was killed");
        // The target holds residue's stdin and stdout pipes; let it go on now.
        stdin.write_all(b"go\n").expect("writing to the target's stdin");
        drop(stdin);
    }

    // Reap the orphan (now our child, as subreaper), with a deadline against a hang.
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waitpid on a pid we are the (sub)reaper of, with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(
            r == 0,
            "waitpid({pid}) failed: the target was not reparented to the test ({})",
            std::io::Error::last_os_error()
        );
        if start.elapsed() > DEADLINE {
            kill(pid, libc::SIGKILL);
            panic!("the target hung after its collector was killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);

    assert!(
        libc::WIFEXITED(status),
        "the target must exit normally, not die (signal {})",
        if libc::WIFSIGNALED(status) { libc::WTERMSIG(status) } else { 0 }
    );
    assert_eq!(libc::WEXITSTATUS(status), 7, "the target's own exit status");
    assert_eq!(std::fs::read_to_string(&marker).ok().as_deref(), Some("finished\n"), "the target ran to its end");
}
