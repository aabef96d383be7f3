//! unshare and setns. Entering a new user namespace (and, with setns, some other kinds) is only
//! allowed to a single-threaded process. The interposer's writer thread starts with the
//! program's first thread (transport.rs) and outlives it: a program whose threads have all
//! ended, then calls `unshare -r` (rootless containers, sandboxes), would fail with EINVAL under
//! residue. Where the call fails that way and the writer is the process's only other thread,
//! the writer steps aside for the call, and stays away until the program starts a thread again
//! (the calling thread writes its own events meanwhile): transport::step_aside_if_alone, which
//! our fork hook uses too.

use std::ffi::c_int;

use crate::ffi::{resolve, Next};
use crate::state::Guard;
use crate::transport;

type UnshareFn = unsafe extern "C" fn(c_int) -> c_int;
type SetnsFn = unsafe extern "C" fn(c_int, c_int) -> c_int;

static NEXT_UNSHARE: Next = Next::new(c"unshare");
static NEXT_SETNS: Next = Next::new(c"setns");

/// # Safety
/// As C's unshare.
#[no_mangle]
pub unsafe extern "C" fn unshare(flags: c_int) -> c_int {
    // SAFETY: NEXT_UNSHARE names unshare, of type UnshareFn; the argument forwarded unchanged.
    single_threaded(|| unsafe { resolve::<UnshareFn>(&NEXT_UNSHARE)(flags) })
}

/// # Safety
/// As C's setns.
#[no_mangle]
pub unsafe extern "C" fn setns(fd: c_int, nstype: c_int) -> c_int {
    // SAFETY: NEXT_SETNS names setns, of type SetnsFn; arguments forwarded unchanged.
    single_threaded(|| unsafe { resolve::<SetnsFn>(&NEXT_SETNS)(fd, nstype) })
}

/// Makes `call`; if it fails with EINVAL while the writer is the only other thread, makes it
/// again with the writer stopped (retrying briefly: a thread that has returned may still be
/// leaving the thread group). errno is the call's.
fn single_threaded(mut call: impl FnMut() -> c_int) -> c_int {
    let r = call();
    if r == 0 || errno() != libc::EINVAL {
        return r;
    }
    // What follows allocates (the thread count): ours, not the program's.
    let Some(_guard) = Guard::enter_any() else { return r };
    if !transport::step_aside_if_alone() {
        set_errno(libc::EINVAL);
        return r;
    }
    let mut r = call();
    for _ in 0..100 {
        if r == 0 || errno() != libc::EINVAL {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
        r = call();
    }
    r
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}
