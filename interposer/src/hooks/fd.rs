//! File descriptors: the calls that create one (open, dup, pipe, socket, eventfd...), the ones
//! that release one (close, close_range, dup2/dup3 onto an open descriptor), `connect` (which
//! tells what a socket points to), and the list of descriptors still open at exit. Also the
//! recording helpers shared with the stream, dir and mapping hooks.
//!
//! Sizes: descriptors, streams and directories are acquired with size 0 (a count, no bytes).
//!
//! Which descriptors are live as far as we know is kept in a table indexed by descriptor (the
//! seq of the acquisition, 0 when not live): a release is only sent for a descriptor whose
//! acquisition was sent, so that closing inherited descriptors, or a "close everything from 3
//! to 1024" loop, costs no events; and `connect` can describe the socket's acquisition. Beyond
//! the table, releases are always sent (the collector counts unmatched ones as "origin unseen").
//!
//! The stream's own descriptor (`RESIDUE_FD`) is never reported, and is protected while we
//! record: `close` of it reports success without closing it (hosts that close every descriptor
//! they did not open would otherwise end the trace, or hand its number to one of their files
//! that we would then write into); `close_range` closes around it; `dup2`/`dup3` onto it first
//! move the stream to another descriptor (the host does mean to own that number afterwards).
//!
//! Variadic functions (`open`, `openat`, `fcntl`) are defined with one fixed extra argument,
//! which receives the variadic one on the x86-64 and aarch64 Linux ABIs; it is read only where
//! the flags say it was passed, and forwarded unchanged.

