//! The miss path: find the CFI row for an address in its module's `.eh_frame`.
//!
//! The module comes from glibc's `_dl_find_object` (2.35+), which is lock-free and
//! async-signal-safe, unlike `dl_iterate_phdr` (loader lock: deadlock against a thread inside
//! dlopen that mallocs). gimli evaluates the CFI program in a fixed-size context on the stack,
//! so nothing here allocates.

use gimli::{
    BaseAddresses, CommonInformationEntry, EhFrame, EhFrameHdr, EndianSlice, NativeEndian, ReaderOffset, Register,
    RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow,
};

/// `struct dl_find_object` from glibc 2.35+ `<dlfcn.h>` (the libc crate does not have it).
#[repr(C)]
struct DlFindObject {
    dlfo_flags: u64,
    dlfo_map_start: *mut libc::c_void,
    dlfo_map_end: *mut libc::c_void,
    dlfo_link_map: *mut libc::c_void,
    dlfo_eh_frame: *mut libc::c_void,
    reserved: [u64; 7],
}

extern "C" {
    /// glibc 2.35+: the module containing `address`, lock-free. 0 on success, -1 if none.
    fn _dl_find_object(address: *mut libc::c_void, result: *mut DlFindObject) -> libc::c_int;
}

/// Fixed-size gimli storage: a row holds at most this many register rules (x86-64 code
/// describes about ten), and `DW_CFA_remember_state` nests at most this deep. Overflowing
/// either is an error, which means a libgcc fallback, never an allocation.
#[derive(Debug)]
pub(crate) struct InlineStorage;

impl<T: ReaderOffset> UnwindContextStorage<T> for InlineStorage {
    type Rules = [(Register, RegisterRule<T>); 24];
    type Stack = [UnwindTableRow<T, Self>; 3];
}

pub(crate) type Row = UnwindTableRow<usize, InlineStorage>;
pub(crate) type Cie<'a> = CommonInformationEntry<EndianSlice<'a, NativeEndian>>;

/// Why no row was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No loaded module contains the address (JIT code, garbage): libgcc may know more (JITs
    /// register their tables with it).
    NoModule,
    /// The module has no usable `.eh_frame_hdr` or no FDE for the address, or the CFI failed to
    /// parse.
    NoFde,
}

/// Loaded segments remembered per module (ELF files have a handful).
const MAX_LOADS: usize = 16;

/// Exact extents of one module's unwind tables and loaded segments, from its program headers,
/// and what reading them from the module's file takes (module `file_tables`).
pub(crate) struct Tables {
    /// `.eh_frame_hdr`: the PT_GNU_EH_FRAME segment.
    pub hdr: usize,
    pub hdr_len: usize,
    /// File-backed extents `[start, end)` of the PT_LOAD segments, and where each starts in
    /// the file.
    loads: [(usize, usize, u64); MAX_LOADS],
    nloads: usize,
    /// The program header table in memory, and its entry count.
    pub phdrs: (usize, usize),
    /// The load bias: a virtual address in the module's headers plus this is its address.
    pub bias: usize,
    /// The module's name as the loader keeps it (`l_name`): its path, empty for the main
    /// program.
    name: *const libc::c_char,
}

impl Tables {
    /// End of the loaded segment containing `addr`.
    fn segment_end(&self, addr: usize) -> Option<usize> {
        self.loads[..self.nloads].iter().find(|&&(lo, hi, _)| lo <= addr && addr < hi).map(|&(_, hi, _)| hi)
    }

    /// Where in the file the loaded bytes at `addr` come from, and how many bytes from there
    /// on the same segment holds.
    pub fn file_offset_from(&self, addr: usize) -> Option<(u64, usize)> {
        let &(lo, hi, offset) = self.loads[..self.nloads].iter().find(|&&(lo, hi, _)| lo <= addr && addr < hi)?;
        Some((offset + (addr - lo) as u64, hi - addr))
    }

    /// Where in the file the `len` loaded bytes at `addr` come from, if one segment holds them
    /// all.
    pub fn file_offset(&self, addr: usize, len: usize) -> Option<u64> {
        let (offset, room) = self.file_offset_from(addr)?;
        (len <= room).then_some(offset)
    }

