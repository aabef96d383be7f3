//! Mappings: mmap, mmap64, munmap, mremap. The id is the start address, the size the length.
//! An anonymous mapping is described as "anonymous", a file-backed one by its file (the
//! /proc/self/fd link of the descriptor it maps), so the two are told apart.
//!
//! The allocator's own mappings never reach these hooks: glibc's malloc (arenas, large blocks),
//! the loader and thread stacks call glibc's internal mmap, not the exported symbol.
//!
//! Partial unmaps are modelled here, not in the collector: the interposer keeps the live
//! mappings it recorded (start -> end, stack, description), and an munmap that cuts into one
//! releases it and acquires what is left on either side again, under the original mmap's stack
//! and description, with page-granular sizes. The stream stays a plain acquire/release per id,
//! which the collector's ledger (highest seq per id wins) handles as for heap blocks; in the
//! collector, ranges would have to be reconstructed from batches that arrive out of order. The
//! same carving handles mmap(MAP_FIXED) over live mappings and mremap. The table is touched only
//! inside a hook's guard, so a nested call on the same thread never takes its lock.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use residue_protocol::{Api, Kind};

use super::fd::{acquire, fd_target, release_at, Errno};
use crate::ffi::{resolve, Next};
use crate::state::{next_seq, Guard};
use crate::sync::SpinLock;

type MmapFn = unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, c_int, libc::off_t) -> *mut c_void;
type MunmapFn = unsafe extern "C" fn(*mut c_void, usize) -> c_int;
type MremapFn = unsafe extern "C" fn(*mut c_void, usize, usize, c_int, ...) -> *mut c_void;

static NEXT_MMAP: Next = Next::new(c"mmap");
static NEXT_MMAP64: Next = Next::new(c"mmap64");
static NEXT_MUNMAP: Next = Next::new(c"munmap");
static NEXT_MREMAP: Next = Next::new(c"mremap");

const ANONYMOUS: &[u8] = b"anonymous";

/// A live mapping we recorded.
struct Map {
    end: u64,
    stack: u32,
    api: Api,
    /// The description of a file-backed mapping; None for an anonymous one.
    file: Option<Box<[u8]>>,
}

impl Map {
    fn text(&self) -> &[u8] {
        self.file.as_deref().unwrap_or(ANONYMOUS)
    }
}

static LOCK: SpinLock = SpinLock::new();
/// Guarded by LOCK. Disjoint ranges keyed by start.
static mut MAPS: BTreeMap<u64, Map> = BTreeMap::new();
static PAGE: AtomicU64 = AtomicU64::new(0);

fn page() -> u64 {
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|&p| p > 0).unwrap_or(4096);
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// The end of `len` bytes from `start`, in whole pages.
fn end_of(start: u64, len: usize) -> u64 {
    start.saturating_add((len as u64).next_multiple_of(page()))
}

/// Runs `f` on the table with its lock held.
fn with_maps<R>(f: impl FnOnce(&mut BTreeMap<u64, Map>) -> R) -> R {
    LOCK.lock();
    // SAFETY: MAPS is only reached through this function, under LOCK.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(MAPS) });
    LOCK.unlock();
    r
}

/// Starts of the recorded mappings overlapping `[addr, end)`, highest first, at most 16.
fn overlapping(maps: &BTreeMap<u64, Map>, addr: u64, end: u64, out: &mut [u64; 16]) -> usize {
    let mut n = 0;
    // The ranges are disjoint: walking down from `end`, the first one ending at or before
    // `addr` ends the overlap.
    for (&s, m) in maps.range(..end).rev() {
        if m.end <= addr || n == out.len() {
            break;
        }
        out[n] = s;
        n += 1;
    }
    n
}

/// `[addr, end)` is going away (munmap, or replaced by MAP_FIXED/mremap): every recorded
/// mapping overlapping it is released (with the seqs in `reserved` first, taken before a real
/// call that freed the range, then fresh ones), and what is left of it on either side is
/// acquired again under its original stack, api and description.
fn carve(g: &Guard, api: Api, addr: u64, end: u64, reserved: &[u64]) {
    let mut reserved = reserved.iter().copied();
    with_maps(|maps| loop {
        let mut starts = [0u64; 16];
        let n = overlapping(maps, addr, end, &mut starts);
        if n == 0 {
            break;
        }
        for &s in &starts[..n] {
            let Some(m) = maps.remove(&s) else { continue };
            release_at(g, reserved.next().unwrap_or_else(next_seq), Kind::MAPPING, api, s);
            for (lo, hi) in [(s, addr), (end, m.end)] {
                if lo < hi && lo >= s && hi <= m.end {
                    acquire(g, Kind::MAPPING, m.api, lo, hi - lo, Some(m.stack), m.text());
                    maps.insert(lo, Map { end: hi, stack: m.stack, api: m.api, file: m.file.clone() });
                }
            }
        }
    });
}

