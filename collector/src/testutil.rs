//! Helpers shared by the unit tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Minimal ELF64 symbol lookup for the tests (.symtab, else .dynsym): `(value, size)`.
pub fn elf_symbol(d: &[u8], name: &str) -> Option<(u64, u64)> {
    let u16_at = |o: usize| u16::from_le_bytes(d[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    let shoff = u64_at(0x28) as usize;
    let (shentsize, shnum) = (u16_at(0x3a), u16_at(0x3c));
    let sh = |i: usize| shoff + i * shentsize;
    for want in [2u32, 11] {
        for i in 0..shnum {
            if u32_at(sh(i) + 4) as u32 != want {
                continue;
            }
            let (off, size, link) =
                (u64_at(sh(i) + 0x18) as usize, u64_at(sh(i) + 0x20) as usize, u32_at(sh(i) + 0x28));
            let stroff = u64_at(sh(link) + 0x18) as usize;
            for s in (off..off + size).step_by(24) {
                let n = stroff + u32_at(s);
                let end = n + d[n..].iter().position(|&b| b == 0).unwrap();
                if &d[n..end] == name.as_bytes() && u64_at(s + 8) != 0 {
                    return Some((u64_at(s + 8), u64_at(s + 16)));
                }
            }
        }
    }
    None
}

/// Compiles `src` (C) into a shared library `name` in a fresh directory; returns its path.
pub fn compile_so(dir: &Path, name: &str, src: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let so = dir.join(name);
    let ok =
        Command::new("gcc").args(["-g", "-O1", "-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status().expect("gcc runs");
    assert!(ok.success(), "gcc failed for {name}");
    so
}
