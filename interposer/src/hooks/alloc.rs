//! The malloc family, strdup and strndup. Each forwards to glibc's `__libc_*` entry point.
//!
//! Sequence numbers: an acquisition takes its number after the real call returns, a release
//! before the real call, so that when thread A frees X and thread B then receives X from malloc,
//! A's release is always ordered before B's acquisition.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use residue_protocol::{Api, Kind};

use crate::ffi::{
    __libc_calloc, __libc_free, __libc_malloc, __libc_memalign, __libc_pvalloc, __libc_realloc, __libc_valloc,
};
use crate::seq;
use crate::stacks::{self, Entry};
use crate::state::{self, next_seq, Guard};

/// Records an acquisition; an internal panic turns the interposer passive instead of reaching C.
#[inline(always)]
fn acquired(g: &Guard, api: Api, p: *mut c_void, size: usize) {
    acquired_at(g, None, api, p, size);
}

/// As [`acquired`], for a hook entered through [`entered!`]: its stack is walked from the caller.
#[inline(always)]
fn acquired_at(g: &Guard, entry: Option<Entry>, api: Api, p: *mut c_void, size: usize) {
    if p.is_null() {
        return;
    }
    let t = g.thread();
    let (sp, fp) = entry.map_or((0, 0), |e| (e.sp, e.fp));
    let record = || stacks::heap_acquired_at(t, sp, fp, api, p as u64, size as u64);
    if catch_unwind(AssertUnwindSafe(record)).is_err() {
        state::go_passive();
    }
}

/// The busiest hooks are entered through a naked stub: it passes the stack pointer and rbp as
/// they are at the hook's first instruction (the stack pointer at the return address) in the
/// next free argument registers, and jumps to the hook proper, which then returns straight to
/// the caller. Knowing its entry, the hook's stack walk starts at its caller: the frames of the
/// hook, the recording code and the unwinder are never walked.
macro_rules! entered {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $body:ident, $sp:literal, $fp:literal) => {
        $(#[$doc])*
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            core::arch::naked_asm!(concat!("mov ", $sp, ", rsp"), concat!("mov ", $fp, ", rbp"), "jmp {body}", body = sym $body)
        }
    };
}

entered! {
    /// # Safety
    /// As C's malloc.
    malloc(size: usize) -> *mut c_void => malloc_entered, "rsi", "rdx"
}

entered! {
    /// # Safety
    /// As C's calloc.
    calloc(n: usize, size: usize) -> *mut c_void => calloc_entered, "rdx", "rcx"
}

entered! {
    /// # Safety
    /// As C's realloc.
    realloc(p: *mut c_void, size: usize) -> *mut c_void => realloc_entered, "rdx", "rcx"
}

#[inline(always)]
fn released(g: &Guard, api: Api, p: *mut c_void) {
    let t = g.thread();
    let seq = seq::next_for(t);
    let record = || {
        if api == Api::FREE {
            stacks::freed(t, seq, p as u64)
        } else {
            stacks::released(t, seq, Kind::HEAP, api, p as u64)
        }
    };
    if catch_unwind(AssertUnwindSafe(record)).is_err() {
        state::go_passive();
    }
}

/// malloc proper, entered from its stub with the stub's stack pointer and rbp.
///
/// # Safety
/// As C's malloc; `sp` and `fp` as the stub passes them.
unsafe extern "C" fn malloc_entered(size: usize, sp: u64, fp: u64) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to glibc's implementation.
    let p = unsafe { __libc_malloc(size) };
    if let Some(g) = Guard::enter() {
        acquired_at(&g, Some(Entry { sp, fp }), Api::MALLOC, p, size);
    }
    p
}

/// calloc proper (see [`malloc_entered`]).
///
/// # Safety
/// As C's calloc; `sp` and `fp` as the stub passes them.
unsafe extern "C" fn calloc_entered(n: usize, size: usize, sp: u64, fp: u64) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to glibc's implementation.
    let p = unsafe { __libc_calloc(n, size) };
    if let Some(g) = Guard::enter() {
        acquired_at(&g, Some(Entry { sp, fp }), Api::CALLOC, p, n.wrapping_mul(size));
    }
    p
}

/// realloc and reallocarray: the old block's release is numbered before the call (another
/// thread may receive it as soon as glibc lets go), the new block's acquisition after.
///
/// # Safety
/// `p` is null or a live block from this allocator.
unsafe fn resize(api: Api, entry: Option<Entry>, p: *mut c_void, size: usize) -> *mut c_void {
    let Some(g) = Guard::enter() else {
        // SAFETY: forwarding the caller's arguments to glibc's implementation.
        return unsafe { __libc_realloc(p, size) };
    };
    if p.is_null() {
        // SAFETY: as above.
        let q = unsafe { __libc_realloc(p, size) };
        acquired_at(&g, entry, api, q, size);
        return q;
    }
    let release_seq = next_seq();
    // SAFETY: as above.
    let q = unsafe { __libc_realloc(p, size) };
    if q.is_null() && size != 0 {
        // Failed: the old block is untouched and still live.
        return q;
    }
    let t = g.thread();
    if catch_unwind(AssertUnwindSafe(|| stacks::released(t, release_seq, Kind::HEAP, api, p as u64))).is_err() {
        state::go_passive();
    }
    // realloc(p, 0) frees p and returns NULL in glibc; otherwise q is the new block.
    acquired_at(&g, entry, api, q, size);
    q
}

