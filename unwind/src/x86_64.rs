//! x86-64: starting registers, the compact rule, and the walk.

use crate::memo::{Parts, Step, Walk, Walked, CAP, CFA_FROM_RBP};
use crate::{cache, eh};
use gimli::{CfaRule, RegisterRule, X86_64};
use std::sync::atomic::Ordering;

/// Where a walk starts: registers read inside [`crate::capture`], or a hooked function's entry
/// ([`crate::capture_from`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start {
    Here(Regs),
    Entry(crate::Entry),
}

/// Registers at a point inside [`crate::capture`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
}

impl Regs {
    /// Read rip, rsp and rbp. Always inlined into `capture`: the pc is then an address in
    /// `capture`, whose unwind info (force-unwind-tables, on by default) describes the rsp/rbp
    /// read by the same asm block, with no instruction in between that moves rsp.
    #[inline(always)]
    pub(crate) fn here() -> Regs {
        let (pc, sp, fp): (u64, u64, u64);
        // SAFETY: reads three registers into outputs; touches no memory and no flags, and the
        // stack is left alone (`nostack`).
        unsafe {
            std::arch::asm!(
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack, preserves_flags),
            );
        }
        Regs { pc, sp, fp }
    }
}

// The compact rule, one u64, never 0 (bit 63 always set):
//   bits  0..32  CFA offset (i32)
//   bit  32      CFA base: 0 = rsp, 1 = rbp
//   bits 33..35  kind: NORMAL, END (return address undefined: outermost frame), FALLBACK
//   bit  35      rbp saved (else unchanged)
//   bits 36..52  rbp's slot, offset from the CFA (i16)
// The return address is always at CFA-8 (anything else is FALLBACK).
const VALID: u64 = 1 << 63;
const CFA_RBP: u64 = 1 << 32;
const KIND_SHIFT: u32 = 33;
const KIND_MASK: u64 = 3 << KIND_SHIFT;
const KIND_NORMAL: u64 = 0;
const KIND_END: u64 = 1 << KIND_SHIFT;
const KIND_FALLBACK: u64 = 2 << KIND_SHIFT;
const RBP_SAVED: u64 = 1 << 35;
const RBP_SHIFT: u32 = 36;

const RULE_END: u64 = VALID | KIND_END;

/// The 15-bit form the cache stores inline, for NORMAL rules with 8-aligned offsets:
///   bit 0 CFA base rbp, bits 1..9 CFA offset / 8, bit 9 rbp saved, bits 10..15 -(rbp slot) / 8.
/// Covers frames up to 2 KiB with rbp saved in the top 256 bytes: nearly all compiled code.
pub(crate) struct X86Packing;

impl cache::Packing for X86Packing {
    fn pack(rule: u64) -> Option<u64> {
        if rule & KIND_MASK != KIND_NORMAL {
            return None;
        }
        let off = rule as u32 as i32;
        if off < 0 || off % 8 != 0 || off / 8 >= 256 {
            return None;
        }
        let mut bits = u64::from(rule & CFA_RBP != 0) | (u64::from(off as u32 / 8) << 1);
        if rule & RBP_SAVED != 0 {
            let k = -i32::from((rule >> RBP_SHIFT) as u16 as i16);
            if k < 0 || k % 8 != 0 || k / 8 >= 32 {
                return None;
            }
            bits |= 1 << 9 | (u64::from(k as u32 / 8) << 10);
        }
        Some(bits)
    }

    #[inline(always)]
    fn unpack(bits: u64) -> u64 {
        let base = if bits & 1 != 0 { CFA_RBP } else { 0 };
        let off = ((bits >> 1) & 0xff) * 8;
        let rbp = if bits & (1 << 9) != 0 {
            let k = (((bits >> 10) & 0x1f) as i64 * -8) as i16 as u16;
            RBP_SAVED | (u64::from(k) << RBP_SHIFT)
        } else {
            0
        };
        VALID | KIND_NORMAL | base | rbp | off
    }
}
const RULE_FALLBACK: u64 = VALID | KIND_FALLBACK;

/// Translate a CFI row to the compact rule, or `RULE_FALLBACK` when it is not expressible.
fn compact(row: &eh::Row, cie: &eh::Cie<'_>) -> u64 {
    // Signal trampolines (`__restore_rt`, 'S' augmentation) restore every register from a
    // ucontext and the interrupted pc is not a return address: libgcc's business.
    if cie.is_signal_trampoline() {
        return RULE_FALLBACK;
    }
    match row.register(cie.return_address_register()) {
        // DWARF 3's outermost-frame mark (`_start`, the child side of `clone3`).
        Some(RegisterRule::Undefined) => return RULE_END,
        Some(RegisterRule::Offset(-8)) => {}
        _ => return RULE_FALLBACK,
    }
    let (base, offset) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => (register, offset),
        CfaRule::Expression(_) => return RULE_FALLBACK,
    };
    let base_bit = match base {
        X86_64::RSP => 0,
        X86_64::RBP => CFA_RBP,
        _ => return RULE_FALLBACK,
    };
    let Ok(offset) = i32::try_from(offset) else { return RULE_FALLBACK };
    // The caller's rsp is the CFA by definition on x86-64; an explicit rule saying otherwise is
    // not something a compact rule can follow.
    match row.register(X86_64::RSP) {
        None | Some(RegisterRule::ValOffset(0)) => {}
        _ => return RULE_FALLBACK,
    }
    let rbp = match row.register(X86_64::RBP) {
        // libgcc treats an explicit undefined like same-value for every register but the
        // return address; do the same so both walks agree.
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => 0,
        Some(RegisterRule::Offset(k)) => match i16::try_from(k) {
            Ok(k) => RBP_SAVED | (u64::from(k as u16) << RBP_SHIFT),
            Err(_) => return RULE_FALLBACK,
        },
        _ => return RULE_FALLBACK,
    };
    VALID | KIND_NORMAL | base_bit | rbp | u64::from(offset as u32)
}

