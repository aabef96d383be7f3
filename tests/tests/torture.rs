//! Threads and signals (issue 7): key destructors that allocate after the interposer's own has
//! run, thousands of threads that come and go, a signal handler allocating on top of hooks it
//! interrupted, 32 threads freeing each other's blocks, threads joining a main thread that was
//! alone (the sequence numbers' handover), threads that ask pthread_getattr_np for their own
//! stack before anything else, a process entering a new user namespace, a program that stays
//! single-threaded. Each must finish (no hang, no crash) with exact totals, all attributed to
//! the fixture's leaking function.

use residue_tests::{fixture, fixtures::torture, run, Amount};

fn mode(name: &str) {
    let (_, count, bytes) = torture::MODES.iter().copied().find(|m| m.0 == name).expect("a known mode");
    let o = run([fixture("host_torture").as_os_str(), name.as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.heap("host_torture"), Amount::new(count, count * bytes), "{ctx}");
    assert_eq!(o.report.libraries().len(), 1, "nothing but the fixture's own leaks\n{ctx}");
    for s in o.report.stacks("host_torture") {
        assert_eq!(s.owner_function("host_torture"), Some(torture::FUNCTION), "{s:?}\n{ctx}");
    }
}

#[test]
fn key_destructors_allocating_after_ours_are_recorded() {
    mode("keydtor");
}

#[test]
fn threads_that_come_and_go() {
    mode("churn");
}

#[test]
fn signal_handler_allocating_over_interrupted_hooks() {
    mode("signal");
}

#[test]
fn thirty_two_threads_freeing_each_others_blocks() {
    mode("stress32");
}

/// A thread created with PTHREAD_STACK_MIN (16 KiB): the interposer's static TLS comes out of
/// every thread's stack, so it must stay small (its per-thread caches live on the heap), or
/// pthread_create fails with EINVAL (the host's exit status 3 here); and its hooks' stack walks
/// must not take the unwinder's slow paths there (open's overflowed it).
#[test]
fn a_thread_with_the_smallest_stack_is_still_created() {
    mode("smallstack");
}

/// Each thread asks pthread_getattr_np for its own stack before it allocates anything, as
/// Rust's runtime does at startup: glibc allocates inside while it holds the thread's lock, and
/// recording that allocation must not make the unwinder ask pthread_getattr_np again (every
/// Rust program hung).
#[test]
fn threads_asking_for_their_own_stack_first_do_not_hang() {
    mode("getattr");
}

/// unshare(CLONE_NEWUSER) is only allowed to a single-threaded process. A program that has not
/// started a thread has no writer thread either, so the call works as it does plain; the
/// events before and after it (a thread started afterwards included) all arrive. Where the
/// kernel refuses unprivileged user namespaces, the fixture fails alone too, and there is
/// nothing to compare.
#[test]
fn entering_a_new_user_namespace_works_as_without_residue() {
    unshare_mode("unshare");
}

/// The same after a thread has come and gone: the writer thread, started with it, is then the
/// process's only other thread, and the call failed with EINVAL. The writer steps aside for it
/// and starts again with the next thread; every event arrives.
#[test]
fn entering_a_new_user_namespace_after_threads_ended_works_as_without_residue() {
    unshare_mode("unshare-after");
}

fn unshare_mode(name: &str) {
    let plain = std::process::Command::new(fixture("host_torture")).arg(name).output().expect("host_torture runs");
    if plain.status.code() == Some(4) {
        eprintln!("skipped: this kernel refuses unshare(CLONE_NEWUSER) without residue too");
        return;
    }
    assert_eq!(plain.status.code(), Some(0), "{plain:?}");
    mode(name);
}

/// A program that never starts a thread stays single-threaded under residue (the kernel's
/// count in /proc/self/stat is 1): a thread of ours would take glibc off its single-threaded
/// paths, and makes CPython 3.12+ warn at every os.fork() (python.rs checks CPython itself).
#[test]
fn a_program_without_threads_stays_single_threaded() {
    mode("alone");
}

/// While one thread records, it numbers events with an unlocked add; when three more join it
/// under load, everyone switches to the shared counter (interposer/src/seq.rs). Exact totals
/// through the collector, and in the raw stream itself every acquisition and release has a
/// number of its own: a lost update in the switch would show as a repeated one.
#[test]
fn sequence_numbers_stay_unique_when_threads_join_the_main_one() {
    mode("handover");

    let tmp = residue_tests::TempDir::new("handover-stream");
    let stream = tmp.join("stream");
    // The host writes the stream straight into a file (the interposer's environment contract:
    // RESIDUE_FD; a root image with no socket to wait on). `sh` opens the file and execs it;
    // sh itself finds no fd 9 at start and stays passive.
    let status = std::process::Command::new("sh")
        .args(["-c", "exec \"$0\" handover 9>\"$1\""])
        .arg(fixture("host_torture"))
        .arg(&stream)
        .env("LD_PRELOAD", &residue_tests::tools().preload)
        .env("RESIDUE_FD", "9")
        .env_remove("RESIDUE_PID")
        .env_remove("RESIDUE_SOCKET")
        .status()
        .expect("running sh");
    assert!(status.success(), "{status}");
    let bytes = std::fs::read(&stream).expect("the stream file");
    let mut d = residue_protocol::Decoder::new();
    let (mut pos, mut seqs, mut exited) = (0, Vec::new(), false);
    while pos < bytes.len() {
        let (record, n) = d.next(&bytes[pos..]).expect("a valid stream").expect("whole records");
        match record {
            residue_protocol::Record::Acquire { seq, .. } | residue_protocol::Record::Release { seq, .. } => {
                seqs.push(seq)
            }
            residue_protocol::Record::ImageExit { .. } => exited = true,
            _ => {}
        }
        pos += n;
    }
    assert!(exited, "the stream ends with the image's exit");
    // 800,000 malloc/free pairs and 4 leaks at least (plus the C library's own).
    assert!(seqs.len() >= 2 * 800_000 + 4, "{} events", seqs.len());
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "{} sequence numbers were taken twice", n - seqs.len());
}

/// exit() from a signal handler that interrupted an allocation hook (a common way for C programs
/// to handle SIGTERM): the exit flush must not wait for what the interrupted code holds. Run with
/// every event under its slot's lock (RESIDUE_LOCKED_SLOTS=1), where the interrupted code most
/// often holds one, and many times over, since the signal lands somewhere different each time.
/// The watchdog only catches a hang; it asserts nothing about speed.
#[test]
fn exit_from_a_signal_handler_inside_a_hook_does_not_hang() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    for run in 0..30 {
        let mut child = Command::new(&residue_tests::tools().residue)
            .env("RESIDUE_LOCKED_SLOTS", "1")
            .arg("run")
            .arg("--")
            .arg(fixture("host_torture"))
            .arg("exitsig")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting residue");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for residue") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("run {run}: residue run host_torture exitsig hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(7), "run {run}: the handler's exit status");
    }
}
