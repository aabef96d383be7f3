//! Offline symbolization: return addresses → function, file:line, from the module files on
//! disk (or the descriptors the ledger opened when each module was reported).
//!
//! The target is gone by the time we symbolize, so everything comes from the `Module` records
//! (path, load bias, loadable segments) and the files. DWARF through addr2line first (with
//! inlined frames, innermost first); then the ELF symbol table, or the dynamic symbols of a
//! stripped distribution library; then `module+0xoffset`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use addr2line::Loader;

use crate::ledger::{FxMap, Module};

/// One symbolized frame. A return address can give several (inlined calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Runtime return address as captured.
    pub address: u64,
    pub function: Option<String>,
    /// Path of the module containing the address, `None` if no module does.
    pub module: Option<String>,
    /// Offset of the address in the module's file address space.
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// This frame was inlined into the next one (same return address).
    pub inlined: bool,
}

/// Address → module lookup over one image's modules.
pub struct ModuleMap<'a> {
    /// `(start, end, module)` sorted by start.
    ranges: Vec<(u64, u64, &'a Module)>,
}

impl<'a> ModuleMap<'a> {
    pub fn new(modules: &'a [Module]) -> Self {
        let mut ranges = Vec::new();
        // Later records first, and loaded before unloaded: if a dlclose'd library's range was
        // reused by another library, the sort below keeps the preferred one first among equals.
        let mut order: Vec<&Module> = modules.iter().collect();
        order.sort_by_key(|m| m.unloaded);
        for m in order {
            for s in &m.segments {
                let start = m.base.wrapping_add(s.vaddr);
                ranges.push((start, start.saturating_add(s.memsz), m));
            }
        }
        ranges.sort_by_key(|r| r.0);
        ModuleMap { ranges }
    }

    /// The module whose loadable segments contain `addr`.
    pub fn find(&self, addr: u64) -> Option<&'a Module> {
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        // Segments do not overlap within one address space at one time; look back a few
        // entries to cover an unloaded module's range overlapping a later one.
        self.ranges[..i].iter().rev().take(8).find(|r| addr < r.1).map(|r| r.2)
    }
}

/// Caches one addr2line loader per module file and one answer per address.
#[derive(Default)]
pub struct Symbolizer {
    loaders: HashMap<String, Option<Loader>>,
    cache: FxMap<u64, Rc<[Frame]>>,
}

