//! C++ leaks: the owner is the first frame past libstdc++'s operator new, names are demangled,
//! and a leak made in an inlined function shows the inlined frame and its caller.

use residue_tests::{fixture, fixtures::cxx, run, Amount};

/// A demangled C++ name, without its parameter list (whether the symbolizer prints
/// `f(int)` or `f` is its choice).
fn base_name(f: &str) -> &str {
    f.split('(').next().unwrap_or(f)
}

#[test]
fn cxx_leaks_have_demangled_owner_functions() {
    let o = run([fixture("host_cxx")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.heap("libcxxleak.so"), Amount::new(cxx::COUNT, cxx::BYTES), "{ctx}");
    assert!(o.report.library("libstdc++.so.6").is_none(), "operator new is machinery, not an owner\n{ctx}");
    let stacks = o.report.stacks("libcxxleak.so");
    let widget = stacks
        .iter()
        .find(|s| s.owner_function("libcxxleak.so").map(base_name) == Some(cxx::WIDGET_FUNCTION))
        .unwrap_or_else(|| panic!("no stack owned by {}\n{ctx}", cxx::WIDGET_FUNCTION));
    assert_eq!(widget.amount, Amount::new(1, cxx::WIDGET_BYTES), "{ctx}");
    assert!(
        !widget.frames.iter().any(|f| matches!(f.function.as_deref(), Some(n) if n.starts_with("_Z"))),
        "no mangled names in the stack: {widget:?}\n{ctx}"
    );
}

#[test]
fn leak_in_an_inlined_function_shows_the_inlined_frame_and_its_caller() {
    let o = run([fixture("host_cxx")]).go();
    let ctx = o.context();
    let stacks = o.report.stacks("libcxxleak.so");
    let table = stacks
        .iter()
        .find(|s| s.amount == Amount::new(1, cxx::TABLE_BYTES))
        .unwrap_or_else(|| panic!("no 128-byte stack\n{ctx}"));
    let names: Vec<&str> = table
        .frames
        .iter()
        .filter(|f| f.module.as_deref().is_some_and(|m| m.ends_with("/libcxxleak.so")))
        .filter_map(|f| f.function.as_deref())
        .map(base_name)
        .collect();
    assert_eq!(
        names.get(..2),
        Some([cxx::INLINED_FUNCTION, cxx::TABLE_FUNCTION].as_slice()),
        "innermost libcxxleak frames: the inlined helper, then the function it was inlined into\n{ctx}"
    );
}
