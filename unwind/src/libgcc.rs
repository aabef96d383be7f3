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

#[link(name = "gcc_s")]
extern "C" {
    fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
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