use std::ffi::{c_char, c_int, c_uint, c_ulong, CStr};
use std::fmt::{self, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use residue_protocol::{Api, Kind, MAX_SMALL_RECORD};

use crate::ffi::{resolve, Next};
use crate::state::{self, next_seq, Guard, ACTIVE, EXECUTING, FINISHED};
use crate::{lifecycle, stacks, transport};

// ---------------------------------------------------------------------------------------------
// Shared recording helpers (also used by stream.rs, dir.rs and mmap.rs).

/// A short description built on the stack: hooks describe what they acquired without a heap
/// allocation per call. Longer text is cut.
pub(super) struct Text {
    buf: [u8; 384],
    len: usize,
}

impl Text {
    pub(super) fn new() -> Self {
        Text { buf: [0; 384], len: 0 }
    }

    pub(super) fn of(b: &[u8]) -> Self {
        let mut t = Text::new();
        t.push(b);
        t
    }

    pub(super) fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Saves errno and restores it when dropped: what a hook does after the real call (readlink,
/// fileno, getsockopt) must not change the errno the host sees from that call.
pub(super) struct Errno(c_int);

impl Errno {
    pub(super) fn save() -> Self {
        // SAFETY: __errno_location returns this thread's errno.
        Errno(unsafe { *libc::__errno_location() })
    }
}

impl Drop for Errno {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// A NUL-terminated C string's bytes, empty for NULL.
///
/// # Safety
/// `s` is null or NUL-terminated.
pub(super) unsafe fn cstr<'a>(s: *const c_char) -> &'a [u8] {
    if s.is_null() {
        b""
    } else {
        // SAFETY: the caller guarantees NUL termination.
        unsafe { CStr::from_ptr(s) }.to_bytes()
    }
}

/// Set from `RESIDUE_SELF_TEST_PANIC` at start: recording an acquired descriptor or stream
/// then panics, so that tests can see a panic inside a hook caught there (the interposer goes
/// passive, the host runs on untracked). It must unwind with the interposer's own copy of
/// libgcc's unwinder (ARCHITECTURE.md, "libgcc"), in any host.
static SELF_TEST_PANIC: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_self_test_panic(on: bool) {
    SELF_TEST_PANIC.store(on, Ordering::Relaxed);
}

/// Records that `kind` resource `id` was acquired: the seq is taken now (after the real call
/// returned), the stack captured unless `stack` is given (a second resource of the same call),
/// then `text` describes it. Returns `(seq, stack id)`; `None` if recording failed, which turns
/// the interposer passive.
pub(super) fn acquire(
    g: &Guard,
    kind: Kind,
    api: Api,
    id: u64,
    size: u64,
    stack: Option<u32>,
    text: &[u8],
) -> Option<(u64, u32)> {
    let seq = next_seq();
    let t = g.thread();
    let r = catch_unwind(AssertUnwindSafe(|| {
        if SELF_TEST_PANIC.load(Ordering::Relaxed) {
            panic!("residue self-test: a panic while recording ({api:?})");
        }
        let stack = match stack {
            Some(s) => {
                stacks::acquired_with(t, seq, kind, api, id, size, s);
                s
            }
            None => stacks::acquired(t, seq, kind, api, id, size),
        };
        if !text.is_empty() {
            describe(g, seq, text);
        }
        stack
    }));
    match r {
        Ok(stack) => Some((seq, stack)),
        Err(_) => {
            state::go_passive();
            None
        }
    }
}

/// Says what the resource acquired with `seq` is. A later description of the same seq refines
/// an earlier one (connect adds a socket's peer).
pub(super) fn describe(g: &Guard, seq: u64, text: &[u8]) {
    let text = &text[..text.len().min(4096)];
    transport::emit(g.thread(), text.len() + MAX_SMALL_RECORD, |enc, b, pos| enc.describe(b, pos, seq, text));
}

/// Records that `kind` resource `id` is released: called before the real release.
pub(super) fn release(g: &Guard, kind: Kind, api: Api, id: u64) {
    release_at(g, next_seq(), kind, api, id);
}

/// As [`release`], with a seq taken earlier (before a real call whose outcome decides whether
/// there was a release at all: mremap).
pub(super) fn release_at(g: &Guard, seq: u64, kind: Kind, api: Api, id: u64) {
    let t = g.thread();
    if catch_unwind(AssertUnwindSafe(|| stacks::released(t, seq, kind, api, id))).is_err() {
        state::go_passive();
    }
}

// ---------------------------------------------------------------------------------------------
// The table of live descriptors.

/// Descriptors below this are tracked in `LIVE` (512 KiB of zero pages until touched).
const TRACKED: usize = 1 << 16;
static LIVE: [AtomicU64; TRACKED] = [const { AtomicU64::new(0) }; TRACKED];

fn live_slot(fd: c_int) -> Option<&'static AtomicU64> {
    usize::try_from(fd).ok().and_then(|i| LIVE.get(i))
}

/// The seq that acquired `fd`, if we saw it acquired and not yet released.
fn live_seq(fd: c_int) -> Option<u64> {
    live_slot(fd).map(|s| s.load(Ordering::Acquire)).filter(|&s| s != 0)
}

/// Records descriptor `fd` acquired through `api` (nothing for a failed call's -1).
pub(super) fn fd_acquired(g: &Guard, api: Api, fd: c_int, stack: Option<u32>, text: &[u8]) -> Option<u32> {
    if fd < 0 {
        return stack;
    }
    let (seq, stack) = acquire(g, Kind::FD, api, fd as u64, 0, stack, text)?;
    if let Some(s) = live_slot(fd) {
        s.store(seq, Ordering::Release);
    }
    Some(stack)
}

/// Records descriptor `fd` released through `api`, before the real call, if its acquisition
/// was recorded (or it lies beyond the table, where we cannot tell).
pub(super) fn fd_released(g: &Guard, api: Api, fd: c_int) {
    if fd < 0 {
        return;
    }
    let was_live = match live_slot(fd) {
        // Two threads closing the same descriptor: one release.
        Some(s) => s.swap(0, Ordering::AcqRel) != 0,
        None => true,
    };
    if was_live {
        release(g, Kind::FD, api, fd as u64);
    }
}

/// What `fd` points to, as the kernel names it (a path, `socket:[inode]`, `pipe:[inode]`,
/// `anon_inode:[eventfd]`).
pub(super) fn fd_target(fd: c_int) -> Text {
    let mut link = Text::new();
    let _ = write!(link, "/proc/self/fd/{fd}\0");
    let mut t = Text::new();
    // SAFETY: link is NUL-terminated; readlink writes at most buf.len() bytes into buf.
    let n = unsafe { libc::readlink(link.bytes().as_ptr().cast(), t.buf.as_mut_ptr().cast(), t.buf.len()) };
    t.len = usize::try_from(n).unwrap_or(0);
    t
}

/// `Guard::enter` for descriptor hooks (fd, stream, dir): a vfork child (Python's subprocess,
/// posix_spawn users) shares our memory but not our descriptor table, so what it opens and
/// closes (often every descriptor from 3 up, before exec) is not the process's and must neither
/// be recorded nor touch the table of live descriptors.
pub(super) fn fd_guard() -> Option<Guard> {
    let g = Guard::enter()?;
    (!lifecycle::in_vfork_child()).then_some(g)
}

// ---------------------------------------------------------------------------------------------
// Our own descriptor.

/// Whether `fd` is the stream's descriptor and the stream is still being written: then the
/// host must not close it.
fn ours(fd: c_int) -> bool {
    fd >= 0
        && fd == transport::out_fd()
        && matches!(state::state(), ACTIVE | EXECUTING | FINISHED)
        && !transport::dead()
        && !lifecycle::in_vfork_child()
}

// ---------------------------------------------------------------------------------------------
// Hooks.

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type Openat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
type CreatFn = unsafe extern "C" fn(*const c_char, libc::mode_t) -> c_int;
type IntFn = unsafe extern "C" fn(c_int) -> c_int;
type Int2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type Int3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
type PipeFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type Pipe2Fn = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type SocketpairFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_int) -> c_int;
type AcceptFn = unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int;
type ConnectFn = unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int;
type EventfdFn = unsafe extern "C" fn(c_uint, c_int) -> c_int;
type SignalfdFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, c_int) -> c_int;
type MemfdFn = unsafe extern "C" fn(*const c_char, c_uint) -> c_int;
type NoArgFn = unsafe extern "C" fn() -> c_int;
type RecvmsgFn = unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> isize;

static NEXT_CLOSEFROM: Next = Next::new(c"closefrom");
type CloseFromFn = unsafe extern "C" fn(c_int);
static NEXT_OPEN: Next = Next::new(c"open");
static NEXT_OPEN64: Next = Next::new(c"open64");
static NEXT_OPENAT: Next = Next::new(c"openat");
static NEXT_OPENAT64: Next = Next::new(c"openat64");
static NEXT_OPEN_2: Next = Next::new(c"__open_2");
static NEXT_OPEN64_2: Next = Next::new(c"__open64_2");
static NEXT_OPENAT_2: Next = Next::new(c"__openat_2");
static NEXT_OPENAT64_2: Next = Next::new(c"__openat64_2");
static NEXT_CREAT: Next = Next::new(c"creat");
static NEXT_CREAT64: Next = Next::new(c"creat64");
static NEXT_CLOSE: Next = Next::new(c"close");
static NEXT_CLOSE_RANGE: Next = Next::new(c"close_range");
static NEXT_DUP: Next = Next::new(c"dup");
static NEXT_DUP2: Next = Next::new(c"dup2");
static NEXT_DUP3: Next = Next::new(c"dup3");
static NEXT_FCNTL: Next = Next::new(c"fcntl");
static NEXT_FCNTL64: Next = Next::new(c"fcntl64");
static NEXT_PIPE: Next = Next::new(c"pipe");
static NEXT_PIPE2: Next = Next::new(c"pipe2");
static NEXT_SOCKET: Next = Next::new(c"socket");
static NEXT_SOCKETPAIR: Next = Next::new(c"socketpair");
static NEXT_ACCEPT: Next = Next::new(c"accept");
static NEXT_ACCEPT4: Next = Next::new(c"accept4");
static NEXT_CONNECT: Next = Next::new(c"connect");
static NEXT_EVENTFD: Next = Next::new(c"eventfd");
static NEXT_TIMERFD_CREATE: Next = Next::new(c"timerfd_create");
static NEXT_SIGNALFD: Next = Next::new(c"signalfd");
static NEXT_EPOLL_CREATE: Next = Next::new(c"epoll_create");
static NEXT_EPOLL_CREATE1: Next = Next::new(c"epoll_create1");
static NEXT_INOTIFY_INIT: Next = Next::new(c"inotify_init");
static NEXT_INOTIFY_INIT1: Next = Next::new(c"inotify_init1");
static NEXT_MEMFD_CREATE: Next = Next::new(c"memfd_create");
static NEXT_RECVMSG: Next = Next::new(c"recvmsg");

/// After a call that returned descriptor `fd` (or -1): record it, described by `text()`.
#[inline]
fn opened(api: Api, fd: c_int, text: impl FnOnce() -> Text) {
    if fd < 0 {
        return;
    }
    if let Some(g) = fd_guard() {
        let _e = Errno::save();
        fd_acquired(&g, api, fd, None, text().bytes());
    }
}

/// After a call that filled `fds[0..2]` (pipe, socketpair): both ends, one stack.
///
/// # Safety
/// `fds` points at two descriptors the call just wrote.
unsafe fn opened_pair(api: Api, fds: *const c_int, text: [&[u8]; 2]) {
    if let Some(g) = fd_guard() {
        let _e = Errno::save();
        // SAFETY: the caller guarantees two readable ints.
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        let stack = fd_acquired(&g, api, a, None, text[0]);
        fd_acquired(&g, api, b, stack, text[1]);
    }
}

/// Whether open's flags say that a mode argument was passed.
fn has_mode(flags: c_int) -> bool {
    flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE
}

/// # Safety
/// As C's open; `next` names a function of type OpenFn.
unsafe fn open_via(next: &Next, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller names an OpenFn; the mode is forwarded only where it was passed.
    let fd = unsafe {
        let real: OpenFn = resolve(next);
        if has_mode(flags) {
            real(path, flags, mode)
        } else {
            real(path, flags)
        }
    };
    // SAFETY: path is NUL-terminated, as open requires (the call succeeded).
    opened(Api::OPEN, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As C's openat; `next` names a function of type OpenatFn.
unsafe fn openat_via(next: &Next, dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: as open_via.
    let fd = unsafe {
        let real: OpenatFn = resolve(next);
        if has_mode(flags) {
            real(dirfd, path, flags, mode)
        } else {
            real(dirfd, path, flags)
        }
    };
    // SAFETY: as open_via. A path relative to a dirfd is given as written: resolving it would
    // cost a readlink on every open.
    opened(Api::OPENAT, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As C's open (variadic: `mode` is read only when O_CREAT or O_TMPFILE says it was passed).
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller's contract is open's.
    unsafe { open_via(&NEXT_OPEN, path, flags, mode) }
}

/// # Safety
/// As C's open64.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller's contract is open64's.
    unsafe { open_via(&NEXT_OPEN64, path, flags, mode) }
}

/// # Safety
/// As C's openat.
#[no_mangle]
pub unsafe extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller's contract is openat's.
    unsafe { openat_via(&NEXT_OPENAT, dirfd, path, flags, mode) }
}

/// # Safety
/// As C's openat64.
#[no_mangle]
pub unsafe extern "C" fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    // SAFETY: the caller's contract is openat64's.
    unsafe { openat_via(&NEXT_OPENAT64, dirfd, path, flags, mode) }
}

/// The `_FORTIFY_SOURCE` entry points: `open(path, flags)` with flags unknown at compile time
/// becomes `__open_2` (or `__open64_2`) in fortified builds, which distributions use.
///
/// # Safety
/// As glibc's __open_2.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: NEXT_OPEN_2 names __open_2, of type Open2Fn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<Open2Fn>(&NEXT_OPEN_2)(path, flags) };
    // SAFETY: path is NUL-terminated (the call succeeded).
    opened(Api::OPEN, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As glibc's __open64_2.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: NEXT_OPEN64_2 names __open64_2, of type Open2Fn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<Open2Fn>(&NEXT_OPEN64_2)(path, flags) };
    // SAFETY: path is NUL-terminated (the call succeeded).
    opened(Api::OPEN, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As glibc's __openat_2.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: NEXT_OPENAT_2 names __openat_2, of type Openat2Fn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<Openat2Fn>(&NEXT_OPENAT_2)(dirfd, path, flags) };
    // SAFETY: path is NUL-terminated (the call succeeded).
    opened(Api::OPENAT, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As glibc's __openat64_2.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: NEXT_OPENAT64_2 names __openat64_2, of type Openat2Fn; arguments unchanged.
    let fd = unsafe { resolve::<Openat2Fn>(&NEXT_OPENAT64_2)(dirfd, path, flags) };
    // SAFETY: path is NUL-terminated (the call succeeded).
    opened(Api::OPENAT, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As C's creat.
#[no_mangle]
pub unsafe extern "C" fn creat(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: NEXT_CREAT names creat, of type CreatFn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<CreatFn>(&NEXT_CREAT)(path, mode) };
    // SAFETY: path is NUL-terminated (the call succeeded).
    opened(Api::CREAT, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As C's creat64.
#[no_mangle]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: libc::mode_t) -> c_int {
    // SAFETY: NEXT_CREAT64 names creat64, of type CreatFn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<CreatFn>(&NEXT_CREAT64)(path, mode) };
    // SAFETY: path is NUL-terminated (the call succeeded).
    opened(Api::CREAT, fd, || Text::of(unsafe { cstr(path) }));
    fd
}

/// # Safety
/// As C's close.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if ours(fd) {
        // The host believes it closed it; we keep writing the trace into it.
        return 0;
    }
    if let Some(g) = fd_guard() {
        fd_released(&g, Api::CLOSE, fd);
    }
    // SAFETY: NEXT_CLOSE names close, of type IntFn; argument forwarded unchanged.
    unsafe { resolve::<IntFn>(&NEXT_CLOSE)(fd) }
}

/// # Safety
/// As C's close_range.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: NEXT_CLOSE_RANGE names close_range, of type CloseRangeFn.
    let real: CloseRangeFn = unsafe { resolve(&NEXT_CLOSE_RANGE) };
    // CLOSE_RANGE_CLOEXEC only marks the descriptors: nothing is released.
    const CLOSE_RANGE_CLOEXEC: c_int = 1 << 2;
    if flags & CLOSE_RANGE_CLOEXEC != 0 {
        // SAFETY: forwarding the caller's arguments.
        let r = unsafe { real(first, last, flags) };
        let own = transport::out_fd();
        if ours(own) && (first..=last).contains(&(own as c_uint)) {
            // As with fcntl: the stream stays open across the program's own exec.
            transport::set_cloexec(false);
        }
        return r;
    }
    if first > last {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(first, last, flags) };
    }
    if let Some(g) = fd_guard() {
        // Descriptors beyond the table cannot be enumerated cheaply: their releases are lost
        // (the collector's open-at-exit list still shows what really stayed open).
        let hi = (last as usize).min(TRACKED - 1);
        for fd in (first as usize..=hi).filter(|&fd| LIVE[fd].load(Ordering::Relaxed) != 0) {
            fd_released(&g, Api::CLOSE_RANGE, fd as c_int);
        }
    }
    let own = transport::out_fd();
    if ours(own) && (first..=last).contains(&(own as c_uint)) {
        // Close around the stream's descriptor.
        let mut r = 0;
        if own as c_uint > first {
            // SAFETY: forwarding a sub-range of the caller's range.
            r = unsafe { real(first, own as c_uint - 1, flags) };
        }
        if (own as c_uint) < last {
            // SAFETY: as above.
            let r2 = unsafe { real(own as c_uint + 1, last, flags) };
            if r == 0 {
                r = r2;
            }
        }
        return r;
    }
    // SAFETY: forwarding the caller's arguments.
    unsafe { real(first, last, flags) }
}

/// # Safety
/// As C's closefrom. glibc closes the descriptors with the close_range system call from inside
/// the C library, where no hook sees it (and the stream's descriptor would go with them): the
/// same close_range goes through [`close_range`] instead. Where the kernel has no close_range,
/// glibc's own closefrom is the fallback.
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    // SAFETY: our close_range hook takes any arguments.
    if unsafe { close_range(lowfd.max(0) as c_uint, c_uint::MAX, 0) } == 0 {
        return;
    }
    // SAFETY: NEXT_CLOSEFROM names closefrom, of type CloseFromFn; argument forwarded unchanged.
    unsafe { resolve::<CloseFromFn>(&NEXT_CLOSEFROM)(lowfd) }
}

