//! Targets LD_PRELOAD cannot reach (issue 7): a static executable, and a set-user-ID program
//! running with another effective user (the loader's secure mode ignores the preload). residue
//! says it could not track them, passes their exit status through, and never presents an empty
//! report as "no leaks".

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use residue_tests::{fixture, read_report, run_captured, tools, TempDir};

fn assert_untracked(target: &std::path::Path, tmp: &TempDir, expect_reason: &str) {
    let json = tmp.join("report.json");
    let mut cmd = Command::new(&tools().residue);
    cmd.arg("run").arg("--json").arg(&json).arg("--").arg(target).args(["exit", "9"]);
    let f = run_captured(cmd, "residue run untrackable");
    let ctx = format!("exit {}\nstderr:\n{}", f.code(), f.stderr);
    assert_eq!(f.code(), 9, "the target's own status\n{ctx}");
    assert!(f.stderr.contains("could not be tracked"), "{ctx}");
    assert!(f.stderr.contains(expect_reason), "the reason is named\n{ctx}");
    assert!(!f.stderr.contains("no unreleased"), "an untracked run is not a clean run\n{ctx}");
    let report = read_report(&json, &f, "residue run untrackable");
    assert_eq!(report.json["tracked"].as_bool(), Some(false), "{:#}", report.json);
    assert!(report.libraries().is_empty(), "{:#}", report.json);
}

#[test]
fn a_static_executable_is_reported_as_untracked() {
    let tmp = TempDir::new("static");
    assert_untracked(&fixture("host_static"), &tmp, "statically linked");
}

#[test]
fn a_setuid_program_of_another_user_is_reported_as_untracked() {
    // Under target/ (not /tmp, which may be mounted nosuid), owned by nobody with the set-user-ID
    // bit: run by anyone else, the kernel sets AT_SECURE and ld.so drops our preload.
    let dir = std::path::Path::new(residue_fixtures::DIR).join("setuid-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    let copy = dir.join("host_setuid");
    std::fs::copy(fixture("host_exit_variants"), &copy).expect("copying the fixture");
    // chown to another user needs root, which is how the tests run here and in CI.
    let status = Command::new("chown").arg("nobody").arg(&copy).status().expect("running chown");
    if !status.success() || !nix_is_root() {
        eprintln!("skipping: needs root to make a set-user-ID file of another user");
        return;
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
    let tmp = TempDir::new("setuid");
    assert_untracked(&copy, &tmp, "set-user-ID");
    let _ = std::fs::remove_dir_all(&dir);
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