    /// The path to open for the module's file: the main program's through /proc (the file it
    /// was started from, even if renamed since); a library's own path if absolute. None for
    /// the vdso (no file) and for libraries loaded by a relative path (relative to a working
    /// directory that may have changed).
    pub fn path(&self) -> Option<&std::ffi::CStr> {
        // SAFETY: `l_name` of a loaded module is a NUL-terminated string the loader keeps for
        // as long as the module stays loaded (see `with_row`).
        let name = unsafe { std::ffi::CStr::from_ptr(self.name) };
        match name.to_bytes().first() {
            None => Some(c"/proc/self/exe"),
            Some(b'/') => Some(name),
            Some(_) => None,
        }
    }
}

/// Largest ELF header + program header table read from the module's first page.
const PAGE: usize = 4096;

/// Where the module's ELF program headers are, and how many: a library's sit in the first page
/// of its first mapped segment (`dlfo_map_start`: mapping is page-granular, so that page is
/// readable), after its ELF header. The main program's are where the kernel put them
/// (`AT_PHDR`): glibc reports a main program linked with separate code segments as starting
/// at its first executable segment (node: 0xb72000, its ELF header at 0x400000).
fn program_headers(dlfo: &DlFindObject) -> Option<(usize, usize)> {
    let start = dlfo.dlfo_map_start as usize;
    let phent = std::mem::size_of::<libc::Elf64_Phdr>();
    let ehdr_size = std::mem::size_of::<libc::Elf64_Ehdr>();
    // SAFETY: the first page of the module's mapping is readable (see above); read unaligned,
    // as plain bytes that may or may not be an ELF header.
    let ehdr = unsafe { std::ptr::read_unaligned(start as *const libc::Elf64_Ehdr) };
    if ehdr.e_ident[..4] == *b"\x7fELF" && ehdr.e_ident[4] == 2 && ehdr_size <= PAGE {
        let phoff = usize::try_from(ehdr.e_phoff).ok()?;
        let phnum = usize::from(ehdr.e_phnum);
        if usize::from(ehdr.e_phentsize) != phent || phoff.checked_add(phnum.checked_mul(phent)?)? > PAGE {
            return None;
        }
        return Some((start + phoff, phnum));
    }
    // SAFETY: `l_name`, the second field of the public `struct link_map`, points at the
    // module's NUL-terminated name, the empty string for the main program.
    let main = unsafe { *(*(dlfo.dlfo_link_map as *const *const u8).add(1)) == 0 };
    if !main {
        return None;
    }
    // SAFETY: getauxval reads the process's auxiliary vector; no preconditions.
    let (phdr, phnum, size) =
        unsafe { (libc::getauxval(libc::AT_PHDR), libc::getauxval(libc::AT_PHNUM), libc::getauxval(libc::AT_PHENT)) };
    if phdr == 0 || size as usize != phent {
        return None;
    }
    Some((phdr as usize, phnum as usize))
}

/// Find the module's tables through its ELF program headers ([`program_headers`]). Slices
/// handed to gimli are then bounded by real segment extents: even a corrupt table cannot make
/// gimli read the unmapped or PROT_NONE gaps between segments.
fn tables(dlfo: &DlFindObject) -> Option<Tables> {
    let hdr = dlfo.dlfo_eh_frame as usize;
    if dlfo.dlfo_map_start.is_null() || hdr == 0 || dlfo.dlfo_link_map.is_null() {
        return None;
    }
    let (phdrs, phnum) = program_headers(dlfo)?;
    let phent = std::mem::size_of::<libc::Elf64_Phdr>();
    // SAFETY: `l_addr` (the load bias) and `l_name` are the first two fields of the public
    // `struct link_map`, and `dlfo_link_map` points at the live link map of this (loaded)
    // module.
    let (bias, name) = unsafe {
        let map = dlfo.dlfo_link_map as *const usize;
        (*map, *map.add(1) as *const libc::c_char)
    };
    if name.is_null() {
        return None;
    }
    let mut t = Tables { hdr, hdr_len: 0, loads: [(0, 0, 0); MAX_LOADS], nloads: 0, phdrs: (phdrs, phnum), bias, name };
    for i in 0..phnum {
        // SAFETY: inside the program header table found above (a library's first page, or the
        // main program's table the kernel mapped), read unaligned.
        let ph = unsafe { std::ptr::read_unaligned((phdrs + i * phent) as *const libc::Elf64_Phdr) };
        let lo = bias.wrapping_add(ph.p_vaddr as usize);
        let hi = lo.wrapping_add(ph.p_memsz as usize);
        match ph.p_type {
            libc::PT_GNU_EH_FRAME if lo == hdr => t.hdr_len = hi - lo,
            // The file-backed part only: the tables never live in the zero-filled tail.
            libc::PT_LOAD if t.nloads < MAX_LOADS => {
                t.loads[t.nloads] = (lo, lo.wrapping_add(ph.p_filesz as usize), ph.p_offset);
                t.nloads += 1;
            }
            _ => {}
        }
    }
    if t.hdr_len == 0 || hdr.checked_add(t.hdr_len)? > t.segment_end(hdr)? {
        return None;
    }
    Some(t)
}

