//! The reference unwinder and the fallback: libgcc's `_Unwind_Backtrace`.
//!
//! libgcc 12 finds FDEs with `_dl_find_object` (lock-free) and also knows frames registered
//! at run time (`__register_frame`, what JITs use), signal trampolines, and every DWARF
//! expression. It re-parses the CFI of every frame on every call: microseconds per frame.
//!
//! Which libgcc: the one linked into the caller, unless [`use_host_libgcc`] named the host's.
//! libresidue.so links its own copy (libgcc_eh.a, kept local), so that a C host need not load
//! libgcc_s.so.1 for us; but frames a JIT registered are known only to the copy it registered
//! them with, the host's libgcc_s. Where the host has one loaded, the interposer hands its
//! functions here, and walks and FDE lookups go through them.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

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

type BacktraceFn = unsafe extern "C" fn(TraceFn, *mut c_void) -> c_int;
type GetIpFn = unsafe extern "C" fn(*mut UnwindContext) -> usize;
type FindFdeFn = unsafe extern "C" fn(*mut c_void, *mut DwarfEhBases) -> *const c_void;

/// The host's `_Unwind_Backtrace`, `_Unwind_GetIP` and `_Unwind_Find_FDE` (0 until named). The
/// walk is published last (Release) and read first (Acquire): whoever sees it sees the others.
static HOST_BACKTRACE: AtomicUsize = AtomicUsize::new(0);
static HOST_GET_IP: AtomicUsize = AtomicUsize::new(0);
static HOST_FIND_FDE: AtomicUsize = AtomicUsize::new(0);

/// Walks and FDE lookups from now on go through the host's libgcc: its `_Unwind_Backtrace`,
/// `_Unwind_GetIP` and `_Unwind_Find_FDE`, one copy's three (a context made by one copy is
/// read by the same copy's accessors).
///
/// # Safety
/// Each address is that function of one loaded libgcc, which stays loaded for good.
pub unsafe fn use_host_libgcc(backtrace: usize, get_ip: usize, find_fde: usize) {
    if backtrace == 0 || get_ip == 0 || find_fde == 0 {
        return;
    }
    HOST_GET_IP.store(get_ip, Ordering::Relaxed);
    HOST_FIND_FDE.store(find_fde, Ordering::Relaxed);
    HOST_BACKTRACE.store(backtrace, Ordering::Release);
}

/// The walk, context accessor and FDE lookup to use: the host's, or our own.
fn functions() -> (BacktraceFn, GetIpFn, FindFdeFn) {
    let backtrace = HOST_BACKTRACE.load(Ordering::Acquire);
    if backtrace == 0 {
        return (_Unwind_Backtrace, _Unwind_GetIP, _Unwind_Find_FDE);
    }
    // SAFETY: per `use_host_libgcc`'s contract, the three are one loaded libgcc's functions of
    // these types, and it stays loaded.
    unsafe {
        (
            std::mem::transmute::<usize, BacktraceFn>(backtrace),
            std::mem::transmute::<usize, GetIpFn>(HOST_GET_IP.load(Ordering::Relaxed)),
            std::mem::transmute::<usize, FindFdeFn>(HOST_FIND_FDE.load(Ordering::Relaxed)),
        )
    }
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
    let (_, _, find_fde) = functions();
    // SAFETY: `_Unwind_Find_FDE` looks an address up in libgcc's registered objects and the
    // loaded modules (lock-free `_dl_find_object` when nothing is registered); it reads no
    // memory at `pc` and only writes `bases`.
    if !unsafe { find_fde(ra.wrapping_sub(1) as *mut c_void, &mut bases) }.is_null() {
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
    /// The accessor of the libgcc that walks.
    get_ip: GetIpFn,
}

extern "C" fn trace(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&mut State` that `walk` passed to `_Unwind_Backtrace`, alive and
    // not otherwise borrowed for the duration of the call.
    let st = unsafe { &mut *(arg as *mut State<'_>) };
    // SAFETY: `ctx` is the live context the walking libgcc hands to the callback, read by the
    // same libgcc's accessor.
    let ip = unsafe { (st.get_ip)(ctx) } as u64;
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
    let (backtrace, get_ip, _) = functions();
    let mut st = State { out, n: 0, skip, get_ip };
    // SAFETY: `trace` matches libgcc's callback ABI and only uses `arg` as the `State` above,
    // which outlives the call.
    unsafe { backtrace(trace, &mut st as *mut State<'_> as *mut c_void) };
    st.n
}
