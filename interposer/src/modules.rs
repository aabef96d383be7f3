//! Loaded modules (executable, shared libraries, vdso): sent at start and whenever the set
//! changes, with path, load bias, loadable segments and build-id, so that the collector can
//! symbolize after the process is gone, including libraries that were dlclosed.
//!
//! The set is read with `dl_iterate_phdr`, which takes the loader lock: it is only ever called
//! from the constructor, the dlopen/dlclose hooks after the real call returned, and the writer
//! thread — never from inside an allocation hook, and never while holding a lock a thread inside
//! the loader could be waiting for (the rescan lock is only ever *tried*).

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};

use residue_protocol::{Encoder, Segment, MAX_SMALL_RECORD};

use crate::state::{next_seq, thread};
use crate::sync::SpinLock;
use crate::transport::emit;

struct Loaded {
    id: u32,
    bias: u64,
    name_hash: u64,
}

struct Found {
    bias: u64,
    name_hash: u64,
    path: Vec<u8>,
    build_id: Vec<u8>,
    segments: Vec<Segment>,
}

static RESCAN: SpinLock = SpinLock::new();
/// Guarded by RESCAN.
static mut KNOWN: Vec<Loaded> = Vec::new();
static mut NEXT_ID: u32 = 1;
/// The loader's load/unload counters at the last scan.
static LAST_COUNTS: AtomicU64 = AtomicU64::new(u64::MAX);

fn name_hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3))
}

/// The loader's (adds, subs) counters packed in one word.
fn loader_counts() -> u64 {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: glibc passes a valid info; data is the &mut u64 passed below.
        unsafe { *(data as *mut u64) = ((*info).dlpi_adds << 32) ^ (*info).dlpi_subs };
        1
    }
    let mut counts = 0u64;
    // SAFETY: the callback matches dl_iterate_phdr's signature and only writes `counts`.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut counts as *mut u64 as *mut c_void) };
    counts
}

/// A forked child starts its own stream: every module is sent again. The rescan lock may have
/// been held by a thread that does not exist in the child.
pub fn forget_all() {
    RESCAN.unlock();
    // SAFETY: the child is single-threaded here (fork's child handler), so nothing else touches
    // KNOWN.
    unsafe { (*std::ptr::addr_of_mut!(KNOWN)).clear() };
    LAST_COUNTS.store(u64::MAX, Ordering::Relaxed);
}

/// The writer's periodic check: rescan only when the loader's counters moved (loads that did
/// not go through our dlopen hook: libraries glibc loads itself, dlmopen...).
pub fn rescan_if_changed() {
    if loader_counts() != LAST_COUNTS.load(Ordering::Relaxed) {
        rescan();
    }
}

fn read_build_id(bias: u64, phdrs: &[libc::Elf64_Phdr]) -> Vec<u8> {
    for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
        let mut p = bias + ph.p_vaddr;
        let end = p + ph.p_memsz;
        while p + 12 <= end {
            // SAFETY: PT_NOTE segments are mapped (they lie inside a PT_LOAD) for the module's
            // lifetime, and the module cannot be unloaded during dl_iterate_phdr; every read is
            // bounded by the segment's end.
            let (namesz, descsz, ty) = unsafe {
                let w = p as *const u32;
                (w.read_unaligned() as u64, w.add(1).read_unaligned() as u64, w.add(2).read_unaligned())
            };
            let name_at = p + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let next = desc_at + descsz.next_multiple_of(4);
            if next > end {
                break;
            }
            if ty == 3 && namesz == 4 {
                // SAFETY: name and desc lie inside the note segment (checked above).
                let (name, desc) = unsafe {
                    (
                        std::slice::from_raw_parts(name_at as *const u8, 4),
                        std::slice::from_raw_parts(desc_at as *const u8, descsz as usize),
                    )
                };
                if name == b"GNU\0" {
                    return desc.to_vec();
                }
            }
            p = next;
        }
    }
    Vec::new()
}

