//! The interposer's hot path is linked first in its text (interposer/link/cc-hot-first, listed
//! by bench/hot-functions): the functions every recorded malloc runs sit within one 64 KiB run
//! at the start of `.text`, rather than scattered through ~470 KiB of it, and the Python walk
//! follows everything a C host runs (start-up and exit included, about 80 KiB). And `.text` starts
//! on a page of its own (`-z separate-code`, interposer/build.rs), so that where the hot code
//! falls within its pages does not move with the size of the read-only data before it.

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use residue_tests::tools;

/// Functions on every recorded allocation's path, by the start of their names (the compiler
/// adds a hash), that exist as functions of their own in every profile.
/// With the end of the run of text each must lie in, in KiB from the start of `.text`.
const HOT: [(&str, u64); 6] = [
    ("malloc", 64),
    ("free", 64),
    ("_ZN7residue6stacks11acquired_at17h", 64),
    ("_ZN14residue_unwind15capture_from_in17h", 64),
    ("_ZN14residue_unwind6x86_646replay17h", 64),
    ("_ZN7residue6python17frames_of_runtime17h", 128),
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
    for (name, within) in HOT {
        let exact = !name.ends_with("17h");
        let sym = file
            .symbols()
            .find(|s| s.name().is_ok_and(|n| if exact { n == name } else { n.starts_with(name) }))
            .unwrap_or_else(|| panic!("no symbol {name} in {}", path.display()));
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
    let path = &tools().preload;
    let data = std::fs::read(path).expect("read libresidue.so");
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    let segment = file
        .segments()
        .find(|s| s.address() <= text.address() && text.address() < s.address() + s.size())
        .expect("a loadable segment holds .text");
    // Only .plt, .init and .fini (a few dozen bytes each) come before .text in the code's segment.
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

/// The PLT runs in every host, at start-up and at exit: before the code, in the run of pages
/// the hot functions keep resident, not after it, where it kept a run of its own resident
/// (interposer/link/plt-first.ld).
#[test]
fn the_plt_comes_before_the_code() {
    let path = &tools().preload;
    let data = std::fs::read(path).expect("read libresidue.so");
    let file = object::File::parse(&*data).expect("parse libresidue.so");
    let text = file.section_by_name(".text").expect("libresidue.so has a .text");
    let Some(plt) = file.section_by_name(".plt") else { return };
    assert!(
        plt.address() < text.address(),
        ".plt at {:#x}, after .text at {:#x}: is interposer/build.rs's -T link/plt-first.ld in effect?",
        plt.address(),
        text.address()
    );
}
