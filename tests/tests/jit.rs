//! Code a JIT generated, whose unwind information it registered at run time with libgcc
//! (`__register_frame`): no loaded module describes it, so the fast walk hands the capture to
//! libgcc's, which knows the registration. A leak made below such a frame keeps its whole
//! stack, through the generated frame to the code that called it, as libgcc walks it.

use residue_tests::{fixture, fixtures::jit, run, Amount};

#[test]
fn a_stack_goes_on_through_code_whose_unwind_info_a_jit_registered() {
    let o = run([fixture("host_jit")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    let stacks = o.report.all_stacks();
    assert_eq!(stacks.len(), 1, "one block leaks, nothing else\n{ctx}");
    let s = &stacks[0];
    assert_eq!(s.amount, Amount::new(1, jit::BYTES), "{ctx}");
    let names: Vec<Option<&str>> = s.frames.iter().map(|f| f.function.as_deref()).collect();
    // The generated code's frame, second, is in no module: it has no function name.
    assert_eq!(
        names.get(..4),
        Some(&[Some(jit::FUNCTION), None, Some(jit::CALLER), Some("main")][..]),
        "the walk went on through the generated frame\n{s:?}\n{ctx}"
    );
}
