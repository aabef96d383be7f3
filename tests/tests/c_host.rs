//! A C host program linking the fixture libraries: exact counts and bytes per library, the
//! leaking functions named, nothing for the clean twin, the target's output untouched.

use residue_tests::{assert_leaky_exact, fixture, fixtures, run, Amount};

#[test]
fn leaky_host_reports_each_leak_exactly_under_libleaky() {
    let o = run([fixture("host_leaky")]).go();
    let ctx = o.context();
    assert_eq!(o.report.schema(), Some("residue-report/1"), "{ctx}");
    assert_eq!(o.finished.code(), 0, "residue exits with the target's status\n{ctx}");
    assert_eq!(o.report.exit_status(), Some(0), "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "a clean exit gives a complete trace\n{ctx}");
    assert_leaky_exact(&o, 1);
}

#[test]
fn repeated_leaks_from_one_site_add_up_in_one_stack() {
    // Three runs of the same scenarios: the same stacks, three times the blocks. A collector
    // that keeps only one block per address or per stack gets this wrong.
    let o = run([fixture("host_leaky").as_os_str(), "3".as_ref()]).go();
    assert_leaky_exact(&o, 3);
    let stacks = o.report.stacks("libleaky.so");
    let strdup: Vec<_> =
        stacks.iter().filter(|s| s.owner_function("libleaky.so") == Some("leaky_strdup_names")).collect();
    assert_eq!(strdup.len(), 1, "one distinct stack for the strdup loop\n{}", o.context());
    assert_eq!(strdup[0].api, "strdup", "{}", o.context());
    assert_eq!(strdup[0].amount, Amount::new(30, 30 * fixtures::leaky::NAME_BYTES), "{}", o.context());
}

#[test]
fn clean_twin_reports_nothing_for_libclean() {
    let o = run([fixture("host_clean")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_eq!(o.report.heap("libclean.so"), Amount::ZERO, "libclean frees everything it allocates\n{ctx}");
    // Nor may its blocks show up attributed to some other module.
    for s in o.report.all_stacks() {
        assert!(
            !s.frames.iter().any(|f| f.function.as_deref().is_some_and(|n| n.starts_with("clean_"))),
            "a stack through libclean's functions was reported: {s:?}\n{ctx}"
        );
    }
}

#[test]
fn target_stdout_passes_through_and_the_report_names_the_leaks_on_stderr() {
    let o = run([fixture("host_leaky")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.stdout, "fixture host: done\n", "the target's stdout is untouched\n{ctx}");
    assert!(o.finished.stderr.contains("libleaky.so"), "the text report on stderr names the library\n{ctx}");
    assert!(o.finished.stderr.contains("leaky_"), "the text report on stderr names a leaking function\n{ctx}");
}

#[test]
fn leak_stacks_are_complete_from_the_leaking_function_to_start() {
    // The fixtures are built -O1 without frame pointers: an unwinder that walks frame pointers
    // loses frames here. Every libleaky stack must run, outward from its owner frame,
    // leaky_X -> fx_X -> fx_run_all -> main (host_leaky) -> ... -> _start, with nothing missing.
    let o = run([fixture("host_leaky")]).go();
    let ctx = o.context();
    let stacks = o.report.stacks("libleaky.so");
    assert!(!stacks.is_empty(), "{ctx}");
    for s in &stacks {
        let names: Vec<&str> = s.frames.iter().map(|f| f.function.as_deref().unwrap_or("?")).collect();
        let at = names
            .iter()
            .position(|n| n.starts_with("leaky_"))
            .unwrap_or_else(|| panic!("no leaky_ frame: {names:?}\n{ctx}"));
        let leaky = names[at];
        let expected = [leaky.to_owned(), leaky.replacen("leaky_", "fx_", 1), "fx_run_all".into(), "main".into()];
        assert_eq!(names[at..(at + 4).min(names.len())], expected, "frames outward from the leak: {names:?}\n{ctx}");
        assert_eq!(
            s.frames[at + 3].module.as_deref().map(|m| m.ends_with("/host_leaky")),
            Some(true),
            "main is host_leaky's: {names:?}\n{ctx}"
        );
        assert_eq!(names.last(), Some(&"_start"), "the stack reaches _start: {names:?}\n{ctx}");
    }
}

#[test]
fn a_library_of_several_units_is_named_from_the_units_its_leaks_are_in() {
    // libunits.so has three compilation units; its leaks are in two. The collector parses only
    // the units a report's addresses are in (the third is covered over before addr2line reads
    // it): functions, inlined frames, files and lines must come out as from a full parse.
    use fixtures::units;
    let o = run([fixture("host_units")]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.heap("libunits.so"), Amount::new(2, units::B_BYTES + units::C_BYTES), "{ctx}");
    let at = |f: &residue_tests::Frame| {
        (
            f.function.clone().unwrap_or_default(),
            f.file.as_deref().and_then(|p| p.rsplit('/').next()).unwrap_or_default().to_owned(),
            f.line.unwrap_or(0),
        )
    };
    // (function, file name, line) of each frame.
    type Place = (String, String, u64);
    let mut seen: Vec<(Amount, Vec<Place>)> = o
        .report
        .stacks("libunits.so")
        .iter()
        .map(|s| {
            let from = s.frames.iter().position(|f| f.function.as_deref().is_some_and(|n| n.starts_with("units_")));
            // From the library's first frame out to main (the frames past it are libc's).
            let frames = from
                .map(|i| {
                    let main = s.frames[i..].iter().position(|f| f.function.as_deref() == Some("main"));
                    s.frames[i..=i + main.unwrap_or(0)].iter().map(at).collect()
                })
                .unwrap_or_default();
            (s.amount, frames)
        })
        .collect();
    seen.sort_by_key(|(a, _)| a.bytes);
    let owned =
        |v: &[(&str, &str, u64)]| v.iter().map(|&(f, file, line)| (f.to_owned(), file.to_owned(), line)).collect();
    let expected = vec![
        (
            Amount::new(1, units::C_BYTES),
            owned(&[
                ("units_leak_c", "libunits_c.c", units::LEAK_C_LINE),
                ("main", "host_units.c", units::HOST_C_CALL_LINE),
            ]),
        ),
        (
            Amount::new(1, units::B_BYTES),
            owned(&[
                ("units_fill", "libunits_b.c", units::FILL_LINE),
                ("units_leak_b", "libunits_b.c", units::LEAK_B_LINE),
                ("main", "host_units.c", units::HOST_B_CALL_LINE),
            ]),
        ),
    ];
    assert_eq!(seen, expected, "{ctx}");
}

#[test]
fn one_call_site_at_one_depth_under_two_callers_keeps_two_stacks() {
    // leak_one's malloc comes from the same place at the same stack pointer under twin_a and
    // twin_b, in the pattern a a a b b: the third a is the same walk again (the interposer's
    // fast path takes it without walking), and the b after it is not, though its first frames
    // and stack pointer are the same. Each block must land under its own twin.
    use fixtures::twins;
    let rounds = 50;
    let o = run([fixture("host_twins").as_os_str(), rounds.to_string().as_ref()]).go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    let mut seen: Vec<(Vec<String>, Amount)> = o
        .report
        .stacks("host_twins")
        .iter()
        .map(|s| {
            let names = s.frames.iter().map(|f| f.function.clone().unwrap_or_default());
            (names.take_while(|n| n != "main").collect(), s.amount)
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let names = |twin: &str| vec!["leak_one".to_owned(), twin.to_owned()];
    assert_eq!(
        seen,
        [
            (names("twin_a"), Amount::new(twins::A_PER_ROUND * rounds, twins::A_PER_ROUND * rounds * twins::A_BYTES)),
            (names("twin_b"), Amount::new(twins::B_PER_ROUND * rounds, twins::B_PER_ROUND * rounds * twins::B_BYTES)),
        ],
        "{ctx}"
    );
}

#[test]
fn a_command_line_too_long_for_a_record_is_cut_with_a_note() {
    // 40,000 bytes of arguments, more than one record of the stream holds (half a chunk, 16
    // KiB): the image is still recorded and named, with its first arguments and a note of how
    // many were left out. Before, its record was not sent, and the image had no pid and no
    // executable.
    let long = "y".repeat(10_000);
    let o = run([
        fixture("host_leaky").as_os_str(),
        "1".as_ref(),
        long.as_ref(),
        long.as_ref(),
        long.as_ref(),
        long.as_ref(),
    ])
    .go();
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "{ctx}");
    assert_eq!(o.report.complete(), Some(true), "{ctx}");
    assert_leaky_exact(&o, 1);
    let image = &o.report.json["images"][0];
    assert!(image["exe"].as_str().is_some_and(|e| e.ends_with("/host_leaky")), "{ctx}");
    assert!(image["pid"].as_u64().is_some_and(|p| p > 0), "{ctx}");
    let argv: Vec<&str> =
        image["argv"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let head = fixture("host_leaky");
    assert_eq!(
        argv,
        [head.to_str().unwrap(), "1", long.as_str(), "[residue: 3 more arguments, too long to record]"],
        "{}",
        &ctx[..ctx.len().min(2000)]
    );
}
