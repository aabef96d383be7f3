//! `capture` against libgcc's `_Unwind_Backtrace`, frame for frame, on stacks through Rust,
//! C with and without frame pointers, libc, threads and signal handlers. Each case repeats so
//! that after the first (miss) round the cached-rule path is the one compared.

mod common;

use common::*;
use residue_unwind::{capture, capture_from, capture_libgcc, invalidate, stats, thread_lookups, Entry};
use std::ffi::{c_int, c_void};
use std::hint::black_box;

const REPS: usize = 200;

#[test]
fn rust_recursion_at_many_depths() {
    for depth in [0, 1, 16, 40, 70, 150] {
        let p = check_rust_depth(depth, REPS);
        // The recursion itself is on the stack: at least `depth` frames below the helper.
        assert!(p.ours.len() > depth, "depth {depth}: only {} frames", p.ours.len());
    }
}

#[test]
fn c_without_frame_pointers() {
    for depth in [1, 10, 40] {
        for _ in 0..REPS {
            through_c(o2_recurse, depth, || assert_same(&capture_both()));
        }
    }
}

#[test]
fn c_at_o0() {
    for depth in [1, 10, 40] {
        for _ in 0..REPS {
            through_c(o0_recurse, depth, || assert_same(&capture_both()));
        }
    }
}

#[test]
fn c_frames_with_alloca_realignment_and_big_frames() {
    for _ in 0..REPS {
        through_c(o2_with_alloca, 100, || assert_same(&capture_both()));
        through_c(o0_with_alloca, 100, || assert_same(&capture_both()));
        through_c(o2_realigned, 0, || assert_same(&capture_both()));
        through_c(o0_realigned, 0, || assert_same(&capture_both()));
    }
    for _ in 0..20 {
        through_c(o2_big_frame, 3, || assert_same(&capture_both()));
        through_c(o0_big_frame, 3, || assert_same(&capture_both()));
    }
}

/// Rust -> C (-O2) -> Rust -> C (-O0) -> Rust ... : callbacks from C into Rust, nested.
fn interleave(level: usize, done: &mut dyn FnMut()) {
    if level == 0 {
        done();
        return;
    }
    let mut next = || {
        rust_recurse(2, &mut || interleave(level - 1, done));
    };
    if level.is_multiple_of(2) {
        through_c(o2_recurse, 3, &mut next);
    } else {
        through_c(o0_recurse, 3, &mut next);
    }
}

#[test]
fn callbacks_from_c_into_rust_nested() {
    for _ in 0..REPS {
        let mut frames = 0;
        interleave(6, &mut || {
            let p = capture_both();
            assert_same(&p);
            frames = p.ours.len();
        });
        // 6 levels of (4 C + 3 Rust + trampolines) frames.
        assert!(frames > 40, "only {frames} frames");
    }
}

thread_local! {
    static SORT_CAPTURES: std::cell::RefCell<Vec<Pair>> = const { std::cell::RefCell::new(Vec::new()) };
}

extern "C" fn capturing_cmp(a: *const c_void, b: *const c_void) -> c_int {
    SORT_CAPTURES.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < 50 {
            c.push(capture_both());
        }
    });
    // SAFETY: qsort passes pointers to two elements of the u32 array being sorted.
    let (a, b) = unsafe { (*(a as *const u32), *(b as *const u32)) };
    a.cmp(&b) as c_int
}

#[test]
fn through_libc_qsort() {
    for _ in 0..20 {
        let mut v: Vec<u32> = (0..64u32).map(|i| i.wrapping_mul(2_654_435_761) % 1000).collect();
        // SAFETY: a valid array of u32 with its length and element size, and a comparator for it.
        unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 4, Some(capturing_cmp)) };
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        let caps = SORT_CAPTURES.with(|c| std::mem::take(&mut *c.borrow_mut()));
        assert_eq!(caps.len(), 50);
        for p in &caps {
            assert_same(p);
        }
    }
}

#[test]
fn threads() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for depth in [3 + t, 20 + t, 60 + t] {
                    check_rust_depth(depth, 100);
                    for _ in 0..100 {
                        through_c(o2_recurse, depth as c_int, || assert_same(&capture_both()));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread failed");
    }
}

