//! The miss path's reads of a module's unwind tables from its file, with `pread`, rather than
//! through its mapping.
//!
//! Why: a read through the mapping makes the page resident in the host, and the kernel maps
//! the resident pages around it too (fault-around, 64 KiB at a time). One binary search in
//! libc's `.eh_frame_hdr` and the two FDEs a C program's outermost frames need kept 64 KiB of
//! libc's read-only data resident in every traced C program, pages the program itself never
//! reads: W4's peak under `residue run` went from 1,880 to 1,816 KiB (medians of 25 runs).
//! `pread` copies the few hundred bytes a lookup needs from the page cache and maps nothing.
//!
//! What is read: the `.eh_frame_hdr` header, an entry of its sorted table per halving of the
//! search and one block at its end, then the FDE and its CIE, into one buffer (the CIE first),
//! the FDE's CIE pointer rewritten to point at the copy. gimli parses that buffer as an
//! `.eh_frame` placed so that the FDE sits at its real address: its pc-relative pointers come
//! out as they would from the mapping.
//!
//! Only a process's first [`FILE_MISSES`] misses are read this way. A file read costs about
//! a dozen system calls, 10 µs, where the mapping costs 1; a C program meets a few dozen
//! return addresses, but a Python program thousands (W1: 3,400, 33 ms more), and its peak is
//! many megabytes, against which the mapped tables' pages weigh little. Past that count,
//! misses read the mapping.
//!
//! The file must be the one mapped: its ELF header, program headers and notes (the build-id)
//! must equal the loaded module's byte for byte, so a library replaced on disk after it was
//! loaded is never read. Whatever this reader does not handle returns `None`, and the caller
//! reads the mapping as before: no absolute path (the vdso, a library loaded by a relative
//! one), a file that cannot be opened or differs, a table encoding other than the one GNU ld,
//! gold and lld write, an entry larger than its buffer, an address no FDE covers.
//!
//! Raw system calls: `open`, `read` and `close` are the interposer's hooks, and none of this
//! may reach them. errno is left as it was: this runs inside the host's calls.

use std::sync::atomic::{AtomicU32, Ordering};

use gimli::{BaseAddresses, EhFrame, EhFrameOffset, NativeEndian, UnwindSection};

use crate::eh::{Cie, InlineStorage, Row, Tables};

/// Misses per process read from files (module docs).
const FILE_MISSES: u32 = 256;

/// File reads left to this process.
static LEFT: AtomicU32 = AtomicU32::new(FILE_MISSES);

/// Whether this miss may read the file: true for the process's first [`FILE_MISSES`].
pub(crate) fn take_turn() -> bool {
    LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
}

/// Table entries read in one piece once the binary search has narrowed to this many: 2 KiB,
/// so that libc's table (about 3,700 entries) takes four halvings and one block.
const BLOCK: usize = 256;

/// Largest FDE, and largest CIE, read (with its length field). An x86-64 FDE is mostly a few
/// dozen bytes; a longer one is read from the mapping.
const ENTRY_MAX: usize = 1024;

/// Largest program header table compared with the file's (36 entries).
const PHDRS_MAX: usize = 2048;

/// Largest note segment compared with the file's.
const NOTES_MAX: usize = 1024;

/// The `.eh_frame_hdr` encodings read here: version 1, `eh_frame_ptr` pc-relative signed 4
/// bytes, `fde_count` unsigned 4 bytes, table entries relative to the header, signed 4 bytes.
const HDR_FORM: [u8; 4] = [1, 0x1b, 0x03, 0x3b];

/// A module file open for reading, closed when dropped.
struct File(libc::c_int);

impl File {
    fn open(path: &std::ffi::CStr) -> Option<File> {
        // SAFETY: openat with a NUL-terminated path and plain flags touches no memory of ours
        // beyond reading the path.
        let fd =
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        (fd >= 0).then_some(File(fd as libc::c_int))
    }

