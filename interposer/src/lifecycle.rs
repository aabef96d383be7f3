//! The image's life: start (constructor), fork, exec, the main thread's pthread_exit, and exit
//! (destructor). This is where the environment contract of ARCHITECTURE.md is implemented.

use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use residue_protocol::{Encoder, MAX_SMALL_RECORD};

use crate::ffi::{self, getenv, parse_u64};
use crate::state::{self, next_seq, thread, Guard, ACTIVE, EXECUTING, FINISHED, PASSIVE};
use crate::{modules, stacks, transport};

/// This image's pid: a hook running under another pid is in a vfork child sharing our memory.
static OWN_PID: AtomicU32 = AtomicU32::new(0);
static MAIN_EXITED: AtomicBool = AtomicBool::new(false);
/// The process's arguments as the constructor got them, copied: a forked child reports the
/// same, whatever the program did to its argv since (perf's option parser, for one, overwrites
/// the entries it consumed with null pointers; setproctitle rewrites the strings).
static ARGS: std::sync::OnceLock<Vec<Box<[u8]>>> = std::sync::OnceLock::new();

// glibc calls .init_array entries with (argc, argv, envp), after the libraries we depend on
// (libc) are initialized; being preloaded, we run before the program and its libraries.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = init;

// .fini_array entries run from _dl_fini, after atexit handlers (CPython's finalization, C++
// static destructors of the program): the frees made there are recorded. Libraries initialized
// after us are finalized before us.
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;

extern "C" fn init(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    // Nothing here may unwind into the loader.
    if std::panic::catch_unwind(|| start(argc, argv)).is_err() {
        state::set_state(PASSIVE);
    }
}

fn start(argc: c_int, argv: *const *const c_char) {
    crate::clock::init();
    let pid = ffi::getpid();
    OWN_PID.store(pid, Ordering::Relaxed);
    let env_fd = getenv(c"RESIDUE_FD").and_then(parse_u64).map(|fd| fd as i32);
    // Which stream this image writes: a new one (the process residue launched, or a child that
    // connects to the collector's socket), or its own process's, continued after exec.
    let (fd, new_stream) = match (getenv(c"RESIDUE_PID").and_then(parse_u64), env_fd) {
        // Preloaded outside `residue run`: stay out of the way.
        (_, None) => {
            state::set_state(PASSIVE);
            return;
        }
        (None, Some(fd)) => (fd, true),
        (Some(p), Some(fd)) if p == u64::from(pid) => (fd, false),
        // A child of a traced process that exec'd (fork+exec, vfork, posix_spawn, system): it
        // gets a stream of its own if the collector follows children, else it stays silent.
        (Some(_), Some(_)) => match connect_to_collector() {
            Some(fd) => (fd, true),
            None => {
                state::set_state(PASSIVE);
                return;
            }
        },
    };
    // SAFETY: F_GETFD on any integer is safe; it fails with EBADF if fd is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        state::set_state(PASSIVE);
        return;
    }
    // Only once the descriptor is known to be open: an image that stays passive must not make
    // the next one (after exec) believe it continues a stream that was never started.
    if new_stream {
        claim_stream(pid, fd);
    }
    // Internal errors must not print into the host's stderr or unwind into it: a panic in a
    // hook is caught there and turns the interposer passive. RESIDUE_DEBUG=1 prints them.
    if getenv(c"RESIDUE_DEBUG").is_some_and(|v| v == b"1") {
        std::panic::set_hook(Box::new(|info| eprintln!("residue: internal error, tracking stops: {info}")));
    } else {
        std::panic::set_hook(Box::new(|_| {}));
    }
    crate::hooks::fd::set_self_test_panic(getenv(c"RESIDUE_SELF_TEST_PANIC").is_some());
    transport::set_self_test_slow_handover(getenv(c"RESIDUE_SELF_TEST_SLOW_HANDOVER").is_some());
    let depth = getenv(c"RESIDUE_DEPTH").and_then(parse_u64).unwrap_or(64) as usize;
    stacks::configure(depth, modules::range_of(init as *const () as u64));
    if !transport::start(fd) {
        state::set_state(PASSIVE);
        return;
    }
    // The constructor runs before the program can start a thread.
    crate::seq::start_exclusive(thread());
    // SAFETY: the handler is an extern "C" fn with no arguments, as pthread_atfork requires.
    unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
    install_fatal_handlers();
    let _ = ARGS.set(copy_args(argc, argv));
    begin_stream(pid, new_stream);
}

