//! The interposer's hot path is linked first in its text (interposer/link/cc-hot-first, listed
//! by bench/hot-functions): the functions every recorded malloc runs sit within one 64 KiB run
//! at the start of `.text`, rather than scattered through ~470 KiB of it, and the Python walk
//! follows everything a C host runs (start-up and exit included, about 80 KiB). And `.text` starts
//! on a page of its own (`-z separate-code`, interposer/build.rs), so that where the hot code
//! falls within its pages does not move with the size of the read-only data before it. The rest
//! is what else decides how much of the interposer a C host keeps resident: where the PLT, the
//! exception tables and the small statics go (interposer/link/layout.ld, cc-hot-first), and
//! that libgcc_s is not loaded for us.

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use residue_tests::tools;

/// libresidue.so's bytes (parse them with `object::File::parse`).
fn interposer() -> Vec<u8> {
    std::fs::read(&tools().preload).expect("read libresidue.so")
}

/// Whether lld linked it: only lld takes a symbol order, and cc-hot-first links as plain cc
/// otherwise (then the order-dependent checks have nothing to check, and say so).
fn linked_by_lld(file: &object::File<'_>, what: &str) -> bool {
    let lld = file
        .section_by_name(".comment")
        .and_then(|s| s.data().ok())
        .is_some_and(|d| String::from_utf8_lossy(d).contains("Linker: LLD"));
    if !lld {
        eprintln!("libresidue.so was not linked by lld: its {what} keeps the compiler's order");
    }
    lld
}

/// Functions on every recorded allocation's path, by the start of their names (the compiler
/// adds a hash), that exist as functions of their own in every profile.
/// With the end of the run of text each must lie in, in KiB from the start of `.text`.
const HOT: [(&str, u64); 7] = [
    ("malloc", 64),
    ("free", 64),
    ("_ZN7residue6stacks16heap_acquired_at17h", 64),
    ("_ZN7residue6stacks6walked17h", 64),
    ("_ZN14residue_unwind17capture_from_kept17h", 64),
    ("_ZN14residue_unwind6x86_646replay17h", 64),
    ("_ZN7residue6python17frames_of_runtime17h", 128),
];

#[test]
fn the_hot_path_is_linked_first_in_the_interposers_text() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    if !linked_by_lld(&file, "text") {
        return;
    }
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    for (name, within) in HOT {
        let exact = !name.ends_with("17h");
        let sym = file
            .symbols()
            .find(|s| s.name().is_ok_and(|n| if exact { n == name } else { n.starts_with(name) }))
            .unwrap_or_else(|| panic!("no symbol {name} in libresidue.so"));
        let offset = sym.address() - text.address();
        assert!(
            offset + sym.size() <= within * 1024,
            "{name} ends {} KiB into .text, not in the first {within} KiB: is .cargo/config.toml's linker \
             (interposer/link/cc-hot-first) in effect, and does interposer/link/hot-functions.txt \
             list it?",
            (offset + sym.size()) / 1024
        );
    }
}

#[test]
fn the_interposers_code_starts_on_a_page_of_its_own() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    let segment = file
        .segments()
        .find(|s| s.address() <= text.address() && text.address() < s.address() + s.size())
        .expect("a loadable segment holds .text");
    // Only .plt, .init and .fini (a few hundred bytes) come before .text in the code's segment.
    assert_eq!(segment.address() % 4096, 0, "the code's segment starts at {:#x}", segment.address());
    assert!(
        text.address() - segment.address() < 512,
        ".text starts at {:#x}, {} bytes into its segment (at {:#x}): is interposer/build.rs's \
         -z separate-code in effect?",
        text.address(),
        text.address() - segment.address(),
        segment.address()
    );
}

/// The PLT runs in every host, at start-up and at exit: before the code, in the run of pages
/// the hot functions keep resident, not after it, where it kept a run of its own resident
/// (interposer/link/layout.ld).
#[test]
fn the_plt_comes_before_the_code() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    let Some(plt) = file.section_by_name(".plt") else { return };
    assert!(
        plt.address() < text.address(),
        ".plt at {:#x}, after .text at {:#x}: is interposer/build.rs's -T link/layout.ld in effect?",
        plt.address(),
        text.address()
    );
}

