//! `residue report` on saved traces: a good one reports the same as the live run; a truncated
//! one, a corrupt one, and files that are no trace at all give a clear error, never a panic
//! (exit status 101) and never a report that pretends all is well (exit status 0).

use std::path::Path;
use std::process::Command;

use residue_protocol::{header, Api, Decoder, Encoder, Kind, Segment, MAX_SMALL_RECORD};
use residue_tests::{
    assert_leaky_exact, assert_leaky_report, fixture, fixtures, raw_trace, read_report, run, run_captured, tools,
    Finished, Report, TempDir,
};

fn report_cmd(trace: &Path, json: &Path) -> Finished {
    let mut cmd = Command::new(&tools().residue);
    cmd.arg("report").arg(trace).arg("--json").arg(json);
    run_captured(cmd, &format!("residue report {}", trace.display()))
}

/// Asserts `residue report` refuses `bytes` with an error that says `needle`.
fn assert_rejected(tmp: &TempDir, name: &str, bytes: &[u8], needle: &str) {
    let trace = tmp.join(name);
    std::fs::write(&trace, bytes).expect("writing the trace");
    let f = report_cmd(&trace, &tmp.join(&format!("{name}.json")));
    let ctx = format!("residue report {name}: exit {}\nstdout:\n{}\nstderr:\n{}", f.code(), f.stdout, f.stderr);
    assert_ne!(f.code(), 101, "residue panicked\n{ctx}");
    assert!(!f.stderr.contains("panicked"), "residue panicked\n{ctx}");
    assert_ne!(f.code(), 0, "a broken trace is an error\n{ctx}");
    assert!(f.stderr.to_lowercase().contains(needle), "the error should say `{needle}`\n{ctx}");
}

/// A LEB128 varint at `t[*pos..]`.
fn varint(t: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = t[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Record boundaries `(start, len)` of a resolved trace's records, uncompressed (what
/// `raw_trace` gives for a `RESIDUER` file: the magic, the protocol header, then records), as
/// ARCHITECTURE.md describes them: written here from the description, so that a change of
/// the format shows.
fn resolved_records(t: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&t[..8], b"RESIDUER", "a resolved trace");
    assert_eq!(t[8..8 + header().len()], header(), "the protocol's header follows the magic");
    let mut pos = 8 + header().len();
    let mut out = Vec::new();
    while pos < t.len() {
        let start = pos;
        let tag = t[pos];
        pos += 1;
        match tag {
            // TUPLE api size dstack
            0xc0 => {
                pos += 1;
                varint(t, &mut pos);
                varint(t, &mut pos);
            }
            // ALLOC, FREE: a tuple delta
            0xc1 | 0xc2 => {
                varint(t, &mut pos);
            }
            // HEAP flags [removed] [added]
            0xc3 => {
                let flags = t[pos];
                pos += 1;
                for bit in [4, 8] {
                    if flags & bit != 0 && varint(t, &mut pos) == 0 {
                        pos += 1;
                        varint(t, &mut pos);
                        varint(t, &mut pos);
                    }
                }
            }
            // OTHER flags kind id [seq size stack api live origin_seen]
            0xc4 => {
                let flags = t[pos];
                pos += 2;
                varint(t, &mut pos);
                if flags & 4 != 0 {
                    for _ in 0..3 {
                        varint(t, &mut pos);
                    }
                    pos += 3;
                }
            }
            // MERGE
            0xc5 => {}
            // STACK and the protocol's records: a length, then the payload.
            _ => {
                let len = varint(t, &mut pos) as usize;
                pos += len;
            }
        }
        assert!(pos <= t.len(), "record at {start} (tag {tag:#x}) runs past the end");
        out.push((start, pos - start));
    }
    out
}

/// Record boundaries (start offsets) of a valid trace, and the records' tags.
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut d = Decoder::new();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        match d.next(&bytes[pos..]) {
            Ok(Some((_, n))) => {
                out.push((pos, n));
                pos += n;
            }
            other => panic!("the valid trace does not decode at {pos}: {other:?}"),
        }
    }
    out
}