/// # Safety
/// As C's dup.
#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    // SAFETY: NEXT_DUP names dup, of type IntFn; argument forwarded unchanged.
    let fd = unsafe { resolve::<IntFn>(&NEXT_DUP)(old) };
    opened(Api::DUP, fd, || fd_target(fd));
    fd
}

/// dup2 and dup3: `new` is closed first if it was open (a release), unless it equals `old`; a
/// redirection of a standard stream (new is 0, 1 or 2) is not an acquisition: like an inherited
/// standard stream, it is the process's, not a leak.
fn dup_onto(api: Api, old: c_int, new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if ours(new) && old != new {
        // If no descriptor is free to move the stream to, writing stops (the trace ends
        // incomplete) and the host's dup2 goes ahead all the same.
        transport::relocate_out_fd();
    }
    let g = if old != new { fd_guard() } else { None };
    if let Some(g) = &g {
        // A failing dup2 (old not open) closes nothing: check before releasing.
        // SAFETY: F_GETFD on an integer descriptor has no memory-safety preconditions; this is
        // libc's fcntl, and our fcntl hook passes it through (not a dup command).
        if live_seq(new).is_some() && unsafe { libc::fcntl(old, libc::F_GETFD) } >= 0 {
            fd_released(g, api, new);
        }
    }
    let fd = call();
    if let Some(g) = &g {
        if fd > 2 {
            let _e = Errno::save();
            fd_acquired(g, api, fd, None, fd_target(fd).bytes());
        }
    }
    fd
}

