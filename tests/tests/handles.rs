//! Handles beside heap memory: descriptors, FILE* and DIR* streams, mappings (issue 3), from
//! libhandles.so (counted leaks of each kind) and its clean twin, through a C host and through
//! Python's ctypes, with Python's own descriptor leaks.
//!
//! The expected numbers mirror the table at the top of fixtures-c/c/libhandles.c (change both
//! together) and the constants of fixtures-c/py/handles.py.

use residue_tests::{fixture, py_script, run, Amount, Outcome, Report, TempDir};

const LIB: &str = "libhandles.so";
const CLEAN: &str = "libhandles_clean.so";
const PAGE: u64 = 4096;

/// (owner function, kind, api, count, bytes) left behind by one hx_run_all() of libhandles.so.
const LEAKS: &[(&str, &str, &str, u64, u64)] = &[
    ("handles_open_files", "fd", "open", 3, 0),
    ("handles_openat_creat", "fd", "openat", 1, 0),
    ("handles_openat_creat", "fd", "creat", 1, 0),
    ("handles_fd_in_struct", "fd", "open", 1, 0),
    ("handles_socket", "fd", "socket", 1, 0),
    ("handles_pipe", "fd", "pipe", 1, 0),
    ("handles_dup_family", "fd", "dup", 1, 0),
    ("handles_dup_family", "fd", "fcntl", 1, 0),
    ("handles_dup_family", "fd", "dup2", 1, 0),
    ("handles_event_fds", "fd", "eventfd", 1, 0),
    ("handles_event_fds", "fd", "timerfd_create", 1, 0),
    ("handles_event_fds", "fd", "signalfd", 1, 0),
    ("handles_event_fds", "fd", "epoll_create1", 1, 0),
    ("handles_event_fds", "fd", "inotify_init1", 1, 0),
    ("handles_event_fds", "fd", "memfd_create", 1, 0),
    ("handles_recv_fd", "fd", "recvmsg", 1, 0),
    ("handles_streams", "stream", "fopen", 1, 0),
    ("handles_streams", "fd", "fopen", 1, 0),
    ("handles_streams", "stream", "fdopen", 1, 0),
    ("handles_streams", "fd", "open", 1, 0),
    ("handles_streams", "stream", "tmpfile", 1, 0),
    ("handles_streams", "fd", "tmpfile", 1, 0),
    ("handles_streams", "stream", "fmemopen", 1, 0),
    ("handles_dirs", "dir", "opendir", 1, 0),
    ("handles_dirs", "fd", "opendir", 1, 0),
    ("handles_dirs", "dir", "fdopendir", 1, 0),
    ("handles_dirs", "fd", "open", 1, 0),
    // Anonymous 3 pages, file-backed 2 pages, the two pieces (1 + 2 pages) of a 4-page mapping
    // whose second page was unmapped.
    ("handles_mappings", "mapping", "mmap", 4, (3 + 2 + 1 + 2) * PAGE),
    ("handles_mappings", "mapping", "mremap", 1, 4 * PAGE),
];

fn kind_total(kind: &str, reps: u64) -> Amount {
    LEAKS.iter().filter(|l| l.1 == kind).fold(Amount::ZERO, |a, l| a + Amount::new(l.3 * reps, l.4 * reps))
}