/// The constructor's arguments, up to argc or the first null entry.
fn copy_args(argc: c_int, argv: *const *const c_char) -> Vec<Box<[u8]>> {
    if argv.is_null() {
        return Vec::new();
    }
    (0..argc.max(0) as usize)
        // SAFETY: glibc passes the constructor argc entries in argv, followed by a null one.
        .map(|i| unsafe { *argv.add(i) })
        .take_while(|a| !a.is_null())
        // SAFETY: a non-null entry of the constructor's argv is a NUL-terminated string.
        .map(|a| Box::from(unsafe { CStr::from_ptr(a) }.to_bytes()))
        .collect()
}

/// Signals that end a process by default, for which a flush first shows everything recorded up
/// to the crash (the report is still incomplete: no exit record).
const FATAL: [c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTERM];

/// Installs [`on_fatal`] for each [`FATAL`] signal whose disposition is still the default: a
/// signal the program ignores (inherited SIG_IGN) stays ignored, and a handler the program
/// installs later (CPython's faulthandler, its own SIGTERM handler) simply replaces ours.
fn install_fatal_handlers() {
    for sig in FATAL {
        // SAFETY: sigaction structs are plain data, zero-initialized then filled; querying with
        // a null new action changes nothing.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
                continue;
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_fatal as extern "C" fn(c_int) as libc::sighandler_t;
            // The handler runs once: the default comes back before it re-raises.
            new.sa_flags = libc::SA_RESETHAND | libc::SA_NODEFER;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(sig, &new, std::ptr::null_mut());
        }
    }
}

/// Flushes what was recorded (bounded, and not at all when the signal interrupted one of our
/// hooks: see `end_image`), then lets the signal do what it would have done.
extern "C" fn on_fatal(sig: c_int) {
    end_image(End::Cut);
    // SAFETY: SA_RESETHAND restored the default action; re-raising ends the process with the
    // same signal (a fault re-executes the faulting instruction otherwise, with the same end).
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// The image's first records: the header (on a new stream), its start, its modules, written at
/// once so that an image that ends with _exit, is killed or execs still has them; then recording.
fn begin_stream(pid: u32, new_stream: bool) {
    if new_stream {
        transport::write_raw(&residue_protocol::header());
    }
    image_start(pid, new_stream);
    modules::rescan();
    // Written before the program goes on, not merely queued: a forked child that execs at once
    // (by execl, which no hook sees) would otherwise take them with its image.
    transport::flush_all(None, Some(crate::clock::Deadline::after(std::time::Duration::from_secs(1))));
    state::set_state(ACTIVE);
}

/// This process owns the stream on `fd` from now on: an exec'd image continues it (RESIDUE_PID
/// is its pid, RESIDUE_FD the descriptor).
fn claim_stream(pid: u32, fd: i32) {
    let (p, f) = (Decimal::of(pid), Decimal::of(fd.unsigned_abs()));
    // SAFETY: NUL-terminated strings; this runs in the constructor or in fork's child handler,
    // before the program's code runs on any other thread.
    unsafe {
        libc::setenv(c"RESIDUE_PID".as_ptr(), p.0.as_ptr().cast(), 1);
        libc::setenv(c"RESIDUE_FD".as_ptr(), f.0.as_ptr().cast(), 1);
    }
}

/// A number's decimal digits, NUL-terminated, made on the stack. Not `format!`: at start-up
/// nothing else a C program runs of ours needs the formatting machinery or a string's growth,
/// and running them kept two more 64 KiB runs of our text resident in every traced program
/// (with the exit path's functions also placed, W4's peak under `residue run` went from 2,000
/// to 1,868 KiB). A descriptor is never negative here (it was checked open).
struct Decimal([u8; 11]);

impl Decimal {
    fn of(mut n: u32) -> Decimal {
        let mut digits = [0u8; 10];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut out = [0u8; 11];
        for (o, d) in out.iter_mut().zip(digits[..len].iter().rev()) {
            *o = *d;
        }
        Decimal(out)
    }

    /// The digits, without the NUL after them.
    fn digits(&self) -> &[u8] {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..n]
    }
}