fn scan() -> Vec<Found> {
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: glibc passes a valid info for the duration of the call; data is the
        // &mut Vec<Found> passed by scan().
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<Found>)) };
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers of a loaded module.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let name: &[u8] = if info.dlpi_name.is_null() {
            b""
        } else {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
        };
        let path = if name.is_empty() && out.is_empty() {
            // The main executable is reported with an empty name.
            std::fs::read_link("/proc/self/exe").map(|p| p.into_os_string().into_encoded_bytes()).unwrap_or_default()
        } else {
            name.to_vec()
        };
        let segments = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD)
            .map(|p| Segment { vaddr: p.p_vaddr, memsz: p.p_memsz, offset: p.p_offset, flags: p.p_flags })
            .collect();
        out.push(Found {
            bias: info.dlpi_addr,
            name_hash: name_hash(&path),
            build_id: read_build_id(info.dlpi_addr, phdrs),
            path,
            segments,
        });
        0
    }
    let mut found = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's signature and only touches `found`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut found as *mut Vec<Found> as *mut c_void) };
    found
}

/// Sends what was loaded or unloaded since the last scan. Returns whether anything was
/// unloaded. Skips (returns false) when another thread is scanning: it will see the same.
pub fn rescan() -> bool {
    if !RESCAN.try_lock() {
        return false;
    }
    let counts = loader_counts();
    let found = scan();
    let t = thread();
    // SAFETY: KNOWN and NEXT_ID are only touched while RESCAN is held.
    let (known, next_id) = unsafe { (&mut *std::ptr::addr_of_mut!(KNOWN), &mut *std::ptr::addr_of_mut!(NEXT_ID)) };
    let mut unloaded = false;
    let mut changed = false;
    known.retain(|k| {
        let still = found.iter().any(|f| f.bias == k.bias && f.name_hash == k.name_hash);
        if !still {
            unloaded = true;
            changed = true;
            let seq = next_seq();
            emit(t, MAX_SMALL_RECORD, |enc, b, pos| enc.module_unload(b, pos, seq, k.id));
        }
        still
    });
    for f in &found {
        if known.iter().any(|k| k.bias == f.bias && k.name_hash == f.name_hash) {
            continue;
        }
        let id = *next_id;
        *next_id += 1;
        changed = true;
        known.push(Loaded { id, bias: f.bias, name_hash: f.name_hash });
        let need = Encoder::module_len_bound(f.path.len(), f.build_id.len(), f.segments.len());
        emit(t, need, |enc, b, pos| enc.module(b, pos, id, f.bias, &f.path, &f.build_id, &f.segments));
    }
    LAST_COUNTS.store(counts, Ordering::Relaxed);
    RESCAN.unlock();
    if changed {
        // The collector opens each module's file as its record arrives: send them now, while
        // the file surely exists.
        crate::transport::flush_own();
    }
    // A CPython runtime may have arrived (the executable, or libpython dlopen'd by a host),
    // and so may the host's libgcc_s.
    crate::python::detect();
    crate::libgcc::detect(found.iter().any(|f| crate::libgcc::is_libgcc_s(&f.path)));
    if unloaded {
        crate::stacks::module_unloaded();
    }
    unloaded
}

/// The address range of the module containing `addr` (the interposer's own text, to cut our
/// frames from stacks).
pub fn range_of(addr: u64) -> (u64, u64) {
    for f in scan() {
        for s in &f.segments {
            let (lo, hi) = (f.bias + s.vaddr, f.bias + s.vaddr + s.memsz);
            if addr >= lo && addr < hi {
                let lo = f.segments.iter().map(|s| f.bias + s.vaddr).min().unwrap_or(lo);
                let hi = f.segments.iter().map(|s| f.bias + s.vaddr + s.memsz).max().unwrap_or(hi);
                return (lo, hi);
            }
        }
    }
    (0, 0)
}
