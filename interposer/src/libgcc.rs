//! The host's libgcc_s, where it has one: the unwinder's fallback walks and FDE lookups go
//! through it (residue_unwind's libgcc module says why).
//!
//! libresidue.so links its own copy of libgcc's unwinder (interposer/link/cc-hot-first), so
//! that a C program need not load libgcc_s.so.1 for us. Frames a JIT registered at run time
//! (`__register_frame`) are known only to the copy that registered them: the host's libgcc_s,
//! loaded at start or later (by a dlopen, by glibc for pthread_cancel). Each module scan looks
//! for it until it is found, by name, so that one loaded as the dependency of a library opened
//! with RTLD_LOCAL (a Python extension) counts too.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::ffi::{drop_dl_error, resolve, DlopenFn, Next};

static NEXT_DLOPEN: Next = Next::new(c"dlopen");
static FOUND: AtomicBool = AtomicBool::new(false);

/// Looks for a loaded libgcc_s.so.1 and, if there is one, hands its walk, context accessor and
/// FDE lookup to the unwinder. Loads nothing. Called with the module scan's lock not held and
/// the thread's guard entered (our lookups allocate).
pub fn detect() {
    if FOUND.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: NEXT_DLOPEN names dlopen (libc's, not our hook), whose type DlopenFn is.
    let dlopen: DlopenFn = unsafe { resolve(&NEXT_DLOPEN) };
    // RTLD_NOLOAD finds the library in any scope and loads nothing. The reference this takes
    // is kept for good: the unwinder will call into the library, which must never unload.
    // SAFETY: a NUL-terminated name and valid flags.
    let handle = unsafe { dlopen(c"libgcc_s.so.1".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if handle.is_null() {
        drop_dl_error();
        return;
    }
    // SAFETY: dlsym on a live handle with NUL-terminated names.
    let (backtrace, get_ip, find_fde) = unsafe {
        (
            libc::dlsym(handle, c"_Unwind_Backtrace".as_ptr()) as usize,
            libc::dlsym(handle, c"_Unwind_GetIP".as_ptr()) as usize,
            libc::dlsym(handle, c"_Unwind_Find_FDE".as_ptr()) as usize,
        )
    };
    if backtrace == 0 || get_ip == 0 || find_fde == 0 {
        drop_dl_error();
        return;
    }
    FOUND.store(true, Ordering::Relaxed);
    // SAFETY: the three are that libgcc_s's functions, and our reference keeps it loaded.
    unsafe { residue_unwind::use_host_libgcc(backtrace, get_ip, find_fde) };
}