/// The rule for return address `key` (the rule in effect at `key - 1`, the call instruction),
/// from the cache or derived and cached. `None`: no module or FDE, so libgcc decides.
#[inline(always)]
fn rule_for(key: u64) -> Option<u64> {
    match cache::lookup::<X86Packing>(key) {
        Some(rule) => Some(rule),
        None => derive(key),
    }
}

/// Stack the slow paths may need below a capture's starting point: gimli's CFI evaluation
/// keeps several rows of rules on the stack, libgcc's walk a frame state per frame.
const SLOW_PATH_STACK: u64 = 32 * 1024;

/// The rule for `key` if the cache has it; never derived.
#[inline(always)]
fn cached(key: u64) -> Option<u64> {
    cache::lookup::<X86Packing>(key)
}

#[cold]
#[inline(never)]
fn derive(key: u64) -> Option<u64> {
    crate::MISSES.fetch_add(1, Ordering::Relaxed);
    let gen = cache::generation();
    let rule = eh::with_row(key.wrapping_sub(1), compact).ok()?;
    cache::insert::<X86Packing>(key, rule, gen);
    Some(rule)
}

/// Read a stack word at `addr` if it lies in `[lo, hi)` and is aligned.
#[inline(always)]
fn read(addr: u64, lo: u64, hi: u64) -> Option<u64> {
    if addr < lo || addr >= hi.wrapping_sub(7) || addr & 7 != 0 {
        return None;
    }
    // SAFETY: `[lo, hi)` is a part of the current thread's stack at or above the live stack
    // pointer of `capture` (mapped, readable), and the word is aligned and fully inside it.
    Some(unsafe { std::ptr::read_volatile(addr as *const u64) })
}

