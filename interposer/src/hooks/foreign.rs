//! libffi's `ffi_call`, through which ctypes and cffi call into C libraries: the function being
//! called is remembered for the duration of the call, so that an acquisition made inside it is
//! attributed to it even when its own frame is not on the stack (a wrapper compiled to a tail
//! jump, code without unwind information).
//!
//! CPython loads libffi as a dependency of `_ctypes`, with RTLD_LOCAL: `_ctypes` binds to our
//! `ffi_call` (we are in the global scope), but `dlsym(RTLD_NEXT)` cannot see libffi. So the real
//! function is looked up in each loaded module that defines one other than ours.
//!
//! cffi's wheels from PyPI link a private copy of libffi into `_cffi_backend` with its symbols
//! renamed (`cffistatic_ffi_call`), still exported and still called through the PLT: hooked
//! the same way, under that name.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::state::thread;

type FfiCallFn = unsafe extern "C-unwind" fn(*mut c_void, *mut c_void, *mut c_void, *mut *mut c_void);

static REAL: AtomicUsize = AtomicUsize::new(0);
static REAL_CFFI: AtomicUsize = AtomicUsize::new(0);

/// The first loaded module's definition of `symbol` (libffi's `ffi_call` or cffi's renamed
/// copy) that is not `ours`.
fn find_real(symbol: &CStr, ours: usize) -> usize {
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: glibc passes a valid info; data is the &mut Vec passed below.
        let (info, names) = unsafe { (&*info, &mut *(data as *mut Vec<Vec<u8>>)) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
            let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes_with_nul();
            if name.len() > 1 {
                names.push(name.to_vec());
            }
        }
        0
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's signature and only touches `names`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut names as *mut Vec<Vec<u8>> as *mut c_void) };
    // libffi itself first: a module that merely links libffi statically is the fallback.
    names.sort_by_key(|n| !n.windows(6).any(|w| w == b"libffi"));
    for name in names {
        // SAFETY: RTLD_NOLOAD only returns a handle to an already loaded module (taking a
        // reference that we keep: the module is in use by the caller anyway); dlsym on it reads
        // that module's symbol table.
        let f = unsafe {
            let h = libc::dlopen(name.as_ptr().cast(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if h.is_null() {
                continue;
            }
            libc::dlsym(h, symbol.as_ptr()) as usize
        };
        if f != 0 && f != ours {
            return f;
        }
    }
    crate::ffi::drop_dl_error();
    0
}

/// `C-unwind`: the called function may throw (C++) or be cancelled (forced unwind), and that
/// unwind must pass through this frame as it would through libffi's own.
///
/// The functions residue hooks. Python can call the C library's own definition of one through
/// ctypes (`CDLL("libc.so.6").malloc`: dlsym on a library's handle binds to that library's
/// definition, not to ours), which would make its acquisitions and releases invisible; such a
/// call is sent to our hook instead, which takes the same arguments. Keep in step with hooks/.
const HOOKED: &[&CStr] = &[
    c"malloc",
    c"calloc",
    c"realloc",
    c"reallocarray",
    c"free",
    c"posix_memalign",
    c"aligned_alloc",
    c"memalign",
    c"valloc",
    c"pvalloc",
    c"strdup",
    c"__strdup",
    c"strndup",
    c"open",
    c"open64",
    c"openat",
    c"openat64",
    c"__open_2",
    c"__open64_2",
    c"__openat_2",
    c"__openat64_2",
    c"creat",
    c"creat64",
    c"dup",
    c"dup2",
    c"dup3",
    c"fcntl",
    c"fcntl64",
    c"pipe",
    c"pipe2",
    c"socket",
    c"socketpair",
    c"accept",
    c"accept4",
    c"connect",
    c"eventfd",
    c"timerfd_create",
    c"signalfd",
    c"epoll_create",
    c"epoll_create1",
    c"inotify_init",
    c"inotify_init1",
    c"memfd_create",
    c"recvmsg",
    c"close",
    c"close_range",
    c"closefrom",
    c"fopen",
    c"fopen64",
    c"fdopen",
    c"freopen",
    c"freopen64",
    c"popen",
    c"tmpfile",
    c"tmpfile64",
    c"fmemopen",
    c"open_memstream",
    c"fclose",
    c"pclose",
    c"opendir",
    c"fdopendir",
    c"closedir",
    c"mmap",
    c"mmap64",
    c"munmap",
    c"mremap",
    c"dlopen",
    c"dlclose",
    c"fork",
    c"execv",
    c"execve",
    c"execvp",
    c"execvpe",
    c"fexecve",
    c"posix_spawn",
    c"posix_spawnp",
    c"system",
    c"_exit",
    c"_Exit",
    c"abort",
    c"pthread_exit",
    c"pthread_getattr_np",
    c"unshare",
    c"setns",
];

/// Our hook for `f` if `f` is the C library's definition of a function we hook. Every foreign
/// call asks, so the common answer (no) costs two comparisons: the table is sorted, and its
/// first and last entries bound the C library's part of the address space.
#[inline]
fn redirect(f: usize) -> Option<usize> {
    let table = redirects();
    let (first, last) = (table.first()?, table.last()?);
    if f < first.0 || f > last.0 {
        return None;
    }
    table.binary_search_by_key(&f, |r| r.0).ok().map(|i| table[i].1)
}

/// (the C library's definition, ours) for each hooked function, sorted by the former; built on
/// the first foreign call.
fn redirects() -> &'static [(usize, usize)] {
    static TABLE: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut info = empty_dl_info();
        // SAFETY: dladdr fills `info` for an address inside a loaded module (this function's).
        if unsafe { libc::dladdr(redirects as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
            return Vec::new();
        }
        // SAFETY: RTLD_NOLOAD on our own, loaded, file returns a handle to it without loading.
        let ours = unsafe { libc::dlopen(info.dli_fname, libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if ours.is_null() {
            return Vec::new();
        }
        let mut table = HOOKED
            .iter()
            .filter_map(|name| {
                // SAFETY: dlsym on a valid handle and RTLD_NEXT with NUL-terminated names.
                let (theirs, mine) = unsafe {
                    (libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize, libc::dlsym(ours, name.as_ptr()) as usize)
                };
                (theirs != 0 && mine != 0 && theirs != mine).then_some((theirs, mine))
            })
            .collect::<Vec<_>>();
        // Names the C library lacks failed to resolve (see drop_dl_error).
        crate::ffi::drop_dl_error();
        table.sort_unstable();
        table
    })
}

fn empty_dl_info() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    }
}