    /// Fills `buf` from `offset`, or false (an error, or the file ends first).
    fn read_exact(&self, buf: &mut [u8], offset: u64) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: pread64 writes at most `rest.len()` bytes into `rest`, which we own.
            let n = unsafe {
                libc::syscall(libc::SYS_pread64, self.0, rest.as_mut_ptr(), rest.len(), offset + done as u64)
            };
            match n {
                n if n > 0 => done += n as usize,
                // SAFETY: errno is this thread's own.
                -1 if unsafe { *libc::__errno_location() } == libc::EINTR => {}
                _ => return false,
            }
        }
        true
    }

    /// Reads what the file has of `buf.len()` bytes from `offset`: how many, or None on error.
    fn read_some(&self, buf: &mut [u8], offset: u64) -> Option<usize> {
        loop {
            // SAFETY: as in `read_exact`.
            let n = unsafe { libc::syscall(libc::SYS_pread64, self.0, buf.as_mut_ptr(), buf.len(), offset) };
            match n {
                n if n >= 0 => return Some(n as usize),
                // SAFETY: errno is this thread's own.
                _ if unsafe { *libc::__errno_location() } == libc::EINTR => {}
                _ => return None,
            }
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours (opened above) and used by nothing else.
        unsafe { libc::syscall(libc::SYS_close, self.0) };
    }
}