/// Walk from `regs` (taken inside `capture`) on the thread's stack `[lo, hi)`, writing return
/// addresses. `None` means "hand the whole capture to libgcc": a rule could not be made
/// compact, or this is not the thread's stack we know (a signal alternate stack, a fiber).
///
/// `prev` is this thread's previous walk, `next` receives this one (module `memo`). While the
/// walk is in a state `prev` passed through, `prev`'s next steps are taken as they are for as
/// long as the stack words they read still hold what they held ([`replay`]); elsewhere each
/// step looks its rule up, through the thread's `near` cache first. This runs on every
/// allocation: the loops are kept to few instructions a frame.
#[inline(always)]
pub(crate) fn walk(
    out: &mut [u64],
    start: Start,
    (lo, hi): (usize, usize),
    (near, prev, next): Parts<'_>,
) -> Option<Walked> {
    let (lo, hi) = (lo as u64, hi as u64);
    let (entry_sp, fp) = match start {
        Start::Here(regs) => (regs.sp, regs.fp),
        Start::Entry(e) => (e.sp, e.fp),
    };
    if entry_sp < lo || entry_sp >= hi.wrapping_sub(8) || entry_sp & 7 != 0 || out.is_empty() {
        return None;
    }
    // The slow paths (deriving a rule with gimli, libgcc's walk) take kilobytes of stack. A
    // thread with less than that left (created with a 16 KiB stack) gets the frames the cached
    // rules reach, and the walk ends at the first frame they do not cover, rather than a crash.
    let roomy = entry_sp - lo >= SLOW_PATH_STACK;
    // Nothing legitimate lies below the starting stack pointer: bound reads from there up.
    let lo = entry_sp;
    let mut fp = fp;
    let (mut sp, mut key, mut n) = match start {
        // Frame 0's pc is not a return address; key it as pc + 1 so the uniform "rule at
        // key - 1" lookup lands on the pc itself.
        Start::Here(regs) => (regs.sp, regs.pc + 1, 0),
        // At a function's first instruction the return address is at the stack pointer and
        // the caller's stack pointer is just above it: the state after that function's frame,
        // whose return address is the first one reported.
        Start::Entry(e) => {
            let ra = read(e.sp, lo, hi)?;
            if ra == 0 {
                return Some((0, false, false));
            }
            out[0] = ra;
            (e.sp + 8, ra, 1)
        }
    };
    let generation = cache::generation();
    // Rules may have changed since (dlclose): then nothing of an older walk is replayed.
    let usable = if prev.generation == generation { prev.len.min(CAP) } else { 0 };
    if let Start::Entry(_) = start {
        if let Some(n) = again(prev, usable, out, (entry_sp, key, fp)) {
            return Some((n, true, true));
        }
    }
    let steps = &prev.steps[..usable];
    next.generation = generation;
    next.kept_valid = false;
    next.words_valid = false;
    next.hit_made = false;
    // The walk that passes through the previous walk's starting state and replays the rest of
    // it is the same walk (`Walked`).
    let first = n;
    // The starting state is step `n` (step 0 of an entry walk is never matched: no return
    // address is 0).
    next.steps[0] = Step { cfa: entry_sp, ra: 0, fp, slot: 0 };
    next.steps[n] = Step { cfa: sp, ra: key, fp, slot: 0 };
    // `at`: the step of `prev` to compare with next; `synced`: the state before step `at`
    // equals ours, so that step's CFA and rbp slot are ours too.
    let mut at = 0;
    let mut synced = seek(prev, steps, &mut at, sp, key, fp);
    let mut ended = false;
    // Set where the walk ends by replaying the rest of `prev` at the same step numbers: from
    // which step, and rbp before it (see `Walked`).
    let mut in_place = None;
    while n < out.len() {
        let (cfa, fp_slot, from_rbp);
        if synced {
            // Replayed steps are recorded as far as the record reaches (past it, each step is
            // taken below, reading its words, as a step whose words changed).
            let until = n + CAP.saturating_sub(n + 1).min(out.len() - n);
            let m = replay(&steps[at..], &mut out[n..until]);
            if m > 0 {
                if at + m == usable && n + m < out.len() && n + 1 == at && prev.ended && usable == prev.len {
                    // The rest of `prev`, step for step: in the state it ended in.
                    in_place = Some((at, fp));
                    n += m;
                    ended = true;
                    break;
                }
                keep(&mut next.steps[n + 1..n + 1 + m], &steps[at..at + m], &mut fp);
                (sp, key) = (steps[at + m - 1].cfa, steps[at + m - 1].ra);
                at += m;
                n += m;
                if n == out.len() {
                    break;
                }
            }
            if at == usable {
                if prev.ended && usable == prev.len {
                    // In the state the previous walk ended in: same key, same END rule.
                    ended = true;
                    break;
                }
                // The previous walk went no further (its record is full, or it stopped
                // reading): look the rest up.
                synced = false;
                continue;
            }
            // Step `at` read a word that changed. Its CFA and rbp slot are still ours (the state
            // before it is); what it reads there is not, and from here on the walk is its own.
            let s = &steps[at];
            (cfa, fp_slot, from_rbp) = (s.cfa, s.fp_slot(), s.slot & CFA_FROM_RBP);
            at += 1;
        } else {
            let rule = if roomy { near.rule(key, generation, rule_for) } else { near.rule(key, generation, cached) };
            let Some(rule) = rule else {
                if !roomy {
                    break;
                }
                // No compact rule. Where no FDE describes the code at all (JIT code), libgcc
                // ends its walk at this frame, already reported: so does this one. Otherwise
                // libgcc walks the whole stack.
                if crate::libgcc::ends_at(key) {
                    // `ended` stays false, so the record does not say the walk ends here: a
                    // replay that comes this far asks again.
                    break;
                }
                return None;
            };
            match rule & KIND_MASK {
                KIND_NORMAL => {}
                KIND_END => {
                    ended = true;
                    break;
                }
                _ if !roomy => break,
                _ => return None,
            }
            from_rbp = if rule & CFA_RBP != 0 { CFA_FROM_RBP } else { 0 };
            let base = if from_rbp != 0 { fp } else { sp };
            cfa = base.wrapping_add(rule as u32 as i32 as i64 as u64);
            fp_slot = if rule & RBP_SAVED != 0 {
                cfa.wrapping_add((rule >> RBP_SHIFT) as u16 as i16 as i64 as u64)
            } else {
                0
            };
        }
        // Leaving the stack (or a corrupt frame) ends the walk: frames past it are unreadable.
        // So does a step that would read below the stack pointer of the frame it unwinds
        // (`sp`, at or above `lo`): what a frame saved lies above its own stack pointer, and
        // CFI that says otherwise (or an rbp that is no frame pointer) leads nowhere sound.
        // Replays rely on it: along a record, every step reads at or above the state before it.
        let Some(ra) = read(cfa.wrapping_sub(8), sp, hi) else { break };
        if ra == 0 {
            break;
        }
        if fp_slot != 0 {
            let Some(v) = read(fp_slot, sp, hi) else { break };
            fp = v;
        }
        out[n] = ra;
        n += 1;
        if n < CAP {
            next.steps[n] = Step { cfa, ra, fp, slot: fp_slot | from_rbp };
        }
        sp = cfa;
        key = ra;
        synced = seek(prev, steps, &mut at, cfa, ra, fp);
    }
    if let Some((from, fp)) = in_place {
        // Steps from `from` on are `prev`'s; before it, this walk's own go in.
        crate::copy_short(&mut prev.steps[..from], &next.steps[..from]);
        own_fp(&mut prev.steps[from..usable], fp);
        prev.words_valid = false;
        prev.hit_made = false;
        // Replayed from the step after its starting state: every return address is `prev`'s.
        let same = from == first + 1;
        prev.kept_valid &= same;
        return Some((n, true, same));
    }
    next.len = (n + 1).min(CAP);
    next.ended = ended && n < CAP;
    Some((n, false, false))
}

