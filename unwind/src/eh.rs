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

/// Exact extents of one module's unwind tables and loaded segments, from its program headers.
struct Tables {
    /// `.eh_frame_hdr`: the PT_GNU_EH_FRAME segment.
    hdr: usize,
    hdr_len: usize,
    /// File-backed extents `[start, end)` of the PT_LOAD segments.
    loads: [(usize, usize); MAX_LOADS],
    nloads: usize,
}

impl Tables {
    /// End of the loaded segment containing `addr`.
    fn segment_end(&self, addr: usize) -> Option<usize> {
        self.loads[..self.nloads].iter().find(|&&(lo, hi)| lo <= addr && addr < hi).map(|&(_, hi)| hi)
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
    // SAFETY: `l_addr` (the load bias) is the first field of the public `struct link_map`, and
    // `dlfo_link_map` points at the live link map of this (loaded) module.
    let bias = unsafe { *(dlfo.dlfo_link_map as *const usize) };
    let mut t = Tables { hdr, hdr_len: 0, loads: [(0, 0); MAX_LOADS], nloads: 0 };
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
                t.loads[t.nloads] = (lo, lo.wrapping_add(ph.p_filesz as usize));
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

/// Evaluate the CFI row in effect at `pc` and hand it to `convert`, with the FDE's CIE.
///
/// `pc` must be an address inside a module that stays loaded during the call: the interposer
/// only passes addresses taken from the current thread's stack, whose modules cannot be
/// unloaded under it.
#[inline(never)]
#[cold]
pub(crate) fn with_row<T>(pc: u64, convert: impl FnOnce(&Row, &Cie<'_>) -> T) -> Result<T, Miss> {
    // SAFETY: `_dl_find_object` only writes the result struct, which is plain data.
    let mut dlfo: DlFindObject = unsafe { std::mem::zeroed() };
    // SAFETY: `_dl_find_object` accepts any address and a valid out-pointer.
    if unsafe { _dl_find_object(pc as *mut libc::c_void, &mut dlfo) } != 0 {
        return Err(Miss::NoModule);
    }
    let t = tables(&dlfo).ok_or(Miss::NoFde)?;
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
}
