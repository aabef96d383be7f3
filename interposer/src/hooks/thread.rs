//! Thread hooks.
//!
//! pthread_create: the program's first thread starts the interposer's writer thread
//! (transport.rs says why not sooner). Threads glibc starts without this symbol (C11
//! thrd_create, SIGEV_THREAD timers) are recorded all the same: without a writer, each thread
//! writes its own chunks.
//!
//! pthread_getattr_np. glibc holds the queried thread's lock while it runs
//! (nptl/pthread_getattr_np.c) and allocates inside: the main thread's query reads
//! /proc/self/maps through fopen, any thread's reallocs a CPU set. Recording one of those
//! allocations can be the thread's first capture, and the unwinder's first capture on a thread
//! other than the main one asks pthread_getattr_np for the thread's stack: the same lock, which
//! is not recursive, so the thread would wait for itself forever. Rust's runtime asks at
//! startup, before anything else allocates: every Rust program hung. Nothing the call does is
//! recorded; what glibc allocates there it frees before returning.

use std::ffi::{c_int, c_void};

use crate::ffi::{resolve, Next, PthreadCreateFn, NEXT_PTHREAD_CREATE};
use crate::state::{thread, Guard};
use crate::transport;

type GetattrFn = unsafe extern "C" fn(libc::pthread_t, *mut libc::pthread_attr_t) -> c_int;

static NEXT_PTHREAD_GETATTR_NP: Next = Next::new(c"pthread_getattr_np");

/// # Safety
/// As glibc's pthread_getattr_np.
#[no_mangle]
pub unsafe extern "C" fn pthread_getattr_np(th: libc::pthread_t, attr: *mut libc::pthread_attr_t) -> c_int {
    let t = thread();
    // The re-entrancy guard, held as a hook holds it: allocations inside (and the dlsym that
    // resolves the real function the first time) pass straight through.
    let was = t.busy.replace(true);
    // SAFETY: NEXT_PTHREAD_GETATTR_NP names pthread_getattr_np, of type GetattrFn; arguments
    // unchanged.
    let r = unsafe { resolve::<GetattrFn>(&NEXT_PTHREAD_GETATTR_NP)(th, attr) };
    t.busy.set(was);
    r
}

/// # Safety
/// As glibc's pthread_create.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    th: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: Option<extern "C" fn(*mut c_void) -> *mut c_void>,
    arg: *mut c_void,
) -> c_int {
    // Starting the writer allocates (its channel, its stack): ours, not the program's. From
    // inside one of our hooks (the guard is taken) there is nothing to start.
    if let Some(_g) = Guard::enter_any() {
        transport::program_threads();
    }
    // SAFETY: NEXT_PTHREAD_CREATE names pthread_create, of type PthreadCreateFn; arguments
    // unchanged.
    unsafe { resolve::<PthreadCreateFn>(&NEXT_PTHREAD_CREATE)(th, attr, start, arg) }
}
