//! `residue run --depth N` limits the native stack captured per allocation (RESIDUE_DEPTH).

use residue_tests::{fixture, run};

#[test]
fn depth_option_limits_captured_frames() {
    let o = run([fixture("host_leaky")]).option("--depth").option("4").go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    for lib in o.report.libraries() {
        for s in lib["stacks"].as_array().into_iter().flatten() {
            // Inlined frames are expanded from one captured address by the symbolizer: they
            // do not count against the capture depth.
            let captured =
                s["frames"].as_array().into_iter().flatten().filter(|f| f["inlined"].as_bool() != Some(true)).count();
            assert!(captured <= 4, "{captured} frames captured with --depth 4: {s:#}\n{ctx}");
        }
    }
    // The strdup loop's stack is four frames deep from the leaking function to main: all kept.
    let strdup =
        o.report.stacks("libleaky.so").into_iter().find(|s| s.api == "strdup").unwrap_or_else(|| panic!("{ctx}"));
    let names: Vec<_> = strdup.frames.iter().map(|f| f.function.as_deref().unwrap_or("?")).collect();
    assert_eq!(names, ["leaky_strdup_names", "fx_strdup_names", "fx_run_all", "main"], "{ctx}");
}