/// A small valid trace built with the protocol's encoder, independent of the interposer: one
/// image, libleaky.so mapped, two 100-byte blocks acquired from one stack, one released.
fn synthetic_trace() -> Vec<u8> {
    let lib = fixtures::libleaky();
    let lib = lib.to_str().expect("utf-8 path").as_bytes();
    let mut buf = vec![0u8; 4096];
    let mut e = Encoder::default();
    buf[..header().len()].copy_from_slice(&header());
    let mut p = header().len();
    p = e.image_start(&mut buf, p, 4242, 1, true, false, 0, b"/bin/host", &[b"/bin/host".as_slice()]);
    let base = 0x7f00_0000_0000u64;
    let seg = Segment { vaddr: 0x1000, memsz: 0x1000, offset: 0x1000, flags: 5 };
    p = e.module(&mut buf, p, 1, base, lib, &[], &[seg]);
    p = e.batch(&mut buf, p, 4242);
    p = e.stack(&mut buf, p, 1, &[base + 0x1100, base + 0x1200]);
    p = e.acquire(&mut buf, p, 1, Kind::HEAP, Api::MALLOC, 0x5000_0000, 100, 1);
    p = e.acquire(&mut buf, p, 2, Kind::HEAP, Api::MALLOC, 0x5000_1000, 100, 1);
    p = e.release(&mut buf, p, 3, Kind::HEAP, Api::FREE, 0x5000_1000);
    p = e.image_exit(&mut buf, p, 4);
    assert!(p + MAX_SMALL_RECORD <= buf.len());
    p = e.process_end(&mut buf, p, 4242, 0, 0);
    buf.truncate(p);
    buf
}

#[test]
fn synthetic_trace_reports_one_block_under_its_library() {
    // The baseline the broken variants below are cut from: it must be accepted.
    let tmp = TempDir::new("synthetic");
    let trace = tmp.join("good.residue");
    std::fs::write(&trace, synthetic_trace()).expect("writing the trace");
    let json = tmp.join("good.json");
    let f = report_cmd(&trace, &json);
    assert_eq!(f.code(), 0, "a valid trace reports\n{}", f.stderr);
    let r: Report = read_report(&json, &f, "residue report (synthetic)");
    assert_eq!(r.heap("libleaky.so"), residue_tests::Amount::new(1, 100), "{:#}", r.json);
    assert_eq!(r.complete(), Some(true), "{:#}", r.json);
    assert_eq!(r.exit_status(), Some(0), "{:#}", r.json);
}

#[test]
fn truncated_synthetic_trace_is_an_error() {
    let tmp = TempDir::new("truncated");
    let t = synthetic_trace();
    let recs = records(&t);
    // Cut inside the module record (the largest): the file ends mid-record.
    let (start, len) = *recs.iter().max_by_key(|r| r.1).expect("records");
    assert_rejected(&tmp, "cut-in-record.residue", &t[..start + len / 2], "truncated");
    // Cut inside the header: six bytes of the magic. "truncated" or "not a residue trace"
    // are both honest; the status and the absence of a panic are what matter.
    assert_rejected(&tmp, "cut-in-header.residue", &t[..6], "");
}

#[test]
fn corrupt_synthetic_trace_is_an_error() {
    let tmp = TempDir::new("corrupt");
    let t = synthetic_trace();
    let recs = records(&t);
    // A record with tag 0, which residue never writes, in place of the first acquire.
    use residue_protocol::tag::{ACQUIRE, MALLOC, MALLOC_NEXT};
    let mut zero = t.clone();
    let acquire = recs.iter().find(|r| matches!(t[r.0], ACQUIRE | MALLOC | MALLOC_NEXT)).expect("an acquire");
    zero[acquire.0] = 0;
    assert_rejected(&tmp, "tag-zero.residue", &zero, "corrupt");
    // A record claiming a length far beyond the decoder's limit (and beyond the file).
    let mut huge = t[..acquire.0].to_vec();
    huge.extend_from_slice(&[residue_protocol::tag::ACQUIRE, 0xff, 0xff, 0xff, 0x7f]);
    huge.extend_from_slice(&t[acquire.0 + 2..]);
    assert_rejected(&tmp, "huge-length.residue", &huge, "corrupt");
    // An acquire record whose payload is cut short inside (its length says 1 byte).
    let mut short = t[..acquire.0].to_vec();
    short.extend_from_slice(&[residue_protocol::tag::ACQUIRE, 1, 0]);
    short.extend_from_slice(&t[acquire.0 + acquire.1..]);
    assert_rejected(&tmp, "short-payload.residue", &short, "corrupt");
}

