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
