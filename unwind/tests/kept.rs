//! What a caller keeps with a walk (`Kept`): given back to a capture that is the same walk (same
//! call site, same stack pointer, the same return addresses), never to one whose frames differ,
//! and never written into a later capture's record.

mod common;

use common::*;
use residue_unwind::{capture_from_kept, keep, kept_words, Entry, Kept, ThreadState, KEPT};
use std::cell::RefCell;
use std::hint::black_box;

thread_local! {
    static STATE: ThreadState = const { ThreadState::new() };
    /// What the latest capture of `hooked` saw: its frames and its `Kept`.
    static LAST: RefCell<(Vec<u64>, Kept)> = RefCell::new((Vec::new(), Kept::default()));
}

/// An interposer-style hook: a naked entry hands its stack pointer and rbp to the body, which
/// captures from the hook's caller on.
#[unsafe(naked)]
extern "C" fn hooked() {
    core::arch::naked_asm!("mov rdi, rsp", "mov rsi, rbp", "jmp {body}", body = sym hooked_body)
}

extern "C" fn hooked_body(sp: u64, fp: u64) {
    let mut out = [0u64; MAX];
    let (n, kept) = STATE.with(|s| capture_from_kept(s, &mut out, Entry { sp, fp }));
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
    black_box(inner_call())
}

#[inline(never)]
fn inner_call() -> (Vec<u64>, Kept) {
    hooked();
    black_box(LAST.with(|l| l.borrow().clone()))
}