/// # Safety
/// As libffi's ffi_call; only reached by programs that call it, which have it loaded.
#[no_mangle]
pub unsafe extern "C-unwind" fn ffi_call(
    cif: *mut c_void,
    f: *mut c_void,
    rvalue: *mut c_void,
    avalue: *mut *mut c_void,
) {
    // SAFETY: our caller's contract is ffi_call's, which is `foreign_call`'s.
    unsafe { foreign_call(&REAL, c"ffi_call", ffi_call as *const () as usize, cif, f, rvalue, avalue) }
}

/// # Safety
/// As libffi's ffi_call; only reached from cffi's `_cffi_backend`, which defines the real one.
#[no_mangle]
pub unsafe extern "C-unwind" fn cffistatic_ffi_call(
    cif: *mut c_void,
    f: *mut c_void,
    rvalue: *mut c_void,
    avalue: *mut *mut c_void,
) {
    let ours = cffistatic_ffi_call as *const () as usize;
    // SAFETY: our caller's contract is ffi_call's, which is `foreign_call`'s.
    unsafe { foreign_call(&REAL_CFFI, c"cffistatic_ffi_call", ours, cif, f, rvalue, avalue) }
}

/// Remembers `f` as the thread's foreign function for the duration of the call, then forwards to
/// the real `symbol` (looked up once into `real`). `inline(always)`: the hook's own frame is
/// the one `stacks::acquired` looks for, and it must be ours.
///
/// # Safety
/// As libffi's ffi_call.
#[inline(always)]
unsafe fn foreign_call(
    real_slot: &AtomicUsize,
    symbol: &CStr,
    ours: usize,
    cif: *mut c_void,
    f: *mut c_void,
    rvalue: *mut c_void,
    avalue: *mut *mut c_void,
) {
    let mut real = real_slot.load(Ordering::Acquire);
    let t = thread();
    // Looking things up allocates (dlsym, dlopen): that is ours, not the caller's.
    let was = t.busy.replace(true);
    let f = redirect(f as usize).map_or(f, |ours| ours as *mut c_void);
    t.busy.set(was);
    if real == 0 {
        let was = t.busy.replace(true);
        real = find_real(symbol, ours);
        t.busy.set(was);
        if real == 0 {
            // Cannot happen for a caller that linked libffi; there is nothing to forward to.
            std::process::abort();
        }
        real_slot.store(real, Ordering::Release);
    }
    let call = t.foreign_calls.get().wrapping_add(1).max(1);
    t.foreign_calls.set(call);
    let (outer, outer_call) = (t.foreign.replace(f as u64), t.foreign_call.replace(call));
    // SAFETY: `real` is a loaded module's ffi_call, of type FfiCallFn; arguments unchanged.
    unsafe { std::mem::transmute::<usize, FfiCallFn>(real)(cif, f, rvalue, avalue) };
    // Nested calls (a callback into Python that calls C again) restore the outer function and
    // its number on return. Not in a destructor: that would be a landing pad, and the host's
    // libgcc, unwinding a C++ exception through this frame, would call our personality
    // routine, whose context accessors are our own copy of libgcc's (residue_unwind's libgcc
    // module), not the one that made the context. A call left by an exception or a longjmp
    // keeps its function here, stale: recording sees that this frame is gone from the stack
    // (stacks::walked). What it cannot see is an exception from a nested call caught by
    // the outer foreign function: until the outer call returns, its allocations are attributed
    // to the inner function.
    t.foreign.set(outer);
    t.foreign_call.set(outer_call);
}
