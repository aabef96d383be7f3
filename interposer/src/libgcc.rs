//! The host's libgcc_s, where it has one: the unwinder's fallback walks and FDE lookups go
//! through it (residue_unwind's libgcc module says why).
//!
//! libresidue.so links its own copy of libgcc's unwinder (interposer/link/cc-hot-first), so
//! that a C program need not load libgcc_s.so.1 for us. Frames a JIT registered at run time
//! (`__register_frame`) are known only to the copy that registered them: the host's libgcc_s,
//! loaded at start or later (by a dlopen, by glibc for pthread_cancel). Each module scan looks
//! for it among the modules it found until it is there (one loaded as the dependency of a
//! library opened with RTLD_LOCAL, a Python extension, counts too), and only then asks the
//! loader for it: asked for a library that is not loaded, even with RTLD_NOLOAD, the loader
//! searches the library path and opens the file (ld.so.cache, then libgcc_s.so.1 itself), which
//! a Python program's start-up did at every dlopen.

use std::sync::atomic::{AtomicBool, Ordering};

static FOUND: AtomicBool = AtomicBool::new(false);

/// Whether a loaded module's path (as the loader gives it) is libgcc_s's.
pub fn is_libgcc_s(path: &[u8]) -> bool {
    path.rsplit(|&b| b == b'/').next().is_some_and(|name| name.starts_with(b"libgcc_s.so"))
}

/// When the module scan saw a libgcc_s (`loaded`, see [`is_libgcc_s`]): hands its walk, context
/// accessor and FDE lookup to the unwinder. Loads nothing. Called with the module scan's lock
/// not held and the thread's guard entered (our lookups allocate).
pub fn detect(loaded: bool) {
    if !loaded || FOUND.load(Ordering::Relaxed) {
        return;
    }
    let names = [c"_Unwind_Backtrace", c"_Unwind_GetIP", c"_Unwind_Find_FDE"];
    let Some([backtrace, get_ip, find_fde]) = crate::ffi::loaded_symbols(c"libgcc_s.so.1", names) else {
        return;
    };
    FOUND.store(true, Ordering::Relaxed);
    // SAFETY: the three are that libgcc_s's functions, and the reference loaded_symbols took
    // keeps it loaded.
    unsafe { residue_unwind::use_host_libgcc(backtrace, get_ip, find_fde) };
}
