//! Python 3 loading the fixture libraries with ctypes, run through `python3` as users do (on
//! this machine a pyenv shim: a bash script that execs the real interpreter, so residue has
//! to follow the exec into the interpreter).

use residue_tests::{assert_leaky_exact, fixture, fixtures, py_script, repo_root, run, Amount};

#[test]
fn ctypes_leaks_are_exact_under_libleaky() {
    let o = run([
        "python3".as_ref(),
        py_script("ctypes_fixture.py").as_os_str(),
        fixture("libleaky.so").as_os_str(),
        "2".as_ref(),
    ])
    .go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "ctypes_fixture: 16 scenarios\n", "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 2);
}

#[test]
fn ctypes_clean_twin_reports_nothing() {
    let o = run([
        "python3".as_ref(),
        py_script("ctypes_fixture.py").as_os_str(),
        fixture("libclean.so").as_os_str(),
        "2".as_ref(),
    ])
    .go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    // complete: the interpreter's image was tracked to its clean end (a report of nothing
    // from a tracker that saw nothing would otherwise pass).
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.heap("libclean.so"), Amount::ZERO, "{ctx}");
}

#[test]
fn ctypes_calls_from_several_python_threads_are_all_counted() {
    let o = run([
        "python3".as_ref(),
        py_script("threaded_fixture.py").as_os_str(),
        fixture("libleaky.so").as_os_str(),
        "4".as_ref(),
    ])
    .go();
    assert_eq!(o.finished.code(), 0, "{}", o.context());
    assert_leaky_exact(&o, 4);
}

#[test]
fn readme_example_reports_the_unfreed_titles() {
    // examples/ctypes_leak.py: greeting_title strdups "Hello, <name>!" for three names and
    // nobody frees them; greeting_new's blocks are freed by greeting_free.
    let o = run(["python3".as_ref(), repo_root().join("examples").join("ctypes_leak.py").as_os_str()])
        .env("RESIDUE_EXAMPLE_LIB", fixtures::libexample())
        .go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.finished.stdout, "Hello, ada!\nHello, grace!\nHello, linus!\n", "{ctx}");
    let bytes = ["Hello, ada!", "Hello, grace!", "Hello, linus!"].iter().map(|s| s.len() as u64 + 1).sum();
    assert_eq!(o.report.heap("libexample.so"), Amount::new(3, bytes), "{ctx}");
    let stacks = o.report.stacks("libexample.so");
    assert!(
        !stacks.is_empty()
            && stacks.iter().all(|s| s.api == "strdup" && s.owner_function("libexample.so") == Some("greeting_title")),
        "every leak is greeting_title's strdup\n{ctx}"
    );
}

#[test]
fn ctypes_leaks_stay_exact_when_every_python_object_is_a_malloc() {
    // PYTHONMALLOC=malloc: the interpreter's own millions of small allocations and frees go
    // through the hooks too, from several threads; libleaky's count must not move.
    let o = run([
        "python3".as_ref(),
        py_script("threaded_fixture.py").as_os_str(),
        fixture("libleaky.so").as_os_str(),
        "3".as_ref(),
    ])
    .env("PYTHONMALLOC", "malloc")
    .go();
    assert_eq!(o.finished.code(), 0, "{}", o.context());
    assert_eq!(o.report.complete(), Some(true), "{}", o.context());
    assert_leaky_exact(&o, 3);
}
