//! libffi's `ffi_call`, through which ctypes and cffi call into C libraries: the function being
//! called is remembered for the duration of the call, so that an acquisition made inside it is
//! attributed to it even when its own frame is not on the stack (a wrapper compiled to a tail
//! jump, code without unwind information).
//!
//! CPython loads libffi as a dependency of `_ctypes`, with RTLD_LOCAL: `_ctypes` binds to our
//! `ffi_call` (we are in the global scope), but `dlsym(RTLD_NEXT)` cannot see libffi. So the real
//! function is looked up in each loaded module that defines one other than ours.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::state::thread;

type FfiCallFn = unsafe extern "C-unwind" fn(*mut c_void, *mut c_void, *mut c_void, *mut *mut c_void);

static REAL: AtomicUsize = AtomicUsize::new(0);

/// The first loaded module's `ffi_call` that is not ours.
fn find_real() -> usize {
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
    let ours = ffi_call as *const () as usize;
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
            libc::dlsym(h, c"ffi_call".as_ptr()) as usize
        };
        if f != 0 && f != ours {
            return f;
        }
    }
    0
}

/// `C-unwind`: the called function may throw (C++) or be cancelled (forced unwind), and that
/// unwind must pass through this frame as it would through libffi's own.
///
/// # Safety
/// As libffi's ffi_call; only reached by programs that call it, which have it loaded.
#[no_mangle]
pub unsafe extern "C-unwind" fn ffi_call(
    cif: *mut c_void,
    f: *mut c_void,
    rvalue: *mut c_void,
    avalue: *mut *mut c_void,
) {
    let mut real = REAL.load(Ordering::Acquire);
    if real == 0 {
        let t = thread();
        let was = t.busy.replace(true);
        real = find_real();
        t.busy.set(was);
        if real == 0 {
            // Cannot happen for a caller that linked libffi; there is nothing to forward to.
            std::process::abort();
        }
        REAL.store(real, Ordering::Release);
    }
    let t = thread();
    // Nested calls (a callback into Python that calls C again) restore the outer function, also
    // when the call unwinds (an exception caught above us).
    struct Restore(&'static crate::state::Thread, u64, u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.foreign.set(self.1);
            self.0.foreign_sp.set(self.2);
        }
    }
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as u64;
    let _restore = Restore(t, t.foreign.replace(f as u64), t.foreign_sp.replace(sp));
    // SAFETY: `real` is a loaded module's ffi_call, of type FfiCallFn; arguments unchanged.
    unsafe { std::mem::transmute::<usize, FfiCallFn>(real)(cif, f, rvalue, avalue) };
}