/// realloc proper (see [`malloc_entered`]).
///
/// # Safety
/// As C's realloc; `sp` and `fp` as the stub passes them.
unsafe extern "C" fn realloc_entered(p: *mut c_void, size: usize, sp: u64, fp: u64) -> *mut c_void {
    // SAFETY: the caller's contract is realloc's.
    unsafe { resize(Api::REALLOC, Some(Entry { sp, fp }), p, size) }
}

/// # Safety
/// As C's reallocarray. glibc's own reallocarray calls its internal realloc, which a realloc
/// hook does not see, so it needs a hook of its own.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        // SAFETY: __errno_location returns this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return std::ptr::null_mut();
    };
    // SAFETY: the caller's contract is reallocarray's.
    unsafe { resize(Api::REALLOCARRAY, None, p, total) }
}

/// # Safety
/// As C's free.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        if let Some(g) = Guard::enter() {
            released(&g, Api::FREE, p);
        }
    }
    // SAFETY: forwarding the caller's argument to glibc's implementation.
    unsafe { __libc_free(p) }
}

/// # Safety
/// As C's posix_memalign.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // SAFETY: forwarding to glibc with an alignment it accepts.
    let p = unsafe { __libc_memalign(align, size) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    if let Some(g) = Guard::enter() {
        acquired(&g, Api::POSIX_MEMALIGN, p, size);
    }
    // SAFETY: the caller passes a valid out-pointer, as posix_memalign requires.
    unsafe { *out = p };
    0
}

/// # Safety
/// As C's aligned_alloc.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        // SAFETY: __errno_location returns this thread's errno.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return std::ptr::null_mut();
    }
    // SAFETY: forwarding to glibc's implementation.
    let p = unsafe { __libc_memalign(align, size) };
    if let Some(g) = Guard::enter() {
        acquired(&g, Api::ALIGNED_ALLOC, p, size);
    }
    p
}

/// # Safety
/// As C's memalign.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to glibc's implementation.
    let p = unsafe { __libc_memalign(align, size) };
    if let Some(g) = Guard::enter() {
        acquired(&g, Api::MEMALIGN, p, size);
    }
    p
}

/// # Safety
/// As C's valloc.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's argument to glibc's implementation.
    let p = unsafe { __libc_valloc(size) };
    if let Some(g) = Guard::enter() {
        acquired(&g, Api::VALLOC, p, size);
    }
    p
}

/// # Safety
/// As C's pvalloc.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's argument to glibc's implementation.
    let p = unsafe { __libc_pvalloc(size) };
    if let Some(g) = Guard::enter() {
        // pvalloc rounds the size up to whole pages.
        acquired(&g, Api::PVALLOC, p, size.next_multiple_of(4096).max(4096));
    }
    p
}

/// Copies `len` bytes of `s` into a fresh NUL-terminated block: one event, under `api`.
///
/// # Safety
/// `s` is readable for `len` bytes.
unsafe fn dup(api: Api, s: *const c_char, len: usize) -> *mut c_char {
    // SAFETY: forwarding to glibc's malloc.
    let p = unsafe { __libc_malloc(len + 1) }.cast::<c_char>();
    if p.is_null() {
        return p;
    }
    // SAFETY: s is readable for len bytes, p writable for len + 1, and they do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(s, p, len);
        *p.add(len) = 0;
    }
    if let Some(g) = Guard::enter() {
        acquired(&g, api, p.cast(), len + 1);
    }
    p
}

/// # Safety
/// As C's strdup.
#[no_mangle]
pub unsafe extern "C" fn strdup(s: *const c_char) -> *mut c_char {
    // SAFETY: s is a NUL-terminated string, as strdup requires.
    unsafe { dup(Api::STRDUP, s, libc::strlen(s)) }
}

/// # Safety
/// As C's strdup (glibc's exported alias, used by code built against old headers).
#[no_mangle]
pub unsafe extern "C" fn __strdup(s: *const c_char) -> *mut c_char {
    // SAFETY: as strdup.
    unsafe { dup(Api::STRDUP, s, libc::strlen(s)) }
}

/// # Safety
/// As C's strndup.
#[no_mangle]
pub unsafe extern "C" fn strndup(s: *const c_char, n: usize) -> *mut c_char {
    // SAFETY: s is readable up to its NUL or n bytes, as strndup requires.
    unsafe { dup(Api::STRNDUP, s, libc::strnlen(s, n)) }
}