#[test]
fn files_that_are_not_traces_are_rejected() {
    let tmp = TempDir::new("not-a-trace");
    assert_rejected(&tmp, "text.residue", b"this is not a residue trace at all\n", "not a residue trace");
    assert_rejected(&tmp, "empty.residue", b"", "empty");
    let mut newer = synthetic_trace();
    newer[8] = 0xff;
    newer[9] = 0x7f;
    assert_rejected(&tmp, "newer.residue", &newer, "newer");
    let missing = tmp.join("does-not-exist.residue");
    let f = report_cmd(&missing, &tmp.join("missing.json"));
    assert!(f.code() != 0 && f.code() != 101 && f.stderr.contains("does-not-exist"), "{}", f.stderr);
}

#[test]
fn saved_trace_reports_what_the_live_run_did_and_broken_copies_are_errors() {
    let tmp = TempDir::new("saved");
    let trace = tmp.join("leaky.residue");
    let live = run([fixture("host_leaky")]).option("--output").option(&trace).go();
    assert_leaky_exact(&live, 1);

    let json = tmp.join("again.json");
    let f = report_cmd(&trace, &json);
    assert_eq!(f.code(), 0, "{}", f.stderr);
    let again = read_report(&json, &f, "residue report (saved trace)");
    let ctx = format!("stderr:\n{}\nreport:\n{:#}", f.stderr, again.json);
    assert_leaky_report(&again, 1, &ctx);
    assert_eq!(again.exit_status(), Some(0), "the saved trace carries the exit status\n{ctx}");
    assert_eq!(again.complete(), Some(true), "{ctx}");

    // The saved file is the collector's own container (today: a magic, a zstd frame holding
    // the stream, then the exit record), so it is damaged without knowing its layout: cut in
    // the middle, cut by a couple of bytes at the end, and one byte flipped in the middle.
    let z = std::fs::read(&trace).expect("reading the saved trace");
    // Cut inside the compressed frame: truncated, never a panic or a clean report.
    assert_rejected(&tmp, "real-z-cut.residue", &z[..z.len() / 2], "truncated");
    let t = raw_trace(&z);
    // The uncompressed form of the same trace reports alike.
    let raw = tmp.join("raw.residue");
    std::fs::write(&raw, &t).expect("writing the raw trace");
    let f = report_cmd(&raw, &tmp.join("raw.json"));
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert_leaky_report(&read_report(&tmp.join("raw.json"), &f, "residue report (raw trace)"), 1, &f.stderr);
    assert!(t.len() > 64, "a trace of {} bytes", t.len());
    // Cut inside a record (a cut that happens to fall between two records is a shorter trace,
    // not a damaged one, as far as the records can tell).
    let recs = resolved_records(&t);
    let (start, len) = *recs.iter().filter(|r| r.1 > 2).nth(recs.len() / 2).or(recs.last()).expect("records");
    assert_rejected(&tmp, "real-cut-middle.residue", &t[..start + len / 2], "truncated");
    assert_rejected(&tmp, "real-cut-end.residue", &t[..t.len() - 2], "truncated");
    // The raw stream has no checksum: a flipped byte is caught where it breaks the record
    // structure, said as a problem where it breaks the trace's consistency (a stack that never
    // arrived), and invisible where it only changes a value (an address). What is certain is an
    // answer and never a panic; the checksummed compressed form below must say "corrupt".
    let mut flipped = t.clone();
    flipped[t.len() / 2] ^= 0x55;
    let path = tmp.join("real-flipped.residue");
    std::fs::write(&path, &flipped).expect("writing the flipped trace");
    let f = report_cmd(&path, &tmp.join("real-flipped.json"));
    assert!(matches!(f.code(), 0..=2) && !f.stderr.contains("panicked"), "exit {}: {}", f.code(), f.stderr);
    // The compressed file is checksummed: a flipped byte there is damage, whatever it hits.
    let mut zflipped = z.clone();
    zflipped[z.len() / 2] ^= 0x55;
    assert_rejected(&tmp, "real-z-flipped.residue", &zflipped, "corrupt");
}

#[test]
fn saved_trace_missing_its_exit_record_is_an_error() {
    // `residue run --output` always ends the file with the exit record it appends after the
    // compressed stream. A file cut exactly there (a cut that takes just that record) decodes
    // cleanly up to its end: only the missing exit record tells it was cut, and it must.
    let tmp = TempDir::new("no-exit-record");
    let trace = tmp.join("leaky.residue");
    let live = run([fixture("host_leaky")]).option("--output").option(&trace).go();
    assert_leaky_exact(&live, 1);
    let z = std::fs::read(&trace).expect("reading the saved trace");
    let t = raw_trace(&z);
    let last = *resolved_records(&t).last().expect("records");
    assert_eq!(t[last.0], residue_protocol::tag::PROCESS_END, "the saved stream ends with the exit record");
    assert_rejected(&tmp, "compressed-without-exit.residue", &z[..z.len() - last.1], "");
    assert_rejected(&tmp, "raw-without-exit.residue", &t[..last.0], "");
}