/// # Safety
/// As C's dup2.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: NEXT_DUP2 names dup2, of type Int2Fn; arguments forwarded unchanged.
    dup_onto(Api::DUP2, old, new, || unsafe { resolve::<Int2Fn>(&NEXT_DUP2)(old, new) })
}

/// # Safety
/// As C's dup3.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: NEXT_DUP3 names dup3, of type Int3Fn; arguments forwarded unchanged.
    dup_onto(Api::DUP3, old, new, || unsafe { resolve::<Int3Fn>(&NEXT_DUP3)(old, new, flags) })
}

/// # Safety
/// `next` names a function of type FcntlFn; the arguments are fcntl's.
unsafe fn fcntl_via(next: &Next, fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    if cmd == libc::F_SETFD && ours(fd) {
        // The stream stays open across the program's own exec (a program that execs itself
        // clean marks every descriptor close-on-exec first, this one too): it believes it did.
        return 0;
    }
    // SAFETY: the caller names an FcntlFn. The whole register that carried the variadic argument
    // is forwarded, as the caller passed it (glibc reads it as a pointer-sized value).
    let r = unsafe { resolve::<FcntlFn>(next)(fd, cmd, arg) };
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        opened(Api::FCNTL, r, || fd_target(r));
    }
    r
}

/// # Safety
/// As C's fcntl (variadic: the argument is forwarded unchanged).
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the caller's contract is fcntl's.
    unsafe { fcntl_via(&NEXT_FCNTL, fd, cmd, arg) }
}

