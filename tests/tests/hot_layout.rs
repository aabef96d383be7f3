//! The interposer's hot path is linked first in its text (interposer/link/cc-hot-first, listed
//! by bench/hot-functions): the functions every recorded malloc runs sit within one 64 KiB run
//! at the start of `.text`, rather than scattered through ~470 KiB of it. And `.text` starts
//! on a page of its own (`-z separate-code`, interposer/build.rs), so that where the hot code
//! falls within its pages does not move with the size of the read-only data before it.

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use residue_tests::tools;

/// Functions on every recorded allocation's path, by the start of their names (the compiler
/// adds a hash), that exist as functions of their own in every profile.
const HOT: [&str; 6] = [
    "malloc",
    "free",
    "_ZN7residue6stacks11acquired_at17h",
    "_ZN7residue6python17frames_of_runtime17h",
    "_ZN14residue_unwind15capture_from_in17h",
    "_ZN14residue_unwind6x86_646replay17h",
];

#[test]
fn the_hot_path_is_linked_first_in_the_interposers_text() {
    let path = &tools().preload;
    let data = std::fs::read(path).expect("read libresidue.so");
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let linker = file
        .section_by_name(".comment")
        .and_then(|s| s.data().ok())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    if !linker.contains("Linker: LLD") {
        // Only lld takes a symbol order; cc-hot-first links as plain cc otherwise.
        eprintln!("libresidue.so was not linked by lld: its text keeps the compiler's order");
        return;
    }
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    for name in HOT {
        let exact = !name.ends_with("17h");
        let sym = file
            .symbols()
            .find(|s| s.name().is_ok_and(|n| if exact { n == name } else { n.starts_with(name) }))
            .unwrap_or_else(|| panic!("no symbol {name} in {}", path.display()));
        let offset = sym.address() - text.address();
        assert!(
            offset + sym.size() <= 64 * 1024,
            "{name} ends {} KiB into .text, not in the first 64 KiB: is .cargo/config.toml's linker \
             (interposer/link/cc-hot-first) in effect, and does interposer/link/hot-functions.txt \
             list it?",
            (offset + sym.size()) / 1024
        );
    }
}

#[test]
fn the_interposers_code_starts_on_a_page_of_its_own() {
    let path = &tools().preload;
    let data = std::fs::read(path).expect("read libresidue.so");
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    let segment = file
        .segments()
        .find(|s| s.address() <= text.address() && text.address() < s.address() + s.size())
        .expect("a loadable segment holds .text");
    // Only .init and .fini (a few dozen bytes) come before .text in the code's segment.
    assert_eq!(segment.address() % 4096, 0, "the code's segment starts at {:#x}", segment.address());
    assert!(
        text.address() - segment.address() < 256,
        ".text starts at {:#x}, {} bytes into its segment (at {:#x}): is interposer/build.rs's \
         -z separate-code in effect?",
        text.address(),
        text.address() - segment.address(),
        segment.address()
    );
}