/// The live run's JSON report, less what only the live run can know (the collector's own peak
/// memory).
fn live_json(o: &residue_tests::Outcome) -> serde_json::Value {
    let mut v = o.report.json.clone();
    v.as_object_mut().expect("a JSON object").remove("collector_peak_rss_kib");
    v
}

/// The report with each library's stacks in one order: stacks of equal bytes, count and stack
/// id (a descriptor and the stream `fopen` made on it, from one stack) come out of the report
/// in hash-map order, which differs from one process to the next.
fn canonical(mut v: serde_json::Value) -> serde_json::Value {
    for section in ["libraries", "runtime"] {
        if let Some(libs) = v.get_mut(section).and_then(|l| l.as_array_mut()) {
            for lib in libs {
                if let Some(stacks) = lib.get_mut("stacks").and_then(|s| s.as_array_mut()) {
                    stacks.sort_by_key(|s| s.to_string());
                }
            }
        }
    }
    v
}

/// `residue report` of a saved trace gives, field for field, the JSON report of the run that
/// saved it: a plain leak, a chain of execs, descriptors with what they are, threads whose
/// batches arrive out of order, forks, and a Python program run through pyenv's shim (its
/// summarized runtime residue, and the command as given rather than the shim's first image). The file is the resolved format. Followed children
/// have streams of their own, which `--output` does not save: those runs do not follow them.
#[test]
fn resolved_trace_reports_exactly_what_the_live_run_did() {
    let tmp = TempDir::new("resolved-exact");
    let cases: Vec<(&str, Vec<std::ffi::OsString>, Vec<&str>)> = vec![
        ("leaky", vec![fixture("host_leaky").into()], vec![]),
        ("exec", vec![fixture("host_exec").into(), fixture("host_leaky").into()], vec![]),
        // host_handles runs children (popen): a saved trace holds the root process only, so
        // the live run lists them as not followed too.
        ("handles", vec![fixture("host_handles").into(), "2".into()], vec!["--no-follow"]),
        ("threads", vec![fixture("host_threads").into()], vec![]),
        ("fork", vec![fixture("host_fork").into(), "exit".into()], vec!["--no-follow"]),
        // The interpreter's residue, summarized in both (`residue report` resolves it as far as
        // `residue run` does, not frame by frame).
        // Through pyenv's shim: the trace's first image is the shim's `env bash ...`, and the
        // saved trace still names the command given (its `Command` record). The shim's helpers
        // are children, which a saved trace does not hold: not followed here either.
        ("python", vec!["python3".into(), "-c".into(), "import json, ctypes".into()], vec!["--no-follow"]),
    ];
    for (name, argv, options) in cases {
        let trace = tmp.join(&format!("{name}.residue"));
        let mut b = run(argv);
        for o in options {
            b = b.option(o);
        }
        let live = b.option("--output").option(&trace).go();
        let z = std::fs::read(&trace).expect("reading the saved trace");
        assert_eq!(&z[..8], b"RESIDUER", "{name}: `--output` writes a resolved trace");
        let json = tmp.join(&format!("{name}.json"));
        let f = report_cmd(&trace, &json);
        assert_eq!(f.code(), 0, "{name}: {}", f.stderr);
        let again = read_report(&json, &f, &format!("residue report ({name})"));
        assert_eq!(
            canonical(again.json.clone()),
            canonical(live_json(&live)),
            "{name}: the saved trace's report differs from the live run's"
        );
    }
}