/// # Safety
/// As C's fcntl64 (what `fcntl` is with 64-bit file offsets on glibc 2.28 and later).
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the caller's contract is fcntl64's.
    unsafe { fcntl_via(&NEXT_FCNTL64, fd, cmd, arg) }
}

/// # Safety
/// As C's pipe.
#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    // SAFETY: NEXT_PIPE names pipe, of type PipeFn; argument forwarded unchanged.
    let r = unsafe { resolve::<PipeFn>(&NEXT_PIPE)(fds) };
    if r == 0 {
        // SAFETY: pipe succeeded and wrote two descriptors.
        unsafe { opened_pair(Api::PIPE, fds, [b"pipe (read end)", b"pipe (write end)"]) };
    }
    r
}

/// # Safety
/// As C's pipe2.
#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    // SAFETY: NEXT_PIPE2 names pipe2, of type Pipe2Fn; arguments forwarded unchanged.
    let r = unsafe { resolve::<Pipe2Fn>(&NEXT_PIPE2)(fds, flags) };
    if r == 0 {
        // SAFETY: pipe2 succeeded and wrote two descriptors.
        unsafe { opened_pair(Api::PIPE2, fds, [b"pipe (read end)", b"pipe (write end)"]) };
    }
    r
}

fn family_name(domain: c_int) -> Option<&'static str> {
    Some(match domain {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        libc::AF_PACKET => "AF_PACKET",
        _ => return None,
    })
}