/// The CFI row for `pc` read from the module's file, handed to `convert`; `None` if the file
/// cannot answer (module docs), and the mapping must.
pub(crate) fn row<T>(t: &Tables, pc: u64, convert: &impl Fn(&Row, &Cie<'_>) -> T) -> Option<T> {
    // SAFETY: errno is this thread's own slot; restored below whatever happened.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    let out = read_row(t, pc, convert);
    // SAFETY: as above.
    unsafe { *errno = saved };
    if out.is_some() {
        crate::FILE_ROWS.fetch_add(1, Ordering::Relaxed);
    }
    out
}

fn read_row<T>(t: &Tables, pc: u64, convert: &impl Fn(&Row, &Cie<'_>) -> T) -> Option<T> {
    let file = File::open(t.path()?)?;
    if !same_file(&file, t) {
        return None;
    }
    let hdr = t.hdr as u64;
    let mut head = [0u8; 12];
    if !file.read_exact(&mut head, t.file_offset(t.hdr, 12)?) || head[..4] != HDR_FORM {
        return None;
    }
    let count = u32::from_ne_bytes(head[8..12].try_into().ok()?) as usize;
    if 12 + count.checked_mul(8)? > t.hdr_len {
        return None;
    }
    let table = t.file_offset(t.hdr + 12, count * 8)?;
    let fde_rel = search(&file, table, count, pc.wrapping_sub(hdr) as i64)?;
    let fde_addr = hdr.wrapping_add(fde_rel as u64);

    // The CIE at the start of one buffer, the FDE further on: gimli parses the two at their
    // offsets and nothing between them.
    let mut buf = [0u8; 2 * ENTRY_MAX];
    let (cie_part, fde_part) = buf.split_at_mut(ENTRY_MAX);
    let fde_len = entry(&file, t, fde_addr, fde_part)?;
    let cie_pointer = u32::from_ne_bytes(fde_part[4..8].try_into().ok()?);
    if cie_pointer == 0 {
        return None;
    }
    let cie_addr = (fde_addr + 4).checked_sub(u64::from(cie_pointer))?;
    entry(&file, t, cie_addr, cie_part)?;
    if cie_part[4..8] != [0; 4] {
        return None;
    }
    // The CIE pointer counts back from its own field to the CIE, now at 0.
    let at = ENTRY_MAX;
    fde_part[4..8].copy_from_slice(&((at + 4) as u32).to_ne_bytes());

    let mut section = EhFrame::new(&buf[..at + fde_len], NativeEndian);
    section.set_address_size(8);
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr).set_eh_frame(fde_addr - at as u64);
    let fde = section.fde_from_offset(&bases, EhFrameOffset(at), EhFrame::cie_from_offset).ok()?;
    let mut ctx = gimli::UnwindContext::<usize, InlineStorage>::new_in();
    let row = fde.unwind_info_for_address(&section, &bases, &mut ctx, pc).ok()?;
    Some(convert(row, fde.cie()))
}

/// Whether the open file is the mapped module: the same ELF header fields that place the
/// program headers, the same program headers, the same notes (a build-id differs between two
/// builds of the same layout).
fn same_file(file: &File, t: &Tables) -> bool {
    let phent = std::mem::size_of::<libc::Elf64_Phdr>();
    let (phdrs, phnum) = t.phdrs;
    let len = phnum * phent;
    if len > PHDRS_MAX {
        return false;
    }
    let mut ehdr = [0u8; std::mem::size_of::<libc::Elf64_Ehdr>()];
    if !file.read_exact(&mut ehdr, 0) {
        return false;
    }
    // SAFETY: Elf64_Ehdr is plain integers; any 64 bytes are a value of it.
    let e = unsafe { std::ptr::read_unaligned(ehdr.as_ptr() as *const libc::Elf64_Ehdr) };
    if e.e_ident[..4] != *b"\x7fELF" || usize::from(e.e_phnum) != phnum || usize::from(e.e_phentsize) != phent {
        return false;
    }
    let mut theirs = [0u8; PHDRS_MAX];
    if !file.read_exact(&mut theirs[..len], e.e_phoff) {
        return false;
    }
    // SAFETY: `t.phdrs` is the module's program header table in memory (eh.rs, `tables`):
    // `phnum` entries, mapped and readable.
    let ours = unsafe { std::slice::from_raw_parts(phdrs as *const u8, len) };
    if theirs[..len] != *ours {
        return false;
    }
    for i in 0..phnum {
        // SAFETY: inside the table just compared.
        let ph = unsafe { std::ptr::read_unaligned(ours.as_ptr().add(i * phent) as *const libc::Elf64_Phdr) };
        if ph.p_type != libc::PT_NOTE {
            continue;
        }
        let n = ph.p_filesz as usize;
        let mut note = [0u8; NOTES_MAX];
        let Some(at) = t.file_offset(t.bias.wrapping_add(ph.p_vaddr as usize), n) else { return false };
        if n > NOTES_MAX || at != ph.p_offset || !file.read_exact(&mut note[..n], at) {
            return false;
        }
        // SAFETY: a PT_NOTE segment lies inside a loaded segment's file-backed part (checked by
        // `file_offset` above): mapped and readable.
        let mapped = unsafe { std::slice::from_raw_parts(t.bias.wrapping_add(ph.p_vaddr as usize) as *const u8, n) };
        if note[..n] != *mapped {
            return false;
        }
    }
    true
}

/// The FDE's offset from the header in the last table entry whose function starts at or
/// before `target` (an offset from the header too): a binary search that reads one entry per
/// halving until [`BLOCK`] entries are left, then those in one read.
fn search(file: &File, table: u64, count: usize, target: i64) -> Option<i32> {
    let entry_at = |i: usize| {
        let mut e = [0u8; 8];
        file.read_exact(&mut e, table + 8 * i as u64)
            .then(|| (i32::from_ne_bytes([e[0], e[1], e[2], e[3]]), i32::from_ne_bytes([e[4], e[5], e[6], e[7]])))
    };
    // The answer, if any, is in [lo, hi): entry lo starts at or before the target, or lo is 0.
    let (mut lo, mut hi) = (0, count);
    while hi - lo > BLOCK {
        let mid = lo + (hi - lo) / 2;
        if i64::from(entry_at(mid)?.0) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut block = [0u8; 8 * BLOCK];
    let block = &mut block[..8 * (hi - lo)];
    if !file.read_exact(block, table + 8 * lo as u64) {
        return None;
    }
    block
        .chunks_exact(8)
        .map(|e| (i32::from_ne_bytes([e[0], e[1], e[2], e[3]]), i32::from_ne_bytes([e[4], e[5], e[6], e[7]])))
        .take_while(|&(start, _)| i64::from(start) <= target)
        .last()
        .map(|(_, fde)| fde)
}

/// Reads the CIE or FDE at `addr` into `buf`: its whole length, length field included, if it
/// is a 32-bit entry that fits.
fn entry(file: &File, t: &Tables, addr: u64, buf: &mut [u8]) -> Option<usize> {
    let (offset, room) = t.file_offset_from(addr as usize)?;
    let want = buf.len().min(room);
    let got = file.read_some(&mut buf[..want], offset)?;
    if got < 8 {
        return None;
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().ok()?);
    // 0 ends the section; 0xffffffff starts a 64-bit entry, which .eh_frame does not use.
    if len == 0 || len == u32::MAX {
        return None;
    }
    let total = 4 + len as usize;
    (total <= got).then_some(total)
}
