//! From hooks to the collector: per-thread batches, a bounded crossbeam channel, one writer
//! thread once the program has threads of its own.
//!
//! Each thread encodes its events into a 32 KiB [`Chunk`] held in its [`Slot`]. A full chunk is
//! handed to the writer through a bounded channel: when the collector is slow, the channel
//! fills and the sending thread waits (backpressure; nothing is dropped). The writer also
//! *steals* partly filled chunks from idle threads every tick, and from every thread at exec and
//! exit, which is why a slot has a lock: the writer takes it around a steal, the owner around a
//! chunk change. No lock is ever held while sending or writing.
//!
//! The writer starts with the program's first thread (our pthread_create hook), not before: a
//! thread of ours would make a single-threaded program multi-threaded, which it can tell. glibc
//! leaves its single-threaded fast paths (mutexes and malloc's arena locks become atomic), and
//! CPython 3.12 and later count the threads in /proc/self/stat at every os.fork() and warn that
//! the process is multi-threaded (multiprocessing's fork start method, under `-W error` a
//! failure). Until then the one thread writes its own full chunks, and hands its partly filled
//! one over when at least [`STALE`] has passed since it last did, checked every
//! [`CHECK_EVERY`] bytes of events, and as it goes idle ([`going_idle`]): what a program killed
//! outright loses is its last moments' events, as with the writer's tick.
//!
//! The owner encodes an event without the lock (a locked instruction costs about as much as the
//! rest of recording a free): it raises the slot's `active` flag, loads the chunk and writes.
//! A stealer takes the chunk away under the lock, then runs `membarrier` (a full barrier on
//! every running thread of the process) and waits for `active` to drop: after that barrier,
//! either the stealer sees the owner's `active`, or the owner sees the chunk gone (an
//! asymmetric Dekker handshake: the cost of the barrier is on the rare side). Where the kernel
//! lacks `membarrier`, and on slots shared by several threads, the owner takes the lock.
//!
//! A chunk taken out of its slot by its own thread (full, flushed, or at the thread's exit) is
//! in nobody's slot until it is queued or written: [`HANDING`] counts those. Whoever ends the
//! stream (the writer on `Finish`, `Sync` or `Stop`; the exiting thread when there is no writer)
//! steals every slot, then waits for that count to drop, writing what gets queued meanwhile,
//! before it writes the image's exit record. Without that wait, a thread ending as the process
//! exits (Python's `Thread.join` returns before the thread's TLS destructors, where ours hands
//! its last chunk over) queued its chunk behind the exit record, to a writer that had stopped:
//! its events were lost, and the trace still said it was complete.
//!
//! Writes never raise SIGPIPE in the host: on a socket (what `residue run` gives) they are
//! `send(MSG_NOSIGNAL)`; on anything else the writer thread blocks the signal, and a direct
//! write from another thread (when there is no writer) blocks it for the call and consumes a
//! SIGPIPE it caused. A write error means the collector is gone: the interposer goes
//! passive and the host runs on untracked.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::ffi::c_int;
use std::ptr::{self, NonNull};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use residue_protocol::{Encoder, MAX_SMALL_RECORD};

use crate::state::{self, thread, Thread};
use crate::{modules, sync::SpinLock};

/// Bytes a chunk takes, its header included: 32 KiB. Every page of a busy thread's chunk is
/// resident, and 64 KiB chunks cost a C program 28 KiB more of its peak (W4, medians of 25:
/// 1,816 against 1,788 KiB), for 5 ms less on W4 at the weight under `residue run`
/// (418 against 423 ms, medians of 15: half the writes; it was 12 ms before the collector's
/// reader paused between reads, when every write woke it). The 64 KiB chunk also spilled 8
/// bytes onto a 17th page.
const CHUNK_BYTES: usize = 32 * 1024;
/// Bytes of events in one chunk: what its header leaves.
pub const CHUNK_DATA: usize = CHUNK_BYTES - 128;
/// The largest record sent: a larger one is not written (`emit`), so records whose size the
/// program decides (an image start's command line) are cut to fit first.
pub const MAX_RECORD: usize = CHUNK_DATA / 2;
/// Chunks in flight between the threads and the writer: 4 MiB at most.
const CHANNEL_DEPTH: usize = 128;
/// Free chunks kept for reuse: 8 MiB at most.
const POOL_DEPTH: usize = 256;
/// Threads with a slot of their own; beyond that, threads share slots (correct, slower).
const SLOTS: usize = 1024;
/// How often the writer flushes idle threads' chunks.
const TICK: Duration = Duration::from_millis(100);
/// Without a writer: how old the events in a thread's chunk may get before the thread writes it
/// out itself (checked as it records, see [`CHECK_EVERY`]).
const STALE: Duration = TICK;
/// Without a writer, a recording thread reads the clock each time its chunk grows past a
/// multiple of this many bytes (about a hundred events): a clock read per hundred events costs
/// nothing measurable, one per event would.
const CHECK_EVERY: usize = 512;
/// Without a writer: how often at most a thread writes its chunk out as it goes idle.
const IDLE_EVERY: Duration = Duration::from_millis(10);

#[repr(C)]
pub struct Chunk {
    /// Written by the owner, read by a stealer deciding whether a chunk is worth taking.
    len: AtomicUsize,
    enc: Encoder,
    /// In pages of its own (see [`new_chunk`]), rather than on the heap.
    mapped: bool,
    data: [u8; CHUNK_DATA],
}

// A chunk's pages are its own: one more would be resident for its last bytes.
const _: () = assert!(std::mem::size_of::<Chunk>() <= CHUNK_BYTES);

struct ChunkPtr(NonNull<Chunk>);
// SAFETY: a chunk is owned by exactly one party at a time (a slot, the channel, the writer or
// the pool); the pointer moves between threads, the memory is never shared.
unsafe impl Send for ChunkPtr {}