/// The commonest capture, taken without the general walk's bookkeeping: a walk from a hook's
/// entry (`entry_sp`, its return address `ra` already in `out[0]`, rbp `fp`) whose call site's
/// previous walk started in this state (rbp aside where it is dead: [`Walk::matches`]) and
/// ended there, every word it read unchanged. Then this walk is that walk, step for step, and
/// its record becomes this walk's as the general walk's in-place rewrite would make it: only
/// rbp changes, where it differs. Returns the frames written, or `None` for the general walk
/// (which reads the same words again: a miss costs the words read up to the first that
/// changed, about one step on a Python program's stacks).
#[inline(always)]
fn again(prev: &mut Walk, usable: usize, out: &mut [u64], (entry_sp, ra, fp): (u64, u64, u64)) -> Option<usize> {
    // The general walk's in-place condition: the whole record replayed, with room for one more.
    if !prev.ended || usable != prev.len || usable < 2 || usable > out.len() {
        return None;
    }
    if !starts_at(prev, (entry_sp, ra, fp)) {
        return None;
    }
    let rest = usable - 2;
    if prev.words_valid {
        if !words_hold(&prev.words[..prev.words_len]) {
            return None;
        }
        for (o, s) in out[1..1 + rest].iter_mut().zip(&prev.steps[2..usable]) {
            *o = s.ra;
        }
    } else {
        if replay(&prev.steps[2..usable], &mut out[1..1 + rest]) != rest {
            return None;
        }
        list_words(prev, usable);
    }
    own_start(prev, usable, fp);
    Some(1 + rest)
}

/// Whether record `w` is of a walk from a hook's entry at `sp` (return address `ra` there, rbp
/// `fp`): its starting state, then the hook's return (rbp aside where it is dead).
#[inline(always)]
fn starts_at(w: &Walk, (sp, ra, fp): (u64, u64, u64)) -> bool {
    let s0 = &w.steps[0];
    (s0.cfa ^ sp) | s0.ra | s0.slot | w.steps[1].slot == 0 && w.matches(1, sp + 8, ra, fp)
}

/// Makes record `w`, taken whole by a walk with rbp `fp`, that walk's: only the rbp of the steps
/// up to rbp's first reload changes, no listed word.
#[inline(always)]
fn own_start(w: &mut Walk, len: usize, fp: u64) {
    if w.steps[1].fp != fp {
        w.steps[0].fp = fp;
        w.steps[1].fp = fp;
        own_fp(&mut w.steps[2..len], fp);
    }
}

/// Whether a walk from a hook's entry at `sp` (return address `ra` there, rbp `fp`) is record
/// `w`'s whole walk again, as [`again`] finds it on a record whose word list is made and which
/// has words kept for it ([`crate::Kept`]), with at most `cap` frames: their count if so (the
/// frames are the record's, not written here). For the memo's fast path (`repeat_in`).
#[inline(always)]
pub(crate) fn repeats(w: &mut Walk, cap: usize, (sp, ra, fp): (u64, u64, u64)) -> Option<usize> {
    let len = w.len;
    if !(w.words_valid && w.kept_valid && w.ended) || len < 2 || len > cap || w.generation != cache::generation() {
        return None;
    }
    if !starts_at(w, (sp, ra, fp)) || !words_hold(&w.words[..w.words_len]) {
        return None;
    }
    own_start(w, len, fp);
    Some(len - 1)
}

/// Whether every listed stack word still holds its value ([`Walk::words`]): the words
/// [`replay`] would read (but for dead rbp slots), in its order, so that a word that changed
/// is found as early, usually the first or second on a Python program's stacks.
#[inline(always)]
fn words_hold(words: &[[u64; 2]]) -> bool {
    if words.len() > 8 {
        return many_words_hold(words);
    }
    words.iter().all(|w| differs(w) == 0)
}

/// A listed word's bits that changed.
#[inline(always)]
fn differs(&[at, want]: &[u64; 2]) -> u64 {
    // SAFETY: as in `replay`: a word the record's walk read, aligned, inside this thread's
    // stack at or above that walk's starting stack pointer, which is this walk's: the live part
    // of the stack, mapped. Every listed word is, so one read after a word that changed is as
    // safe to read.
    (unsafe { std::ptr::read_volatile(at as *const u64) }) ^ want
}

/// [`words_hold`] for a deep stack (a Python program's native stack lists some 30 words):
/// four at a time with one test for the four ([`fours_hold`]), out of line (inlined into the
/// walk it ran short of registers and spilled them).
#[inline(never)]
fn many_words_hold(words: &[[u64; 2]]) -> bool {
    let whole = words.len() / 4 * 4;
    fours_hold(&words[..whole]) && words[whole..].iter().all(|w| differs(w) == 0)
}

/// Whether every word of a list of whole fours still holds its value ([`words_hold`]), four at a
/// time with one test for the four: 5 instructions a word (20 for four: the loads, the xors,
/// one test), against 6 with the four tests LLVM makes of one without the asm statement below.
#[inline(always)]
pub(crate) fn fours_hold(words: &[[u64; 2]]) -> bool {
    for w in words.chunks_exact(4) {
        let mut changed = differs(&w[0]) | differs(&w[1]) | differs(&w[2]) | differs(&w[3]);
        // SAFETY: an empty asm statement that only claims to change `changed` in its register:
        // without it LLVM splits the one test back into four compares and branches.
        unsafe { std::arch::asm!("/* {0} */", inout(reg) changed, options(nomem, nostack, preserves_flags)) };
        if changed != 0 {
            return false;
        }
    }
    true
}

