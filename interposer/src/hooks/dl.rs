//! dlopen and dlclose: the set of modules changes, so it is sent again; after an unload the
//! unwinder forgets that module's rules (its tables are gone). RTLD_DEEPBIND would make the
//! library bind to libc's malloc instead of ours, hiding its allocations: stripped, with a notice.

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::ffi::{resolve, DlcloseFn, DlopenFn, Next};
use crate::state::{state, Guard, ACTIVE};
use crate::{lifecycle, modules};

static NEXT_DLOPEN: Next = Next::new(c"dlopen");
static NEXT_DLCLOSE: Next = Next::new(c"dlclose");

/// # Safety
/// As C's dlopen.
#[no_mangle]
pub unsafe extern "C" fn dlopen(file: *const c_char, mut flags: c_int) -> *mut c_void {
    if flags & libc::RTLD_DEEPBIND != 0 && state() == ACTIVE {
        flags &= !libc::RTLD_DEEPBIND;
        if let Some(_g) = Guard::enter() {
            let name = if file.is_null() {
                "(main program)".into()
            } else {
                // SAFETY: a non-null file is a NUL-terminated path, as dlopen requires.
                unsafe { CStr::from_ptr(file) }.to_string_lossy()
            };
            let text = format!("RTLD_DEEPBIND removed from dlopen(\"{name}\") so that its allocations stay visible");
            lifecycle::notice(text.as_bytes());
        }
    }
    // SAFETY: NEXT_DLOPEN names dlopen, whose type DlopenFn is.
    let real: DlopenFn = unsafe { resolve(&NEXT_DLOPEN) };
    // SAFETY: forwarding the caller's arguments.
    let h = unsafe { real(file, flags) };
    if !h.is_null() {
        if let Some(_g) = Guard::enter() {
            modules::rescan();
        }
    }
    h
}

/// # Safety
/// As C's dlclose.
#[no_mangle]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    // SAFETY: NEXT_DLCLOSE names dlclose, whose type DlcloseFn is.
    let real: DlcloseFn = unsafe { resolve(&NEXT_DLCLOSE) };
    // SAFETY: forwarding the caller's argument.
    let r = unsafe { real(handle) };
    // A dlclose that failed unloaded nothing, and its error is the caller's to read with
    // dlerror: the rescan's own lookups would clear it (ffi::drop_dl_error).
    if r == 0 {
        if let Some(_g) = Guard::enter() {
            modules::rescan();
        }
    }
    r
}
