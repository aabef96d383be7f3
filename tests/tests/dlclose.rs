//! A leak in a library that is dlclosed before exit is still symbolized by name: the
//! collector symbolizes from the module records and files, not from the live process.

use residue_tests::{fixture, fixtures::gone, run, Amount, TempDir};

#[test]
fn leak_in_dlclosed_library_is_symbolized() {
    let o = run([fixture("host_dlclose")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.heap("libgone.so"), Amount::new(gone::COUNT, gone::BYTES), "{ctx}");
    assert_eq!(o.report.unreleased("libgone.so", "fd").count, gone::FDS, "{ctx}");
    let stacks: Vec<_> = o.report.stacks("libgone.so").into_iter().filter(|s| s.kind == "heap").collect();
    assert_eq!(stacks.len(), 1, "{ctx}");
    let fds: Vec<_> = o.report.stacks("libgone.so").into_iter().filter(|s| s.kind == "fd").collect();
    assert_eq!(fds.len(), 1, "{ctx}");
    assert_eq!(fds[0].owner_function("libgone.so"), Some(gone::FD_FUNCTION), "{ctx}");
    let f = stacks[0].owner_frame("libgone.so").unwrap_or_else(|| panic!("no libgone frame\n{ctx}"));
    assert_eq!(f.function.as_deref(), Some(gone::FUNCTION), "{ctx}");
    assert!(f.file.as_deref().is_some_and(|p| p.ends_with("libgone.c")) && f.line.unwrap_or(0) > 0, "{f:?}\n{ctx}");
    assert!(stacks[0].mentions("gone_run"), "the caller inside libgone is symbolized too\n{ctx}");
}

#[test]
fn dlerror_after_the_hosts_dlopen_is_the_hosts_own() {
    // The dlopen hook looks for a Python runtime once the real dlopen has returned; a lookup
    // that failed left its message for the host's dlerror ("libresidue.so: undefined symbol:
    // Py_GetVersion"), so a program checking dlerror after a dlopen that succeeded failed.
    // host_dlclose exits 3 then.
    let o = run([fixture("host_dlclose")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert!(!o.finished.stderr.contains("dlerror after a successful dlopen"), "{ctx}");
}

#[test]
fn the_interposers_own_lookups_leave_the_host_nothing_to_free() {
    // At start and after each dlopen and dlclose, the interposer looks for a Python runtime
    // with dlsym, which fails in a C program; glibc keeps the error message for dlerror and
    // frees it at the thread's next dl* call: here the host's dlsym and dlclose. Those frees
    // are of blocks the host never allocated, and would be reported as releases whose origin
    // was not seen.
    let o = run([fixture("host_dlclose")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.json["released_origin_unseen"]["heap"].as_u64().unwrap_or(0), 0, "{ctx}");
}

#[test]
fn leak_in_library_whose_file_was_deleted_is_symbolized() {
    // Issue 2: "including a library that was dlclosed or whose file was deleted". A copy of
    // libgone.so is dlopened and unlinked right away; it stays loaded until exit, but after
    // the target exits neither its mapping nor its file exists.
    let tmp = TempDir::new("deleted-lib");
    let copy = tmp.join("libgone.so");
    std::fs::copy(fixture("libgone.so"), &copy).expect("copying libgone.so");
    let o = run([fixture("host_dlclose").as_os_str(), copy.as_os_str(), "delete".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert!(!copy.exists(), "the target deleted its copy");
    assert_eq!(o.report.heap("libgone.so"), Amount::new(gone::COUNT, gone::BYTES), "{ctx}");
    let stacks: Vec<_> = o.report.stacks("libgone.so").into_iter().filter(|s| s.kind == "heap").collect();
    assert_eq!(stacks.len(), 1, "{ctx}");
    assert_eq!(stacks[0].owner_function("libgone.so"), Some(gone::FUNCTION), "{ctx}");
}

/// Issue 3's library lifecycle: a library loaded at run time is listed with whether it was
/// unloaded and what it still held, and the report warns that what an unloaded library held can
/// no longer be released.
#[test]
fn an_unloaded_library_still_holding_resources_is_warned_about() {
    let o = run([fixture("host_dlclose")]).go();
    let ctx = o.context();
    let libs = o.report.json["runtime_libraries"].as_array().unwrap_or_else(|| panic!("no runtime_libraries\n{ctx}"));
    let gone: Vec<_> =
        libs.iter().filter(|l| l["module"].as_str().is_some_and(|m| m.ends_with("/libgone.so"))).collect();
    assert_eq!(gone.len(), 1, "{ctx}");
    assert_eq!(gone[0]["unloaded"].as_bool(), Some(true), "{ctx}");
    assert_eq!(Amount::of(&gone[0]["still_held"]["heap"]), Amount::new(gone::COUNT, gone::BYTES), "{ctx}");
    assert_eq!(gone[0]["still_held"]["fd"]["count"].as_u64(), Some(gone::FDS), "{ctx}");
    assert!(
        o.finished.stderr.contains(
            "libgone.so was unloaded (dlclose) while still holding 1 heap block (4242 bytes), 1 file descriptor"
        ),
        "{ctx}"
    );
    // Libraries linked with the program are not "loaded at run time".
    assert!(!libs.iter().any(|l| l["module"].as_str().is_some_and(|m| m.contains("libc.so"))), "{ctx}");
}

/// RTLD_DEEPBIND would bind the library to libc's malloc, hiding its allocations: residue
/// removes the flag with a notice, and the library's leaks are counted exactly as without it.
#[test]
fn rtld_deepbind_is_removed_with_a_notice() {
    let o = run([fixture("host_deepbind")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(
        o.report.heap("libleaky.so"),
        Amount::new(residue_tests::fixtures::leaky::COUNT, residue_tests::fixtures::leaky::BYTES),
        "{ctx}"
    );
    let notices = o.report.json["notices"].as_array().expect("notices");
    assert!(
        notices.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("RTLD_DEEPBIND removed from dlopen(") && n.contains("libleaky.so"))),
        "{ctx}"
    );
}