/// "socket AF_INET stream" (the type without its SOCK_NONBLOCK/SOCK_CLOEXEC flags).
fn socket_text(what: &str, domain: c_int, ty: c_int) -> Text {
    let mut t = Text::new();
    let _ = match family_name(domain) {
        Some(f) => write!(t, "{what} {f}"),
        None => write!(t, "{what} AF_{domain}"),
    };
    let _ = match ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
        libc::SOCK_STREAM => t.write_str(" stream"),
        libc::SOCK_DGRAM => t.write_str(" dgram"),
        libc::SOCK_SEQPACKET => t.write_str(" seqpacket"),
        libc::SOCK_RAW => t.write_str(" raw"),
        other => write!(t, " type {other}"),
    };
    t
}

/// Appends ", peer ADDRESS" for an inet or unix socket address.
///
/// # Safety
/// `addr` is null or points at `len` readable bytes.
unsafe fn push_peer(t: &mut Text, addr: *const libc::sockaddr, len: libc::socklen_t) {
    let len = len as usize;
    if addr.is_null() || len < std::mem::size_of::<libc::sa_family_t>() {
        return;
    }
    // SAFETY: addr has at least a family field.
    let family = c_int::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the length says this is a whole sockaddr_in (read unaligned: the caller's
            // buffer may be a byte array).
            let a = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            let _ = write!(t, ", peer {ip}:{}", u16::from_be(a.sin_port));
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a whole sockaddr_in6.
            let a = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let _ = write!(t, ", peer [{ip}]:{}", u16::from_be(a.sin6_port));
        }
        libc::AF_UNIX => {
            let off = std::mem::size_of::<libc::sa_family_t>();
            // SAFETY: the path bytes lie within the len bytes the caller vouches for.
            let path = unsafe { std::slice::from_raw_parts(addr.cast::<u8>().add(off), len - off) };
            match path.first() {
                None => t.push(b", peer (unnamed)"),
                // An abstract address: a leading NUL, then bytes that may contain NULs.
                Some(0) => {
                    t.push(b", peer @");
                    t.push(&path[1..]);
                }
                Some(_) => {
                    t.push(b", peer ");
                    t.push(path.split(|&c| c == 0).next().unwrap_or(b""));
                }
            }
        }
        _ => {}
    }
}

/// # Safety
/// As C's socket.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: NEXT_SOCKET names socket, of type Int3Fn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<Int3Fn>(&NEXT_SOCKET)(domain, ty, protocol) };
    opened(Api::SOCKET, fd, || socket_text("socket", domain, ty));
    fd
}

/// # Safety
/// As C's socketpair.
#[no_mangle]
pub unsafe extern "C" fn socketpair(domain: c_int, ty: c_int, protocol: c_int, sv: *mut c_int) -> c_int {
    // SAFETY: NEXT_SOCKETPAIR names socketpair, of type SocketpairFn; arguments unchanged.
    let r = unsafe { resolve::<SocketpairFn>(&NEXT_SOCKETPAIR)(domain, ty, protocol, sv) };
    if r == 0 {
        let t = socket_text("socketpair", domain, ty);
        // SAFETY: socketpair succeeded and wrote two descriptors.
        unsafe { opened_pair(Api::SOCKETPAIR, sv, [t.bytes(), t.bytes()]) };
    }
    r
}

/// "socket AF_INET (accepted), peer 1.2.3.4:5678", from the address accept filled in.
///
/// # Safety
/// `addr` is null or points at `cap` bytes that accept wrote `len` bytes of (an address longer
/// than the buffer is truncated: only what fits is read).
unsafe fn accepted_text(addr: *const libc::sockaddr, cap: libc::socklen_t, len: libc::socklen_t) -> Text {
    let mut t = Text::new();
    let n = cap.min(len);
    if addr.is_null() || (n as usize) < std::mem::size_of::<libc::sa_family_t>() {
        t.push(b"socket (accepted)");
        return t;
    }
    // SAFETY: addr holds at least a family field (checked above).
    match family_name(c_int::from(unsafe { (*addr).sa_family })) {
        Some(f) => {
            let _ = write!(t, "socket {f} (accepted)");
        }
        None => t.push(b"socket (accepted)"),
    }
    // SAFETY: n readable bytes at addr, as the caller guarantees.
    unsafe { push_peer(&mut t, addr, n) };
    t
}

