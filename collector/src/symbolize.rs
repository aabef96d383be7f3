//! Offline symbolization: return addresses → function, file:line, from the module files on
//! disk (or the descriptors the ledger opened when each module was reported).
//!
//! The target is gone by the time we symbolize, so everything comes from the `Module` records
//! (path, load bias, loadable segments) and the files. DWARF through addr2line first (with
//! inlined frames, innermost first); then the ELF symbol table, or the dynamic symbols of a
//! stripped distribution library; then `module+0xoffset`.

use std::path::PathBuf;
use std::rc::Rc;

use addr2line::Loader;

use crate::dwarf;
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

/// Addresses one report will look up, in the modules of one image: what
/// [`Symbolizer::prepare_next`] symbolizes ahead for the reports that follow.
pub struct Work<'m, 'a> {
    /// Which report: 0 for the next one, 1 for the one after, ...
    pub process: usize,
    pub modules: &'m ModuleMap<'a>,
    /// Return addresses (as [`Symbolizer::symbolize`] takes them).
    pub returns: Vec<u64>,
    /// Function addresses (as [`Symbolizer::symbolize_function`] takes them).
    pub functions: Vec<u64>,
}

/// One answer per address and process, and at most one module file open at a time.
///
/// A module's parsed debug information is large (libpython's or the C library's DWARF: tens of
/// MiB once addr2line has read every unit's abbreviations and line-program header), so
/// [`Symbolizer::prepare_next`] and [`Symbolizer::prepare`] symbolize every address the
/// reports need one module file at a time, for every process at once, and drop each module's
/// parse before opening the next: the peak is the largest module's, not the sum of all of them,
/// and each file is parsed once however many processes loaded it.
#[derive(Default)]
pub struct Symbolizer {
    /// The module file parsed last (its path), kept for lookups nothing prepared.
    open: Option<(String, Option<Loader>)>,
    /// Per process, in report order: frames per looked-up address (a return address, or a
    /// function's address + 1). Addresses mean other things in another process.
    caches: Vec<FxMap<u64, Rc<[Frame]>>>,
    /// The process being reported (index in `caches`), `None` before the first.
    current: Option<usize>,
    /// Per process, in report order: [`Symbolizer::function_name`]'s answers by address.
    names_at: Vec<FxMap<u64, Option<Rc<str>>>>,
    /// Per module file: its function symbols, for [`Symbolizer::function_name`].
    names: FxMap<String, Option<Rc<SymbolNames>>>,
    /// How far the report resolves each stack, by (image address, resource kind, stack id):
    /// decided while preparing (which addresses to symbolize), read again while building.
    /// The images outlive the report's building.
    pub details: FxMap<(usize, residue_protocol::Kind, u32), crate::report::Detail>,
    /// The stacks `details` found summarized, as resolved to decide it (same key): building the
    /// report takes them rather than resolving each stack a second time. The report holds
    /// them afterwards anyway.
    pub owner_resolved: FxMap<(usize, residue_protocol::Kind, u32), crate::report::Resolved>,
}

/// A module's function symbols (`.symtab`, or `.dynsym` in a stripped file), sorted by address:
/// what names the function a return address is in without reading any debug information.
pub struct SymbolNames {
    /// The file the names are read from.
    bytes: memmap2::Mmap,
    /// (file address, name's offset in `bytes`, name's length), sorted by address, one per
    /// address: of aliases (`malloc`, `__libc_malloc`), the greatest name. Names stay in the
    /// file: libpython's table is tens of thousands of symbols, of which a report asks for a
    /// few dozen.
    syms: Vec<(u64, u32, u32)>,
    /// Answers by file address: a stack's frames repeat across stacks.
    found: std::cell::RefCell<FxMap<u64, Option<Rc<str>>>>,
}