/// A library's non-heap stacks grouped by (owner function, kind, api), sorted.
fn handle_table(r: &Report, module: &str) -> Vec<(String, String, String, Amount)> {
    let mut out: Vec<(String, String, String, Amount)> = Vec::new();
    for s in r.stacks(module).into_iter().filter(|s| s.kind != "heap") {
        let f = s.owner_function(module).unwrap_or("<no frame in the library>").to_owned();
        match out.iter_mut().find(|e| e.0 == f && e.1 == s.kind && e.2 == s.api) {
            Some(e) => e.3 = e.3 + s.amount,
            None => out.push((f, s.kind.clone(), s.api.clone(), s.amount)),
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    out
}

fn expected_table(reps: u64) -> Vec<(String, String, String, Amount)> {
    let mut out: Vec<(String, String, String, Amount)> = Vec::new();
    for &(f, kind, api, count, bytes) in LEAKS {
        let a = Amount::new(count * reps, bytes * reps);
        match out.iter_mut().find(|e| e.0 == f && e.1 == kind && e.2 == api) {
            Some(e) => e.3 = e.3 + a,
            None => out.push((f.to_owned(), kind.to_owned(), api.to_owned(), a)),
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    out
}

/// libhandles.so's entry is exactly `reps` runs: per kind, and per (function, kind, api).
fn assert_handles_exact(o: &Outcome, reps: u64) {
    let ctx = o.context();
    let r = &o.report;
    for kind in ["fd", "stream", "dir", "mapping"] {
        assert_eq!(r.unreleased(LIB, kind), kind_total(kind, reps), "{LIB}: unreleased {kind}\n{ctx}");
    }
    assert_eq!(handle_table(r, LIB), expected_table(reps), "{LIB} per (owner function, kind, api)\n{ctx}");
}

/// Everything the clean twin does is released: nothing of any kind under it, and no stack
/// through its functions anywhere in the report.
fn assert_clean(o: &Outcome) {
    let ctx = o.context();
    for kind in ["heap", "fd", "stream", "dir", "mapping"] {
        assert_eq!(o.report.unreleased(CLEAN, kind), Amount::ZERO, "{CLEAN}: unreleased {kind}\n{ctx}");
    }
    for s in o.report.all_stacks() {
        assert!(
            !s.frames.iter().any(|f| f.function.as_deref().is_some_and(|n| n.starts_with("hxclean_"))),
            "a stack through the clean twin's functions was reported: {s:?}\n{ctx}"
        );
    }
}

/// The descriptors open at exit whose opening was never seen, as (fd, description).
fn origin_unseen(r: &Report) -> Vec<(u64, String)> {
    r.json["open_at_exit_origin_unseen"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|o| o["kind"] == "fd")
                .map(|o| (o["id"].as_u64().unwrap_or(u64::MAX), o["description"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_kind_is_counted_exactly_from_a_c_host() {
    let o = run([fixture("host_handles").as_os_str(), "2".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_handles_exact(&o, 2);
    // The descriptor kept in a leaked struct: the struct is a heap leak of the same function.
    let struct_heap: Vec<_> = o
        .report
        .stacks(LIB)
        .into_iter()
        .filter(|s| s.kind == "heap" && s.owner_function(LIB) == Some("handles_fd_in_struct"))
        .collect();
    assert_eq!(struct_heap.iter().fold(Amount::ZERO, |a, s| a + s.amount), Amount::new(2, 2 * 16), "{ctx}");
}

#[test]
fn raw_syscall_descriptors_are_listed_apart_as_origin_unknown() {
    // handles_raw_syscall opens /etc/hostname with syscall(SYS_openat) once per run: no hook
    // sees it, so it is not attributed, and it appears only among the descriptors open at exit.
    let o = run([fixture("host_handles")]).go();
    let ctx = o.context();
    let unseen = origin_unseen(&o.report);
    let raw: Vec<_> = unseen.iter().filter(|(_, d)| d == "/etc/hostname").collect();
    assert_eq!(raw.len(), 1, "one raw-syscall descriptor open at exit, origin unknown: {unseen:?}\n{ctx}");
    // Attributed descriptors are not listed again as origin unknown.
    assert_handles_exact(&o, 1);
}

#[test]
fn clean_twin_leaves_nothing_of_any_kind() {
    let o = run([fixture("host_handles_clean"), "2".into()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_clean(&o);
    // Nothing the twin opened stays open, even unseen (its raw-syscall descriptor is closed).
    let unseen = origin_unseen(&o.report);
    assert!(
        unseen.iter().all(|(_, d)| d != "/etc/hostname" && !d.contains("residue-hx")),
        "the clean twin left a descriptor open: {unseen:?}\n{ctx}"
    );
}

#[test]
fn glibc_malloc_own_mappings_are_not_reported() {
    // Both libraries make four 8 MiB mallocs, which glibc serves with its internal mmap: no
    // mapping may be reported for them (the exact mapping counts above would be off too).
    for host in ["host_handles", "host_handles_clean"] {
        let o = run([fixture(host)]).go();
        for s in o.report.all_stacks().into_iter().filter(|s| s.kind == "mapping") {
            assert!(
                !s.mentions("handles_big_mallocs") && !s.mentions("hxclean_big_mallocs"),
                "a malloc's mapping was reported: {s:?}\n{}",
                o.context()
            );
        }
    }
}

#[test]
fn closing_the_stream_descriptor_does_not_end_the_trace() {
    // The host closes residue's descriptor between two batches of runs, as a daemon closing
    // every descriptor it did not open would: the trace must go on to the end.
    let o = run([fixture("host_handles").as_os_str(), "1".as_ref(), "close".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_handles_exact(&o, 2);
}

/// host_handles 1 ACTION, where ACTION closes every descriptor from 3 up after the first run:
/// the trace goes on to the end, the first run's descriptors are released (not leaks), its
/// streams, dirs and mappings stay, and the second run leaves its full set.
fn closing_from_3_spares_the_stream(action: &str) {
    let o = run([fixture("host_handles").as_os_str(), "1".as_ref(), action.as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.unreleased(LIB, "fd"), kind_total("fd", 1), "{ctx}");
    for kind in ["stream", "dir", "mapping"] {
        assert_eq!(o.report.unreleased(LIB, kind), kind_total(kind, 2), "{kind}\n{ctx}");
    }
}

#[test]
fn close_range_over_everything_spares_the_stream_and_releases_the_rest() {
    // close_range(3, ~0U) after the first run closes its 23 descriptors.
    closing_from_3_spares_the_stream("close_range");
}

#[test]
fn closefrom_spares_the_stream_and_releases_the_rest() {
    // closefrom(3) is glibc's close_range system call, made inside the C library, where no
    // hook sees it.
    closing_from_3_spares_the_stream("closefrom");
}

#[test]
fn dup2_onto_the_stream_descriptor_moves_the_stream_out_of_the_way() {
    // The host dup2s its own file onto residue's descriptor number and writes through it: the
    // file must hold exactly the host's bytes, and the trace must go on to the end.
    let tmp = TempDir::new("handles-dup2");
    let file = tmp.join("host-file");
    let o = run([fixture("host_handles").as_os_str(), "1".as_ref(), "dup2".as_ref(), file.as_os_str()]).go();
    let ctx = o.context();
    assert_eq!(std::fs::read(&file).unwrap_or_default(), b"host data\n", "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_handles_exact(&o, 2);
}

#[test]
fn python_ctypes_and_python_own_descriptor_leaks_are_exact() {
    let o = run(["python3".as_ref(), py_script("handles.py").as_os_str(), fixture(LIB).as_os_str(), "2".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "handles.py: 2 runs\n", "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_handles_exact(&o, 2);
    // handles.py: PY_OS_OPEN = 2, PY_SOCKETS = 1, PY_FILES = 3, each from its own function.
    let fds: Vec<_> = o.report.all_stacks().into_iter().filter(|s| s.kind == "fd").collect();
    for (function, n) in [("leak_os_open", 2), ("leak_socket", 1), ("leak_files", 3)] {
        let got = fds.iter().filter(|s| s.mentions(function)).fold(0, |a, s| a + s.amount.count);
        assert_eq!(got, n, "descriptors leaked by {function}\n{ctx}");
    }
    // Nothing else: not the balanced calls, not Python's own stdio or startup files.
    let total: u64 = fds.iter().map(|s| s.amount.count).sum();
    assert_eq!(total, kind_total("fd", 2).count + 6, "every fd reported in the whole process\n{ctx}");
    assert!(!fds.iter().any(|s| s.mentions("balanced")), "{ctx}");
}

#[test]
fn python_clean_twin_reports_no_handles_at_all() {
    let o = run([
        "python3".as_ref(),
        py_script("handles.py").as_os_str(),
        fixture(CLEAN).as_os_str(),
        "2".as_ref(),
        "--clean".as_ref(),
    ])
    .go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_clean(&o);
    // No descriptor, stream or dir anywhere: Python's stdio (0, 1, 2) is inherited, not a leak.
    for s in o.report.all_stacks() {
        assert!(!["fd", "stream", "dir"].contains(&s.kind.as_str()), "reported: {s:?}\n{ctx}");
    }
}

/// Issue 3's report shape: anonymous and file-backed mappings apart (libhandles.c: 4 anonymous
/// mappings of 40,960 bytes in all, 1 file-backed of 8,192), and each handle stack's `target`.
#[test]
fn mappings_are_split_and_handles_carry_their_target() {
    let o = run([fixture("host_handles")]).go();
    let ctx = o.context();
    let lib = o.report.library(LIB).unwrap_or_else(|| panic!("no {LIB}\n{ctx}"));
    assert_eq!(Amount::of(&lib["mappings"]["anonymous"]), Amount::new(4, 40_960), "{ctx}");
    assert_eq!(Amount::of(&lib["mappings"]["file"]), Amount::new(1, 8_192), "{ctx}");
    let stacks = lib["stacks"].as_array().expect("stacks");
    let target_of = |api: &str| -> Vec<&str> {
        stacks.iter().filter(|s| s["api"] == api).filter_map(|s| s["target"].as_str()).collect()
    };
    assert_eq!(target_of("socket"), ["socket AF_INET stream"], "{ctx}");
    assert_eq!(target_of("pipe"), ["pipe (write end)"], "{ctx}");
    assert_eq!(target_of("creat"), ["/tmp/residue-hx-creat"], "{ctx}");
    assert!(target_of("mmap").contains(&"anonymous"), "{ctx}");
}