/// Evaluate the CFI row in effect at `pc` and hand it to `convert`, with the FDE's CIE: read
/// from the module's file where it can be, for a process's first misses (module
/// `file_tables`), else from its mapping.
///
/// `pc` must be an address inside a module that stays loaded during the call: the interposer
/// only passes addresses taken from the current thread's stack, whose modules cannot be
/// unloaded under it.
#[inline(never)]
#[cold]
pub(crate) fn with_row<T>(pc: u64, convert: impl Fn(&Row, &Cie<'_>) -> T) -> Result<T, Miss> {
    with_row_from(pc, Source::Either, convert)
}

/// Where [`with_row_from`] reads the tables.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Source {
    /// The file if it can answer and this miss may read it, else the mapping.
    Either,
    /// The mapping only (tests compare the two).
    #[cfg(test)]
    Mapping,
    /// The file only: `NoFde` where it cannot answer.
    #[cfg(test)]
    File,
}

/// [`with_row`], reading the tables where `source` says.
pub(crate) fn with_row_from<T>(pc: u64, source: Source, convert: impl Fn(&Row, &Cie<'_>) -> T) -> Result<T, Miss> {
    // SAFETY: `_dl_find_object` only writes the result struct, which is plain data.
    let mut dlfo: DlFindObject = unsafe { std::mem::zeroed() };
    // SAFETY: `_dl_find_object` accepts any address and a valid out-pointer.
    if unsafe { _dl_find_object(pc as *mut libc::c_void, &mut dlfo) } != 0 {
        return Err(Miss::NoModule);
    }
    let t = tables(&dlfo).ok_or(Miss::NoFde)?;
    match source {
        Source::Either if crate::file_tables::take_turn() => {
            if let Some(out) = crate::file_tables::row(&t, pc, &convert) {
                return Ok(out);
            }
        }
        Source::Either => {}
        #[cfg(test)]
        Source::File => return crate::file_tables::row(&t, pc, &convert).ok_or(Miss::NoFde),
        #[cfg(test)]
        Source::Mapping => {}
    }
    // SAFETY: the PT_GNU_EH_FRAME segment, inside a loaded PT_LOAD segment of a module that
    // stays loaded (see above).
    let hdr_bytes = unsafe { std::slice::from_raw_parts(t.hdr as *const u8, t.hdr_len) };
    let bases = BaseAddresses::default().set_eh_frame_hdr(t.hdr as u64);
    let parsed = EhFrameHdr::new(hdr_bytes, NativeEndian).parse(&bases, 8).map_err(|_| Miss::NoFde)?;
    let eh_frame = parsed.eh_frame_ptr().direct().map_err(|_| Miss::NoFde)? as usize;
    let eh_end = t.segment_end(eh_frame).ok_or(Miss::NoFde)?;
    // SAFETY: from `.eh_frame` to the end of the file-backed part of its loaded segment: mapped
    // and readable for as long as the module stays loaded.
    let eh_bytes = unsafe { std::slice::from_raw_parts(eh_frame as *const u8, eh_end - eh_frame) };
    let mut section = EhFrame::new(eh_bytes, NativeEndian);
    section.set_address_size(8);
    let bases = bases.set_eh_frame(eh_frame as u64);
    let table = parsed.table().ok_or(Miss::NoFde)?;
    let fde = table.fde_for_address(&section, &bases, pc, EhFrame::cie_from_offset).map_err(|_| Miss::NoFde)?;
    let mut ctx = UnwindContext::<usize, InlineStorage>::new_in();
    let row = fde.unwind_info_for_address(&section, &bases, &mut ctx, pc).map_err(|_| Miss::NoFde)?;
    Ok(convert(row, fde.cie()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables are found and evaluated in real system libraries (their own layouts, their own
    /// linkers' choices), not only in this test binary.
    #[test]
    fn rows_for_functions_in_system_libraries() {
        let libs = [
            (c"libc.so.6", c"qsort"),
            (c"libz.so.1", c"deflate"),
            (c"libstdc++.so.6", c"__cxa_allocate_exception"),
            (c"libcrypto.so.3", c"EVP_DigestInit_ex"),
            (c"libgcc_s.so.1", c"_Unwind_Backtrace"),
        ];
        let mut found = 0;
        for (lib, sym) in libs {
            // SAFETY: plain dlopen/dlsym with C strings; the handle is kept open (never closed)
            // so the module stays loaded while its tables are read.
            let addr = unsafe {
                let h = libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if h.is_null() {
                    continue;
                }
                libc::dlsym(h, sym.as_ptr()) as u64
            };
            assert_ne!(addr, 0, "{sym:?} not in {lib:?}");
            let start = with_row(addr + 1, |row, _| row.start_address());
            assert!(matches!(start, Ok(s) if s <= addr + 1), "{lib:?} {sym:?}: {start:?}");
            found += 1;
        }
        assert!(found >= 2, "libc and libgcc_s at least");
        // An address no module holds.
        assert_eq!(with_row(8, |_, _| ()).unwrap_err(), Miss::NoModule);
    }

    /// What a row says, for comparing two reads of it. A DWARF expression is named by where it
    /// lies in the section read, which differs between the two: its length stands for it.
    fn described(row: &Row, cie: &Cie<'_>) -> String {
        let mut s = format!(
            "{row:?} ra={:?} code={} data={}",
            cie.return_address_register(),
            cie.code_alignment_factor(),
            cie.data_alignment_factor()
        );
        while let Some(at) = s.find("UnwindExpression { offset: ") {
            let end = at + s[at..].find(',').expect("a length follows");
            s.replace_range(at..=end, "UnwindExpression {");
        }
        s
    }

    /// Reading the tables from the file gives the rows reading the mapping gives, at every 61st
    /// address all through three real modules (the test program, libc and libgcc_s: their
    /// code, its gaps and their data), and the file answers nearly all of them itself (here,
    /// all): only FDEs longer than its buffer are left to the mapping.
    #[test]
    fn the_file_gives_the_rows_the_mapping_gives() {
        let anchors = [
            the_file_gives_the_rows_the_mapping_gives as *const () as usize,
            libc::qsort as *const () as usize,
            // SAFETY: as above, a plain dlopen/dlsym, the handle kept open.
            unsafe {
                let h = libc::dlopen(c"libgcc_s.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                assert!(!h.is_null());
                libc::dlsym(h, c"_Unwind_Backtrace".as_ptr()) as usize
            },
        ];
        for anchor in anchors {
            // SAFETY: as in `with_row`.
            let mut dlfo: DlFindObject = unsafe { std::mem::zeroed() };
            // SAFETY: as in `with_row`.
            assert_eq!(unsafe { _dl_find_object(anchor as *mut libc::c_void, &mut dlfo) }, 0);
            let (start, end) = (dlfo.dlfo_map_start as u64, dlfo.dlfo_map_end as u64);
            let (mut rows, mut from_file, mut left) = (0, 0, Vec::new());
            for pc in (start..end).step_by(61) {
                let mapped = with_row_from(pc, Source::Mapping, described);
                let filed = with_row_from(pc, Source::File, described);
                match (&mapped, &filed) {
                    (Ok(m), Ok(f)) => {
                        assert_eq!(m, f, "at {pc:#x}");
                        from_file += 1;
                    }
                    (Ok(_), Err(_)) => left.push(pc),
                    (Err(_), Ok(f)) => panic!("at {pc:#x}: only the file has a row: {f}"),
                    (Err(_), Err(_)) => {}
                }
                rows += usize::from(mapped.is_ok());
            }
            assert!(rows > 100, "{anchor:#x}: {rows} rows");
            assert!(
                left.len() * 100 <= rows,
                "{anchor:#x}: {} of {rows} rows not read from the file: {left:x?}",
                left.len()
            );
            eprintln!("{anchor:#x}: {rows} rows, {from_file} from the file");
        }
    }
}
