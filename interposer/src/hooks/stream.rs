//! `FILE*` streams: fopen, fdopen, freopen, popen, tmpfile, fmemopen, open_memstream; released
//! by fclose and pclose.
//!
//! glibc opens a stream's descriptor internally (no `open` hook sees it) and closes it
//! internally (no `close` hook sees that): so the stream and its descriptor are both recorded
//! here, once each, with the one stack of the caller, and both released by fclose/pclose. A
//! stream made by fdopen adopts a descriptor that was already recorded when it was opened: only
//! the stream is acquired, and closing the stream releases the descriptor too. Memory streams
//! (fmemopen, open_memstream) have no descriptor. The stream's heap (its FILE, its buffer) is
//! recorded by the allocator hooks, as the real call runs outside our guard.

use std::ffi::{c_char, c_int, c_void};

use residue_protocol::{Api, Kind};

use super::fd::{acquire, cstr, fd_acquired, fd_guard, fd_released, fd_target, release, Errno, Text};
use crate::ffi::{resolve, Next};

type File = libc::FILE;
type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut File;
type FdopenFn = unsafe extern "C" fn(c_int, *const c_char) -> *mut File;
type FreopenFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut File) -> *mut File;
type TmpfileFn = unsafe extern "C" fn() -> *mut File;
type FmemopenFn = unsafe extern "C" fn(*mut c_void, usize, *const c_char) -> *mut File;
type OpenMemstreamFn = unsafe extern "C" fn(*mut *mut c_char, *mut usize) -> *mut File;
type FcloseFn = unsafe extern "C" fn(*mut File) -> c_int;

static NEXT_FOPEN: Next = Next::new(c"fopen");
static NEXT_FOPEN64: Next = Next::new(c"fopen64");
static NEXT_FDOPEN: Next = Next::new(c"fdopen");
static NEXT_FREOPEN: Next = Next::new(c"freopen");
static NEXT_FREOPEN64: Next = Next::new(c"freopen64");
static NEXT_POPEN: Next = Next::new(c"popen");
static NEXT_TMPFILE: Next = Next::new(c"tmpfile");
static NEXT_TMPFILE64: Next = Next::new(c"tmpfile64");
static NEXT_FMEMOPEN: Next = Next::new(c"fmemopen");
static NEXT_OPEN_MEMSTREAM: Next = Next::new(c"open_memstream");
static NEXT_FCLOSE: Next = Next::new(c"fclose");
static NEXT_PCLOSE: Next = Next::new(c"pclose");

/// The stream's descriptor, -1 for a memory stream.
fn fileno(f: *mut File) -> c_int {
    // SAFETY: f is a live stream (just opened, or about to be closed by its owner); glibc's
    // fileno reads it without locking and fails with -1 for streams without a descriptor.
    unsafe { libc::fileno(f) }
}

/// After a call that returned stream `f` (or NULL): record the stream and, if `with_fd`, the
/// descriptor it opened, with one stack; `text` gets the descriptor.
fn opened(api: Api, f: *mut File, with_fd: bool, text: impl FnOnce(c_int) -> Text) {
    if f.is_null() {
        return;
    }
    let Some(g) = fd_guard() else { return };
    let _e = Errno::save();
    let fd = fileno(f);
    let text = text(fd);
    let Some((_, stack)) = acquire(&g, Kind::STREAM, api, f as u64, 0, None, text.bytes()) else { return };
    if with_fd {
        fd_acquired(&g, api, fd, Some(stack), text.bytes());
    }
}

/// Before the real fclose/pclose/freopen: the stream and its descriptor are released (the
/// guard is dropped before the real call, so that its frees are recorded).
fn closing(api: Api, f: *mut File) {
    if f.is_null() {
        return;
    }
    if let Some(g) = fd_guard() {
        let _e = Errno::save();
        let fd = fileno(f);
        release(&g, Kind::STREAM, api, f as u64);
        fd_released(&g, api, fd);
    }
}

/// # Safety
/// As C's fopen.
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut File {
    // SAFETY: NEXT_FOPEN names fopen, of type FopenFn; arguments forwarded unchanged.
    let f = unsafe { resolve::<FopenFn>(&NEXT_FOPEN)(path, mode) };
    // SAFETY: path is NUL-terminated (fopen succeeded).
    opened(Api::FOPEN, f, true, |_| Text::of(unsafe { cstr(path) }));
    f
}

/// # Safety
/// As C's fopen64.
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut File {
    // SAFETY: NEXT_FOPEN64 names fopen64, of type FopenFn; arguments forwarded unchanged.
    let f = unsafe { resolve::<FopenFn>(&NEXT_FOPEN64)(path, mode) };
    // SAFETY: path is NUL-terminated (fopen64 succeeded).
    opened(Api::FOPEN, f, true, |_| Text::of(unsafe { cstr(path) }));
    f
}

/// # Safety
/// As C's fdopen.
#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut File {
    // SAFETY: NEXT_FDOPEN names fdopen, of type FdopenFn; arguments forwarded unchanged.
    let f = unsafe { resolve::<FdopenFn>(&NEXT_FDOPEN)(fd, mode) };
    opened(Api::FDOPEN, f, false, fd_target);
    f
}

extern "C" {
    static stdin: *mut File;
    static stdout: *mut File;
    static stderr: *mut File;
}

/// Whether `f` is one of the standard streams.
fn standard(f: *mut File) -> bool {
    // SAFETY: glibc's stdin/stdout/stderr variables are initialized before any constructor
    // runs; reading a pointer-sized value races at worst with a program reassigning them.
    unsafe { f == stdin || f == stdout || f == stderr }
}