impl SymbolNames {
    /// The symbols of the module's best file: its separate debug file (which keeps `.symtab`)
    /// if installed, else the module itself.
    fn load(m: &Module) -> Option<SymbolNames> {
        use object::{Object, ObjectSymbol, SymbolKind};
        let file = candidate_files(m).into_iter().find_map(|p| std::fs::File::open(p).ok())?;
        // SAFETY: a read-only private mapping of a module file, read while this function runs;
        // the files are the target's libraries, which nothing rewrites in place while a report
        // is built (a package upgrade replaces them by rename: the mapping keeps the old file).
        let bytes = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let file = object::File::parse(&*bytes).ok()?;
        let start = bytes.as_ptr() as usize;
        let at = |name: &[u8]| -> Option<(u32, u32)> {
            let off = (name.as_ptr() as usize).checked_sub(start).filter(|&o| o + name.len() <= bytes.len())?;
            Some((u32::try_from(off).ok()?, u32::try_from(name.len()).ok()?))
        };
        let mut syms: Vec<(u64, u32, u32)> = Vec::new();
        let mut take = |s: object::Symbol<'_, '_>| {
            if s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0 {
                // Checked as UTF-8 when asked for (`find`), not here: a report asks for a few
                // dozen of libpython's tens of thousands.
                if let Some((off, len)) = s.name_bytes().ok().and_then(at) {
                    syms.push((s.address(), off, len));
                }
            }
        };
        if file.symbols().next().is_some() {
            file.symbols().for_each(&mut take);
        } else {
            file.dynamic_symbols().for_each(&mut take);
        }
        drop(file);
        let name = |s: &(u64, u32, u32)| &bytes[s.1 as usize..s.1 as usize + s.2 as usize];
        // By address alone, then one symbol per address: `find` answers with the last of the
        // symbols at an address, which sorting by address then name made the greatest name, so
        // the others were never asked for. Half of the C library's symbols share their address
        // with another (aliases); by address alone, the sort takes a third fewer instructions.
        syms.sort_unstable_by_key(|s| s.0);
        syms.dedup_by(|next, kept| {
            if next.0 != kept.0 {
                return false;
            }
            if name(next) > name(kept) {
                *kept = *next;
            }
            true
        });
        Some(SymbolNames { bytes, syms, found: Default::default() })
    }