/// Connects to the collector's socket for children (`RESIDUE_SOCKET`, set unless it was asked
/// not to follow them) and returns the descriptor, moved out of the range programs use and kept
/// across exec.
fn connect_to_collector() -> Option<i32> {
    let path = getenv(c"RESIDUE_SOCKET")?;
    // SAFETY: sockaddr_un is plain data; zeroed is a valid empty address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(path) {
        *d = b as libc::c_char;
    }
    // SAFETY: socket/connect/fcntl/close on descriptors we create; addr is initialized above.
    unsafe {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return None;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(s, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
            libc::close(s);
            return None;
        }
        // Not close-on-exec: the image this process execs continues the stream.
        let high = libc::fcntl(s, libc::F_DUPFD, 900);
        libc::close(s);
        (high >= 0).then_some(high)
    }
}

/// In a forked child of a traced process (fork without exec: Python's multiprocessing, servers
/// that fork workers): start a stream of its own, if the collector follows children. Everything
/// the interposer holds is a copy of the parent's, taken while threads that are gone here may
/// have held it: it is all reset. The parent's stream descriptor is closed in the child.
fn follow_forked_child() {
    let Some(fd) = connect_to_collector() else { return };
    let pid = ffi::getpid();
    // The parent's stream descriptor, inherited: the child must not hold it (the parent's reader
    // would wait for it). A raw close, because our own close hook refuses to close the stream.
    // SAFETY: closing a descriptor number has no memory-safety preconditions.
    unsafe { libc::syscall(libc::SYS_close, transport::out_fd()) };
    OWN_PID.store(pid, Ordering::Relaxed);
    MAIN_EXITED.store(false, Ordering::Relaxed);
    claim_stream(pid, fd);
    transport::reset_after_fork();
    stacks::new_stream();
    crate::python::new_stream();
    modules::forget_all();
    if !transport::start(fd) {
        return;
    }
    // The forking thread is the child's only one.
    crate::seq::start_exclusive(thread());
    begin_stream(pid, true);
}

fn image_start(pid: u32, root: bool) {
    let all: Vec<&[u8]> = ARGS.get().map(|a| a.iter().map(|a| &a[..]).collect()).unwrap_or_default();
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.into_os_string().into_encoded_bytes()).unwrap_or_default();
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() } as u32;
    let now = crate::clock::realtime_ns();
    let mut note = Vec::new();
    let args = fitting_args(&exe, &all, &mut note);
    let need = Encoder::image_start_len_bound(&exe, &args);
    transport::emit(thread(), need, |enc, b, pos| enc.image_start(b, pos, pid, ppid, root, !root, now, &exe, &args));
}

/// The arguments an image-start record carries: all of them, or, for a command line longer than
/// a record may be ([`transport::MAX_RECORD`]), the first ones and then `note`, which says how
/// many were left out. Without the cut the record was not sent at all, and the image went
/// unnamed (pid 0, no executable) without a word.
fn fitting_args<'a>(exe: &[u8], all: &[&'a [u8]], note: &'a mut Vec<u8>) -> Vec<&'a [u8]> {
    /// Room kept for the note.
    const NOTE_ROOM: usize = 64;
    let mut args = all.to_vec();
    if Encoder::image_start_len_bound(exe, &args) <= transport::MAX_RECORD {
        return args;
    }
    while !args.is_empty() && Encoder::image_start_len_bound(exe, &args) + NOTE_ROOM > transport::MAX_RECORD {
        args.pop();
    }
    let left_out = Decimal::of(u32::try_from(all.len() - args.len()).unwrap_or(u32::MAX));
    note.extend_from_slice(b"[residue: ");
    note.extend_from_slice(left_out.digits());
    note.extend_from_slice(b" more arguments, too long to record]");
    args.push(note);
    args
}

extern "C" fn fini() {
    end_image(End::Exit);
}

/// In a forked child: everything of ours there is a copy of the parent's (buffers, the writer
/// that no longer exists), so the child stops recording at once, before any other atfork child
/// handler might allocate; then, if the collector follows children, it starts a stream of its
/// own.
extern "C" fn atfork_child() {
    let was_recording = state::state() == ACTIVE;
    state::go_passive();
    // The child's descriptor table is its own: whatever it execs must not inherit the stream.
    transport::set_cloexec(true);
    if was_recording {
        let _ = std::panic::catch_unwind(follow_forked_child);
    }
}