/// freopen closes the stream's descriptor and opens another under the same (or a new) FILE:
/// a release of both, then an acquisition of both. On failure glibc has closed the stream.
/// freopen of stdin, stdout or stderr is a redirection of a standard stream, not an
/// acquisition (as dup2 onto 0, 1 or 2): the standard streams are the process's, not leaks.
///
/// # Safety
/// `next` names a function of type FreopenFn; the arguments are freopen's.
unsafe fn freopen_via(next: &Next, path: *const c_char, mode: *const c_char, f: *mut File) -> *mut File {
    if standard(f) {
        // SAFETY: the caller names a FreopenFn; arguments forwarded unchanged.
        return unsafe { resolve::<FreopenFn>(next)(path, mode, f) };
    }
    closing(Api::FREOPEN, f);
    // SAFETY: the caller names a FreopenFn; arguments forwarded unchanged.
    let r = unsafe { resolve::<FreopenFn>(next)(path, mode, f) };
    opened(Api::FREOPEN, r, true, |fd| {
        if path.is_null() {
            fd_target(fd)
        } else {
            // SAFETY: a non-null path is NUL-terminated, as freopen requires.
            Text::of(unsafe { cstr(path) })
        }
    });
    r
}

/// # Safety
/// As C's freopen.
#[no_mangle]
pub unsafe extern "C" fn freopen(path: *const c_char, mode: *const c_char, f: *mut File) -> *mut File {
    // SAFETY: the caller's contract is freopen's.
    unsafe { freopen_via(&NEXT_FREOPEN, path, mode, f) }
}

/// # Safety
/// As C's freopen64.
#[no_mangle]
pub unsafe extern "C" fn freopen64(path: *const c_char, mode: *const c_char, f: *mut File) -> *mut File {
    // SAFETY: the caller's contract is freopen64's.
    unsafe { freopen_via(&NEXT_FREOPEN64, path, mode, f) }
}

/// # Safety
/// As C's popen.
#[no_mangle]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut File {
    // popen spawns its shell through glibc's internal posix_spawn: keep the stream out of it.
    let f = crate::transport::without_inheritance(|| {
        // SAFETY: NEXT_POPEN names popen, of type FopenFn (same shape); arguments unchanged.
        unsafe { resolve::<FopenFn>(&NEXT_POPEN)(command, mode) }
    });
    opened(Api::POPEN, f, true, |_| {
        let mut t = Text::of(b"popen: ");
        // SAFETY: command is NUL-terminated (popen succeeded).
        t.push(unsafe { cstr(command) });
        t
    });
    f
}

/// # Safety
/// As C's tmpfile.
#[no_mangle]
pub unsafe extern "C" fn tmpfile() -> *mut File {
    // SAFETY: NEXT_TMPFILE names tmpfile, of type TmpfileFn.
    let f = unsafe { resolve::<TmpfileFn>(&NEXT_TMPFILE)() };
    opened(Api::TMPFILE, f, true, |_| Text::of(b"tmpfile"));
    f
}

/// # Safety
/// As C's tmpfile64.
#[no_mangle]
pub unsafe extern "C" fn tmpfile64() -> *mut File {
    // SAFETY: NEXT_TMPFILE64 names tmpfile64, of type TmpfileFn.
    let f = unsafe { resolve::<TmpfileFn>(&NEXT_TMPFILE64)() };
    opened(Api::TMPFILE, f, true, |_| Text::of(b"tmpfile"));
    f
}

/// # Safety
/// As C's fmemopen.
#[no_mangle]
pub unsafe extern "C" fn fmemopen(buf: *mut c_void, size: usize, mode: *const c_char) -> *mut File {
    // SAFETY: NEXT_FMEMOPEN names fmemopen, of type FmemopenFn; arguments unchanged.
    let f = unsafe { resolve::<FmemopenFn>(&NEXT_FMEMOPEN)(buf, size, mode) };
    opened(Api::FMEMOPEN, f, false, |_| Text::of(b"fmemopen"));
    f
}

/// # Safety
/// As C's open_memstream.
#[no_mangle]
pub unsafe extern "C" fn open_memstream(ptr: *mut *mut c_char, size: *mut usize) -> *mut File {
    // SAFETY: NEXT_OPEN_MEMSTREAM names open_memstream, of type OpenMemstreamFn.
    let f = unsafe { resolve::<OpenMemstreamFn>(&NEXT_OPEN_MEMSTREAM)(ptr, size) };
    opened(Api::OPEN_MEMSTREAM, f, false, |_| Text::of(b"open_memstream"));
    f
}

/// # Safety
/// As C's fclose.
#[no_mangle]
pub unsafe extern "C" fn fclose(f: *mut File) -> c_int {
    closing(Api::FCLOSE, f);
    // SAFETY: NEXT_FCLOSE names fclose, of type FcloseFn; argument forwarded unchanged.
    unsafe { resolve::<FcloseFn>(&NEXT_FCLOSE)(f) }
}

/// # Safety
/// As C's pclose.
#[no_mangle]
pub unsafe extern "C" fn pclose(f: *mut File) -> c_int {
    closing(Api::PCLOSE, f);
    // SAFETY: NEXT_PCLOSE names pclose, of type FcloseFn; argument forwarded unchanged.
    unsafe { resolve::<FcloseFn>(&NEXT_PCLOSE)(f) }
}
