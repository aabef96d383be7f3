//! The calls a program goes idle in: sleeps, polls and signal waits. A program that has not
//! started a thread has no writer thread to hand over its partly filled batch while it waits
//! (transport.rs); killed then (SIGKILL, a signal it does not handle), it would lose the events
//! since its last batch. So its batch is written out as it goes idle (`transport::going_idle`).
//! Nothing here is recorded, and every call is passed on unchanged. Where the timeout is a plain
//! integer, a zero one (a check that does not wait) goes straight on; the others are left to
//! `going_idle`'s own limit (once per 10 ms). Blocking reads and waits for children are not
//! covered: the 100 ms rule bounds what those lose.

use std::ffi::{c_int, c_uint};

use crate::ffi::{resolve, Next};
use crate::transport::going_idle;

type Timespec = libc::timespec;
type NanosleepFn = unsafe extern "C" fn(*const Timespec, *mut Timespec) -> c_int;
type ClockNanosleepFn = unsafe extern "C" fn(libc::clockid_t, c_int, *const Timespec, *mut Timespec) -> c_int;
type SleepFn = unsafe extern "C" fn(c_uint) -> c_uint;
type UsleepFn = unsafe extern "C" fn(libc::useconds_t) -> c_int;
type PollFn = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int;
type PpollFn = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, *const Timespec, *const libc::sigset_t) -> c_int;
type SelectFn =
    unsafe extern "C" fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *mut libc::timeval) -> c_int;
type PselectFn = unsafe extern "C" fn(
    c_int,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *mut libc::fd_set,
    *const Timespec,
    *const libc::sigset_t,
) -> c_int;
type EpollWaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int;
type EpollPwaitFn = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int, *const libc::sigset_t) -> c_int;
type PauseFn = unsafe extern "C" fn() -> c_int;
type SigsuspendFn = unsafe extern "C" fn(*const libc::sigset_t) -> c_int;

static NEXT_NANOSLEEP: Next = Next::new(c"nanosleep");
static NEXT_CLOCK_NANOSLEEP: Next = Next::new(c"clock_nanosleep");
static NEXT_SLEEP: Next = Next::new(c"sleep");
static NEXT_USLEEP: Next = Next::new(c"usleep");
static NEXT_POLL: Next = Next::new(c"poll");
static NEXT_PPOLL: Next = Next::new(c"ppoll");
static NEXT_SELECT: Next = Next::new(c"select");
static NEXT_PSELECT: Next = Next::new(c"pselect");
static NEXT_EPOLL_WAIT: Next = Next::new(c"epoll_wait");
static NEXT_EPOLL_PWAIT: Next = Next::new(c"epoll_pwait");
static NEXT_PAUSE: Next = Next::new(c"pause");
static NEXT_SIGSUSPEND: Next = Next::new(c"sigsuspend");

/// # Safety
/// As C's nanosleep.
#[no_mangle]
pub unsafe extern "C" fn nanosleep(req: *const Timespec, rem: *mut Timespec) -> c_int {
    going_idle();
    // SAFETY: NEXT_NANOSLEEP names nanosleep, of type NanosleepFn; arguments unchanged.
    unsafe { resolve::<NanosleepFn>(&NEXT_NANOSLEEP)(req, rem) }
}

/// # Safety
/// As C's clock_nanosleep.
#[no_mangle]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const Timespec,
    rem: *mut Timespec,
) -> c_int {
    going_idle();
    // SAFETY: NEXT_CLOCK_NANOSLEEP names clock_nanosleep, of type ClockNanosleepFn; arguments
    // unchanged.
    unsafe { resolve::<ClockNanosleepFn>(&NEXT_CLOCK_NANOSLEEP)(clock, flags, req, rem) }
}

/// glibc's sleep and usleep call its nanosleep internally, not through this one.
///
/// # Safety
/// As C's sleep.
#[no_mangle]
pub unsafe extern "C" fn sleep(seconds: c_uint) -> c_uint {
    going_idle();
    // SAFETY: NEXT_SLEEP names sleep, of type SleepFn; argument unchanged.
    unsafe { resolve::<SleepFn>(&NEXT_SLEEP)(seconds) }
}

/// # Safety
/// As C's usleep.
#[no_mangle]
pub unsafe extern "C" fn usleep(us: libc::useconds_t) -> c_int {
    going_idle();
    // SAFETY: NEXT_USLEEP names usleep, of type UsleepFn; argument unchanged.
    unsafe { resolve::<UsleepFn>(&NEXT_USLEEP)(us) }
}

/// # Safety
/// As C's poll.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    if timeout != 0 {
        going_idle();
    }
    // SAFETY: NEXT_POLL names poll, of type PollFn; arguments unchanged.
    unsafe { resolve::<PollFn>(&NEXT_POLL)(fds, n, timeout) }
}

/// # Safety
/// As C's ppoll.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: *const Timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    going_idle();
    // SAFETY: NEXT_PPOLL names ppoll, of type PpollFn; arguments unchanged.
    unsafe { resolve::<PpollFn>(&NEXT_PPOLL)(fds, n, timeout, mask) }
}

/// # Safety
/// As C's select.
#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    going_idle();
    // SAFETY: NEXT_SELECT names select, of type SelectFn; arguments unchanged.
    unsafe { resolve::<SelectFn>(&NEXT_SELECT)(n, r, w, e, timeout) }
}

/// # Safety
/// As C's pselect.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *const Timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    going_idle();
    // SAFETY: NEXT_PSELECT names pselect, of type PselectFn; arguments unchanged.
    unsafe { resolve::<PselectFn>(&NEXT_PSELECT)(n, r, w, e, timeout, mask) }
}

/// # Safety
/// As C's epoll_wait.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(fd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    if timeout != 0 {
        going_idle();
    }
    // SAFETY: NEXT_EPOLL_WAIT names epoll_wait, of type EpollWaitFn; arguments unchanged.
    unsafe { resolve::<EpollWaitFn>(&NEXT_EPOLL_WAIT)(fd, events, max, timeout) }
}

/// # Safety
/// As C's epoll_pwait.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    fd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    if timeout != 0 {
        going_idle();
    }
    // SAFETY: NEXT_EPOLL_PWAIT names epoll_pwait, of type EpollPwaitFn; arguments unchanged.
    unsafe { resolve::<EpollPwaitFn>(&NEXT_EPOLL_PWAIT)(fd, events, max, timeout, mask) }
}

/// # Safety
/// As C's pause.
#[no_mangle]
pub unsafe extern "C" fn pause() -> c_int {
    going_idle();
    // SAFETY: NEXT_PAUSE names pause, of type PauseFn.
    unsafe { resolve::<PauseFn>(&NEXT_PAUSE)() }
}

/// # Safety
/// As C's sigsuspend.
#[no_mangle]
pub unsafe extern "C" fn sigsuspend(mask: *const libc::sigset_t) -> c_int {
    going_idle();
    // SAFETY: NEXT_SIGSUSPEND names sigsuspend, of type SigsuspendFn; argument unchanged.
    unsafe { resolve::<SigsuspendFn>(&NEXT_SIGSUSPEND)(mask) }
}