enum Msg {
    Chunk(ChunkPtr),
    /// Steal every slot, write everything, then set the flag.
    Sync(&'static AtomicBool),
    /// As `Sync`, then write the image-exit record and stop.
    Finish(u64, &'static AtomicBool),
    /// As `Sync`, then stop without an exit record (the image goes on: [`pause_writer`]).
    Stop(&'static AtomicBool),
}

struct Channel {
    tx: Sender<Msg>,
    pool_tx: Sender<ChunkPtr>,
    pool_rx: Receiver<ChunkPtr>,
}

/// The current channel: replaced, never freed, in a forked child that starts its own stream (the
/// old one may be mid-operation in a thread that does not exist there).
static CHANNEL: AtomicPtr<Channel> = AtomicPtr::new(ptr::null_mut());

fn channel() -> Option<&'static Channel> {
    // SAFETY: a non-null CHANNEL points to a leaked, never freed Channel.
    unsafe { CHANNEL.load(Ordering::Acquire).as_ref() }
}
static WRITER_ALIVE: AtomicBool = AtomicBool::new(false);
/// The program has created a thread (our pthread_create hook): it needs the writer. Cleared in
/// a forked child, which has one thread.
static THREADED: AtomicBool = AtomicBool::new(false);
/// The writer is being started (one starter at a time).
static STARTING: AtomicBool = AtomicBool::new(false);
/// The writer thread's id (0 before it runs).
static WRITER_TID: AtomicU32 = AtomicU32::new(0);
static OUT_FD: AtomicI32 = AtomicI32::new(-1);
static DEAD: AtomicBool = AtomicBool::new(false);
static WRITE_LOCK: SpinLock = SpinLock::new();
/// The stream is a socket (as `residue run` and the children's socket give it), written with
/// `send(MSG_NOSIGNAL)`: no SIGPIPE to block around each write. Otherwise (a file or a pipe the
/// environment named) `write` with SIGPIPE blocked.
static OUT_IS_SOCKET: AtomicBool = AtomicBool::new(false);
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` works here: owners encode without the lock.
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
/// Chunks taken out of their slot by their thread and not yet queued for the writer or written
/// (see the module comment): raised before the chunk leaves the slot, lowered once [`send`]
/// returns.
static HANDING: AtomicUsize = AtomicUsize::new(0);
/// How long the end of a stream waits for a thread that is handing a chunk over: a thread that
/// takes longer (stopped by a debugger, or by a signal handler that never returns) loses that
/// chunk, and the exit record is withheld so that the report says the trace is incomplete.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);
/// Set from `RESIDUE_SELF_TEST_SLOW_HANDOVER` at start: a thread's exit hook then waits 300 ms
/// between taking its last chunk out of its slot and handing it over, so that a test can end
/// the process inside that window, which is otherwise a few instructions wide.
static SLOW_HANDOVER: AtomicBool = AtomicBool::new(false);

pub fn set_self_test_slow_handover(on: bool) {
    SLOW_HANDOVER.store(on, Ordering::Relaxed);
}

// linux/membarrier.h
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

fn membarrier(cmd: libc::c_long) -> bool {
    // SAFETY: membarrier takes integer arguments only and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) == 0 }
}

/// One thread's current chunk. `lock` is held by a stealer while it takes the chunk, and by
/// the owner while it changes chunks (or, on a shared slot, encodes).
pub struct Slot {
    lock: SpinLock,
    /// The owner is encoding into the chunk it loaded without the lock.
    active: AtomicBool,
    /// Several threads use this slot (more threads than slots): all of them take the lock.
    /// Never cleared.
    shared: AtomicBool,
    in_use: AtomicBool,
    chunk: AtomicPtr<Chunk>,
    tid: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    lock: SpinLock::new(),
    active: AtomicBool::new(false),
    shared: AtomicBool::new(false),
    in_use: AtomicBool::new(false),
    chunk: AtomicPtr::new(ptr::null_mut()),
    tid: AtomicU32::new(0),
};
static SLOT_TABLE: [Slot; SLOTS] = [EMPTY_SLOT; SLOTS];

/// The pthread key whose destructor flushes a thread's chunk when the thread ends.
static THREAD_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// A chunk for a thread: a recycled one, or a fresh one in pages of its own, which become
/// resident as events fill them, so a thread that records little makes little of its chunk
/// resident (a zeroed heap block would be written whole at once). On the heap if the kernel
/// refuses a mapping.
fn new_chunk(tid: u32) -> Option<NonNull<Chunk>> {
    let recycled = channel().and_then(|c| c.pool_rx.try_recv().ok()).map(|p| p.0);
    let p = recycled
        .or_else(|| {
            let p = NonNull::new(residue_unwind::pages::zeroed::<Chunk>())?;
            // SAFETY: a fresh zeroed chunk (a valid one: len 0, default encoder), ours alone.
            unsafe { (*p.as_ptr()).mapped = true };
            Some(p)
        })
        .or_else(|| {
            // SAFETY: Chunk has a non-zero size; all-zero bytes are a valid Chunk (len 0,
            // default encoder, zero data, not mapped). Allocated in place: a 32 KiB value never
            // touches the stack, which may be small on the host's threads.
            NonNull::new(unsafe { alloc_zeroed(Layout::new::<Chunk>()) }.cast::<Chunk>())
        })?;
    // SAFETY: p is a chunk we own exclusively (fresh, or taken from the pool).
    let c = unsafe { &mut *p.as_ptr() };
    let len = c.enc.batch(&mut c.data, 0, tid);
    c.len.store(len, Ordering::Relaxed);
    Some(p)
}

fn recycle(p: NonNull<Chunk>) {
    if let Some(ch) = channel() {
        if let Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) = ch.pool_tx.try_send(ChunkPtr(p)) {
            let c = p.0.as_ptr();
            // SAFETY: allocated by new_chunk (mapped, or with this layout), and owned by us;
            // Chunk has no destructor.
            unsafe {
                if (*c).mapped {
                    residue_unwind::pages::release(c);
                } else {
                    dealloc(c.cast(), Layout::new::<Chunk>());
                }
            }
        }
    }
}

/// Bytes of events in a chunk beyond its batch header (a chunk with only a header is empty).
/// Reads only `len`, through a raw pointer: the owner may be writing the other fields.
fn has_events(c: *const Chunk) -> bool {
    let mut e = Encoder::default();
    let mut hdr = [0u8; MAX_SMALL_RECORD];
    // SAFETY: c points to a live chunk; `len` is atomic and no reference to the whole chunk is
    // formed.
    let len = unsafe { &(*c).len }.load(Ordering::Relaxed);
    len > e.batch(&mut hdr, 0, 0) + 4
}

/// Sets up the channel, and starts the writer thread if the program already has threads: from
/// the constructor, and again in a forked child that starts its own stream (after
/// [`reset_after_fork`]).
pub fn start(fd: i32) -> bool {
    OUT_FD.store(fd, Ordering::Relaxed);
    OUT_IS_SOCKET.store(is_socket(fd), Ordering::Relaxed);
    // Once per process: a forked child restarting its stream keeps the key it inherited.
    if THREAD_KEY.load(Ordering::Relaxed) == u32::MAX {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: key is a valid out-pointer; thread_exit has the destructor signature.
        if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0 {
            THREAD_KEY.store(key, Ordering::Relaxed);
        }
    }
    // RESIDUE_LOCKED_SLOTS=1 keeps every event under its slot's lock instead: membarrier
    // interrupts every CPU that runs one of the process's threads, which some hosts may not want.
    let locked = crate::ffi::getenv(c"RESIDUE_LOCKED_SLOTS").is_some_and(|v| v == b"1");
    ASYMMETRIC.store(!locked && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED), Ordering::Relaxed);
    // A new pool too: in a forked child the old one is a copy made mid-operation, maybe.
    make_channel(true);
    if THREADED.load(Ordering::Acquire) {
        writer_for_threads();
    }
    true
}

/// The program is creating a thread (from our pthread_create hook, before the real call): from
/// now on it has a writer. Also before [`start`] (a library's constructor that starts a thread
/// runs before ours): then `start` starts it.
pub fn program_threads() {
    THREADED.store(true, Ordering::Release);
    if channel().is_some() {
        writer_for_threads();
    }
}

/// Starts the writer unless it runs, is being started, or writing has stopped for good.
fn writer_for_threads() {
    if WRITER_ALIVE.load(Ordering::Acquire) || DEAD.load(Ordering::Acquire) || OUT_FD.load(Ordering::Relaxed) < 0 {
        return;
    }
    if STARTING.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return;
    }
    if !WRITER_ALIVE.load(Ordering::Acquire) {
        start_writer();
    }
    STARTING.store(false, Ordering::Release);
}

/// Stops the writer thread and waits until it is gone from the process (not merely returned:
/// removed from the thread group, which is what the kernel checks), for a call the kernel only
/// allows a single-threaded process (unshare or setns into a user namespace). Meanwhile the
/// recording threads write their chunks themselves, as when there is no writer. False if there
/// was no writer to stop, or it did not go in time (then it may still be running).
fn pause_writer() -> bool {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !WRITER_ALIVE.load(Ordering::Acquire) || thread().writer.get() {
        return false;
    }
    let deadline = crate::clock::Deadline::after(Duration::from_secs(1));
    let mut spins = 0;
    // A writer started a moment ago may not have run yet (its id is published by the writer
    // itself, first thing): on a busy machine, a program's short first thread can come and go
    // before it does.
    let tid = loop {
        match WRITER_TID.load(Ordering::Acquire) {
            0 if deadline.passed() || !WRITER_ALIVE.load(Ordering::Acquire) => return false,
            0 => crate::sync::backoff(&mut spins),
            tid => break tid,
        }
    };
    flush_own();
    DONE.store(false, Ordering::Release);
    if send_msg(Msg::Stop(&DONE)).is_err() {
        return false;
    }
    let task = format!("/proc/self/task/{tid}\0");
    // SAFETY: access on a NUL-terminated path has no memory-safety preconditions.
    while !DONE.load(Ordering::Acquire) || unsafe { libc::access(task.as_ptr().cast(), libc::F_OK) } == 0 {
        if deadline.passed() {
            return false;
        }
        crate::sync::backoff(&mut spins);
    }
    true
}

/// Whether the writer thread is running.
pub fn writer_running() -> bool {
    WRITER_ALIVE.load(Ordering::Acquire)
}

/// Stops the writer if it is the process's only thread besides the caller (the program's own
/// have ended), for a call that needs a single-threaded process (unshare, setns into a user
/// namespace) or that the program makes believing it is one (fork: CPython 3.12+ counts the
/// threads right after it, and warns). It starts again with the program's next thread. True if
/// it stopped. Allocates (the thread count): call it under the guard.
pub fn step_aside_if_alone() -> bool {
    if !writer_running() || !std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 2) {
        return false;
    }
    if pause_writer() {
        return true;
    }
    resume_writer_if_stopped();
    false
}

/// After a [`pause_writer`] that gave up: starts a writer if the old one did stop after all.
fn resume_writer_if_stopped() {
    if !WRITER_ALIVE.load(Ordering::Acquire) && !DEAD.load(Ordering::Acquire) {
        start_writer();
    }
}

/// Starts a writer on a new channel: for the program's first thread, and again after
/// [`pause_writer`] gave up (the old channel's receiver went with the old writer).
fn start_writer() {
    let rx = make_channel(false);
    // The new writer publishes its own id; until then, the old one's would mislead pause_writer.
    WRITER_TID.store(0, Ordering::Release);
    WRITER_ALIVE.store(true, Ordering::Release);
    if !spawn_writer(rx) {
        WRITER_ALIVE.store(false, Ordering::Release);
    }
}

/// Installs a new channel and returns its receiving end, for a writer to take (until one does,
/// sending finds it disconnected, and chunks are written by their threads). The old channel's
/// pool of free chunks goes on in the new one unless `fresh_pool`.
fn make_channel(fresh_pool: bool) -> Receiver<Msg> {
    let (tx, rx) = bounded(CHANNEL_DEPTH);
    let (pool_tx, pool_rx) = match channel() {
        Some(old) if !fresh_pool => (old.pool_tx.clone(), old.pool_rx.clone()),
        _ => bounded(POOL_DEPTH),
    };
    CHANNEL.store(Box::into_raw(Box::new(Channel { tx, pool_tx, pool_rx })), Ordering::Release);
    rx
}

/// The program is about to sleep or wait (hooks/idle.rs). Without a writer nothing would hand
/// over this thread's partly filled chunk while it waits, and a program killed then would lose
/// it: it is written out now, at most once per [`IDLE_EVERY`] (a program that polls in a loop
/// writes no more often than that; what it records in between is covered by [`STALE`]).
pub fn going_idle() {
    if WRITER_ALIVE.load(Ordering::Relaxed) {
        return;
    }
    // Not from inside our own code (its backoff sleeps), nor before or after recording.
    let Some(g) = state::Guard::enter() else { return };
    let t = g.thread();
    if t.slot.get().is_null() {
        return;
    }
    let now = crate::clock::coarse_ns();
    if now.saturating_sub(t.idle_ns.get()) < IDLE_EVERY.as_nanos() as u64 || crate::lifecycle::in_vfork_child() {
        return;
    }
    t.idle_ns.set(now);
    t.handed_ns.set(now);
    // Takes the chunk under the slot's lock; one with no events is not written.
    flush_own();
}

/// Without a writer, a thread whose chunk just grew past a multiple of [`CHECK_EVERY`] bytes:
/// writes it out if the thread has not handed a chunk over for [`STALE`].
#[cold]
#[inline(never)]
fn flush_if_stale(t: &Thread) {
    if WRITER_ALIVE.load(Ordering::Acquire) || t.writer.get() {
        return;
    }
    let now = crate::clock::coarse_ns();
    if now.saturating_sub(t.handed_ns.get()) >= STALE.as_nanos() as u64 {
        t.handed_ns.set(now);
        flush_own();
    }
}

/// In a forked child that starts its own stream: everything here is a copy of the parent's, made
/// while other threads (gone in the child) may have held slots, locks or the channel. Forget it
/// all: chunks held by those threads are the parent's events, and the parent still sends them.
pub fn reset_after_fork() {
    for slot in &SLOT_TABLE {
        slot.chunk.store(ptr::null_mut(), Ordering::Relaxed);
        slot.active.store(false, Ordering::Relaxed);
        slot.shared.store(false, Ordering::Relaxed);
        slot.in_use.store(false, Ordering::Relaxed);
        slot.tid.store(0, Ordering::Relaxed);
        slot.lock.unlock();
    }
    WRITE_LOCK.unlock();
    // Threads the parent had mid-handover do not exist here.
    HANDING.store(0, Ordering::Relaxed);
    WRITER_ALIVE.store(false, Ordering::Release);
    STARTING.store(false, Ordering::Release);
    THREADED.store(false, Ordering::Release);
    DEAD.store(false, Ordering::Release);
    ABANDONED.store(ptr::null_mut(), Ordering::Release);
    LOST_IN_FLIGHT.store(false, Ordering::Release);
    EXIT_WRITTEN.store(false, Ordering::Release);
    let t = thread();
    t.slot.set(ptr::null_mut());
    t.shared.set(false);
    t.tid.set(0);
}

/// The descriptor the stream is written to (-1 before start).
pub fn out_fd() -> i32 {
    OUT_FD.load(Ordering::Relaxed)
}

/// Marks the stream descriptor close-on-exec (or not). The traced process keeps it open across
/// its own exec (every variant, the unhookable variadic execl* included), so that the next image
/// continues the stream; a child is never to inherit it, so the paths that start one set the
/// flag in the child (fork, vfork+exec) or around the spawn (posix_spawn, system, popen).
pub fn set_cloexec(on: bool) {
    let fd = OUT_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // The raw system call: our fcntl hook refuses the program's attempts to mark the stream
    // close-on-exec, not ours.
    // SAFETY: F_GETFD/F_SETFD on an integer descriptor have no memory-safety preconditions.
    unsafe {
        let flags = libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) as c_int;
        if flags >= 0 {
            let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
            libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, new);
        }
    }
}

/// Runs `spawn` (something that starts a child by an internal exec we cannot hook) with the
/// stream descriptor close-on-exec, so the child does not inherit it.
pub fn without_inheritance<R>(spawn: impl FnOnce() -> R) -> R {
    let ours = !crate::lifecycle::in_vfork_child() && OUT_FD.load(Ordering::Relaxed) >= 0;
    if ours {
        set_cloexec(true);
    }
    let r = spawn();
    if ours {
        set_cloexec(false);
    }
    r
}

/// Whether writing has stopped for good (the collector is gone, or the stream was lost).
pub fn dead() -> bool {
    DEAD.load(Ordering::Acquire)
}

/// The host is about to dup2/dup3 another descriptor onto the stream's number: move the stream
/// to a free descriptor first, so that our bytes never reach the host's file and the host's
/// never reach the collector. Done under the write lock, so no write is in flight on the old
/// number; the host's dup2 then replaces that number atomically. The new number is published in
/// `RESIDUE_FD` for a later exec of this image. Returns false if no descriptor was free: then
/// nothing more is written (the trace ends incomplete rather than corrupting the host's file).
pub fn relocate_out_fd() -> bool {
    // Our own fcntl calls must not be recorded by the fcntl hook.
    let _g = crate::state::Guard::enter_any();
    WRITE_LOCK.lock();
    let old = OUT_FD.load(Ordering::Relaxed);
    // SAFETY: fcntl on an integer descriptor has no memory-safety preconditions.
    let new = unsafe {
        let cmd =
            if libc::fcntl(old, libc::F_GETFD) & libc::FD_CLOEXEC != 0 { libc::F_DUPFD_CLOEXEC } else { libc::F_DUPFD };
        // High numbers first: hosts that dup2 onto fixed numbers use small ones. F_DUPFD fails
        // with EINVAL at or above RLIMIT_NOFILE, hence the fallback.
        match libc::fcntl(old, cmd, 900) {
            n if n >= 0 => n,
            _ => libc::fcntl(old, cmd, old + 1),
        }
    };
    if new >= 0 {
        OUT_FD.store(new, Ordering::Relaxed);
        let v = format!("{new}\0");
        // SAFETY: both strings are NUL-terminated. setenv is not safe against a concurrent
        // getenv in another thread; this runs only when the host dup2s onto our descriptor.
        unsafe { libc::setenv(c"RESIDUE_FD".as_ptr(), v.as_ptr().cast(), 1) };
    } else {
        DEAD.store(true, Ordering::Release);
        state::go_passive();
    }
    WRITE_LOCK.unlock();
    new >= 0
}

/// Starts the writer with pthread_create rather than std::thread: its start routine is ours
/// from the first instruction, so it is marked as the interposer's own (nothing it allocates is
/// recorded) before anything runs on it.
fn spawn_writer(rx: Receiver<Msg>) -> bool {
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        let t = thread();
        t.busy.set(true);
        t.writer.set(true);
        // SAFETY: arg is the Box<Receiver> leaked by spawn_writer, handed over exactly once.
        let rx = unsafe { Box::from_raw(arg.cast::<Receiver<Msg>>()) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer(*rx)));
        WRITER_ALIVE.store(false, Ordering::Release);
        ptr::null_mut()
    }
    let arg = Box::into_raw(Box::new(rx)).cast::<libc::c_void>();
    // SAFETY: attr is initialized before use and destroyed after; `start` has the signature
    // pthread_create requires and takes ownership of `arg` only if the thread was created;
    // NEXT_PTHREAD_CREATE names pthread_create, of type PthreadCreateFn.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 256 * 1024);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut tid: libc::pthread_t = 0;
        // The real one: ours would only pass the call on (the writer is already marked alive).
        let create = crate::ffi::resolve::<crate::ffi::PthreadCreateFn>(&crate::ffi::NEXT_PTHREAD_CREATE);
        let ok = create(&mut tid, &attr, Some(start), arg) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            libc::pthread_setname_np(tid, c"residue-writer".as_ptr());
        } else {
            drop(Box::from_raw(arg.cast::<Receiver<Msg>>()));
        }
        ok
    }
}

/// Hands this thread's chunk to the writer now: for records the collector needs promptly
/// (image start, modules: a library file may be deleted soon after it is loaded).
pub fn flush_own() {
    let t = thread();
    if let Some(slot) = NonNull::new(t.slot.get()) {
        // SAFETY: slots live in a static table.
        hand_over(unsafe { slot.as_ref() }, false);
    }
}

/// Takes `slot`'s chunk (this thread's own) and hands it to the writer, counted in [`HANDING`]
/// from before it leaves the slot until it is queued or written. `ending`: from the thread's
/// exit hook (see [`SLOW_HANDOVER`]).
fn hand_over(slot: &Slot, ending: bool) {
    HANDING.fetch_add(1, Ordering::SeqCst);
    slot.lock.lock();
    let c = slot.chunk.swap(ptr::null_mut(), Ordering::Relaxed);
    slot.lock.unlock();
    if ending && SLOW_HANDOVER.load(Ordering::Relaxed) {
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 300_000_000 };
        // SAFETY: a raw nanosleep (not our idle hook) on a timespec we own.
        unsafe { libc::syscall(libc::SYS_nanosleep, &pause, ptr::null_mut::<libc::timespec>()) };
    }
    if let Some(c) = NonNull::new(c) {
        send(c);
    }
    HANDING.fetch_sub(1, Ordering::Release);
}

/// Waits until no thread is handing a chunk over (see [`HANDING`]), with `drain` writing what
/// they queue meanwhile (the writer's channel; nothing when there is no writer: they write
/// their chunks themselves). False if one is still at it after [`HANDOVER_WAIT`].
fn await_handovers(mut drain: impl FnMut()) -> bool {
    let deadline = crate::clock::Deadline::after(HANDOVER_WAIT);
    let mut spins = 0;
    loop {
        drain();
        if HANDING.load(Ordering::SeqCst) == 0 {
            // What the last of them queued before lowering the count.
            drain();
            return true;
        }
        if deadline.passed() {
            return false;
        }
        crate::sync::backoff(&mut spins);
    }
}

/// Writes raw bytes (the stream header) before any chunk.
pub fn write_raw(bytes: &[u8]) {
    write_out(bytes);
}

/// Encodes one record into this thread's chunk; `need` bounds its size. `f` gets the batch's
/// encoder, the chunk's bytes and the position to write at, and returns the new position.
#[inline(always)]
pub fn emit(t: &Thread, need: usize, f: impl FnOnce(&mut Encoder, &mut [u8], usize) -> usize) {
    if need > MAX_RECORD {
        return;
    }
    let Some(slot) = slot_of(t) else { return };
    let mut c = ptr::null_mut();
    let mut locked = false;
    if ASYMMETRIC.load(Ordering::Relaxed) {
        slot.active.store(true, Ordering::Relaxed);
        // Keeps the compiler from moving the loads below above the store; the CPU is kept from
        // it by the stealer's membarrier (see the module comment).
        compiler_fence(Ordering::SeqCst);
        c = slot.chunk.load(Ordering::Relaxed);
        // SAFETY: `active` is up and the chunk was in the slot after it rose: a stealer that
        // takes it waits for `active` to drop before touching it. Only `len` is read.
        if c.is_null() || slot.shared.load(Ordering::Relaxed) || unsafe { !fits(c, need) } {
            slot.active.store(false, Ordering::Release);
            c = ptr::null_mut();
        }
    }
    if c.is_null() {
        match locked_chunk(t, slot, need) {
            Some(l) => c = l,
            None => return,
        }
        locked = true;
    }
    // SAFETY: the chunk is ours until `active` drops or the lock is released: see above, and
    // `locked_chunk`. Fields are borrowed separately: a stealer may read `len` meanwhile.
    let (len, enc, data) = unsafe { (&(*c).len, &mut (*c).enc, &mut (*c).data) };
    let old = len.load(Ordering::Relaxed);
    let new = f(enc, data, old);
    len.store(new, Ordering::Relaxed);
    if locked {
        slot.lock.unlock();
    } else {
        slot.active.store(false, Ordering::Release);
    }
    // The chunk grew past a multiple of CHECK_EVERY (the bits above it changed).
    if (old ^ new) >= CHECK_EVERY && !WRITER_ALIVE.load(Ordering::Relaxed) {
        flush_if_stale(t);
    }
}

/// Whether `need` more bytes fit in chunk `c`.
///
/// # Safety
/// `c` points to a live chunk.
#[inline(always)]
unsafe fn fits(c: *const Chunk, need: usize) -> bool {
    // SAFETY: per the contract; `len` is atomic and nothing else is read.
    unsafe { &(*c).len }.load(Ordering::Relaxed) + need <= CHUNK_DATA
}

/// The slow path of [`emit`]: returns the slot's chunk, with room for `need` bytes, with the
/// slot's lock held (the caller unlocks). A full chunk goes to the writer and a fresh one is
/// installed on the way. `None` if no chunk could be had.
#[inline(never)]
fn locked_chunk(t: &Thread, slot: &Slot, need: usize) -> Option<*mut Chunk> {
    loop {
        slot.lock.lock();
        let c = slot.chunk.load(Ordering::Relaxed);
        if !c.is_null() {
            // SAFETY: c is the slot's chunk and we hold the lock.
            if unsafe { fits(c, need) } {
                return Some(c);
            }
            // Counted before it leaves the slot (see HANDING). A locked instruction, but once a
            // chunk: not per event.
            HANDING.fetch_add(1, Ordering::SeqCst);
            slot.chunk.store(ptr::null_mut(), Ordering::Relaxed);
        }
        slot.lock.unlock();
        if let Some(full) = NonNull::new(c) {
            send(full);
            HANDING.fetch_sub(1, Ordering::Release);
            t.handed_ns.set(crate::clock::coarse_ns());
        }
        let fresh = new_chunk(t.tid())?;
        slot.lock.lock();
        let installed =
            slot.chunk.compare_exchange(ptr::null_mut(), fresh.as_ptr(), Ordering::Relaxed, Ordering::Relaxed).is_ok();
        slot.lock.unlock();
        if !installed {
            // A thread sharing this slot installed one first.
            recycle(fresh);
        }
    }
}

/// This thread's slot, claimed on first use.
#[inline(always)]
fn slot_of(t: &Thread) -> Option<&'static Slot> {
    let s = t.slot.get();
    if !s.is_null() {
        // SAFETY: slots live in a static table.
        return Some(unsafe { &*s });
    }
    claim_slot(t)
}

#[cold]
#[inline(never)]
fn claim_slot(t: &Thread) -> Option<&'static Slot> {
    let tid = t.tid();
    let start = tid as usize % SLOTS;
    let mut chosen = None;
    for i in 0..SLOTS {
        let slot = &SLOT_TABLE[(start + i) % SLOTS];
        if slot.in_use.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            chosen = Some(slot);
            break;
        }
    }
    let slot = chosen.unwrap_or_else(|| {
        t.shared.set(true);
        let slot = &SLOT_TABLE[start];
        // Its owner may be encoding without the lock: from now on it takes the lock too.
        slot.shared.store(true, Ordering::Relaxed);
        quiesce(&[slot]);
        slot
    });
    slot.tid.store(tid, Ordering::Relaxed);
    t.slot.set(slot as *const Slot as *mut Slot);
    let key = THREAD_KEY.load(Ordering::Relaxed);
    if key != u32::MAX {
        // SAFETY: key was created by pthread_key_create; the value is only used as a flag by
        // thread_exit (non-null makes glibc call it).
        unsafe { libc::pthread_setspecific(key, slot as *const Slot as *const libc::c_void) };
    }
    Some(slot)
}

/// pthread key destructor: the thread is ending; flush its chunk and give its slot back. An
/// allocation in a later destructor claims a slot again (glibc repeats key destructors).
unsafe extern "C" fn thread_exit(_value: *mut libc::c_void) {
    let t = thread();
    let was_busy = t.busy.replace(true);
    let s = t.slot.replace(ptr::null_mut());
    if !s.is_null() {
        // SAFETY: slots live in a static table.
        let slot = unsafe { &*s };
        hand_over(slot, true);
        if !t.shared.get() {
            slot.in_use.store(false, Ordering::Release);
        }
    }
    t.retire();
    t.busy.set(was_busy);
}

/// Hands a full chunk to the writer, waiting while the channel is full (backpressure).
fn send(c: NonNull<Chunk>) {
    if thread().writer.get() || !WRITER_ALIVE.load(Ordering::Acquire) {
        write_chunk(c);
        return;
    }
    if let Err(Msg::Chunk(c)) = send_msg(Msg::Chunk(ChunkPtr(c))) {
        write_chunk(c.0);
    }
}

/// Queues `msg` for the writer, waiting while the channel is full; gives the message back if
/// the writer is gone. Polls rather than blocking inside crossbeam: its blocking path needs
/// `thread::current()`, which is gone once a thread's TLS is torn down (thread exit, exit()).
fn send_msg(mut msg: Msg) -> Result<(), Msg> {
    let Some(ch) = channel() else { return Err(msg) };
    let mut spins = 0u32;
    loop {
        match ch.tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(m)) if WRITER_ALIVE.load(Ordering::Acquire) => {
                msg = m;
                crate::sync::backoff(&mut spins);
            }
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => return Err(m),
        }
    }
}

fn write_chunk(c: NonNull<Chunk>) {
    if has_events(c.as_ptr()) {
        // SAFETY: we own c.
        let chunk = unsafe { c.as_ref() };
        write_out(&chunk.data[..chunk.len.load(Ordering::Relaxed)]);
    }
    recycle(c);
}

/// Waits until no owner of `slots` can still be encoding into a chunk taken from it: the
/// stealer's half of the handshake in the module comment.
fn quiesce(slots: &[&Slot]) {
    if slots.is_empty() || !ASYMMETRIC.load(Ordering::Relaxed) {
        return;
    }
    if !membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) {
        // Registered, so this does not fail; if it ever did, owners take the lock from now on
        // and waiting for `active` below is the best left to do.
        ASYMMETRIC.store(false, Ordering::Relaxed);
    }
    for slot in slots {
        let mut spins = 0;
        // An abandoned owner never lowers `active`; what it wrote is consistent up to `len`,
        // which it stores only after a whole record.
        while slot.active.load(Ordering::Acquire) && !abandoned(slot) {
            crate::sync::backoff(&mut spins);
        }
    }
}

/// A slot whose thread is ending the process from inside one of our hooks (a signal handler that
/// calls exit or _exit interrupted it): the code it interrupted holds the slot, locked or
/// `active`, and will never run again. Stealers skip it instead of waiting forever, and the exit
/// record is withheld (what that thread had not flushed is lost: the trace is incomplete).
static ABANDONED: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());
static LOST_IN_FLIGHT: AtomicBool = AtomicBool::new(false);

fn abandoned(slot: &Slot) -> bool {
    ptr::eq(ABANDONED.load(Ordering::Acquire), slot)
}

/// The calling thread is inside one of our hooks (re-entered from a signal handler) and is about
/// to end the process: see [`ABANDONED`].
pub fn abandon_own_slot() {
    LOST_IN_FLIGHT.store(true, Ordering::Release);
    ABANDONED.store(thread().slot.get(), Ordering::Release);
}

/// Takes the slot's lock, unless the slot is (or becomes, while we wait) abandoned.
fn lock_unless_abandoned(slot: &Slot) -> bool {
    let mut spins = 0;
    while !slot.lock.try_lock() {
        if abandoned(slot) {
            return false;
        }
        crate::sync::backoff(&mut spins);
    }
    if abandoned(slot) {
        slot.lock.unlock();
        return false;
    }
    true
}

/// Takes every slot's chunk that holds events and writes it.
fn steal_all() {
    // Chunks are taken a batch at a time, so that one barrier serves many slots.
    const BATCH: usize = 64;
    let mut slots: [&Slot; BATCH] = [&SLOT_TABLE[0]; BATCH];
    let mut chunks = [ptr::null_mut::<Chunk>(); BATCH];
    let mut n = 0;
    let settle = |slots: &[&Slot], chunks: &[*mut Chunk]| {
        quiesce(slots);
        for &c in chunks {
            if let Some(c) = NonNull::new(c) {
                write_chunk(c);
            }
        }
    };
    for slot in &SLOT_TABLE {
        if !slot.in_use.load(Ordering::Acquire) && slot.chunk.load(Ordering::Relaxed).is_null() {
            continue;
        }
        if !lock_unless_abandoned(slot) {
            continue;
        }
        let c = slot.chunk.load(Ordering::Relaxed);
        // An owner may be encoding into it (not if it holds the lock): `len` may lag by an
        // event, which only matters for whether a nearly empty chunk is taken now or later.
        let take = !c.is_null() && has_events(c);
        if take {
            slot.chunk.store(ptr::null_mut(), Ordering::Relaxed);
        }
        slot.lock.unlock();
        if take {
            slots[n] = slot;
            chunks[n] = c;
            n += 1;
            if n == BATCH {
                settle(&slots[..n], &chunks[..n]);
                n = 0;
            }
        }
    }
    settle(&slots[..n], &chunks[..n]);
}

/// Blocks every asynchronous signal on the calling thread (the writer) for the rest of its life:
/// SIGPIPE, so a dead collector is a write error; and the host's signals, so that its handlers
/// (which may call exit) always run on its own threads, never in the middle of our writes.
fn block_signals() {
    // SAFETY: sigset_t is plain data initialized by sigfillset; pthread_sigmask only affects
    // this thread. The signals the kernel sends for a fault stay deliverable (they cannot be
    // blocked usefully), which is what a bug in the writer deserves.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sync in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP] {
            libc::sigdelset(&mut set, sync);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut());
    }
}

/// Whether `fd` is a socket (see [`OUT_IS_SOCKET`]).
fn is_socket(fd: i32) -> bool {
    // SAFETY: fstat on an integer descriptor into a zeroed stat we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// Writes all of `bytes` to the collector. On any error other than EINTR the collector is gone:
/// go passive and drop everything from now on. Never raises SIGPIPE in the calling thread.
fn write_out(bytes: &[u8]) {
    if DEAD.load(Ordering::Acquire) {
        return;
    }
    let fd = OUT_FD.load(Ordering::Relaxed);
    if OUT_IS_SOCKET.load(Ordering::Relaxed) {
        send_out(fd, bytes);
        return;
    }
    let on_writer = thread().writer.get();
    let _nc = crate::ffi::NoCancel::new();
    WRITE_LOCK.lock();
    // SAFETY: sigset_t values are plain data initialized by sigemptyset/pthread_sigmask before
    // use; masking only affects the calling thread and is restored below.
    let (old, was_pending) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        if !on_writer {
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        }
        libc::sigpending(&mut pending);
        (old, libc::sigismember(&pending, libc::SIGPIPE) == 1)
    };
    let mut rest = bytes;
    let mut broke = false;
    while !rest.is_empty() {
        // SAFETY: rest is a valid readable slice; fd is the descriptor the collector gave us.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            broke = true;
            break;
        }
    }
    if broke {
        DEAD.store(true, Ordering::Release);
        state::go_passive();
    }
    if !on_writer {
        // SAFETY: as above; a SIGPIPE that our own write raised (it was not pending before) is
        // consumed with a zero-timeout sigtimedwait before the old mask is restored.
        unsafe {
            if broke && !was_pending {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGPIPE);
                let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                libc::sigtimedwait(&set, ptr::null_mut(), &zero);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        }
    }
    WRITE_LOCK.unlock();
}

/// [`write_out`] on a socket: `send` with MSG_NOSIGNAL reports a gone collector as EPIPE
/// without raising SIGPIPE, so the signal mask is left alone (three system calls fewer a chunk:
/// a single-threaded program writes its own).
fn send_out(fd: i32, bytes: &[u8]) {
    let _nc = crate::ffi::NoCancel::new();
    WRITE_LOCK.lock();
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: rest is a valid readable slice; fd is the descriptor the collector gave us.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            DEAD.store(true, Ordering::Release);
            state::go_passive();
            break;
        }
    }
    WRITE_LOCK.unlock();
}

/// Writes the image-exit record, once: after it the collector knows the image's stream is whole.
static EXIT_WRITTEN: AtomicBool = AtomicBool::new(false);

fn image_exit_record(seq: u64) {
    if EXIT_WRITTEN.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut buf = [0u8; MAX_SMALL_RECORD];
    let n = Encoder::default().image_exit(&mut buf, 0, seq);
    write_out(&buf[..n]);
}

/// Does what a message asks; true when the writer should stop. `rx` is the writer's channel,
/// drained of chunks while a `Sync`, `Finish` or `Stop` waits for chunks being handed over;
/// the requests met there go to `later`, in order.
fn handle(m: Msg, rx: &Receiver<Msg>, later: &mut VecDeque<Msg>) -> bool {
    match m {
        Msg::Chunk(c) => {
            write_chunk(c.0);
            false
        }
        Msg::Sync(done) => {
            settle(rx, later);
            done.store(true, Ordering::Release);
            false
        }
        Msg::Finish(seq, done) => {
            if settle(rx, later) && !LOST_IN_FLIGHT.load(Ordering::Acquire) {
                image_exit_record(seq);
            }
            done.store(true, Ordering::Release);
            true
        }
        Msg::Stop(done) => {
            // From now on the recording threads write their chunks themselves.
            WRITER_ALIVE.store(false, Ordering::Release);
            settle(rx, later);
            done.store(true, Ordering::Release);
            true
        }
    }
}

/// Every slot's chunk, and every chunk being handed over, written (the writer's side of the
/// module comment's ending); false if a handover did not finish in time. Requests queued
/// meanwhile go to `later`.
fn settle(rx: &Receiver<Msg>, later: &mut VecDeque<Msg>) -> bool {
    steal_all();
    await_handovers(|| {
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Chunk(c) => write_chunk(c.0),
                request => later.push_back(request),
            }
        }
    })
}

fn writer(rx: Receiver<Msg>) {
    block_signals();
    WRITER_TID.store(crate::ffi::gettid(), Ordering::Release);
    // Requests that arrived while another was being settled, to answer next.
    let mut later = VecDeque::new();
    loop {
        let next = match later.pop_front() {
            Some(m) => Ok(m),
            None => rx.recv_timeout(TICK),
        };
        match next {
            Ok(m) => {
                let stop = matches!(m, Msg::Stop(_));
                if handle(m, &rx, &mut later) {
                    WRITER_ALIVE.store(false, Ordering::Release);
                    if stop {
                        // What senders queued while they still saw the writer alive is written
                        // before it goes.
                        while let Some(m) = later.pop_front().or_else(|| rx.try_recv().ok()) {
                            handle(m, &rx, &mut later);
                        }
                    }
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                modules::rescan_if_changed();
                steal_all();
                if crate::lifecycle::only_writer_left() {
                    // The main thread called pthread_exit and every other thread has ended:
                    // glibc exits the process when the last thread ends, and we would be it.
                    // Step aside; the exit path then flushes directly.
                    WRITER_ALIVE.store(false, Ordering::Release);
                    while let Some(m) = later.pop_front().or_else(|| rx.try_recv().ok()) {
                        handle(m, &rx, &mut later);
                    }
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until every event recorded so far, by every thread, is written. With `exit_seq`, the
/// image-exit record follows and the writer stops.
///
/// With a `deadline`, gives up waiting for the writer then (an abrupt end may come from a thread
/// holding locks the writer needs).
pub fn flush_all(exit_seq: Option<u64>, deadline: Option<crate::clock::Deadline>) {
    // One flag for every caller: they never overlap. The state machine admits one at a time
    // (lifecycle.rs): an image's start runs before any other thread can, an exec attempt's
    // flush holds EXECUTING, which an ending image waits out, and only one thread moves the
    // image from ACTIVE to EXECUTING or FINISHED.
    static DONE: AtomicBool = AtomicBool::new(false);
    // Our own chunk first, so it precedes whatever the writer steals (not if we abandoned it).
    if !thread().slot.get().is_null() && !ptr::eq(ABANDONED.load(Ordering::Acquire), thread().slot.get()) {
        flush_own();
    }
    let t = thread();
    if WRITER_ALIVE.load(Ordering::Acquire) && !t.writer.get() {
        DONE.store(false, Ordering::Release);
        let msg = match exit_seq {
            Some(seq) => Msg::Finish(seq, &DONE),
            None => Msg::Sync(&DONE),
        };
        if send_msg(msg).is_ok() {
            let mut spins = 0;
            while WRITER_ALIVE.load(Ordering::Acquire) {
                if DONE.load(Ordering::Acquire) || deadline.is_some_and(|d| d.passed()) {
                    return;
                }
                crate::sync::backoff(&mut spins);
            }
            if DONE.load(Ordering::Acquire) {
                return;
            }
        }
    }
    // No writer (it stepped aside, or we are it): do its work here. Stealing twice is harmless
    // and the exit record is written once. Other threads write the chunks they hand over
    // themselves: wait for them.
    steal_all();
    let settled = await_handovers(|| {});
    if let (Some(seq), true, false) = (exit_seq, settled, LOST_IN_FLIGHT.load(Ordering::Acquire)) {
        image_exit_record(seq);
    }
}
