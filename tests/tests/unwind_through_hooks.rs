//! Control leaving the interposer's frames other than by returning (issue 7): a C++ exception
//! and a longjmp through the hooked libffi `ffi_call` (how ctypes and cffi call C). The host
//! must behave exactly as without residue, and what is recorded afterwards must not be
//! attributed to a foreign call that was left by the jump.

use residue_tests::{fixture, fixtures::unwind, run};
use serde_json::Value;

fn stack_of(json: &Value, bytes: u64) -> &Value {
    json["libraries"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["stacks"].as_array().into_iter().flatten())
        .find(|s| s["bytes"].as_u64() == Some(bytes) && s["count"].as_u64() == Some(1))
        .unwrap_or_else(|| panic!("no stack of one {bytes}-byte block in {json:#}"))
}

/// The function a stack's ctypes/cffi call was calling (`foreign_call.function`), if any.
fn foreign_call(stack: &Value) -> Option<&str> {
    stack["foreign_call"]["function"].as_str()
}

fn functions(stack: &Value, kind: &str) -> Vec<String> {
    stack["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["kind"].as_str() == Some(kind))
        .filter_map(|f| f["function"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_cxx_exception_passes_through_the_ffi_call_hook() {
    let o = run([fixture("host_unwind").as_os_str(), "throw".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "the host caught its exception\n{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    let s = stack_of(&o.report.json, unwind::THROWN_BYTES);
    let native = functions(s, "native");
    assert_eq!(native.first().map(String::as_str), Some(unwind::FUNCTION), "{s:#}");
    assert!(native.iter().any(|f| f == "thrower"), "{s:#}");
}

#[test]
fn after_a_longjmp_out_of_a_foreign_call_nothing_is_attributed_to_it() {
    let o = run([fixture("host_unwind").as_os_str(), "longjmp".as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    let inside = stack_of(&o.report.json, unwind::THROWN_BYTES);
    assert_eq!(foreign_call(inside), Some(unwind::JUMPER_FUNCTION), "made inside the call\n{inside:#}");
    let after = stack_of(&o.report.json, unwind::AFTER_JUMP_BYTES);
    assert_eq!(foreign_call(after), None, "made after the jump, outside any call\n{after:#}");
    assert!(functions(after, "native").iter().any(|f| f == unwind::AFTER_JUMP_FUNCTION), "{after:#}");
}
