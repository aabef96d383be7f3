//! fork, the exec family and pthread_exit.
//!
//! exec replaces the image: everything recorded is flushed first, and the stream descriptor
//! (which is not close-on-exec) carries on into the new image, whose interposer sees
//! `RESIDUE_PID` equal to its pid and continues the stream. The execl* variants are variadic
//! and cannot be defined in stable Rust: through them the new image is still tracked, but what
//! the old image had not yet flushed is lost (its heap is gone anyway).

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::ffi::{resolve, AbortFn, ExecvFn, ExecveFn, ExitFn, FexecveFn, ForkFn, Next, PthreadExitFn};
use crate::lifecycle;

static NEXT_FORK: Next = Next::new(c"fork");
static NEXT_EXECVE: Next = Next::new(c"execve");
static NEXT_EXECV: Next = Next::new(c"execv");
static NEXT_EXECVP: Next = Next::new(c"execvp");
static NEXT_EXECVPE: Next = Next::new(c"execvpe");
static NEXT_FEXECVE: Next = Next::new(c"fexecve");
static NEXT_PTHREAD_EXIT: Next = Next::new(c"pthread_exit");
static NEXT_EXIT_: Next = Next::new(c"_exit");
static NEXT_EXIT_UPPER: Next = Next::new(c"_Exit");
static NEXT_ABORT: Next = Next::new(c"abort");

/// `_exit` skips exit handlers and destructors, and so our exit flush: what was recorded is
/// flushed here (see `lifecycle::End::Underscore`).
///
/// # Safety
/// As C's _exit.
#[no_mangle]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    lifecycle::end_image(lifecycle::End::Underscore);
    // SAFETY: NEXT_EXIT_ names _exit, of type ExitFn.
    unsafe { resolve::<ExitFn>(&NEXT_EXIT_)(status) }
}

/// # Safety
/// As C's _Exit (the same as _exit).
#[no_mangle]
pub unsafe extern "C" fn _Exit(status: c_int) -> ! {
    lifecycle::end_image(lifecycle::End::Underscore);
    // SAFETY: NEXT_EXIT_UPPER names _Exit, of type ExitFn.
    unsafe { resolve::<ExitFn>(&NEXT_EXIT_UPPER)(status) }
}

/// # Safety
/// As C's abort.
#[no_mangle]
pub unsafe extern "C" fn abort() -> ! {
    lifecycle::end_image(lifecycle::End::Cut);
    // SAFETY: NEXT_ABORT names abort, of type AbortFn.
    unsafe { resolve::<AbortFn>(&NEXT_ABORT)() }
}

/// # Safety
/// As C's fork.
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // A program whose threads have ended is single-threaded again without us: so it must be at
    // its fork too (transport::step_aside_if_alone).
    if crate::transport::writer_running() && !lifecycle::in_vfork_child() {
        if let Some(_g) = crate::state::Guard::enter_any() {
            crate::transport::step_aside_if_alone();
        }
    }
    // SAFETY: NEXT_FORK names fork, whose type ForkFn is.
    let real: ForkFn = unsafe { resolve(&NEXT_FORK) };
    // SAFETY: fork has no arguments; the child's side is handled by our atfork handler.
    let pid = unsafe { real() };
    if pid > 0 {
        lifecycle::forked(pid as u32);
    }
    pid
}

/// Runs `call` (the real exec) between the flush and, if it returns, the resume.
///
/// # Safety
/// `path` is null or NUL-terminated.
unsafe fn exec_with(path: *const c_char, call: impl FnOnce() -> c_int) -> c_int {
    let name: &[u8] = if path.is_null() {
        b""
    } else {
        // SAFETY: the caller guarantees a NUL-terminated path.
        unsafe { CStr::from_ptr(path) }.to_bytes()
    };
    if lifecycle::in_vfork_child() {
        // A vfork child shares our memory but not our descriptor table: keep the stream out of
        // the program it is about to become.
        crate::transport::set_cloexec(true);
    }
    let prepared = lifecycle::before_exec(name);
    let r = call();
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    lifecycle::exec_failed(prepared);
    // SAFETY: restoring the exec's errno for the caller.
    unsafe { *libc::__errno_location() = errno };
    r
}

/// `envp` with our own `RESIDUE_PID` and `RESIDUE_FD` entries brought up to date, for an exec
/// by the process that owns the stream. Programs that keep their own copy of the environment
/// (shells, CPython's os.environ) would otherwise hand the new image the values they started
/// with: a forked child's exec'd image would take itself for an unfollowed child. Entries the
/// program removed stay removed. `None`: nothing to change (the caller's envp is used as is).
///
/// # Safety
/// `envp` is null or a NULL-terminated array of NUL-terminated strings.
unsafe fn refreshed_env(envp: *const *const c_char) -> Option<Vec<*const c_char>> {
    if envp.is_null() || lifecycle::in_vfork_child() || crate::state::state() != crate::state::ACTIVE {
        return None;
    }
    let pid = std::ffi::CString::new(format!("RESIDUE_PID={}", crate::ffi::getpid())).ok()?;
    let fd = std::ffi::CString::new(format!("RESIDUE_FD={}", crate::transport::out_fd())).ok()?;
    let mut out = Vec::new();
    let mut changed = false;
    for i in 0.. {
        // SAFETY: per the contract, envp is NULL-terminated.
        let e = unsafe { *envp.add(i) };
        if e.is_null() {
            break;
        }
        // SAFETY: each entry is NUL-terminated.
        let b = unsafe { CStr::from_ptr(e) }.to_bytes_with_nul();
        let fresh = if b.starts_with(b"RESIDUE_PID=") {
            Some(&pid)
        } else if b.starts_with(b"RESIDUE_FD=") {
            Some(&fd)
        } else {
            None
        };
        match fresh {
            Some(f) if f.as_bytes_with_nul() != b => {
                changed = true;
                out.push(f.as_ptr());
            }
            _ => out.push(e),
        }
    }
    out.push(std::ptr::null());
    // The exec either replaces the image (nothing to free) or fails (a few bytes, once).
    std::mem::forget((pid, fd));
    changed.then_some(out)
}