/// A one-line message for the report.
pub fn notice(text: &[u8]) {
    let t = thread();
    transport::emit(t, text.len() + MAX_SMALL_RECORD, |enc, b, pos| enc.notice(b, pos, text));
}

/// After a successful fork in the parent: record the child that is not followed.
pub fn forked(child: u32) {
    if let Some(g) = Guard::enter() {
        let seq = next_seq();
        transport::emit(g.thread(), MAX_SMALL_RECORD, |enc, b, pos| enc.fork(b, pos, seq, child));
    }
}

/// Before exec: flush everything (the image is about to vanish) and stop recording. Returns
/// whether it did, so that a failed exec can resume.
pub fn before_exec(path: &[u8]) -> bool {
    if ffi::getpid() != OWN_PID.load(Ordering::Relaxed) {
        return false;
    }
    let Some(g) = Guard::enter() else { return false };
    // Recording stops first, then the exec is announced: an ending image (which waits for
    // EXECUTING to clear, see `finish`) never writes its exit record between the two, and an
    // exec that loses to it announces nothing.
    if !state::transition(ACTIVE, EXECUTING) {
        return false;
    }
    EXEC_TID.store(ffi::gettid(), Ordering::Relaxed);
    let seq = next_seq();
    transport::emit(g.thread(), path.len() + 2 * MAX_SMALL_RECORD, |enc, b, pos| enc.exec(b, pos, seq, path));
    // The new image's stacks are its own: none is sent against one of this image's.
    stacks::exec_attempt();
    transport::flush_all(None, None);
    // The next image continues the stream, whatever the program did to the descriptor's flags
    // (an ioctl FIOCLEX, which no hook sees).
    transport::set_cloexec(false);
    true
}