/// A new mapping at `p` of `len` bytes: whatever we recorded there is gone (MAP_FIXED
/// replaced it, or it was unmapped by a path we do not see), then the mapping is acquired.
fn mapped(g: &Guard, api: Api, p: u64, len: usize, file: Option<Box<[u8]>>) {
    let end = end_of(p, len);
    carve(g, api, p, end, &[]);
    let text = file.as_deref().unwrap_or(ANONYMOUS);
    if let Some((_, stack)) = acquire(g, Kind::MAPPING, api, p, len as u64, None, text) {
        with_maps(|maps| maps.insert(p, Map { end, stack, api, file }));
    }
}

/// # Safety
/// `next` names a function of type MmapFn; the arguments are mmap's.
unsafe fn mmap_via(
    next: &Next,
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the caller names an MmapFn; arguments forwarded unchanged.
    let p = unsafe { resolve::<MmapFn>(next)(addr, len, prot, flags, fd, off) };
    if p == libc::MAP_FAILED {
        return p;
    }
    if let Some(g) = Guard::enter() {
        let _e = Errno::save();
        let file = (flags & libc::MAP_ANONYMOUS == 0 && fd >= 0).then(|| Box::from(fd_target(fd).bytes()));
        mapped(&g, Api::MMAP, p as u64, len, file);
    }
    p
}

/// # Safety
/// As C's mmap.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the caller's contract is mmap's.
    unsafe { mmap_via(&NEXT_MMAP, addr, len, prot, flags, fd, off) }
}

/// # Safety
/// As C's mmap64.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the caller's contract is mmap64's.
    unsafe { mmap_via(&NEXT_MMAP64, addr, len, prot, flags, fd, off) }
}

/// # Safety
/// As C's munmap.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let a = addr as u64;
    // An unaligned address or a zero length fails with EINVAL: nothing is unmapped.
    if len > 0 && a.is_multiple_of(page()) {
        if let Some(g) = Guard::enter() {
            carve(&g, Api::MUNMAP, a, end_of(a, len), &[]);
        }
    }
    // SAFETY: NEXT_MUNMAP names munmap, of type MunmapFn; arguments forwarded unchanged.
    unsafe { resolve::<MunmapFn>(&NEXT_MUNMAP)(addr, len) }
}

/// mremap is to a mapping what realloc is to a block: the old range is released (seqs taken
/// before the call: once it returns, another thread may map the freed range), the new one
/// acquired with the caller's stack and the old mapping's description. A range we never
/// recorded (glibc's realloc of a large block uses the internal mremap anyway) stays unrecorded.
///
/// # Safety
/// As C's mremap (variadic: `new_addr` is read only with MREMAP_FIXED).
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_size: usize,
    new_size: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    // SAFETY: NEXT_MREMAP names mremap, of type MremapFn.
    let real: MremapFn = unsafe { resolve(&NEXT_MREMAP) };
    let call = || {
        // SAFETY: forwarding the caller's arguments; new_addr only where it was passed.
        unsafe {
            if flags & libc::MREMAP_FIXED != 0 {
                real(old, old_size, new_size, flags, new_addr)
            } else {
                real(old, old_size, new_size, flags)
            }
        }
    };
    let Some(g) = Guard::enter() else { return call() };
    let (o, old_end) = (old as u64, end_of(old as u64, old_size));
    // MREMAP_DONTUNMAP leaves the old range mapped; old_size 0 duplicates a shared mapping.
    let unmaps = flags & libc::MREMAP_DONTUNMAP == 0 && old_size > 0;
    let mut reserved = [0u64; 16];
    let (n, source) = with_maps(|maps| {
        let n = if unmaps { overlapping(maps, o, old_end, &mut [0; 16]) } else { 0 };
        let source = maps.range(..=o).next_back().filter(|(_, m)| m.end > o).map(|(_, m)| m.file.clone());
        (n, source)
    });
    for r in &mut reserved[..n] {
        *r = next_seq();
    }
    let p = call();
    if p == libc::MAP_FAILED {
        return p;
    }
    let _e = Errno::save();
    if unmaps {
        carve(&g, Api::MREMAP, o, old_end, &reserved[..n]);
    }
    if let Some(file) = source {
        mapped(&g, Api::MREMAP, p as u64, new_size, file);
    }
    p
}