/// The capacity of an accept address buffer, before the call overwrites it with the length.
///
/// # Safety
/// `len` is null or readable.
unsafe fn capacity(len: *const libc::socklen_t) -> libc::socklen_t {
    if len.is_null() {
        return 0;
    }
    // SAFETY: a non-null len is readable, as the caller guarantees.
    unsafe { *len }
}

/// # Safety
/// As C's accept.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int {
    // SAFETY: len is null or accept's in/out length.
    let cap = unsafe { capacity(len) };
    // SAFETY: NEXT_ACCEPT names accept, of type AcceptFn; arguments forwarded unchanged.
    let r = unsafe { resolve::<AcceptFn>(&NEXT_ACCEPT)(fd, addr, len) };
    // SAFETY: `opened` calls this only when accept succeeded, so addr/len are filled.
    opened(Api::ACCEPT, r, || unsafe { accepted_text(addr, cap, capacity(len)) });
    r
}

/// # Safety
/// As C's accept4.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: len is null or accept4's in/out length.
    let cap = unsafe { capacity(len) };
    // SAFETY: NEXT_ACCEPT4 names accept4, of type Accept4Fn; arguments forwarded unchanged.
    let r = unsafe { resolve::<Accept4Fn>(&NEXT_ACCEPT4)(fd, addr, len, flags) };
    // SAFETY: as accept.
    opened(Api::ACCEPT4, r, || unsafe { accepted_text(addr, cap, capacity(len)) });
    r
}

/// connect is not an acquisition; it tells what a recorded socket points to, as a refined
/// description of the socket's acquisition.
///
/// # Safety
/// As C's connect.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int {
    // SAFETY: NEXT_CONNECT names connect, of type ConnectFn; arguments forwarded unchanged.
    let r = unsafe { resolve::<ConnectFn>(&NEXT_CONNECT)(fd, addr, len) };
    let Some(seq) = live_seq(fd) else { return r };
    let errno = Errno::save();
    let family = if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        libc::AF_UNSPEC
    } else {
        // SAFETY: addr is readable for len bytes, as connect requires: it holds a family.
        c_int::from(unsafe { (*addr).sa_family })
    };
    // AF_UNSPEC dissolves a datagram socket's association: nothing to describe.
    if (r != 0 && errno.0 != libc::EINPROGRESS) || family == libc::AF_UNSPEC {
        return r;
    }
    if let Some(g) = fd_guard() {
        let mut ty: c_int = 0;
        let mut tl = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: a valid out-buffer of tl bytes for SO_TYPE.
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut ty as *mut c_int).cast(), &mut tl) };
        let mut t = socket_text("socket", family, ty);
        // SAFETY: addr is readable for len bytes, as connect requires.
        unsafe { push_peer(&mut t, addr, len) };
        describe(&g, seq, t.bytes());
    }
    r
}

/// # Safety
/// As C's eventfd.
#[no_mangle]
pub unsafe extern "C" fn eventfd(initval: c_uint, flags: c_int) -> c_int {
    // SAFETY: NEXT_EVENTFD names eventfd, of type EventfdFn; arguments forwarded unchanged.
    let fd = unsafe { resolve::<EventfdFn>(&NEXT_EVENTFD)(initval, flags) };
    opened(Api::EVENTFD, fd, || Text::of(b"eventfd"));
    fd
}

/// # Safety
/// As C's timerfd_create.
#[no_mangle]
pub unsafe extern "C" fn timerfd_create(clock: c_int, flags: c_int) -> c_int {
    // SAFETY: NEXT_TIMERFD_CREATE names timerfd_create, of type Int2Fn; arguments unchanged.
    let fd = unsafe { resolve::<Int2Fn>(&NEXT_TIMERFD_CREATE)(clock, flags) };
    opened(Api::TIMERFD_CREATE, fd, || Text::of(b"timerfd"));
    fd
}

/// signalfd with fd -1 creates a descriptor; with an existing one it only changes its mask.
///
/// # Safety
/// As C's signalfd.
#[no_mangle]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int {
    // SAFETY: NEXT_SIGNALFD names signalfd, of type SignalfdFn; arguments forwarded unchanged.
    let r = unsafe { resolve::<SignalfdFn>(&NEXT_SIGNALFD)(fd, mask, flags) };
    if fd == -1 {
        opened(Api::SIGNALFD, r, || Text::of(b"signalfd"));
    }
    r
}