    /// The function containing file address `probe`, with a compiler clone's suffix
    /// (`.constprop.0`, `.isra.0`, `.part.0`, `.cold`) cut: the function DWARF would name.
    fn find(&self, probe: u64) -> Option<Rc<str>> {
        if let Some(n) = self.found.borrow().get(&probe) {
            return n.clone();
        }
        let name = self.syms.partition_point(|s| s.0 <= probe).checked_sub(1).and_then(|i| {
            let (_, at, len) = self.syms[i];
            // A name that is not UTF-8 names no function we report.
            let raw = std::str::from_utf8(&self.bytes[at as usize..at as usize + len as usize]).ok()?;
            let cut =
                [".constprop.", ".isra.", ".part.", ".cold", ".lto_priv."].iter().filter_map(|p| raw.find(p)).min();
            let raw = cut.map_or(raw, |c| &raw[..c]);
            // Only mangled names need the demangler (C names are most of what is asked).
            let name = if raw.starts_with("_Z") || raw.starts_with("_R") {
                addr2line::demangle_auto(raw.into(), None).into_owned()
            } else {
                raw.to_owned()
            };
            Some(Rc::<str>::from(name))
        });
        self.found.borrow_mut().insert(probe, name.clone());
        name
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The modules whose symbol tables were read (for tests of what a report needs to read).
    #[cfg(test)]
    pub fn names_read(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v
    }

    /// The next process's report starts: its addresses mean other things (an exec'd child has
    /// its own layout). The finished process's answers are dropped.
    pub fn next_process(&mut self) {
        if let Some(c) = self.current.and_then(|i| self.caches.get_mut(i)) {
            *c = FxMap::default();
        }
        if let Some(c) = self.current.and_then(|i| self.names_at.get_mut(i)) {
            *c = FxMap::default();
        }
        self.current = Some(self.current.map_or(0, |i| i + 1));
    }

    fn cache(&mut self) -> &mut FxMap<u64, Rc<[Frame]>> {
        let i = self.current.unwrap_or(0);
        if self.caches.len() <= i {
            self.caches.resize_with(i + 1, FxMap::default);
        }
        &mut self.caches[i]
    }

    fn loader(&mut self, m: &Module) -> Option<&Loader> {
        if self.open.as_ref().is_none_or(|(path, _)| *path != m.path) {
            // Drop the previous module's parse before building the next one.
            self.open = None;
            self.open = Some((m.path.clone(), open_loader(m)));
        }
        self.open.as_ref().and_then(|(_, l)| l.as_ref())
    }

    /// Closes the module file parsed last and gives its memory back to the system.
    fn close(&mut self) {
        if self.open.take().is_some() {
            release_free_memory();
        }
    }

    /// Symbolizes ahead, for the current process, every return address in `returns` and every
    /// function address in `functions` (foreign calls) that [`Symbolizer::symbolize`] and
    /// [`Symbolizer::symbolize_function`] will be asked for, one module file at a time.
    pub fn prepare(
        &mut self,
        modules: &ModuleMap<'_>,
        returns: impl IntoIterator<Item = u64>,
        functions: impl IntoIterator<Item = u64>,
    ) {
        let work = Work {
            process: 0,
            modules,
            returns: returns.into_iter().collect(),
            functions: functions.into_iter().collect(),
        };
        self.prepare_from(self.current.unwrap_or(0), &[work]);
    }

    /// [`Symbolizer::prepare`] for the processes whose reports come next (`Work::process` 0 is
    /// the one after the next [`Symbolizer::next_process`]), all at once: each module file is
    /// parsed once for all of them.
    pub fn prepare_next(&mut self, work: &[Work<'_, '_>]) {
        self.prepare_from(self.current.map_or(0, |i| i + 1), work);
    }

    fn prepare_from(&mut self, first: usize, work: &[Work<'_, '_>]) {
        let Some(n) = work.iter().map(|w| w.process + 1).max() else { return };
        if self.caches.len() < first + n {
            self.caches.resize_with(first + n, FxMap::default);
        }
        // (module path, process, address, which work item maps it), grouped by module file
        // (several records, in one process or several, may share a path).
        let mut todo: Vec<(&str, usize, u64, usize)> = Vec::new();
        for (k, w) in work.iter().enumerate() {
            let p = first + w.process;
            for a in w.returns.iter().copied().chain(w.functions.iter().map(|f| f.wrapping_add(1))) {
                if !self.caches[p].contains_key(&a) {
                    todo.push((w.modules.find(a.wrapping_sub(1)).map_or("", |m| m.path.as_str()), p, a, k));
                }
            }
        }
        todo.sort_unstable();
        // One module file at a time: its DWARF is loaded once for all of its addresses (here,
        // by `dwarf::Sections` where it can), then dropped.
        let mut i = 0;
        while i < todo.len() {
            let path = todo[i].0;
            let end = i + todo[i..].iter().take_while(|t| t.0 == path).count();
            self.close();
            let module = work[todo[i].3].modules.find(todo[i].2.wrapping_sub(1));
            // Only the units these addresses are in are read and parsed.
            let probes: Vec<u64> = todo[i..end]
                .iter()
                .filter_map(|&(_, _, a, k)| Self::place(work[k].modules, a).map(|(_, probe, _)| probe))
                .collect();
            let mut sections = module
                .and_then(|m| candidate_files(m).into_iter().next())
                .and_then(|f| dwarf::Sections::load(&f, &probes));
            if let Some(sections) = sections.as_mut() {
                sections.keep_units_for(&probes);
            }
            let parsed = sections.as_ref().and_then(dwarf::Sections::parse);
            for &(_, p, a, k) in &todo[i..end] {
                if !self.caches[p].contains_key(&a) {
                    let frames: Rc<[Frame]> = match &parsed {
                        Some(parsed) => lookup_in(parsed, work[k].modules, a),
                        None => self.lookup(work[k].modules, a),
                    }
                    .into();
                    self.caches[p].insert(a, frames);
                }
            }
            if sections.is_some() {
                drop(parsed);
                drop(sections);
                release_free_memory();
            }
            i = end;
        }
        self.close();
    }

    /// The function a return address is in, by the module's symbol table alone (no debug
    /// information is read: cheap where a module's DWARF is tens of MiB). For the report's
    /// decisions that hang on a few known C function names (allocator wrappers, our hooks, the
    /// evaluation loop), which the symbol table and DWARF's outermost frame spell alike.
    pub fn function_name(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Option<Rc<str>> {
        // Asked for every frame of every stack the owner rules look at: answered per address
        // (in the current process) before any module lookup.
        let p = self.current.unwrap_or(0);
        if self.names_at.len() <= p {
            self.names_at.resize_with(p + 1, FxMap::default);
        }
        if let Some(n) = self.names_at[p].get(&addr) {
            return n.clone();
        }
        let name = self.module_function_name(modules, addr);
        self.names_at[p].insert(addr, name.clone());
        name
    }

    fn module_function_name(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Option<Rc<str>> {
        let m = modules.find(addr.wrapping_sub(1))?;
        let names = match self.names.get(&m.path) {
            Some(n) => n.clone(),
            None => {
                let n = SymbolNames::load(m).map(Rc::new);
                self.names.insert(m.path.clone(), n.clone());
                n
            }
        }?;
        names.find(addr.wrapping_sub(1).wrapping_sub(m.base))
    }

    /// Frames for one return address, innermost (most inlined) first.
    pub fn symbolize(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Rc<[Frame]> {
        if let Some(f) = self.cache().get(&addr) {
            return f.clone();
        }
        let frames: Rc<[Frame]> = self.lookup(modules, addr).into();
        self.cache().insert(addr, frames.clone());
        frames
    }

    /// Frames for a function's own address (not a return address: no `- 1`), such as the
    /// function a foreign call was calling.
    pub fn symbolize_function(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Vec<Frame> {
        let mut v = self.symbolize(modules, addr.wrapping_add(1)).to_vec();
        for f in &mut v {
            f.address = addr;
            f.offset = f.offset.map(|o| o.wrapping_sub(1));
        }
        v
    }

    fn lookup(&mut self, modules: &ModuleMap<'_>, addr: u64) -> Vec<Frame> {
        let Some((m, probe, base)) = Self::place(modules, addr) else { return vec![Self::nowhere(addr)] };
        let Some(loader) = self.loader(m) else { return vec![base] };
        let frames = frames_of(loader.find_frames(probe).ok(), &base);
        if frames.iter().any(|f| f.function.is_some()) {
            return frames;
        }
        // No DWARF for this address: the symbol table (or, in a stripped library, the
        // dynamic symbols) still names exported functions.
        let name = loader.find_symbol(probe).map(|s| addr2line::demangle_auto(s.into(), None).into_owned());
        named(frames, name, base)
    }

    /// The module `addr` (a return address) is in, the file address of its call instruction,
    /// and the frame that says only that.
    fn place<'m>(modules: &ModuleMap<'m>, addr: u64) -> Option<(&'m Module, u64, Frame)> {
        // A return address points after the call; the call itself is at addr - 1 (which matters
        // when the call is the last instruction of a function or of a module).
        let m = modules.find(addr.wrapping_sub(1))?;
        let probe = addr.wrapping_sub(1).wrapping_sub(m.base);
        let base = Frame { module: Some(m.path.clone()), offset: Some(probe.wrapping_add(1)), ..Self::nowhere(addr) };
        Some((m, probe, base))
    }

    fn nowhere(addr: u64) -> Frame {
        Frame { address: addr, function: None, module: None, offset: None, file: None, line: None, inlined: false }
    }
}

/// As [`Symbolizer::lookup`], through a file loaded by [`dwarf::Sections`] for the module
/// `addr` is in.
fn lookup_in(parsed: &dwarf::Parsed<'_>, modules: &ModuleMap<'_>, addr: u64) -> Vec<Frame> {
    let Some((_, probe, base)) = Symbolizer::place(modules, addr) else { return vec![Symbolizer::nowhere(addr)] };
    let frames = frames_of(parsed.find_frames(probe), &base);
    if frames.iter().any(|f| f.function.is_some()) {
        return frames;
    }
    let name = parsed.find_symbol(probe).map(|s| addr2line::demangle_auto(s.into(), None).into_owned());
    named(frames, name, base)
}

/// The frames addr2line found for one address, innermost (most inlined) first.
pub(crate) fn frames_of<R: addr2line::gimli::Reader>(
    found: Option<addr2line::FrameIter<'_, R>>,
    base: &Frame,
) -> Vec<Frame> {
    let mut out = Vec::new();
    if let Some(mut iter) = found {
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
    out
}

/// `frames` (none of which has a function) named by the symbol table's `name`.
fn named(mut frames: Vec<Frame>, name: Option<String>, base: Frame) -> Vec<Frame> {
    match frames.first_mut() {
        Some(f) => f.function = name,
        None => frames.push(Frame { function: name, ..base }),
    }
    frames
}

/// Returns the heap's free pages to the system (glibc keeps them otherwise): after a module's
/// parse is dropped, and before the report is built, so that the collector's peak is what it
/// holds, not what it once held.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// Opens the best file with debug information for a module: a separate debug file installed
/// by a `-dbg` package (found by build-id), else the module itself through the descriptor
/// opened when it was loaded (still valid if the file was deleted or replaced), else its path.
fn open_loader(m: &Module) -> Option<Loader> {
    candidate_files(m).into_iter().find_map(|p| Loader::new(p).ok())
}

/// The files that may describe a module, best first: a separate debug file installed by a
/// `-dbg` package (found by build-id), the module itself through the descriptor opened when it
/// was loaded (still valid if the file was deleted or replaced), its path.
fn candidate_files(m: &Module) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if m.build_id.len() >= 2 {
        let hex: String = m.build_id.iter().map(|b| format!("{b:02x}")).collect();
        let debug = PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
        if debug.is_file() {
            out.push(debug);
        }
    }
    if let Some(file) = &m.file {
        use std::os::fd::AsRawFd;
        out.push(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())));
    }
    if m.path.starts_with('/') {
        out.push(PathBuf::from(&m.path));
    }
    out
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

    /// Symbolizing ahead, one module at a time, answers exactly what looking up on demand does
    /// (inlined frames, function addresses, addresses in no module), and closes every module.
    #[test]
    fn prepare_answers_as_lookups_do_and_closes_modules() {
        let dir = std::env::temp_dir().join(format!("residue-prep-{}", std::process::id()));
        let so = crate::testutil::compile_so(
            &dir,
            "libprep.so",
            "#include <stdlib.h>\n#include <string.h>\n\
             static inline __attribute__((always_inline)) char *copy(const char *s) { return strdup(s); }\n\
             char *prep_name(const char *s) { char *p = copy(s); return p; }\n",
        );
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("libc present");
        let data = std::fs::read(&so).unwrap();
        let (start, size) = elf_symbol(&data, "prep_name").expect("symbol in .symtab");
        let call = file_bytes_at(&data, start, size).iter().position(|&b| b == 0xe8).expect("a call");
        let ret = start + call as u64 + 5;
        let (malloc, _) = elf_symbol(&std::fs::read(libc).unwrap(), "malloc").expect("malloc in dynsym");
        let (b_so, b_libc) = (0x7f00_0000_0000u64, 0x7e00_0000_0000u64);
        let mods =
            [module(so.to_str().unwrap(), b_so, vec![seg(0, 0x10000)]), module(libc, b_libc, vec![seg(0, 0x100_0000)])];
        let map = ModuleMap::new(&mods);
        let returns = [b_so + ret, b_libc + malloc + 4, 0x1234, b_so + ret];
        let functions = [b_so + start, b_libc + malloc];
        let mut lazy = Symbolizer::new();
        let mut ahead = Symbolizer::new();
        ahead.prepare(&map, returns, functions);
        assert!(ahead.open.is_none(), "every module file is closed after preparing");
        for a in returns {
            assert_eq!(ahead.symbolize(&map, a), lazy.symbolize(&map, a), "{a:#x}");
        }
        for f in functions {
            assert_eq!(ahead.symbolize_function(&map, f), lazy.symbolize_function(&map, f), "{f:#x}");
        }
        assert!(ahead.open.is_none(), "answered from the cache alone");
        let names: Vec<_> = ahead.symbolize(&map, b_so + ret).iter().map(|f| f.function.clone().unwrap()).collect();
        assert_eq!(names, ["copy", "prep_name"]);
        assert_eq!(ahead.symbolize_function(&map, b_so + start)[0].function.as_deref(), Some("prep_name"));

        // Two processes ahead, the library at another place in the second: each gets its own
        // answers, the file parsed once for both.
        let mods2 = [module(so.to_str().unwrap(), b_libc, vec![seg(0, 0x10000)])];
        let map2 = ModuleMap::new(&mods2);
        let mut s = Symbolizer::new();
        let work = [
            Work { process: 0, modules: &map, returns: vec![b_so + ret], functions: vec![] },
            Work { process: 1, modules: &map2, returns: vec![b_libc + ret], functions: vec![b_libc + start] },
        ];
        s.prepare_next(&work);
        assert!(s.open.is_none());
        s.next_process();
        assert_eq!(s.symbolize(&map, b_so + ret), lazy.symbolize(&map, b_so + ret));
        s.next_process();
        assert!(s.caches[0].is_empty(), "a finished process's answers are dropped");
        let mut lazy2 = Symbolizer::new();
        assert_eq!(s.symbolize(&map2, b_libc + ret), lazy2.symbolize(&map2, b_libc + ret));
        assert_eq!(s.symbolize(&map2, b_libc + ret)[1].function.as_deref(), Some("prep_name"));
        assert_eq!(s.symbolize_function(&map2, b_libc + start), lazy2.symbolize_function(&map2, b_libc + start));
        assert!(s.open.is_none(), "answered from the cache alone");
        std::fs::remove_dir_all(&dir).unwrap();
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

    /// One symbol per address, the greatest name of those there: the answers the table gave
    /// when it kept every alias, sorted by address then name (`find` takes the last at an
    /// address). libc's symbols have hundreds of aliases.
    #[test]
    fn symbol_table_keeps_the_greatest_alias() {
        use object::{Object, ObjectSymbol, SymbolKind};
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("libc present");
        let names = SymbolNames::load(&module(libc, 0, vec![seg(0, 0x100_0000)])).expect("libc's symbols");
        let data = std::fs::read(libc).unwrap();
        let file = object::File::parse(&*data).unwrap();
        // The table `load` reads: `.symtab` if the file kept one.
        let table = if file.symbols().next().is_some() { file.symbols() } else { file.dynamic_symbols() };
        let mut all: Vec<(u64, &[u8])> = table
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
            .map(|s| (s.address(), s.name_bytes().unwrap()))
            .collect();
        all.sort_unstable();
        let last: Vec<(u64, &[u8])> = all
            .iter()
            .enumerate()
            .filter(|&(i, s)| all.get(i + 1).is_none_or(|n| n.0 != s.0))
            .map(|(_, &s)| s)
            .collect();
        assert!(last.len() < all.len(), "libc has aliases");
        let kept: Vec<(u64, &[u8])> =
            names.syms.iter().map(|&(a, at, len)| (a, &names.bytes[at as usize..(at + len) as usize])).collect();
        assert_eq!(kept, last);
    }
}