/// Thousands of distinct return addresses and hundreds of distinct rules (frame sizes up to
/// 3.2 KiB, beyond the inline form), from several threads at once, twice (cold, then warm).
#[test]
fn many_call_sites_from_many_threads() {
    let handles: Vec<_> = (0..4usize)
        .map(|t| {
            std::thread::spawn(move || {
                for _ in 0..2 {
                    for k in 0..MANY {
                        // Each thread its own order, so inserts race on different keys.
                        let i = (k * (2 * t + 1) + t * 977) % MANY;
                        // SAFETY: reading an immutable table of function pointers.
                        let f = unsafe { many_table[i] };
                        through_c(f, 0, || assert_same(&capture_both()));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread failed");
    }
}

/// A thread with a small stack: the miss path (gimli's context lives on the stack) must fit,
/// and a cold cache makes every frame take it.
#[test]
fn small_stack_thread_with_cold_cache() {
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(|| {
            for _ in 0..20 {
                invalidate();
                check_rust_depth(20, 1);
                through_c(o2_recurse, 10, || assert_same(&capture_both()));
            }
        })
        .unwrap()
        .join()
        .expect("small-stack thread failed");
}

#[test]
fn invalidate_then_capture_again_gives_the_same_stack() {
    let mut pairs = Vec::new();
    rust_recurse(30, &mut || {
        through_c(o2_recurse, 5, || {
            // One call site for every round (a trip count the compiler cannot see keeps the loop
            // from being unrolled into several): the captures must be identical, frame 0 too.
            for _ in 0..black_box(4) {
                let p = capture_both();
                invalidate();
                pairs.push(p);
            }
        });
    });
    assert_eq!(pairs.len(), 4);
    for p in &pairs {
        assert_same(p);
        assert_eq!(p, &pairs[0]);
    }
}

#[test]
fn concurrent_invalidation_keeps_results_correct() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    // The workers start once the invalidator has: on a loaded machine they could otherwise
    // finish before it first runs, and nothing would have been invalidated under them.
    let started = Arc::new(AtomicBool::new(false));
    let (s, st) = (stop.clone(), started.clone());
    let invalidator = std::thread::spawn(move || {
        let mut n = 0u32;
        loop {
            invalidate();
            n += 1;
            st.store(true, Ordering::Release);
            if s.load(Ordering::Relaxed) {
                return n;
            }
            std::thread::yield_now();
        }
    });
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let started = started.clone();
            std::thread::spawn(move || {
                while !started.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                for _ in 0..300 {
                    check_rust_depth(25, 1);
                    through_c(o0_recurse, 7, || assert_same(&capture_both()));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker failed");
    }
    stop.store(true, Ordering::Relaxed);
    invalidator.join().unwrap();
}

thread_local! {
    /// Per thread: `raise` runs the handler on the raising thread, and the two signal tests
    /// run at once on two threads (a shared slot let one take the other's capture).
    static SIGNAL_PAIR: std::cell::RefCell<Option<Pair>> = const { std::cell::RefCell::new(None) };
}

extern "C" fn on_signal(_: c_int) {
    // Allocating here is fine only because the signal is raised synchronously by the test
    // thread, outside any allocator call.
    let p = rust_recurse_pair(5);
    SIGNAL_PAIR.with(|s| *s.borrow_mut() = Some(p));
}

#[inline(never)]
fn rust_recurse_pair(depth: usize) -> Pair {
    let mut out = None;
    rust_recurse(depth, &mut || out = Some(capture_both()));
    out.unwrap()
}

fn raise_with_handler(sig: c_int, on_alt_stack: bool) -> Pair {
    // SAFETY: installs a plain handler for a signal nothing else in this test binary uses, raises
    // it synchronously in this thread, and restores the previous action; the alternate stack
    // (when asked for) outlives its use and is disabled before it is freed.
    unsafe {
        let mut alt = vec![0u8; 256 * 1024];
        if on_alt_stack {
            let ss = libc::stack_t { ss_sp: alt.as_mut_ptr().cast(), ss_flags: 0, ss_size: alt.len() };
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = if on_alt_stack { libc::SA_ONSTACK } else { 0 };
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, &sa, &mut old), 0);
        assert_eq!(libc::raise(sig), 0);
        assert_eq!(libc::sigaction(sig, &old, std::ptr::null_mut()), 0);
        if on_alt_stack {
            let ss = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        }
        drop(alt);
    }
    SIGNAL_PAIR.with(|s| s.borrow_mut().take()).expect("handler ran")
}

/// The signal trampoline (`__restore_rt`) is not compactly expressible: the whole capture
/// goes to libgcc and must still be right, including frames below the interrupted code.
#[test]
fn signal_handler_falls_back_to_libgcc() {
    for _ in 0..20 {
        let before = stats().fallbacks;
        let p = raise_with_handler(libc::SIGUSR1, false);
        assert_same(&p);
        assert!(stats().fallbacks > before, "expected a fallback through the signal frame");
        // This test's own function is below the trampoline: the walk went through it.
        assert!(p.ours.len() > 10);
    }
}

#[test]
fn signal_handler_on_alternate_stack() {
    for _ in 0..20 {
        let p = raise_with_handler(libc::SIGUSR2, true);
        assert_same(&p);
    }
}

#[test]
fn short_buffers_get_the_innermost_frames() {
    let full = rust_recurse_pair(20);
    assert_same(&full);
    for len in [0usize, 1, 2, 5] {
        let mut got = None;
        rust_recurse(20, &mut || {
            let mut a = [0u64; 8];
            let na = capture(&mut a[..len]);
            let mut b = [0u64; 8];
            let nb = capture_libgcc(&mut b[..len]);
            got = Some((na, nb, a, b));
        });
        let (na, nb, a, b) = got.unwrap();
        assert_eq!((na, nb), (len, len));
        // Frame 0 is a call site in the closure; after it, the recursion's return addresses.
        assert_eq!(a[1.min(len)..len], b[1.min(len)..len]);
        // `full` has one more frame at the top (capture_both): shifted by one.
        if len > 1 {
            assert_eq!(a[1..len], full.ours[2..len + 1]);
        }
    }
}

/// The comparison itself must be able to fail: two different stacks are reported as such.
#[test]
fn check_detects_a_wrong_stack() {
    let a = rust_recurse_pair(10);
    let b = rust_recurse_pair(11);
    assert!(check(&a).is_ok() && check(&b).is_ok());
    let mixed = Pair { ours: a.ours.clone(), reference: b.reference.clone() };
    assert!(check(&mixed).is_err());
    // One frame dropped, as a frame-pointer walk would through -fomit-frame-pointer code.
    let mut skipped = a.clone();
    skipped.ours.remove(3);
    assert!(check(&skipped).is_err());
    let mut changed = a;
    changed.ours[5] ^= 0x10;
    assert!(check(&changed).is_err());
    black_box(());
}

/// The shape of an interposer hook that starts its walk at its own entry: a naked entry that
/// hands its stack pointer and rbp to the body in the next argument registers and jumps there,
/// so the body returns straight to the caller.
#[unsafe(naked)]
extern "C" fn hooked(out: *mut Pair) {
    core::arch::naked_asm!("mov rsi, rsp", "mov rdx, rbp", "jmp {body}", body = sym hooked_body)
}

extern "C" fn hooked_body(out: *mut Pair, sp: u64, fp: u64) {
    let mut a = [0u64; MAX];
    let na = capture_from(&mut a, Entry { sp, fp });
    let mut b = [0u64; MAX];
    let nb = capture_libgcc(&mut b);
    // libgcc's first frame is the call in here; the next is `hooked`'s return address.
    let p = Pair { ours: a[..na].to_vec(), reference: b[1.min(nb)..nb].to_vec() };
    // SAFETY: `out` is the caller's live Pair.
    unsafe { *out = p };
}

/// Calls `hooked` and compares: the walk from the entry must be libgcc's walk past the body.
#[inline(never)]
fn entry_pair(site: bool) -> Pair {
    let mut p = Pair { ours: Vec::new(), reference: Vec::new() };
    // Two call sites: alternating between them replays part of the previous walk only.
    if site {
        hooked(&mut p);
    } else {
        hooked(black_box(&mut p));
    }
    black_box(p)
}

#[test]
fn walks_from_a_hooks_entry_skip_the_hook_and_match_libgcc() {
    for depth in [0, 3, 40] {
        for rep in 0..REPS {
            let check = |site| {
                let p = entry_pair(site);
                assert!(!p.ours.is_empty(), "depth {depth}: empty walk");
                assert_eq!(
                    p.ours, p.reference,
                    "depth {depth}, rep {rep}: walk from the entry != libgcc past the body"
                );
            };
            rust_recurse(depth, &mut || check(rep % 2 == 0));
            through_c(o2_recurse, depth as c_int, || check(rep % 3 == 0));
            through_c(o0_recurse, depth as c_int, || check(true));
        }
    }
}

/// Call sites of `hooked`, each its own function (so its own return address), some with a
/// frame between them and the call: the memo keeps a previous walk per (site, stack pointer)
/// pair for the latest sixteen, so twenty sites in turn, or twelve each at two depths, replace
/// each other's records, while twelve at one depth each replay their own from its first frame on
/// their next visit.
macro_rules! sites {
    ($($name:ident: $extra:expr),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name(p: &mut Pair) {
                if $extra {
                    through_frame(p);
                } else {
                    hooked(black_box(p));
                }
            }
        )*
        const SITES: &[fn(&mut Pair)] = &[$($name),*];
    };
}

#[inline(never)]
fn through_frame(p: &mut Pair) {
    hooked(black_box(p));
    black_box(());
}

sites!(
    s0: false, s1: true, s2: false, s3: false, s4: true, s5: false, s6: false, s7: true, s8: false, s9: false,
    s10: true, s11: false, s12: false, s13: true, s14: false, s15: false, s16: true, s17: false, s18: false, s19: true,
);

/// Runs `f` one frame deeper: the same call sites at another stack pointer.
#[inline(never)]
fn one_deeper(f: &mut dyn FnMut()) {
    f();
    black_box(());
}

#[test]
fn call_sites_in_turn_replay_their_own_walks_and_match_libgcc() {
    for rep in 0..REPS {
        // Twelve sites in turn (each keeps its record), or twenty (records replaced); at one
        // depth, or each site at two in turn (24 pairs: replaced); under two outer depths.
        let n = if rep % 2 == 0 { 12 } else { SITES.len() };
        let two_depths = rep % 4 >= 2;
        let depth = [2usize, 9][rep % 8 / 4];
        rust_recurse(depth, &mut || {
            for (i, site) in SITES[..n].iter().enumerate() {
                let check = |deeper: bool| {
                    let mut p = Pair { ours: Vec::new(), reference: Vec::new() };
                    if deeper {
                        one_deeper(&mut || site(&mut p));
                    } else {
                        site(&mut p);
                    }
                    assert!(!p.ours.is_empty(), "site {i}, rep {rep}: empty walk");
                    assert_eq!(p.ours, p.reference, "site {i}, rep {rep}: walk from the entry != libgcc past the body");
                };
                check(false);
                if two_depths {
                    check(true);
                }
            }
        });
    }
}

/// A call site met at two depths in turn (a Python allocator's caller, called from several
/// places) replays each depth's own previous walk from its first frame. Kept per call site
/// alone, each depth's walk looked rules up from its first frame until it joined the other
/// depth's walk: 15 lookups a round in a release build, against 4 (2.5 a walk, against 0.67).
/// Not 0: a frame that saves rbp holding its caller's data (here a heap pointer that changes
/// from call to call) is followed with a lookup where that word differs from the record's.
#[test]
fn a_site_met_at_two_depths_in_turn_replays_each_depths_walk() {
    // A thread of its own: the count is per thread, and this one captures nothing else.
    std::thread::spawn(|| {
        const WALKS: u64 = 6;
        let round = || {
            for (i, site) in SITES[..3].iter().enumerate() {
                for deeper in [false, true] {
                    let mut p = Pair { ours: Vec::new(), reference: Vec::new() };
                    if deeper {
                        one_deeper(&mut || site(&mut p));
                    } else {
                        site(&mut p);
                    }
                    assert_eq!(p.ours, p.reference, "site {i}, deeper {deeper}");
                }
            }
        };
        // From one place, so that the frames outside `round` are the same in every round.
        let (mut warm, rounds) = (0, black_box(20));
        for i in 0..2 + rounds {
            if i == 2 {
                warm = thread_lookups();
            }
            round();
        }
        assert!(warm > 0, "the first walks must have looked rules up");
        let looked = thread_lookups() - warm;
        assert!(looked <= rounds * WALKS, "{looked} rules looked up by {} warm walks", rounds * WALKS);
    })
    .join()
    .unwrap();
}

thread_local! {
    static JIT_PAIR: std::cell::RefCell<Option<Pair>> = const { std::cell::RefCell::new(None) };
}

extern "C" fn capture_inside_jit_code() {
    let p = capture_both();
    JIT_PAIR.with(|s| *s.borrow_mut() = Some(p));
}

/// Code that no FDE describes (a JIT's: here a few bytes in an anonymous executable mapping):
/// libgcc reports the frame that returns into it, then stops. So does the fast walk, by itself:
/// handing such captures to libgcc made a JavaScript runtime 15 times slower.
#[test]
fn code_without_unwind_info_ends_the_walk_as_libgcc_ends_it() {
    // sub rsp, 8; call rdi; add rsp, 8; ret
    const CODE: [u8; 11] = [0x48, 0x83, 0xec, 0x08, 0xff, 0xd7, 0x48, 0x83, 0xc4, 0x08, 0xc3];
    // SAFETY: a fresh private anonymous mapping, written before it is made executable and
    // called as a function of the type its code implements (it calls its argument, a plain
    // extern "C" function, with the stack aligned as the ABI requires); unmapped after.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), page.cast::<u8>(), CODE.len());
        assert_eq!(libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC), 0);
        let jit: extern "C" fn(extern "C" fn()) = std::mem::transmute(page);
        let range = page as u64..page as u64 + 4096;
        for _ in 0..REPS {
            let before = stats().fallbacks;
            jit(capture_inside_jit_code);
            let p = JIT_PAIR.with(|s| s.borrow_mut().take()).expect("captured");
            assert_same(&p);
            assert_eq!(stats().fallbacks, before, "the walk ended by itself");
            assert!(p.ours.last().is_some_and(|ra| range.contains(ra)), "it ends in the JIT code: {:x?}", p.ours);
        }
        libc::munmap(page, 4096);
    }
}
