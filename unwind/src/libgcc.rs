//! The reference unwinder and the fallback: libgcc's `_Unwind_Backtrace`.
//!
//! libgcc 12 finds FDEs with `_dl_find_object` (lock-free) and also knows frames registered
//! at run time (`__register_frame`, what JITs use), signal trampolines, and every DWARF
//! expression. It re-parses the CFI of every frame on every call: microseconds per frame.

use std::ffi::{c_int, c_void};

#[repr(C)]
struct UnwindContext {
    _opaque: [u8; 0],
}

const URC_NO_REASON: c_int = 0;
const URC_END_OF_STACK: c_int = 5;

type TraceFn = extern "C" fn(*mut UnwindContext, *mut c_void) -> c_int;

/// `struct dwarf_eh_bases` (unwind-dw2-fde.h), filled by `_Unwind_Find_FDE`.
#[repr(C)]
struct DwarfEhBases {
    tbase: *mut c_void,
    dbase: *mut c_void,
    func: *mut c_void,
}

#[link(name = "gcc_s")]
extern "C" {
    fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
    fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const c_void;
}

/// `movq $__NR_rt_sigreturn, %rax; syscall`: the code libgcc recognizes as a signal trampoline
/// where no FDE describes it (x86_64 linux-unwind.h).
const SIGRETURN: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Whether libgcc's walk ends at the frame returning to `ra`, as it does at code that no FDE
/// describes, neither a loaded module's nor one registered at run time (a JIT's code, as V8
/// makes it): libgcc reports that frame, then stops (`_URC_END_OF_STACK`), unless the code
/// there is a signal trampoline, which it steps through. Checked per capture, never cached: a
/// JIT may register frames for that address later.
pub(crate) fn ends_at(ra: u64) -> bool {
    let mut bases =
        DwarfEhBases { tbase: std::ptr::null_mut(), dbase: std::ptr::null_mut(), func: std::ptr::null_mut() };
    // SAFETY: `_Unwind_Find_FDE` looks an address up in libgcc's registered objects and the
    // loaded modules (lock-free `_dl_find_object` when nothing is registered); it reads no
    // memory at `pc` and only writes `bases`.
    if !unsafe { _Unwind_Find_FDE(ra.wrapping_sub(1) as *mut c_void, &mut bases) }.is_null() {
        return false;
    }
    // The code at `ra` is read the way that cannot fault (the address is whatever the stack
    // held): process_vm_readv on ourselves fails with EFAULT where a load would crash.
    let mut code = [0u8; SIGRETURN.len()];
    let local = libc::iovec { iov_base: code.as_mut_ptr().cast(), iov_len: code.len() };
    let remote = libc::iovec { iov_base: ra as *mut c_void, iov_len: code.len() };
    // SAFETY: reads into our own buffer, of the length given; the remote range is only read by
    // the kernel, which reports an unmapped one as an error.
    let read = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    read == code.len() as isize && code != SIGRETURN
}

struct State<'a> {
    out: &'a mut [u64],
    n: usize,
    skip: usize,
}

extern "C" fn trace(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&mut State` that `walk` passed to `_Unwind_Backtrace`, alive and
    // not otherwise borrowed for the duration of the call.
    let st = unsafe { &mut *(arg as *mut State<'_>) };
    // SAFETY: `ctx` is the live context libgcc hands to the callback.
    let ip = unsafe { _Unwind_GetIP(ctx) } as u64;
    // libgcc reports one last frame with ip 0 after a frame whose return address is undefined
    // (the outermost, e.g. `_start`, `clone3`): that is the end, not a frame.
    if ip == 0 {
        return URC_END_OF_STACK;
    }
    if st.skip > 0 {
        st.skip -= 1;
        return URC_NO_REASON;
    }
    let Some(slot) = st.out.get_mut(st.n) else { return URC_END_OF_STACK };
    *slot = ip;
    st.n += 1;
    if st.n == st.out.len() {
        URC_END_OF_STACK
    } else {
        URC_NO_REASON
    }
}

/// Unwind with libgcc, dropping the first `skip` frames after `walk`'s own: `_Unwind_Backtrace`
/// reports its return address (in `walk`) first, so `skip = 2` starts at the return address
/// of `walk`'s caller's frame, i.e. in the caller of whoever called `walk`.
#[inline(never)]
pub(crate) fn walk(out: &mut [u64], skip: usize) -> usize {
    if out.is_empty() {
        return 0;
    }
    let mut st = State { out, n: 0, skip };
    // SAFETY: `trace` matches libgcc's callback ABI and only uses `arg` as the `State` above,
    // which outlives the call.
    unsafe { _Unwind_Backtrace(trace, &mut st as *mut State<'_> as *mut c_void) };
    st.n
}
