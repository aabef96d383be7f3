//! Collector memory on a long run with a stable live set (issue 7): twenty million events with
//! a handful of live blocks must not cost more memory than two million. The collector reports
//! its own peak resident memory in the JSON; the bound is on growth, not on time.

use residue_tests::{fixture, run};

fn peak_kib(pairs: &str) -> u64 {
    let o = run([fixture("bench_w4").as_os_str(), pairs.as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    o.report.json["collector_peak_rss_kib"].as_u64().unwrap_or_else(|| panic!("no collector_peak_rss_kib\n{ctx}"))
}

#[test]
fn collector_memory_does_not_grow_with_the_event_count() {
    // bench_w4 PAIRS: PAIRS malloc/free pairs from four call sites, four blocks live at a time.
    let short = peak_kib("1000000");
    let long = peak_kib("10000000");
    assert!(
        long <= short + 8 * 1024,
        "20 million events peaked at {long} KiB, 2 million at {short} KiB: memory grows with events"
    );
}