impl Symbolizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Another process's stacks follow: its addresses mean other things (an exec'd child has its
    /// own layout), but the module files already parsed can serve it too.
    pub fn next_process(&mut self) {
        self.cache.clear();
    }

    fn loader(&mut self, m: &Module) -> Option<&Loader> {
        self.loaders.entry(m.path.clone()).or_insert_with(|| open_loader(m)).as_ref()
    }

    /// Frames for one return address, innermost (most inlined) first.
    pub fn symbolize(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Rc<[Frame]> {
        if let Some(f) = self.cache.get(&addr) {
            return f.clone();
        }
        let frames: Rc<[Frame]> = self.lookup(modules, addr).into();
        self.cache.insert(addr, frames.clone());
        frames
    }

    /// Frames for a function's own address (not a return address: no `- 1`), such as the
    /// function a foreign call was calling.
    pub fn symbolize_function(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Vec<Frame> {
        let mut v = self.lookup(modules, addr.wrapping_add(1));
        for f in &mut v {
            f.address = addr;
            f.offset = f.offset.map(|o| o.wrapping_sub(1));
        }
        v
    }

    fn lookup(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Vec<Frame> {
        let base =
            Frame { address: addr, function: None, module: None, offset: None, file: None, line: None, inlined: false };
        // A return address points after the call; the call itself is at addr - 1 (which matters
        // when the call is the last instruction of a function or of a module).
        let Some(m) = modules.find(addr.wrapping_sub(1)) else { return vec![base] };
        let probe = addr.wrapping_sub(1).wrapping_sub(m.base);
        let base = Frame { module: Some(m.path.clone()), offset: Some(probe.wrapping_add(1)), ..base };
        let Some(loader) = self.loader(m) else { return vec![base] };
        let mut out = Vec::new();
        if let Ok(mut iter) = loader.find_frames(probe) {
            while let Ok(Some(f)) = iter.next() {
                let function = f.function.as_ref().and_then(|n| n.demangle().ok()).map(|n| n.into_owned());
                let (file, line) = match &f.location {
                    Some(l) => (l.file.map(str::to_owned), l.line),
                    None => (None, None),
                };
                out.push(Frame { function, file, line, inlined: true, ..base.clone() });
            }
        }
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        if out.iter().all(|f| f.function.is_none()) {
            // No DWARF for this address: the symbol table (or, in a stripped library, the
            // dynamic symbols) still names exported functions.
            let name = loader.find_symbol(probe).map(|s| addr2line::demangle_auto(s.into(), None).into_owned());
            match out.first_mut() {
                Some(f) => f.function = name,
                None => out.push(Frame { function: name, ..base }),
            }
        }
        out
    }
}

/// Opens the best file with debug information for a module: a separate debug file installed
/// by a `-dbg` package (found by build-id), else the module itself through the descriptor
/// opened when it was loaded (still valid if the file was deleted or replaced), else its path.
fn open_loader(m: &Module) -> Option<Loader> {
    if m.build_id.len() >= 2 {
        let hex: String = m.build_id.iter().map(|b| format!("{b:02x}")).collect();
        let debug = PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
        if debug.is_file() {
            if let Ok(l) = Loader::new(&debug) {
                return Some(l);
            }
        }
    }
    if let Some(file) = &m.file {
        use std::os::fd::AsRawFd;
        let via_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        if let Ok(l) = Loader::new(via_fd) {
            return Some(l);
        }
    }
    if m.path.starts_with('/') {
        return Loader::new(&m.path).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::elf_symbol;
    use residue_protocol::Segment;
    use std::process::Command;

    fn module(path: &str, base: u64, segments: Vec<Segment>) -> Module {
        Module {
            id: 1,
            base,
            path: path.into(),
            build_id: vec![],
            segments,
            unloaded: false,
            runtime: false,
            file: std::fs::File::open(path).ok().map(std::sync::Arc::new),
        }
    }

    fn seg(vaddr: u64, memsz: u64) -> Segment {
        Segment { vaddr, memsz, offset: vaddr, flags: 5 }
    }

    /// Compiles a small shared library with DWARF and an always-inlined helper, then
    /// symbolizes a return address inside the helper as if the library were loaded at a bias.
    #[test]
    fn symbolizes_real_dwarf_with_inlined_frames() {
        let dir = std::env::temp_dir().join(format!("residue-sym-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("inl.c");
        std::fs::write(
            &src,
            "#include <stdlib.h>\n\
             #include <string.h>\n\
             static inline __attribute__((always_inline)) char *make_copy(const char *s) {\n\
             \x20   return strdup(s);\n\
             }\n\
             char *leaky_name(const char *s) {\n\
             \x20   char *p = make_copy(s);\n\
             \x20   return p;\n\
             }\n",
        )
        .unwrap();
        let so = dir.join("libinl.so");
        let ok = Command::new("gcc")
            .args(["-g", "-O1", "-shared", "-fPIC", "-fno-omit-frame-pointer", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .expect("gcc runs");
        assert!(ok.success());
        // Find the call to strdup inside leaky_name with objdump-free means: scan the function
        // bytes for the `call` opcode (e8) and take the address after it.
        let data = std::fs::read(&so).unwrap();
        let (start, size) = elf_symbol(&data, "leaky_name").expect("symbol in .symtab");
        let text = file_bytes_at(&data, start, size);
        let call = text.iter().position(|&b| b == 0xe8).expect("a call in leaky_name");
        let ret = start + call as u64 + 5;

        let bias = 0x7f00_0000_0000;
        let mods = [module(so.to_str().unwrap(), bias, vec![seg(0, 0x10000)])];
        let map = ModuleMap::new(&mods);
        let mut s = Symbolizer::new();
        let frames = s.symbolize(&map, bias + ret);
        let names: Vec<_> = frames.iter().map(|f| f.function.as_deref().unwrap_or("?")).collect();
        assert_eq!(names, ["make_copy", "leaky_name"], "{frames:?}");
        assert!(frames[0].inlined && !frames[1].inlined);
        assert_eq!(frames[0].line, Some(4));
        assert_eq!(frames[1].line, Some(7));
        assert!(frames[0].file.as_deref().unwrap().ends_with("inl.c"));
        assert_eq!(frames[0].offset, Some(ret));
        // Outside every module: the raw address alone.
        let f = s.symbolize(&map, 0x1234);
        assert_eq!(f[0].module, None);
        // Deleting the library does not stop symbolization through the descriptor we hold.
        let mods2 = [module(so.to_str().unwrap(), bias, vec![seg(0, 0x10000)])];
        std::fs::remove_dir_all(&dir).unwrap();
        let map2 = ModuleMap::new(&mods2);
        let f = Symbolizer::new().symbolize(&map2, bias + ret);
        assert_eq!(f.last().unwrap().function.as_deref(), Some("leaky_name"));
    }

    /// A stripped distribution library: libc's dynamic symbols still name `malloc`.
    #[test]
    fn falls_back_to_dynamic_symbols() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("libc present");
        let data = std::fs::read(libc).unwrap();
        let (addr, _) = elf_symbol(&data, "malloc").expect("malloc in dynsym");
        let mods = [module(libc, 0x7000_0000, vec![seg(0, 0x100_0000)])];
        let map = ModuleMap::new(&mods);
        let f = Symbolizer::new().symbolize(&map, 0x7000_0000 + addr + 4);
        // `malloc` and its alias `__libc_malloc` share the address: either names it.
        assert!(f[0].function.as_deref().is_some_and(|n| n.ends_with("malloc")), "{f:?}");
        assert_eq!(f[0].module.as_deref(), Some(libc));
    }

    #[test]
    fn module_map_picks_the_containing_segment() {
        let mods = [
            module("/nonexistent/a.so", 0x1000, vec![seg(0, 0x100), seg(0x200, 0x100)]),
            module("/nonexistent/b.so", 0x5000, vec![seg(0, 0x100)]),
        ];
        let map = ModuleMap::new(&mods);
        assert_eq!(map.find(0x1050).unwrap().path, "/nonexistent/a.so");
        assert!(map.find(0x1150).is_none(), "gap between segments");
        assert_eq!(map.find(0x1250).unwrap().path, "/nonexistent/a.so");
        assert_eq!(map.find(0x5000).unwrap().path, "/nonexistent/b.so");
        assert!(map.find(0x5100).is_none());
        // Unreadable module: module+offset only.
        let f = Symbolizer::new().symbolize(&map, 0x5010);
        assert_eq!((f[0].function.as_deref(), f[0].offset), (None, Some(0x10)));
    }

    /// Bytes at a virtual address of a small shared library (text is mapped at offset = vaddr).
    fn file_bytes_at(d: &[u8], vaddr: u64, size: u64) -> &[u8] {
        &d[vaddr as usize..(vaddr + size) as usize]
    }
}