/// # Safety
/// As C's execve.
#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: envp is the caller's, as execve requires.
    let env = unsafe { refreshed_env(envp) };
    let envp = env.as_ref().map_or(envp, |e| e.as_ptr());
    // SAFETY: NEXT_EXECVE names execve, of type ExecveFn; arguments forwarded, the environment
    // with our entries refreshed.
    unsafe { exec_with(path, || resolve::<ExecveFn>(&NEXT_EXECVE)(path, argv, envp)) }
}

/// # Safety
/// As C's execv.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: NEXT_EXECV names execv, of type ExecvFn; arguments forwarded unchanged.
    unsafe { exec_with(path, || resolve::<ExecvFn>(&NEXT_EXECV)(path, argv)) }
}

/// # Safety
/// As C's execvp.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: NEXT_EXECVP names execvp, of type ExecvFn; arguments forwarded unchanged.
    unsafe { exec_with(file, || resolve::<ExecvFn>(&NEXT_EXECVP)(file, argv)) }
}

/// # Safety
/// As C's execvpe.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: envp is the caller's, as execvpe requires.
    let env = unsafe { refreshed_env(envp) };
    let envp = env.as_ref().map_or(envp, |e| e.as_ptr());
    // SAFETY: NEXT_EXECVPE names execvpe, of type ExecveFn; the environment refreshed as above.
    unsafe { exec_with(file, || resolve::<ExecveFn>(&NEXT_EXECVPE)(file, argv, envp)) }
}

/// # Safety
/// As C's fexecve.
#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: envp is the caller's, as fexecve requires.
    let env = unsafe { refreshed_env(envp) };
    let envp = env.as_ref().map_or(envp, |e| e.as_ptr());
    // SAFETY: NEXT_FEXECVE names fexecve, of type FexecveFn; the environment refreshed as above.
    unsafe { exec_with(std::ptr::null(), || resolve::<FexecveFn>(&NEXT_FEXECVE)(fd, argv, envp)) }
}

/// When the main thread calls pthread_exit, the process lives on until its last thread ends;
/// the writer thread must then step aside (see `lifecycle::only_writer_left`). `C-unwind`:
/// pthread_exit unwinds the thread's stack (running C++ destructors and cleanup handlers)
/// through this frame.
///
/// # Safety
/// As C's pthread_exit.
#[no_mangle]
pub unsafe extern "C-unwind" fn pthread_exit(retval: *mut c_void) -> ! {
    lifecycle::main_thread_exiting();
    // SAFETY: NEXT_PTHREAD_EXIT names pthread_exit, of type PthreadExitFn.
    unsafe { resolve::<PthreadExitFn>(&NEXT_PTHREAD_EXIT)(retval) }
}

type PosixSpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const c_void,
    *const c_void,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;
type SystemFn = unsafe extern "C" fn(*const c_char) -> c_int;

static NEXT_POSIX_SPAWN: Next = Next::new(c"posix_spawn");
static NEXT_POSIX_SPAWNP: Next = Next::new(c"posix_spawnp");
static NEXT_SYSTEM: Next = Next::new(c"system");

/// Forwards a posix_spawn-shaped call with the stream close-on-exec: posix_spawn execs through
/// glibc's internal `__execve`, which no hook sees, and the child must not inherit the stream.
///
/// # Safety
/// `next` names posix_spawn or posix_spawnp; the arguments are the caller's, unchanged.
unsafe fn spawn_via(
    next: &Next,
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const c_void,
    attr: *const c_void,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    crate::transport::without_inheritance(|| {
        // SAFETY: per this function's contract, `next` is of type PosixSpawnFn.
        unsafe { resolve::<PosixSpawnFn>(next)(pid, path, actions, attr, argv, envp) }
    })
}

/// # Safety
/// As C's posix_spawn.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const c_void,
    attr: *const c_void,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: NEXT_POSIX_SPAWN names posix_spawn; the caller's contract is posix_spawn's.
    unsafe { spawn_via(&NEXT_POSIX_SPAWN, pid, path, actions, attr, argv, envp) }
}

/// # Safety
/// As C's posix_spawnp.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const c_void,
    attr: *const c_void,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: NEXT_POSIX_SPAWNP names posix_spawnp; the caller's contract is posix_spawnp's.
    unsafe { spawn_via(&NEXT_POSIX_SPAWNP, pid, file, actions, attr, argv, envp) }
}

/// # Safety
/// As C's system (which spawns its shell through glibc's internal posix_spawn).
#[no_mangle]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    crate::transport::without_inheritance(|| {
        // SAFETY: NEXT_SYSTEM names system, of type SystemFn; argument unchanged.
        unsafe { resolve::<SystemFn>(&NEXT_SYSTEM)(command) }
    })
}
