//! The `residue` binary end to end, without the real interposer: a stand-in preload library
//! (empty) and targets that write a stream encoded here with the protocol's own Encoder to the
//! descriptor residue hands them. This checks the launch contract (pipe, RESIDUE_FD,
//! RESIDUE_DEPTH, LD_PRELOAD order), live decoding, the saved trace, JSON, and exit statuses.
//! The real interposer's end-to-end tests live in /tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use residue_protocol::{header, Api, Encoder, Kind, Segment, HEADER_LEN};

const BIN: &str = env!("CARGO_BIN_EXE_residue");

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("residue-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An empty shared library standing in for libresidue.so.
fn fake_preload(dir: &Path) -> PathBuf {
    let c = dir.join("empty.c");
    std::fs::write(&c, "int residue_fake;\n").unwrap();
    let so = dir.join("libresidue.so");
    assert!(Command::new("gcc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status().unwrap().success());
    so
}

/// A trace of one image that leaks two strdup'd blocks in /bin/sh's address space.
fn stream(exit: bool) -> Vec<u8> {
    let mut b = vec![0u8; 1 << 14];
    b[..HEADER_LEN].copy_from_slice(&header());
    let mut e = Encoder::default();
    let mut p = HEADER_LEN;
    let argv: [&[u8]; 2] = [b"fake", b"target"];
    p = e.image_start(&mut b, p, 4242, 1, true, false, 0, b"/opt/fake", &argv);
    let seg = [Segment { vaddr: 0, memsz: 0x1000, offset: 0, flags: 5 }];
    p = e.module(&mut b, p, 1, 0x5000_0000, b"/opt/libfake.so", &[], &seg);
    p = e.batch(&mut b, p, 4242);
    p = e.acquire(&mut b, p, 1, Kind::HEAP, Api::STRDUP, 0x9000, 10, 1);
    p = e.acquire(&mut b, p, 2, Kind::HEAP, Api::STRDUP, 0x9100, 20, 1);
    p = e.acquire(&mut b, p, 3, Kind::HEAP, Api::MALLOC, 0x9200, 30, 1);
    p = e.release(&mut b, p, 4, Kind::HEAP, Api::FREE, 0x9200);
    p = e.stack(&mut b, p, 1, &[0x5000_0010]);
    p = e.notice(&mut b, p, b"hello from the fake interposer");
    if exit {
        p = e.image_exit(&mut b, p, 5);
    }
    b.truncate(p);
    b
}

/// Runs `residue run` with the fake preload; the target copies `trace` to RESIDUE_FD, records
/// its environment, and exits with `status`.
fn run_fake(dir: &Path, trace: &[u8], status: i32, extra: &[&str]) -> Output {
    let preload = fake_preload(dir);
    let t = dir.join("stream.bin");
    std::fs::write(&t, trace).unwrap();
    let script = format!(
        "env > {env}; cat {t} >&\"$RESIDUE_FD\"; exit {status}",
        env = dir.join("env.txt").display(),
        t = t.display()
    );
    Command::new(BIN)
        .arg("run")
        .args(extra)
        .args(["--", "bash", "-c", &script])
        .env("RESIDUE_PRELOAD", &preload)
        .env("LD_PRELOAD", "/nonexistent/theirs.so")
        .env("RESIDUE_PID", "1")
        .output()
        .unwrap()
}

#[test]
fn run_decodes_live_saves_trace_and_passes_status() {
    let dir = tmpdir("run");
    let out_trace = dir.join("t.residue");
    let json = dir.join("r.json");
    let o = run_fake(
        &dir,
        &stream(true),
        3,
        &["--output", out_trace.to_str().unwrap(), "--json", json.to_str().unwrap(), "--depth", "17"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("trace complete"), "{err}");
    assert!(err.contains("2 heap blocks (30 bytes)"), "{err}");
    assert!(err.contains("note: hello from the fake interposer"), "{err}");
    assert!(o.stdout.is_empty(), "the target's stdout is untouched");

    // The environment contract.
    let env = std::fs::read_to_string(dir.join("env.txt")).unwrap();
    assert!(env.contains("RESIDUE_DEPTH=17\n"), "{env}");
    let preload = format!("LD_PRELOAD={}:/nonexistent/theirs.so\n", dir.join("libresidue.so").display());
    assert!(env.contains(&preload), "{env}");
    assert!(env.lines().any(|l| l.starts_with("RESIDUE_FD=")));
    assert!(!env.lines().any(|l| l.starts_with("RESIDUE_PID=")), "an outer RESIDUE_PID must not leak in");

    // JSON fields.
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["schema"], "residue-report/1");
    assert_eq!(j["process"]["exit_status"], 3);
    assert_eq!(j["process"]["complete"], true);
    let lib = &j["libraries"][0];
    assert_eq!(lib["module"], "/opt/libfake.so");
    assert_eq!(lib["unreleased"]["heap"]["count"], 2);
    assert_eq!(lib["unreleased"]["heap"]["bytes"], 30);
    assert_eq!(lib["stacks"][0]["api"], "strdup");
    assert_eq!(lib["stacks"][0]["kind"], "heap");
    assert_eq!(lib["stacks"][0]["frames"][0]["module"], "/opt/libfake.so");
    assert_eq!(j["notices"][0], "hello from the fake interposer");

    // The saved trace reports the same, with the exit status appended.
    let r = Command::new(BIN).arg("report").arg(&out_trace).output().unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.status.code(), Some(0));
    assert!(text.contains("exited with status 3; trace complete"), "{text}");
    assert!(text.contains("2 heap blocks (30 bytes)"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn incomplete_stream_is_marked() {
    let dir = tmpdir("incomplete");
    let o = run_fake(&dir, &stream(false), 0, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0));
    assert!(err.contains("trace INCOMPLETE"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_stream_says_untracked_and_never_no_leaks() {
    let dir = tmpdir("empty");
    let o = run_fake(&dir, &[], 4, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4));
    assert!(err.contains("could not be tracked"), "{err}");
    assert!(!err.contains("no unreleased"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("residue:")).count(), 1, "one sentence: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn killed_target_exits_128_plus_signal() {
    let dir = tmpdir("killed");
    let preload = fake_preload(&dir);
    let o = Command::new(BIN)
        .args(["run", "--", "bash", "-c", "kill -TERM $$"])
        .env("RESIDUE_PRELOAD", &preload)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_preload_is_one_sentence_exit_2() {
    let o = Command::new(BIN)
        .args(["run", "--", "true"])
        .env("RESIDUE_PRELOAD", "/nonexistent/libresidue.so")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("/nonexistent/libresidue.so") && err.lines().count() == 1, "{err}");
}

#[test]
fn output_through_a_symlink_is_refused() {
    let dir = tmpdir("symlink");
    let preload = fake_preload(&dir);
    let victim = dir.join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let link = dir.join("link.residue");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let o = Command::new(BIN)
        .args(["run", "--output"])
        .arg(&link)
        .args(["--", "true"])
        .env("RESIDUE_PRELOAD", &preload)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_of_garbage_is_exit_2_without_panic() {
    let dir = tmpdir("garbage");
    let f = dir.join("garbage");
    std::fs::write(&f, b"this is not a trace").unwrap();
    let o = Command::new(BIN).arg("report").arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("not a residue trace") && !err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