/// # Safety
/// As C's epoll_create.
#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: NEXT_EPOLL_CREATE names epoll_create, of type IntFn; argument forwarded unchanged.
    let fd = unsafe { resolve::<IntFn>(&NEXT_EPOLL_CREATE)(size) };
    opened(Api::EPOLL_CREATE, fd, || Text::of(b"epoll"));
    fd
}

/// # Safety
/// As C's epoll_create1.
#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: NEXT_EPOLL_CREATE1 names epoll_create1, of type IntFn; argument unchanged.
    let fd = unsafe { resolve::<IntFn>(&NEXT_EPOLL_CREATE1)(flags) };
    opened(Api::EPOLL_CREATE1, fd, || Text::of(b"epoll"));
    fd
}

/// # Safety
/// As C's inotify_init.
#[no_mangle]
pub unsafe extern "C" fn inotify_init() -> c_int {
    // SAFETY: NEXT_INOTIFY_INIT names inotify_init, of type NoArgFn.
    let fd = unsafe { resolve::<NoArgFn>(&NEXT_INOTIFY_INIT)() };
    opened(Api::INOTIFY_INIT, fd, || Text::of(b"inotify"));
    fd
}

/// # Safety
/// As C's inotify_init1.
#[no_mangle]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    // SAFETY: NEXT_INOTIFY_INIT1 names inotify_init1, of type IntFn; argument unchanged.
    let fd = unsafe { resolve::<IntFn>(&NEXT_INOTIFY_INIT1)(flags) };
    opened(Api::INOTIFY_INIT1, fd, || Text::of(b"inotify"));
    fd
}

/// # Safety
/// As C's memfd_create.
#[no_mangle]
pub unsafe extern "C" fn memfd_create(name: *const c_char, flags: c_uint) -> c_int {
    // SAFETY: NEXT_MEMFD_CREATE names memfd_create, of type MemfdFn; arguments unchanged.
    let fd = unsafe { resolve::<MemfdFn>(&NEXT_MEMFD_CREATE)(name, flags) };
    opened(Api::MEMFD_CREATE, fd, || {
        let mut t = Text::of(b"memfd:");
        // SAFETY: name is NUL-terminated, as memfd_create requires (the call succeeded).
        t.push(unsafe { cstr(name) });
        t
    });
    fd
}

/// Descriptors passed over a unix socket (SCM_RIGHTS) are new descriptors of this process.
///
/// # Safety
/// As C's recvmsg.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    // SAFETY: NEXT_RECVMSG names recvmsg, of type RecvmsgFn; arguments forwarded unchanged.
    let r = unsafe { resolve::<RecvmsgFn>(&NEXT_RECVMSG)(fd, msg, flags) };
    // SAFETY: msg is recvmsg's message header, valid for reading (the call succeeded).
    if r < 0 || msg.is_null() || unsafe { (*msg).msg_controllen } == 0 {
        return r;
    }
    let Some(g) = fd_guard() else { return r };
    let _e = Errno::save();
    let mut stack = None;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, bounded by msg_controllen;
    // an SCM_RIGHTS payload is an array of ints filling the header's data.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let bytes = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
                for i in 0..bytes / std::mem::size_of::<c_int>() {
                    let new = data.add(i).read_unaligned();
                    let mut t = Text::of(b"received (SCM_RIGHTS): ");
                    t.push(fd_target(new).bytes());
                    stack = fd_acquired(&g, Api::RECVMSG, new, stack, t.bytes());
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// At exit.

/// Lists every descriptor open as the image exits (but the stream's own and the one used to
/// list them), whatever its origin: the collector sets apart those whose acquisition it never
/// saw (inherited, opened before we started or by a raw syscall), and may also notice one it
/// thinks live that is not open (closed by a raw syscall). Called from the exit path after
/// recording stopped, so the opendir/closedir used here are not recorded.
pub(crate) fn open_at_exit() {
    // Raw open + getdents64 into a stack buffer, not opendir: the exit path must not allocate,
    // because exit() may run in a signal handler that interrupted malloc with its lock held.
    let own = transport::out_fd();
    // SAFETY: a NUL-terminated path; the descriptor is only used below and closed.
    let listing =
        unsafe { libc::open(c"/proc/self/fd".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if listing < 0 {
        return;
    }
    let t = state::thread();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: getdents64 writes at most buf.len() bytes of dirent64 records into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, listing, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            if reclen == 0 || at + reclen > n as usize {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            at += reclen;
            let Some(fd) = crate::ffi::parse_u64(name).and_then(|n| c_int::try_from(n).ok()) else { continue };
            if fd == own || fd == listing {
                continue;
            }
            let text = fd_target(fd);
            let text = text.bytes();
            let seq = next_seq();
            transport::emit(t, text.len() + MAX_SMALL_RECORD, |enc, b, pos| {
                enc.open_at_exit(b, pos, seq, Kind::FD, fd as u64, text)
            });
        }
    }
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(listing) };
}