/// Lists the words a whole replay of `w`'s steps 2 to `usable` depends on ([`Walk::words`]):
/// every return address, and rbp's slot where a step reloads it and a later step computes its
/// CFA from that rbp before the next reload. A reloaded rbp that no step uses is dead, as in
/// [`Walk::matches`]: the walk's return addresses do not depend on it (code built without frame
/// pointers, most of a Python program's, saves rbp as any other register). `w` ended on an END
/// rule right after its last step (as `again` requires), which reads nothing.
///
/// Its recorded value may then differ from the stack's. That is as the rest of the memo reads
/// a record: [`Walk::matches`] passes over a dead rbp that differs, and [`replay`] compares every
/// slot it reads, so a general walk that replays this record stops at such a slot (and reads it
/// afresh) rather than carry the old value on.
#[cold]
#[inline(never)]
fn list_words(w: &mut Walk, usable: usize) {
    // Whether rbp as it is after each step is used, from the last step back.
    let mut live = [false; CAP];
    let mut used = !w.ended;
    for j in (2..usable).rev() {
        live[j] = used;
        let s = &w.steps[j];
        used = s.slot & CFA_FROM_RBP != 0 || (s.fp_slot() == 0 && used);
    }
    let mut n = 0;
    for (j, s) in w.steps[..usable].iter().enumerate().skip(2) {
        w.words[n] = [s.cfa.wrapping_sub(8), s.ra];
        n += 1;
        if s.fp_slot() != 0 && live[j] {
            w.words[n] = [s.fp_slot(), s.fp];
            n += 1;
        }
    }
    w.words_len = n;
    w.words_valid = true;
    w.hit_made = false;
}

/// Takes the leading `steps` (of this thread's previous walk, whose state before the first of
/// them equals the current one) whose stack words still hold what that walk read there: the
/// return address at CFA-8, and rbp's slot where the step reloads it (each at or above the
/// current stack pointer, as a plain walk's reads are: see the check in the loop). Equal state
/// and equal words make an equal step, so each is this walk's step too: its return address goes
/// to `out` (at most as many as `out` holds). Returns how many were taken; the first step whose
/// words differ is left to the caller, and so is recording the taken ones ([`keep`]).
///
/// This loop is most of a capture, so it only compares and writes the return address.
#[inline(never)]
fn replay(steps: &[Step], out: &mut [u64]) -> usize {
    let take = steps.len().min(out.len());
    let (steps, out) = (&steps[..take], &mut out[..take]);
    let mut i = 0;
    while i < take {
        let s = &steps[i];
        let ra_at = s.cfa.wrapping_sub(8);
        let slot = s.fp_slot();
        // A step that leaves rbp alone checks its return address twice, which keeps the loop
        // free of a branch on it.
        let (at2, want2) = if slot != 0 { (slot, s.fp) } else { (ra_at, s.ra) };
        // SAFETY: the old walk read these very words: aligned, inside this thread's stack,
        // which stays mapped while the thread runs (a walk never reads outside the thread's
        // own stack: `walk` bails out on any other).
        let (v1, v2) =
            unsafe { (std::ptr::read_volatile(ra_at as *const u64), std::ptr::read_volatile(at2 as *const u64)) };
        // Words below this walk's starting stack pointer are stale, but none is read here: a
        // recorded step reads at or above the stack pointer (CFA) of the state before it (a
        // walk reads nothing lower), so CFAs only grow along a record, and the first step's
        // state is this walk's own, at or above its start.
        if (v1 ^ s.ra) | (v2 ^ want2) != 0 {
            break;
        }
        out[i] = s.ra;
        i += 1;
    }
    i
}

/// Records replayed `steps` in `record` (as long), with the walk's own rbp up to rbp's first
/// reload (as [`own_fp`]), and leaves in `fp` rbp after the last of them. One pass, inline: a
/// block copy then a fix-up pass was a call to the C library's memmove per capture, for a few
/// hundred bytes (about 1% of a traced Python program's time).
#[inline(always)]
fn keep(record: &mut [Step], steps: &[Step], fp: &mut u64) {
    debug_assert_eq!(record.len(), steps.len());
    let mut own = true;
    let mut last = *fp;
    for (r, s) in record.iter_mut().zip(steps) {
        own &= s.fp_slot() == 0;
        last = if own { *fp } else { s.fp };
        *r = Step { fp: last, ..*s };
    }
    *fp = last;
}

/// Up to rbp's first reload, replayed steps get the walk's own rbp, `fp` (the old walk's may
/// differ where no step uses it); from there on they keep the old walk's.
#[inline(always)]
fn own_fp(record: &mut [Step], fp: u64) {
    for r in record.iter_mut() {
        if r.fp_slot() != 0 {
            break;
        }
        r.fp = fp;
    }
}

