//! What a caller keeps with a walk (`Kept`): given back to a capture that is the same walk (same
//! call site, same stack pointer, the same return addresses), never to one whose frames differ,
//! and never written into a later capture's record. The fast path (`repeat`) finds the same
//! walk without walking, and only the same walk.

mod common;

use common::*;
use residue_unwind::{
    capture_from_kept, fill, keep, kept_words, quick, repeat, Entry, Kept, Repeat, ThreadState, KEPT,
};
use std::cell::RefCell;
use std::hint::black_box;

thread_local! {
    static STATE: ThreadState = const { ThreadState::new() };
    /// What the latest capture of `hooked` saw: its frames and its `Kept`.
    static LAST: RefCell<(Vec<u64>, Kept)> = RefCell::new((Vec::new(), Kept::default()));
    /// Whether hooks try [`repeat`] first, and what the latest capture of `hooked` found there
    /// (its frames then filled in by [`fill`]).
    static TRY_REPEAT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static REPEATED: RefCell<Option<Repeat>> = const { RefCell::new(None) };
    /// Whether hooks try [`quick`] first (and have [`repeat`] keep what it finds for it), and
    /// what the latest capture of `hooked` found there. The hook captures anyway, for its frames.
    static TRY_QUICK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static QUICKED: std::cell::Cell<Option<[u64; KEPT]>> = const { std::cell::Cell::new(None) };
    /// Room for frames the hook gives a capture.
    static ROOM: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX) };
}

/// An interposer-style hook: a naked entry hands its stack pointer and rbp to the body, which
/// captures from the hook's caller on.
#[unsafe(naked)]
extern "C" fn hooked() {
    core::arch::naked_asm!("mov rdi, rsp", "mov rsi, rbp", "jmp {body}", body = sym hooked_body)
}

extern "C" fn hooked_body(sp: u64, fp: u64) {
    let mut out = [0u64; MAX];
    let entry = Entry { sp, fp };
    let room = ROOM.get();
    QUICKED.set(if TRY_QUICK.get() { STATE.with(|s| quick(s, entry, room)) } else { None });
    let found = if TRY_REPEAT.get() { STATE.with(|s| repeat(s, entry, room, TRY_QUICK.get())) } else { None };
    REPEATED.with(|r| *r.borrow_mut() = found);
    let (n, kept) = match found {
        Some(r) => {
            assert!(STATE.with(|s| fill(s, r.kept, &mut out[..r.n])), "the repeat's frames are there to fill");
            (r.n, r.kept)
        }
        None => STATE.with(|s| capture_from_kept(s, &mut out[..room], entry)),
    };
    LAST.with(|l| *l.borrow_mut() = (out[..n].to_vec(), kept));
}

/// Calls the hook from one call site, `depth` frames down.
#[inline(never)]
fn site_a(depth: usize) -> (Vec<u64>, Kept) {
    rust_recurse(depth, &mut || hooked());
    LAST.with(|l| l.borrow().clone())
}

/// The same, from another call site.
#[inline(never)]
fn site_b(depth: usize) -> (Vec<u64>, Kept) {
    rust_recurse(depth, &mut || black_box(hooked)());
    LAST.with(|l| l.borrow().clone())
}

fn words(k: u64) -> [u64; KEPT] {
    std::array::from_fn(|i| k + i as u64)
}

fn kept(k: Kept) -> Option<[u64; KEPT]> {
    STATE.with(|s| kept_words(s, k))
}

