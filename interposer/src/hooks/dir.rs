//! Directory streams: opendir, fdopendir; released by closedir. A `DIR*` holds a descriptor
//! that glibc opens and closes internally, so it is treated like a `FILE*`: opendir records the
//! stream and its descriptor with one stack; fdopendir adopts a descriptor already recorded;
//! closedir releases both.

use std::ffi::{c_char, c_int};

use residue_protocol::{Api, Kind};

use super::fd::{acquire, cstr, fd_acquired, fd_guard, fd_released, fd_target, release, Errno, Text};
use crate::ffi::{resolve, Next};

type Dir = libc::DIR;
type OpendirFn = unsafe extern "C" fn(*const c_char) -> *mut Dir;
type FdopendirFn = unsafe extern "C" fn(c_int) -> *mut Dir;
type ClosedirFn = unsafe extern "C" fn(*mut Dir) -> c_int;

static NEXT_OPENDIR: Next = Next::new(c"opendir");
static NEXT_FDOPENDIR: Next = Next::new(c"fdopendir");
static NEXT_CLOSEDIR: Next = Next::new(c"closedir");

fn dirfd(d: *mut Dir) -> c_int {
    // SAFETY: d is a live directory stream (just opened, or about to be closed by its owner).
    unsafe { libc::dirfd(d) }
}

/// # Safety
/// As C's opendir.
#[no_mangle]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut Dir {
    // SAFETY: NEXT_OPENDIR names opendir, of type OpendirFn; argument forwarded unchanged.
    let d = unsafe { resolve::<OpendirFn>(&NEXT_OPENDIR)(path) };
    if d.is_null() {
        return d;
    }
    if let Some(g) = fd_guard() {
        let _e = Errno::save();
        // SAFETY: path is NUL-terminated (opendir succeeded).
        let text = Text::of(unsafe { cstr(path) });
        if let Some((_, stack)) = acquire(&g, Kind::DIR, Api::OPENDIR, d as u64, 0, None, text.bytes()) {
            fd_acquired(&g, Api::OPENDIR, dirfd(d), Some(stack), text.bytes());
        }
    }
    d
}

/// # Safety
/// As C's fdopendir.
#[no_mangle]
pub unsafe extern "C" fn fdopendir(fd: c_int) -> *mut Dir {
    // SAFETY: NEXT_FDOPENDIR names fdopendir, of type FdopendirFn; argument unchanged.
    let d = unsafe { resolve::<FdopendirFn>(&NEXT_FDOPENDIR)(fd) };
    if d.is_null() {
        return d;
    }
    if let Some(g) = fd_guard() {
        let _e = Errno::save();
        acquire(&g, Kind::DIR, Api::FDOPENDIR, d as u64, 0, None, fd_target(fd).bytes());
    }
    d
}

/// # Safety
/// As C's closedir.
#[no_mangle]
pub unsafe extern "C" fn closedir(d: *mut Dir) -> c_int {
    if !d.is_null() {
        if let Some(g) = fd_guard() {
            let fd = dirfd(d);
            release(&g, Kind::DIR, Api::CLOSEDIR, d as u64);
            fd_released(&g, Api::CLOSEDIR, fd);
        }
    }
    // SAFETY: NEXT_CLOSEDIR names closedir, of type ClosedirFn; argument forwarded unchanged.
    unsafe { resolve::<ClosedirFn>(&NEXT_CLOSEDIR)(d) }
}