/// Everything a C host runs (its part of the hot list, start-up and exit included) is linked
/// first, and lies within the first two 64 KiB runs of the file from the start of the code's
/// segment (interposer/link/layout.ld): the Python walk, first of what only Python hosts run,
/// starts there at the latest. The kernel maps a file's pages in such runs around each one
/// touched, so one more run is 64 KiB more of a C host's memory.
#[test]
fn a_c_hosts_functions_fit_in_two_runs_of_the_file() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    if !linked_by_lld(&file, "text") {
        return;
    }
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    let segment = file
        .segments()
        .find(|s| s.address() <= text.address() && text.address() < s.address() + s.size())
        .expect("a loadable segment holds .text");
    let limit = (segment.address() / 0x10000 + 2) * 0x10000;
    let walk = file
        .symbols()
        .find(|s| s.name().is_ok_and(|n| n.starts_with("_ZN7residue6python17frames_of_runtime17h")))
        .expect("libresidue.so has the Python walk");
    assert!(
        walk.address() <= limit,
        "the Python walk, after a C host's functions, starts at {:#x}, past {limit:#x}: the code \
         starts at {:#x}; did interposer/link/layout.ld's sections move, or did the functions a C \
         host runs grow (bench/hot-functions)?",
        walk.address(),
        segment.address()
    );
    // Functions every C host runs that a regenerated list can miss, each before the Python
    // walk: crtbeginS.o's start-up and exit functions (callgrind names them by address only),
    // the memo's word list (made once per record) and its quick answers (kept once per call
    // site), what a traced program runs while it waits for the collector's answer at its exit,
    // and the stream's claim at start-up (both `residue run` only; callgrind saw neither of the
    // latter). Left to the linker, each kept another 64 KiB run resident: 64 KiB of W4's peak
    // apiece. Exact names, or the start of a Rust function's (the compiler adds a hash).
    for name in [
        "frame_dummy",
        "__do_global_dtors_aux",
        "register_tm_clones",
        "deregister_tm_clones",
        "_ZN14residue_unwind6x86_6410list_words17h",
        "_ZN14residue_unwind4memo12remember_hit17h",
        "_ZN7residue9transport10going_idle17h",
        "poll",
        "_ZN7residue9lifecycle7Decimal2of17h",
    ] {
        let found = file
            .symbols()
            .find(|s| s.name().is_ok_and(|n| if name.ends_with("17h") { n.starts_with(name) } else { n == name }));
        let Some(sym) = found else { continue };
        assert!(
            sym.address() < walk.address(),
            "{name} at {:#x}, after the Python walk at {:#x}: is it in interposer/link/hot-functions.txt, in \
             the group a C host runs?",
            sym.address(),
            walk.address()
        );
    }
}

/// The exception tables, read only when something unwinds through our frames, come after the
/// code rather than before it (interposer/link/layout.ld).
#[test]
fn the_exception_tables_come_after_the_code() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    for name in [".gcc_except_table", ".eh_frame_hdr"] {
        let Some(s) = file.section_by_name(name) else { continue };
        assert!(
            s.address() > text.address(),
            "{name} at {:#x}, before .text at {:#x}: is interposer/build.rs's -T link/layout.ld in effect?",
            s.address(),
            text.address()
        );
    }
}

/// libresidue.so carries its own copy of libgcc's unwinder (interposer/link/cc-hot-first links
/// libgcc_eh.a) rather than loading libgcc_s.so.1 into every host: a C program has no use for
/// it, and its start-up and exit code alone kept about 100 KiB of it resident. Neither a
/// dependency on it nor a versioned reference to one of its symbols (GCC_3.0) is left.
#[test]
fn the_interposer_needs_no_libgcc_s() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let dynstr = file.section_by_name(".dynstr").and_then(|s| s.data().ok()).expect("libresidue.so has a .dynstr");
    for name in dynstr.split(|&b| b == 0).map(String::from_utf8_lossy) {
        assert!(
            !name.starts_with("libgcc_s") && !name.starts_with("GCC_") && !name.starts_with("_Unwind_"),
            "libresidue.so's dynamic strings name {name:?}: is interposer/link/cc-hot-first linking \
             libgcc_eh.a (`cc -print-file-name=libgcc_eh.a`) for -lgcc_s?"
        );
    }
}

/// The zero-initialized tables of a page or more come first in `.bss` and the small statics
/// after them, together (interposer/link/cc-hot-first): every host writes the small ones, and
/// scattered between the tables they made one written page each.
#[test]
fn the_small_statics_share_their_pages() {
    let data = interposer();
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    if !linked_by_lld(&file, ".bss") {
        return;
    }
    let bss = file.section_by_name(".bss").expect("libresidue.so has a .bss").index();
    let mut symbols: Vec<_> = file
        .symbols()
        .filter(|s| s.section_index() == Some(bss) && s.size() > 0)
        .map(|s| (s.address(), s.size(), s.name().unwrap_or("?").to_owned()))
        .collect();
    symbols.sort();
    let first_small = symbols.iter().position(|s| s.1 < 4096).expect("small statics in .bss");
    let late: Vec<_> = symbols[first_small..].iter().filter(|s| s.1 >= 4096).map(|s| &s.2).collect();
    assert!(late.is_empty(), "tables after the first small static ({}): {late:?}", symbols[first_small].2);
}