/// Whether the state (`cfa`, `ra`, `fp`), after a step or the starting one, is one the previous
/// walk passed through; `at` moves past that step if so. CFAs grow outwards, so a cursor that
/// only moves out finds it in one pass over the walk.
#[inline(always)]
fn seek(w: &Walk, steps: &[Step], at: &mut usize, cfa: u64, ra: u64, fp: u64) -> bool {
    while *at < steps.len() && steps[*at].cfa < cfa {
        *at += 1;
    }
    if *at < steps.len() && w.matches(*at, cfa, ra, fp) {
        *at += 1;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memo::{Near, EMPTY_WALK};

    /// Rules for made-up return addresses: `k0` (frame 0) CFA = rsp + 16; `k1` CFA = rbp + 16,
    /// rbp saved at CFA - 16; each of `ends` the outermost frame.
    fn insert_rules(k0: u64, k1: u64, ends: &[u64]) {
        let gen = cache::generation();
        cache::insert::<X86Packing>(k0, VALID | 16, gen);
        cache::insert::<X86Packing>(
            k1,
            VALID | CFA_RBP | 16 | RBP_SAVED | (u64::from((-16i16) as u16) << RBP_SHIFT),
            gen,
        );
        for &k in ends {
            cache::insert::<X86Packing>(k, RULE_END, gen);
        }
    }

    /// A buffer of 64 words standing for a stack: the buffer, word `i`'s address, its bounds.
    fn made_up_stack() -> (Vec<u64>, impl Fn(usize) -> u64, (usize, usize)) {
        let stack = vec![0u64; 64];
        let base = stack.as_ptr() as u64;
        (stack, move |i: usize| base + 8 * i as u64, (base as usize, (base + 8 * 64) as usize))
    }

    /// A made-up stack in a buffer, with made-up return addresses whose rules are put in the
    /// cache: walked once to fill a memo, then again in states that equal the memo's except
    /// in rbp, which the next rule uses. The replay must not be taken there.
    #[test]
    fn a_different_rbp_that_is_used_later_breaks_the_replay() {
        let _serial = cache::tests::SERIAL.lock().unwrap();
        // Keys far from any real code (below MAX_KEY, never a mapped text address here).
        let (k0, k1, k2, k3) = (0x10_0000_0011u64, 0x10_0000_0021, 0x10_0000_0031, 0x10_0000_0041);
        insert_rules(k0, k1, &[k2, k3]);
        let (mut stack, at, bounds) = made_up_stack();
        // Frame 0 at word 0: its CFA is word 2, return address (k1) at word 1.
        stack[1] = k1;
        // Two frames for k1, reached through different rbp values: at words 8 and 16.
        stack[9] = k2; // return address at CFA - 8 = rbp + 8
        stack[8] = 0x1111; // saved rbp at CFA - 16 = rbp
        stack[17] = k3;
        stack[16] = 0x2222;
        let mut memo = TestMemo::new();
        let regs = |fp: u64| Start::Here(Regs { pc: k0 - 1, sp: at(0), fp });
        assert_eq!(memo.walk(regs(at(8)), bounds), [k1, k2]);
        // Same pc, sp and return address after frame 0; rbp differs, and k1's rule uses it.
        assert_eq!(memo.walk(regs(at(16)), bounds), [k1, k3]);
        // And back: the first walk's state again is replayed to the same result.
        assert_eq!(memo.walk(regs(at(8)), bounds), [k1, k2]);
        assert_eq!(memo.in_place, 0);
        // Once more: the previous walk replayed to its end at the same step numbers, its
        // record kept in place; the record still tells the two rbp values apart.
        assert_eq!(memo.walk(regs(at(8)), bounds), [k1, k2]);
        assert_eq!(memo.in_place, 1);
        assert_eq!(memo.walk(regs(at(16)), bounds), [k1, k3]);
        assert_eq!(memo.walk(regs(at(16)), bounds), [k1, k3]);
        assert_eq!(memo.in_place, 2);
        assert_eq!(memo.walk(regs(at(8)), bounds), [k1, k2]);
    }

    /// A walk from a hook's entry in the very state its call site's previous walk started in is
    /// that walk, taken whole ([`again`]), for as long as the words it read hold; with another
    /// rbp, or after a word changed, it is left to the general walk, which reads the new word.
    #[test]
    fn a_walk_from_the_same_entry_is_taken_whole_while_its_words_hold() {
        let _serial = cache::tests::SERIAL.lock().unwrap();
        let (k0, k1, k2, k3) = (0x10_0000_0051u64, 0x10_0000_0061, 0x10_0000_0071, 0x10_0000_0081);
        insert_rules(k0, k1, &[k2, k3]);
        let (mut stack, at, bounds) = made_up_stack();
        // The hook's return address (k1) at its entry's stack pointer, word 0; k1's frame, with
        // rbp at word 8, saved rbp there and its return address (k2, the outermost) above it.
        stack[0] = k1;
        stack[8] = 0x1111;
        stack[9] = k2;
        let entry = |fp: u64| Start::Entry(crate::Entry { sp: at(0), fp });
        let whole = |memo: &mut TestMemo, fp: u64| memo.whole(at(0), k1, fp);
        let mut memo = TestMemo::new();
        assert_eq!(memo.walk(entry(at(8)), bounds), [k1, k2]);
        assert_eq!(whole(&mut memo, at(8)), Some(vec![k1, k2]));
        assert_eq!(memo.walk(entry(at(8)), bounds), [k1, k2]);
        assert_eq!(memo.in_place, 1);
        // Another rbp: whether the walk uses it is the general walk's to tell.
        assert_eq!(whole(&mut memo, at(16)), None);
        // A word the walk read changed: the general walk reads the new return address.
        stack[9] = k3;
        assert_eq!(whole(&mut memo, at(8)), None);
        assert_eq!(memo.walk(entry(at(8)), bounds), [k1, k3]);
        assert_eq!(whole(&mut memo, at(8)), Some(vec![k1, k3]));
    }

    /// Where the hook's caller's rbp is dead (the next frame reloads it before anything uses
    /// it), a walk from the same entry with another rbp is the same walk: taken whole, and the
    /// record takes its rbp, as the general walk's in-place rewrite does.
    #[test]
    fn a_walk_from_the_same_entry_with_a_dead_rbp_is_taken_whole() {
        let _serial = cache::tests::SERIAL.lock().unwrap();
        let (k0, k1, k2, k4) = (0x10_0000_0091u64, 0x10_0000_00a1, 0x10_0000_00b1, 0x10_0000_00c1);
        insert_rules(k0, k1, &[k2]);
        // CFA = rsp + 16, rbp reloaded from CFA - 16: rbp is dead before this frame.
        cache::insert::<X86Packing>(
            k4,
            VALID | 16 | RBP_SAVED | (u64::from((-16i16) as u16) << RBP_SHIFT),
            cache::generation(),
        );
        let (mut stack, at, bounds) = made_up_stack();
        stack[0] = k4;
        stack[1] = 0x1111;
        stack[2] = k2;
        let entry = |fp: u64| Start::Entry(crate::Entry { sp: at(0), fp });
        let mut memo = TestMemo::new();
        assert_eq!(memo.walk(entry(0x5555), bounds), [k4, k2]);
        let prev = &mut memo.walks[memo.last];
        let mut out = [0u64; 16];
        out[0] = k4;
        assert_eq!(again(prev, prev.len, &mut out, (at(0), k4, 0x7777)), Some(2));
        assert_eq!(out[..2], [k4, k2]);
        assert_eq!([prev.steps[0].fp, prev.steps[1].fp], [0x7777, 0x7777]);
        // After the reload, the record keeps the reloaded rbp.
        assert_eq!(prev.steps[2].fp, 0x1111);
        // A capture through `walk` takes it the same way: in place, the same frames.
        assert_eq!(memo.walk(entry(0x9999), bounds), [k4, k2]);
        assert_eq!(memo.in_place, 1);
    }

    /// A walk taken whole checks the words its frames depend on: every return address, and a
    /// reloaded rbp only where a later frame computes its CFA from it. Frames that reload rbp
    /// and never use it (code without frame pointers) may find other values in those slots at
    /// every capture: the walk is still the same. A used rbp that changed is not.
    #[test]
    fn a_walk_taken_whole_checks_a_reloaded_rbp_only_where_it_is_used() {
        let _serial = cache::tests::SERIAL.lock().unwrap();
        let (k0, k1, k2, k3) = (0x10_0000_0141u64, 0x10_0000_0151, 0x10_0000_0161, 0x10_0000_0171);
        let (k4, k5) = (0x10_0000_0181u64, 0x10_0000_0191);
        insert_rules(k0, k1, &[k2, k3]);
        // k4 and k5: CFA = rsp + 16, rbp reloaded from CFA - 16 (no frame pointer).
        for k in [k4, k5] {
            cache::insert::<X86Packing>(
                k,
                VALID | 16 | RBP_SAVED | (u64::from((-16i16) as u16) << RBP_SHIFT),
                cache::generation(),
            );
        }
        let entry = |at: &dyn Fn(usize) -> u64| Start::Entry(crate::Entry { sp: at(0), fp: 0x5555 });
        let whole = |memo: &mut TestMemo, at: &dyn Fn(usize) -> u64, ra: u64| memo.whole(at(0), ra, 0x5555);

        // Dead: k4's frame reloads rbp (word 1), k5's reloads it again (word 3) before any use,
        // and the walk ends after k5's frame (k2).
        let (mut stack, at, bounds) = made_up_stack();
        stack[0] = k4;
        (stack[1], stack[2]) = (0x1111, k5);
        (stack[3], stack[4]) = (0x2222, k2);
        let mut memo = TestMemo::new();
        assert_eq!(memo.walk(entry(&at), bounds), [k4, k5, k2]);
        // The first whole walk replays the record and lists its words; the next checks them.
        assert_eq!(whole(&mut memo, &at, k4), Some(vec![k4, k5, k2]));
        (stack[1], stack[3]) = (0x3333, 0x4444);
        assert_eq!(whole(&mut memo, &at, k4), Some(vec![k4, k5, k2]));
        // A return address that changed is checked.
        stack[4] = k3;
        assert_eq!(whole(&mut memo, &at, k4), None);
        assert_eq!(memo.walk(entry(&at), bounds), [k4, k5, k3]);

        // Used: k4's frame reloads rbp (word 1), and k1's frame computes its CFA from it.
        let (mut stack, at, bounds) = made_up_stack();
        stack[0] = k4;
        (stack[1], stack[2]) = (at(8), k1);
        (stack[8], stack[9]) = (0x1111, k2);
        (stack[16], stack[17]) = (0x2222, k3);
        let mut memo = TestMemo::new();
        assert_eq!(memo.walk(entry(&at), bounds), [k4, k1, k2]);
        assert_eq!(whole(&mut memo, &at, k4), Some(vec![k4, k1, k2]));
        assert_eq!(whole(&mut memo, &at, k4), Some(vec![k4, k1, k2]));
        // k1's frame is elsewhere now: not the same walk.
        stack[1] = at(16);
        assert_eq!(whole(&mut memo, &at, k4), None);
        assert_eq!(memo.walk(entry(&at), bounds), [k4, k1, k3]);
        // k1's own reload is dead (the walk ends after it): its slot is not checked.
        assert_eq!(whole(&mut memo, &at, k4), Some(vec![k4, k1, k3]));
        stack[16] = 0x6666;
        assert_eq!(whole(&mut memo, &at, k4), Some(vec![k4, k1, k3]));
    }

    /// A thread's memo as module `memo` keeps it: the newest walk and room for the next, whose
    /// roles swap unless a walk rewrote the newest in place.
    struct TestMemo {
        near: Near,
        walks: [Walk; 2],
        last: usize,
        in_place: usize,
    }

    impl TestMemo {
        fn new() -> TestMemo {
            TestMemo { near: Near::new(), walks: [EMPTY_WALK, EMPTY_WALK], last: 0, in_place: 0 }
        }

        fn walk(&mut self, start: Start, bounds: (usize, usize)) -> Vec<u64> {
            let mut out = [0u64; 16];
            let [a, b] = &mut self.walks;
            let (prev, next) = if self.last == 0 { (a, b) } else { (b, a) };
            let (n, in_place, _) = walk(&mut out, start, bounds, (&mut self.near, prev, next)).expect("compact rules");
            if in_place {
                self.in_place += 1;
            } else {
                self.last ^= 1;
            }
            out[..n].to_vec()
        }

        /// [`again`] on the newest record: a walk from a hook's entry at `sp`, whose return
        /// address `ra` is at `sp`, with rbp `fp`; its frames, or `None` for the general walk.
        fn whole(&mut self, sp: u64, ra: u64, fp: u64) -> Option<Vec<u64>> {
            let prev = &mut self.walks[self.last];
            let mut out = [0u64; 16];
            out[0] = ra;
            again(prev, prev.len, &mut out, (sp, ra, fp)).map(|n| out[..n].to_vec())
        }
    }

    /// A frame whose rule would read below that frame's own stack pointer (its rbp is no frame
    /// pointer) ends the walk. Replays depend on it: no record holds a step reading below the
    /// state it starts from, so a replay never reads below its own walk's stack pointer, where
    /// the words are stale (it does not check).
    #[test]
    fn a_step_that_would_read_below_its_frame_ends_the_walk() {
        let _serial = cache::tests::SERIAL.lock().unwrap();
        let (k0, k1, k2) = (0x10_0000_0111u64, 0x10_0000_0121, 0x10_0000_0131);
        insert_rules(k0, k1, &[k2]);
        let (mut stack, at, bounds) = made_up_stack();
        // Frame 0's return address (k1) at word 1: after it the stack pointer is word 2.
        stack[1] = k1;
        // With rbp at word 2, k1's frame reads words 2 and 3: at or above it.
        stack[2] = 0x3333;
        stack[3] = k2;
        let walk_from = |fp: u64| TestMemo::new().walk(Start::Here(Regs { pc: k0 - 1, sp: at(0), fp }), bounds);
        assert_eq!(walk_from(at(2)), [k1, k2]);
        // With rbp at word 0, k1's frame would read words 1 and 0, below its stack pointer
        // (inside the buffer: bounding reads by the walk's start alone gives [k1, k1]).
        assert_eq!(walk_from(at(0)), [k1]);
    }

    #[test]
    fn rule_encoding_round_trips_negative_offsets() {
        let rule = VALID | CFA_RBP | RBP_SAVED | (u64::from((-16i16) as u16) << RBP_SHIFT) | u64::from(16u32);
        assert_eq!(rule & KIND_MASK, KIND_NORMAL);
        assert_eq!((rule >> RBP_SHIFT) as u16 as i16, -16);
        assert_eq!(rule as u32 as i32, 16);
        assert_ne!(RULE_END & KIND_MASK, KIND_NORMAL);
        assert_ne!(RULE_FALLBACK & KIND_MASK, RULE_END & KIND_MASK);
    }

    #[test]
    fn packing_round_trips_or_declines() {
        use cache::Packing;
        let rbp_at = |k: i16| RBP_SAVED | (u64::from(k as u16) << RBP_SHIFT);
        let fits = [
            VALID | 8,
            VALID | 2040,
            VALID | CFA_RBP | 16 | rbp_at(-16),
            VALID | 56 | rbp_at(-248),
            VALID | CFA_RBP | 16 | rbp_at(0),
        ];
        for rule in fits {
            let bits = X86Packing::pack(rule).unwrap_or_else(|| panic!("{rule:#x} should pack"));
            assert!(bits < 1 << 15);
            assert_eq!(X86Packing::unpack(bits), rule, "{rule:#x}");
        }
        let declines = [
            VALID | 2048,
            VALID | 12,
            VALID | u64::from((-8i32) as u32),
            VALID | 16 | rbp_at(-256),
            VALID | 16 | rbp_at(-12),
            VALID | 16 | rbp_at(8),
            RULE_END,
            RULE_FALLBACK,
        ];
        for rule in declines {
            assert_eq!(X86Packing::pack(rule), None, "{rule:#x}");
        }
    }
}
