//! glibc entry points the hooks forward to, and the "next" definitions of hooked symbols.
//!
//! Allocator hooks forward to glibc's exported `__libc_*` functions rather than to a pointer
//! looked up with `dlsym(RTLD_NEXT, "malloc")`: dlsym itself calls calloc, so a lazily resolved
//! allocator recurses before it has anything to recurse into. Non-allocator hooks (fork, exec,
//! dlopen...) do use `dlsym(RTLD_NEXT, ...)`, resolved in the constructor and, if a hook runs
//! before it, on first use (the calloc inside dlsym then passes straight through).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

extern "C" {
    pub fn __libc_malloc(size: usize) -> *mut c_void;
    pub fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    pub fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    pub fn __libc_free(p: *mut c_void);
    pub fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    pub fn __libc_valloc(size: usize) -> *mut c_void;
    pub fn __libc_pvalloc(size: usize) -> *mut c_void;
    /// Not in the libc crate for Linux.
    pub fn pthread_setcancelstate(state: c_int, old: *mut c_int) -> c_int;
}

/// glibc's value (pthread.h).
pub const PTHREAD_CANCEL_DISABLE: c_int = 1;

/// Deferred cancellation held off while it lives: `write` and `send` are cancellation points,
/// and a thread cancelled inside ours would leave the stream's write lock held for good.
pub struct NoCancel(c_int);

impl NoCancel {
    pub fn new() -> NoCancel {
        let mut old = 0;
        // SAFETY: a valid out-pointer; only this thread's cancellation state changes.
        unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
        NoCancel(old)
    }
}

impl Drop for NoCancel {
    fn drop(&mut self) {
        let mut old = 0;
        // SAFETY: as above, restoring the state found.
        unsafe { pthread_setcancelstate(self.0, &mut old) };
    }
}

/// A lazily resolved `dlsym(RTLD_NEXT, name)`.
pub struct Next {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Next {
    pub const fn new(name: &'static CStr) -> Self {
        Next { name, addr: AtomicUsize::new(0) }
    }

    /// The next definition's address, or 0 if there is none.
    pub fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Acquire);
        if a != 0 {
            return a;
        }
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name is always valid to call; a
        // race between two threads resolving the same name stores the same value twice.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        if a == 0 {
            drop_dl_error();
        }
        self.addr.store(a, Ordering::Release);
        a
    }
}

/// After a dlsym of ours that failed (the Python runtime looked for in a C program, from the
/// dlopen hook among other places): glibc kept the error message for `dlerror`. The host's
/// next dlerror would return it (a program that checks dlerror after its own dlopen succeeded
/// saw "libresidue.so: undefined symbol: Py_GetVersion"), and its next dl* call would free it,
/// a block the host never allocated, reported as released with its origin unseen. A lookup
/// that succeeds clears the error and frees the message now, inside our own call.
pub fn drop_dl_error() {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name of a symbol libc defines.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dlsym".as_ptr()) };
}

/// libc's dlopen (not our hook), for [`loaded_symbols`].
static NEXT_DLOPEN: Next = Next::new(c"dlopen");

/// The addresses of `names` in `library`, if a library of that name is loaded (in any scope:
/// one loaded as the dependency of a library opened RTLD_LOCAL counts) and defines them all.
/// Loads nothing. The reference RTLD_NOLOAD takes is kept for good: our callers call into the
/// library, which must never unload. A failed lookup leaves the host no error (as
/// [`drop_dl_error`]).
pub fn loaded_symbols<const N: usize>(library: &CStr, names: [&CStr; N]) -> Option<[usize; N]> {
    // SAFETY: NEXT_DLOPEN names dlopen, whose type DlopenFn is.
    let dlopen: DlopenFn = unsafe { resolve(&NEXT_DLOPEN) };
    // SAFETY: a NUL-terminated name and valid flags.
    let handle = unsafe { dlopen(library.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    let found = (!handle.is_null())
        .then(|| {
            // SAFETY: dlsym on a live handle with NUL-terminated names.
            names.map(|name| unsafe { libc::dlsym(handle, name.as_ptr()) } as usize)
        })
        .filter(|addrs| addrs.iter().all(|&a| a != 0));
    if found.is_none() {
        drop_dl_error();
    }
    found
}

pub type ForkFn = unsafe extern "C" fn() -> libc::pid_t;
pub type ExecveFn = unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
pub type ExecvFn = unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;
pub type FexecveFn = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
pub type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
pub type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;
pub type ExitFn = unsafe extern "C" fn(c_int) -> !;
pub type AbortFn = unsafe extern "C" fn() -> !;
pub type PthreadExitFn = unsafe extern "C-unwind" fn(*mut c_void) -> !;
pub type PthreadCreateFn = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    Option<extern "C" fn(*mut c_void) -> *mut c_void>,
    *mut c_void,
) -> c_int;

/// glibc's pthread_create: the writer is started with it, and the hook (hooks/thread.rs)
/// forwards to it.
pub static NEXT_PTHREAD_CREATE: Next = Next::new(c"pthread_create");

/// Resolves `next` as a function of type `F`. Aborting is the only sound answer when libc has
/// no definition of a function the host is calling: it linked against one.
///
/// # Safety
/// `F` must be the function-pointer type of the symbol `next` names.
pub unsafe fn resolve<F: Copy>(next: &Next) -> F {
    let a = next.get();
    if a == 0 {
        std::process::abort();
    }
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    // SAFETY: the caller guarantees F is the symbol's function-pointer type; a is non-null.
    unsafe { std::mem::transmute_copy(&a) }
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

pub fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// `getenv` as a byte slice; the environment outlives the constructor that reads it.
pub fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv with a NUL-terminated name; the result is NULL or a NUL-terminated
    // string in the environment block, which we only read during initialization.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_bytes())
        }
    }
}

pub fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0')))
}