fn keep_now(k: Kept, w: [u64; KEPT]) {
    STATE.with(|s| keep(s, k, w));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Site {
    A,
    B,
    OuterA,
    OuterB,
}

/// Captures at each of `steps` in turn, from one call site here (so that the frames outside
/// are the same each time), and hands each step's frames and `Kept` to `check` with the step's
/// index; `check` keeps words and asks for them between captures.
fn run(steps: &[Site], mut check: impl FnMut(usize, &[u64], Kept)) {
    for (i, &site) in steps.iter().enumerate() {
        let (frames, k) = match site {
            Site::A => site_a(3),
            Site::B => site_b(3),
            Site::OuterA => via_outer(true),
            Site::OuterB => via_outer(false),
        };
        assert!(!frames.is_empty(), "step {i}: no frames");
        check(i, &frames, k);
    }
}

#[test]
fn the_same_walk_gets_its_words_back_and_no_other_does() {
    use Site::*;
    std::thread::spawn(|| {
        let mut first = Vec::new();
        let mut stale = Kept::default();
        run(&[A, A, A, B, A], |i, frames, k| match i {
            0 => {
                assert!(!k.same() && kept(k).is_none(), "nothing was kept for a first walk");
                keep_now(k, words(10));
                first = frames.to_vec();
            }
            1 => {
                assert_eq!(frames, &first[..]);
                assert!(k.same(), "the same call site, depth and frames");
                assert_eq!(kept(k), Some(words(10)));
                stale = k;
            }
            2 => {
                assert_eq!(kept(k), Some(words(10)));
                // Words kept for a capture after another one came go nowhere.
                keep_now(stale, words(30));
                assert!(kept(stale).is_none(), "a capture that is no longer the latest finds nothing");
                assert_eq!(kept(k), Some(words(10)), "the stale keep did not land in the latest record");
            }
            3 => {
                assert_ne!(frames, &first[..]);
                assert!(!k.same() && kept(k).is_none(), "another call site: its own record, nothing in it");
                keep_now(k, words(20));
            }
            // Back at A: its own words, or none where the walk could not tell it is the same
            // (a register the Rust frames save holds another value: the walk is redone).
            _ => {
                assert_eq!(frames, &first[..]);
                let got = kept(k);
                assert!(got.is_none() || got == Some(words(10)), "A's record holds A's words: {got:?}");
            }
        });
    })
    .join()
    .unwrap();
}

#[test]
fn a_walk_whose_frames_differ_gets_nothing_even_from_the_same_place() {
    use Site::*;
    std::thread::spawn(|| {
        // The hook's caller at the same stack pointer under two different outer callers: the
        // record is shared, the frames are not.
        let mut first = Vec::new();
        run(&[OuterA, OuterA, OuterB, OuterB, OuterA], |i, frames, k| match i {
            0 => {
                keep_now(k, words(40));
                first = frames.to_vec();
            }
            1 => {
                assert_eq!(frames, &first[..]);
                assert_eq!(kept(k), Some(words(40)));
            }
            2 => {
                assert_ne!(frames, &first[..], "the outer caller differs");
                assert!(!k.same() && kept(k).is_none(), "frames that differ are not the same walk");
            }
            // The record holds B's walk now, for which nothing was kept: A's words went with
            // the walk they were kept for.
            _ => assert!(kept(k).is_none(), "step {i}: {:?}", kept(k)),
        });
    })
    .join()
    .unwrap();
}

/// Captures through the same two inner frames from one of two outer callers (same bodies, so
/// the inner frames sit at the same stack addresses).
#[inline(never)]
fn via_outer(first: bool) -> (Vec<u64>, Kept) {
    if first {
        outer_a()
    } else {
        outer_b()
    }
}

#[inline(never)]
fn outer_a() -> (Vec<u64>, Kept) {
    black_box(inner_call())
}

#[inline(never)]
fn outer_b() -> (Vec<u64>, Kept) {
    // Code of its own, or the two may be merged into one function (then both walks are the
    // same walk); a nop takes no stack, so the inner frames stay where they are under outer_a.
    // SAFETY: an instruction that does nothing.
    unsafe { core::arch::asm!("nop", options(nomem, nostack, preserves_flags)) };
    black_box(inner_call())
}

#[inline(never)]
fn inner_call() -> (Vec<u64>, Kept) {
    hooked();
    black_box(LAST.with(|l| l.borrow().clone()))
}

/// What the latest capture found through [`repeat`].
fn repeated() -> Option<Repeat> {
    REPEATED.with(|r| *r.borrow())
}

#[test]
fn a_repeat_is_the_same_walk_with_its_words_and_never_another() {
    use Site::*;
    std::thread::spawn(|| {
        TRY_REPEAT.set(true);
        // The hook's caller at the same stack pointer under two outer callers: a repeat of one
        // must not be taken for the other, whose frames differ only further out.
        let mut a = Vec::new();
        let mut b = Vec::new();
        run(&[OuterA, OuterA, OuterA, OuterA, OuterB, OuterB, OuterB, OuterB, OuterA], |i, frames, k| {
            let r = repeated();
            match i {
                0 => {
                    assert!(r.is_none(), "a first walk is no repeat");
                    keep_now(k, words(50));
                    a = frames.to_vec();
                }
                // Walked whole again (its word list made): no repeat yet, then one.
                1..=3 => {
                    assert_eq!(frames, &a[..]);
                    if let Some(r) = r {
                        assert_eq!(r.words, words(50), "step {i}: the words kept with the walk");
                        assert!(r.kept.same());
                        assert_eq!(kept(r.kept), Some(words(50)));
                    }
                    assert!(i < 3 || r.is_some(), "the third walk whole again is a repeat");
                }
                4 => {
                    assert_ne!(frames, &a[..], "another outer caller");
                    assert!(r.is_none(), "another outer caller: not a repeat of the record");
                    keep_now(k, words(60));
                    b = frames.to_vec();
                }
                5..=7 => {
                    assert_eq!(frames, &b[..]);
                    if let Some(r) = r {
                        assert_eq!(r.words, words(60), "step {i}: B's words, not A's");
                    }
                    assert!(i < 7 || r.is_some(), "B's walk whole again is a repeat");
                }
                _ => {
                    assert!(r.is_none(), "back at A: the record is B's");
                    assert_eq!(frames, &a[..]);
                }
            }
        });
    })
    .join()
    .unwrap();
}

#[test]
fn a_repeat_takes_no_more_frames_than_the_room_it_is_given() {
    std::thread::spawn(|| {
        TRY_REPEAT.set(true);
        use Site::*;
        let mut all = Vec::new();
        let mut n = 0;
        // Through one run, as above: the same place at the same depth each time.
        run(&[OuterA, OuterA, OuterA, OuterA, OuterA, OuterA], |i, frames, k| match i {
            0..4 => {
                keep_now(k, words(70));
                all = frames.to_vec();
            }
            4 => {
                let r = repeated().expect("the walk through outer_a, whole again, is a repeat");
                assert_eq!(r.n, all.len());
                n = r.n;
                // The same place with room for one frame fewer than the walk has.
                ROOM.set(r.n - 1);
            }
            _ => {
                // No repeat, and the general walk stops at the room's end.
                assert!(repeated().is_none(), "a repeat would not fit");
                assert_eq!(frames, &all[..n - 1]);
            }
        });
    })
    .join()
    .unwrap();
}

#[test]
fn a_quick_answer_is_a_repeated_walk_again_and_never_another() {
    use Site::*;
    std::thread::spawn(|| {
        TRY_REPEAT.set(true);
        TRY_QUICK.set(true);
        // The hook's caller at the same stack pointer under two outer callers, as above: the
        // words a repeat of one kept must never answer a capture under the other.
        let steps = [OuterA, OuterA, OuterA, OuterA, OuterA, OuterB, OuterB, OuterB, OuterB, OuterB, OuterA, OuterA];
        let mut answered = [false; 12];
        run(&steps, |i, _, k| {
            let q = QUICKED.get();
            answered[i] = q.is_some();
            match i {
                0 => keep_now(k, words(80)),
                1..=4 => assert!(q.is_none() || q == Some(words(80)), "step {i}: A's words, or none: {q:?}"),
                5 => {
                    assert!(q.is_none(), "another outer caller: A's walk does not answer it");
                    keep_now(k, words(90));
                }
                6..=9 => assert!(q.is_none() || q == Some(words(90)), "step {i}: B's words, or none: {q:?}"),
                // Back at A: the same place's hit is B's walk now.
                10 => assert!(q.is_none(), "back at A: B's walk does not answer it: {q:?}"),
                _ => assert!(q.is_none() || q == Some(words(80)), "step {i}: {q:?}"),
            }
        });
        assert!(answered[4] && answered[9], "each walk, repeated, answers quickly: {answered:?}");
    })
    .join()
    .unwrap();
}

#[test]
fn a_quick_answer_takes_no_more_frames_than_the_room_it_is_given() {
    std::thread::spawn(|| {
        TRY_REPEAT.set(true);
        TRY_QUICK.set(true);
        use Site::*;
        run(&[OuterA, OuterA, OuterA, OuterA, OuterA, OuterA], |i, frames, k| match i {
            0..4 => keep_now(k, words(100)),
            4 => {
                assert_eq!(QUICKED.get(), Some(words(100)), "the walk, repeated, answers quickly");
                ROOM.set(frames.len() - 1);
            }
            _ => assert!(QUICKED.get().is_none(), "the walk would not fit"),
        });
    })
    .join()
    .unwrap();
}