/// Followed children are reported live but their streams are not saved: `residue report` of
/// the trace says how many it does not hold, instead of leaving them out silently.
#[test]
fn a_saved_trace_says_how_many_followed_children_it_does_not_hold() {
    let tmp = TempDir::new("children-not-saved");
    let trace = tmp.join("fork.residue");
    let live = run([fixture("host_fork").as_os_str(), "exit".as_ref()]).option("--output").option(&trace).go();
    let children = live.report.json["children"].as_array().map_or(0, Vec::len);
    assert!(children > 0, "host_fork's child is followed live\n{}", live.context());
    let json = tmp.join("fork.json");
    let f = report_cmd(&trace, &json);
    assert_eq!(f.code(), 0, "{}", f.stderr);
    let plural = if children == 1 { "" } else { "es" };
    let sentence = format!("this trace does not hold the {children} child process{plural} followed during the run");
    // `residue report` prints its text report on stdout.
    assert_eq!(f.stdout.matches(&sentence).count(), 1, "{sentence:?} once\n{}", f.stdout);
    let again = read_report(&json, &f, "residue report (fork)");
    let notices = again.json["notices"].to_string();
    assert!(notices.contains(&sentence), "the JSON report's notices say it too: {notices}");

    // Not said when nothing was followed.
    let trace = tmp.join("leaky.residue");
    run([fixture("host_leaky")]).option("--output").option(&trace).go();
    let f = report_cmd(&trace, &tmp.join("leaky.json"));
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert!(!f.stdout.contains("child process"), "{}", f.stdout);
}

/// host_leaky's trace cut just before its image's exit record: every record before it is
/// there, so the partial report holds exactly what the live run reported, marked incomplete,
/// with the sentence saying the file was cut and exit status 1.
#[test]
fn truncated_resolved_trace_gives_the_partial_report() {
    let tmp = TempDir::new("resolved-truncated");
    let trace = tmp.join("leaky.residue");
    let live = run([fixture("host_leaky")]).option("--output").option(&trace).go();
    assert_leaky_exact(&live, 1);
    let t = raw_trace(&std::fs::read(&trace).expect("reading the saved trace"));
    let recs = resolved_records(&t);
    let exit = recs.iter().rev().find(|r| t[r.0] == residue_protocol::tag::IMAGE_EXIT).expect("an image exit record");
    for (name, cut) in [("before-exit", exit.0), ("inside-exit", exit.0 + exit.1 - 1)] {
        let path = tmp.join(&format!("{name}.residue"));
        std::fs::write(&path, &t[..cut]).expect("writing the cut trace");
        let json = tmp.join(&format!("{name}.json"));
        let f = report_cmd(&path, &json);
        let r = read_report(&json, &f, &format!("residue report ({name})"));
        let ctx = format!("{name}: exit {}\nstderr:\n{}\nreport:\n{:#}", f.code(), f.stderr, r.json);
        assert_eq!(f.code(), 1, "a cut trace reports, with status 1\n{ctx}");
        assert!(f.stderr.contains("truncated"), "{ctx}");
        assert!(f.stdout.contains("INCOMPLETE"), "{ctx}");
        assert_eq!(r.complete(), Some(false), "{ctx}");
        assert_leaky_report(&r, 1, &ctx);
        assert_eq!(r.json["totals"], live.report.json["totals"], "{ctx}");
    }
    // Cut in the middle of a record halfway through: what came before it, never a panic.
    let (start, len) = recs[recs.len() / 2];
    let mut cut = t[..start + len / 2].to_vec();
    if len == 1 {
        cut = t[..start].to_vec();
    }
    assert_rejected(&tmp, "middle.residue", &cut, "truncated");
}

/// Damage in a resolved trace is one sentence naming the byte: an unknown resolved tag, and a
/// release of a block that was never live.
#[test]
fn corrupt_resolved_trace_is_one_sentence() {
    let tmp = TempDir::new("resolved-corrupt");
    let trace = tmp.join("leaky.residue");
    run([fixture("host_leaky")]).option("--output").option(&trace).go();
    let t = raw_trace(&std::fs::read(&trace).expect("reading the saved trace"));
    let recs = resolved_records(&t);
    let first_alloc = *recs.iter().find(|r| t[r.0] == 0xc1).expect("an ALLOC record");
    let cases = [
        ("unknown-tag", 0xcf, "a resolved record that residue cannot read"),
        // The first ALLOC made a FREE: nothing of that tuple is live yet.
        ("free-of-nothing", 0xc2, "a release of a block that is not live"),
    ];
    for (name, tag, sentence) in cases {
        let mut m = t.clone();
        m[first_alloc.0] = tag;
        let path = tmp.join(&format!("{name}.residue"));
        std::fs::write(&path, &m).expect("writing the damaged trace");
        let f = report_cmd(&path, &tmp.join(&format!("{name}.json")));
        let ctx = format!("{name}: exit {}\nstderr:\n{}", f.code(), f.stderr);
        assert_eq!(f.code(), 2, "{ctx}");
        let offset = first_alloc.0 - 8;
        let expected = format!("residue: {}: the trace is corrupt at byte {offset}: {sentence}", path.display());
        assert_eq!(f.stderr.trim_end(), expected, "{ctx}");
    }
}
