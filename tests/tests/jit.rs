//! Code a JIT generated, whose unwind information it registered at run time with libgcc
//! (`__register_frame`): no loaded module describes it, so the fast walk hands the capture to
//! libgcc's, which knows the registration. A leak made below such a frame keeps its whole
//! stack, through the generated frame to the code that called it, as libgcc walks it.

use residue_tests::{fixture, fixtures::jit, run};
use serde_json::Value;

#[test]
fn a_stack_goes_on_through_code_whose_unwind_info_a_jit_registered() {
    let o = run([fixture("host_jit")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.json["totals"]["count"].as_u64(), Some(1), "one block leaks, nothing else\n{ctx}");
    let stacks: Vec<&Value> = o.report.json["libraries"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["stacks"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(stacks.len(), 1, "{ctx}");
    let s = stacks[0];
    assert_eq!((s["count"].as_u64(), s["bytes"].as_u64()), (Some(1), Some(jit::BYTES)), "{s:#}");
    let frames = s["frames"].as_array().expect("frames");
    let name = |i: usize| frames.get(i).and_then(|f| f["function"].as_str());
    assert_eq!(name(0), Some(jit::FUNCTION), "{s:#}");
    // The generated code's frame: in no module, so no function name.
    assert_eq!(frames.get(1).map(|f| f["function"].is_null()), Some(true), "{s:#}");
    assert_eq!(name(2), Some(jit::CALLER), "the walk went on through the generated frame\n{s:#}");
    assert_eq!(name(3), Some("main"), "{s:#}");
}