/// When the stream is a socket (as `residue run` makes it), waits up to five seconds for the
/// collector's one-byte answer to the exit record: until then the collector may still be
/// opening the files of the modules it was told about, which for a deleted library only works
/// while this process and its mappings exist. A file or pipe (no answer possible) is not waited
/// on; neither is a collector that died (the read ends at once).
fn await_ack(fd: i32) {
    if fd < 0 {
        return;
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`; a non-socket fails with ENOTSOCK.
    let is_socket = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut ty as *mut libc::c_int).cast(), &mut len)
    } == 0;
    if !is_socket {
        return;
    }
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; the timeout bounds the wait.
    if unsafe { libc::poll(&mut pfd, 1, 5000) } == 1 {
        let mut b = 0u8;
        // SAFETY: reads at most one byte into `b`, without blocking.
        unsafe { libc::recv(fd, (&mut b as *mut u8).cast(), 1, libc::MSG_DONTWAIT) };
    }
}

/// How an image ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// exit() or the end of main: exit handlers ran, the process cleaned up.
    Exit,
    /// `_exit`: a deliberate end (how forked children leave, by convention) that skips exit
    /// handlers. Nothing recorded is missing, so the trace is complete; what the handlers would
    /// have released is reported, because it was not released.
    Underscore,
    /// `abort` or a fatal signal: the process is cut short. What was recorded is flushed, but
    /// there is no exit record: the report is incomplete.
    Cut,
}

/// Flushes everything recorded and, unless the image was cut short, writes its exit record and
/// waits for the collector's answer. Waits are bounded: the writer may be stuck behind a lock
/// held by code a signal handler interrupted (exit() there is undefined behaviour, but must not
/// hang the host forever); past the bound the report is incomplete.
pub fn end_image(end: End) {
    if in_vfork_child() || !finish() {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        let g = Guard::enter_any();
        if g.is_none() && !thread().writer.get() {
            // Ending from a signal handler that interrupted one of our hooks on this thread. The
            // interrupted code may hold this thread's slot, or a lock inside the channel, and
            // will never run again: flushing could wait forever. Stop here; the trace ends
            // without its exit record, so the report says it is incomplete.
            transport::abandon_own_slot();
            return;
        }
        say_what_exec_attempts_missed();
        if end != End::Cut {
            // What is still open, as the process lists it: descriptors of unknown origin included.
            crate::hooks::fd::open_at_exit();
        }
        let bound = std::time::Duration::from_secs(if end == End::Exit { 30 } else { 2 });
        let complete = end != End::Cut;
        transport::flush_all(complete.then(next_seq), Some(crate::clock::Deadline::after(bound)));
        if complete {
            // Only an exit record is answered.
            await_ack(transport::out_fd());
        }
        drop(g);
    });
}

/// Moves the image from recording to finishing; false if it is not recording. An exec attempt
/// under way on another thread (which has turned recording off) is waited out, for at most
/// two seconds: if it fails, the image goes on and ends here with its exit record; if it
/// succeeds, this thread ends with the image. Without the wait, an exit racing a thread's
/// failing exec attempts (one that tries each directory of PATH) left the trace without its
/// exit record, and the report blamed an exec that never happened.
fn finish() -> bool {
    let deadline = crate::clock::Deadline::after(std::time::Duration::from_secs(2));
    let mut spins = 0;
    loop {
        if state::transition(ACTIVE, FINISHED) {
            return true;
        }
        // No attempt under way, or out of time, or this is the attempt's own thread (a signal
        // handler ending the image from inside it), whose attempt cannot settle while it waits.
        if state::state() != EXECUTING || deadline.passed() || EXEC_TID.load(Ordering::Relaxed) == ffi::gettid() {
            return false;
        }
        crate::sync::backoff(&mut spins);
    }
}

/// The thread of the exec attempt under way (state EXECUTING).
static EXEC_TID: AtomicU32 = AtomicU32::new(0);

/// exec returned: it failed, and this image goes on.
pub fn exec_failed(prepared: bool) {
    if !prepared {
        return;
    }
    // Said while recording is still off, so that it precedes an exit record of this image
    // (an ending thread waits for EXECUTING to clear): without it the collector could not tell
    // that exit from the new image's.
    if let Some(g) = Guard::enter_any() {
        let seq = next_seq();
        transport::emit(g.thread(), MAX_SMALL_RECORD, |enc, b, pos| enc.exec_failed(b, pos, seq));
    }
    if state::transition(EXECUTING, ACTIVE) {
        if let Some(_g) = Guard::enter() {
            say_what_exec_attempts_missed();
        }
    }
}

/// Once per image, if any call of another thread went unrecorded during an exec attempt that
/// then failed (recording is off while an exec is under way: state::EXECUTING): a notice, so
/// that the report says what it may be missing. Called with this thread's guard held.
fn say_what_exec_attempts_missed() {
    static SAID: AtomicBool = AtomicBool::new(false);
    let n = state::missed_while_executing_count();
    if n == 0 || SAID.swap(true, Ordering::Relaxed) {
        return;
    }
    notice(
        format!(
            "other threads' allocations and releases went unrecorded while an exec attempt was under way ({n} calls by the time one first failed; the image went on): leaks made then are missing from this report, and blocks freed then may show as unreleased"
        )
        .as_bytes(),
    );
}

/// Whether this is a vfork child (or a child of a clone sharing our memory): it runs our code
/// and data, but has a descriptor table of its own, so its descriptor calls are not ours.
/// A getpid syscall: only for hooks that are syscalls themselves.
pub fn in_vfork_child() -> bool {
    ffi::getpid() != OWN_PID.load(Ordering::Relaxed)
}

pub fn main_thread_exiting() {
    if ffi::gettid() == ffi::getpid() {
        MAIN_EXITED.store(true, Ordering::Release);
    }
}

/// True once the main thread has called pthread_exit and no thread but the caller (the writer)
/// is still running: glibc ends the process when the last thread ends, so the writer must not
/// be that thread.
pub fn only_writer_left() -> bool {
    if !MAIN_EXITED.load(Ordering::Acquire) {
        return false;
    }
    let me = ffi::gettid().to_string();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return false };
    for e in dir.flatten() {
        let name = e.file_name();
        if name.to_str() == Some(me.as_str()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // The state letter follows the parenthesized command name, which may contain spaces.
        let running = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_some_and(|c| c != 'Z' && c != 'X');
        if running {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn decimals_are_the_digits_and_a_nul() {
        for (n, text) in [(0u32, &b"0"[..]), (7, b"7"), (10, b"10"), (1021, b"1021"), (u32::MAX, b"4294967295")] {
            let d = Decimal::of(n);
            assert_eq!(&d.0[..text.len()], text);
            assert!(d.0[text.len()..].iter().all(|&b| b == 0), "{n}: {:?}", d.0);
        }
    }
}
