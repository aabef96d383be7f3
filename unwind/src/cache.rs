//! The global rule cache: return address -> compact rule, lock-free.
//!
//! Two tables, each slot a single `AtomicU64`, so a reader can never see half of an entry:
//! - `RULES` interns the distinct rules (a few hundred in a real process: frame sizes repeat).
//!   A slot is written once, 0 -> rule, and never changes; the slot index is the rule's id.
//! - the address table maps an address to a rule: one word `addr << 16 | value`. Key and value
//!   are one atomic word, so "a key with another address's rule" cannot be observed; a lost or
//!   overwritten insert only costs a re-parse. The 16-bit value is either a rule id (top bit
//!   clear) or, for the common small rules, the rule itself packed into 15 bits by the
//!   architecture's `Packing` (top bit set): one dependent load less per frame on the hot path.
//!
//! The address table grows by levels (4 KiB, 32 KiB, 128 KiB, 1 MiB): a hashed table touches a
//! page for nearly every entry, and a Python program calling a C library has about a thousand
//! return addresses, so one big table would cost the host a megabyte of memory for 8 KiB of
//! entries. A C program's few dozen fit the first level's single page (a 32 KiB first level
//! made W4 write 8 pages for them). When a level is half full its entries are copied into the
//! next, which becomes the current one; an insert that lands in the old level meanwhile is
//! merely lost (re-parsed later). Lookups go through each thread's own cache first
//! (`memo::Near`), so the level load is off the per-frame path.
//!
//! Rules are plain values, never pointers into a module: a stale entry is wrong, not unsafe.
//! [`invalidate`] clears the address levels (after dlclose), `RULES` survive (they name no
//! module). All of it lives in .bss: untouched pages cost nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Linear-probe window: an address lives in one of this many slots after its hash.
const PROBES: usize = 8;

/// Bits of a slot word below the key.
const ID_BITS: u32 = 16;
const VALUE_MASK: u64 = (1 << ID_BITS) - 1;
/// Set in the value: the other 15 bits are a packed rule, not an id.
const INLINE: u64 = 1 << (ID_BITS - 1);
const RULE_COUNT: usize = 1 << (ID_BITS - 1);
const ID_MASK: u64 = (RULE_COUNT as u64) - 1;
const RULE_PROBES: usize = 64;

/// How an architecture squeezes its frequent rules into 15 bits.
pub(crate) trait Packing {
    /// The rule in at most 15 bits, if it fits.
    fn pack(rule: u64) -> Option<u64>;
    /// Inverse of `pack`.
    fn unpack(bits: u64) -> u64;
}

/// Addresses must fit in the 48 bits left above the id (user space on x86-64 is 47 bits).
const MAX_KEY: u64 = 1 << (64 - ID_BITS);

static L0: crate::pages::PageAligned<[AtomicU64; 1 << 9]> =
    crate::pages::PageAligned([const { AtomicU64::new(0) }; 1 << 9]);
static L1: [AtomicU64; 1 << 12] = [const { AtomicU64::new(0) }; 1 << 12];
static L2: [AtomicU64; 1 << 14] = [const { AtomicU64::new(0) }; 1 << 14];
static L3: [AtomicU64; 1 << 17] = [const { AtomicU64::new(0) }; 1 << 17];
/// The address table's levels, smallest first; each length a power of two. The first is one
/// page, and page-aligned.
static LEVELS: [&[AtomicU64]; 4] = [&L0.0, &L1, &L2, &L3];
/// The level in use: inserts go there, lookups look there. Only grows.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Keys inserted into the current level (approximately: racing inserts may count twice).
static FILLED: AtomicUsize = AtomicUsize::new(0);
/// A thread is copying the current level into the next (stays set in a child forked meanwhile:
/// its table keeps that level, fuller).
static GROWING: AtomicBool = AtomicBool::new(false);
static RULES: [AtomicU64; RULE_COUNT] = [const { AtomicU64::new(0) }; RULE_COUNT];
/// Bumped by every invalidate; an insert that raced with one retracts itself.
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn hash(x: u64, bits: u32) -> usize {
    // Fibonacci hashing: return addresses differ in their low bits, the multiply spreads them.
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// The level in use and its hash width.
#[inline(always)]
fn current() -> (&'static [AtomicU64], u32) {
    // Acquire: pairs with the Release that published the level after the copy into it.
    let level = LEVELS[CURRENT.load(Ordering::Acquire).min(LEVELS.len() - 1)];
    (level, level.len().trailing_zeros())
}

/// The cached rule for `key` (a return address), or `None`. Rules are never 0.
#[inline(always)]
pub(crate) fn lookup<P: Packing>(key: u64) -> Option<u64> {
    let (level, bits) = current();
    let mask = level.len() - 1;
    let h = hash(key, bits);
    for i in 0..PROBES {
        let w = level[(h + i) & mask].load(Ordering::Acquire);
        if w == 0 {
            return None;
        }
        if w >> ID_BITS == key {
            if w & INLINE != 0 {
                return Some(P::unpack(w & (INLINE - 1)));
            }
            // Acquire on the slot pairs with the Release that published it after the rule's
            // interning, so the rule word is visible here.
            return Some(RULES[(w & ID_MASK) as usize].load(Ordering::Relaxed));
        }
    }
    None
}

/// Read before deriving a rule; passed back to [`insert`].
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// The rule's id, interning it if new. `None` only if the rule table is full (never seen in
/// practice: it holds 65536 distinct rules).
fn intern(rule: u64) -> Option<u64> {
    debug_assert!(rule != 0);
    let h = hash(rule, ID_BITS);
    for i in 0..RULE_PROBES {
        let idx = (h + i) & (RULE_COUNT - 1);
        let slot = &RULES[idx];
        match slot.compare_exchange(0, rule, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(idx as u64),
            Err(cur) if cur == rule => return Some(idx as u64),
            Err(_) => {}
        }
    }
    None
}

/// Cache `rule` for `key`. `gen` is [`generation`] as read before the rule was derived: if an
/// invalidate ran since, the rule may describe an unloaded module, so it is withdrawn again.
pub(crate) fn insert<P: Packing>(key: u64, rule: u64, gen: u64) {
    if key == 0 || key >= MAX_KEY {
        return;
    }
    let value = match P::pack(rule) {
        Some(bits) => INLINE | (bits & (INLINE - 1)),
        None => match intern(rule) {
            Some(id) => id,
            None => return,
        },
    };
    debug_assert!(value <= VALUE_MASK);
    let word = key << ID_BITS | value;
    let (level, bits) = current();
    let (target, new) = place(level, bits, key);
    // Plain store: if another thread wrote the same slot meanwhile, one of the two entries is
    // lost and will be derived again.
    level[target].store(word, Ordering::SeqCst);
    if GENERATION.load(Ordering::SeqCst) != gen {
        // Either the invalidate's sweep comes after our store and clears it, or we see its
        // bump here and withdraw our own entry (only if it is still ours).
        let _ = level[target].compare_exchange(word, 0, Ordering::SeqCst, Ordering::Relaxed);
        return;
    }
    if new && FILLED.fetch_add(1, Ordering::Relaxed) + 1 > level.len() / 2 {
        grow(level);
    }
}

/// Where `key` goes in `level`: its slot, else the first free one in its window (`true`: a new
/// key), else the window's first slot (evicted).
#[inline(always)]
fn place(level: &[AtomicU64], bits: u32, key: u64) -> (usize, bool) {
    let mask = level.len() - 1;
    let h = hash(key, bits);
    for i in 0..PROBES {
        let idx = (h + i) & mask;
        let w = level[idx].load(Ordering::Relaxed);
        if w == 0 || w >> ID_BITS == key {
            return (idx, w == 0);
        }
    }
    (h & mask, false)
}

/// Copies the half-full level `from` into the next one and makes that current. One thread
/// does it; the others go on with `from` meanwhile.
#[cold]
#[inline(never)]
fn grow(from: &'static [AtomicU64]) {
    let n = CURRENT.load(Ordering::Acquire);
    if n + 1 >= LEVELS.len() || !std::ptr::eq(LEVELS[n], from) {
        return;
    }
    if GROWING.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return;
    }
    let gen = GENERATION.load(Ordering::SeqCst);
    let to = LEVELS[n + 1];
    let bits = to.len().trailing_zeros();
    let mut copied = 0;
    for slot in from {
        let w = slot.load(Ordering::Relaxed);
        if w == 0 {
            continue;
        }
        let (i, new) = place(to, bits, w >> ID_BITS);
        to[i].store(w, Ordering::SeqCst);
        copied += usize::from(new);
    }
    FILLED.store(copied, Ordering::Relaxed);
    // SeqCst: an invalidate that reads the old level here is one whose bump the check below
    // sees.
    CURRENT.store(n + 1, Ordering::SeqCst);
    if GENERATION.load(Ordering::SeqCst) != gen {
        // An invalidate ran during the copy: what was copied may be stale, and its sweep may
        // have passed the new level before the copy reached it. Sweep it again.
        clear(to);
    }
    GROWING.store(false, Ordering::Release);
}

fn clear(level: &[AtomicU64]) {
    for slot in level {
        // Load first: storing into a page never touched would commit it for nothing. SeqCst (a
        // plain load on x86-64): after the invalidate's bump, it sees every store that came
        // before an insert's or a copy's check of the generation that missed the bump.
        if slot.load(Ordering::SeqCst) != 0 {
            slot.store(0, Ordering::SeqCst);
        }
    }
}

/// Drop every cached address. Allocation-free; a few microseconds while the table is at its
/// first level, about a hundred at its last.
pub(crate) fn invalidate() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    // Levels past the current one are empty, but for a copy under way into the next: that
    // copy sees the bump and clears its level itself (`grow`).
    let current = CURRENT.load(Ordering::SeqCst).min(LEVELS.len() - 1);
    for level in &LEVELS[..=current] {
        clear(level);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Packs rules below 16 as themselves (inline), the rest go through the rule table.
    struct Small;
    impl Packing for Small {
        fn pack(rule: u64) -> Option<u64> {
            (rule < 16).then_some(rule)
        }
        fn unpack(bits: u64) -> u64 {
            bits
        }
    }

    /// The tests share the global tables and one of them invalidates: run them one at a time
    /// (also the tests of other modules that insert rules).
    pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn inline_and_interned_values() {
        let _serial = SERIAL.lock().unwrap();
        let gen = generation();
        insert::<Small>(0x5555_0000_1000, 7, gen);
        insert::<Small>(0x5555_0000_2000, 0x8000_0000_0000_0777, gen);
        assert_eq!(lookup::<Small>(0x5555_0000_1000), Some(7));
        assert_eq!(lookup::<Small>(0x5555_0000_2000), Some(0x8000_0000_0000_0777));
    }

    #[test]
    fn insert_lookup_invalidate() {
        let _serial = SERIAL.lock().unwrap();
        let key = 0x7f12_3456_789a;
        let gen = generation();
        insert::<Small>(key, 0x8000_0000_0000_0042, gen);
        assert_eq!(lookup::<Small>(key), Some(0x8000_0000_0000_0042));
        assert_eq!(lookup::<Small>(key + 1), None);
        // Same key, new rule: replaced in place.
        insert::<Small>(key, 0x8000_0000_0000_0043, gen);
        assert_eq!(lookup::<Small>(key), Some(0x8000_0000_0000_0043));
        invalidate();
        assert_eq!(lookup::<Small>(key), None);
        // An insert carrying a generation from before the invalidate withdraws itself.
        insert::<Small>(key, 0x8000_0000_0000_0044, gen);
        assert_eq!(lookup::<Small>(key), None);
        insert::<Small>(key, 0x8000_0000_0000_0044, generation());
        assert_eq!(lookup::<Small>(key), Some(0x8000_0000_0000_0044));
    }

    /// Filling the current level past half moves the table to the next level, with every key
    /// it held; an invalidate then clears that level too.
    #[test]
    fn the_table_grows_a_level_keeping_its_entries() {
        let _serial = SERIAL.lock().unwrap();
        let start = CURRENT.load(Ordering::Acquire);
        assert!(start + 1 < LEVELS.len(), "the tests start from a smaller level");
        // Evenly spaced keys spread evenly under Fibonacci hashing: no window fills up, so
        // nothing is evicted and every key must be found.
        let keys: Vec<u64> = (0..=LEVELS[start].len() as u64 / 2).map(|i| 0x20_0000_0000 + i * 0x40).collect();
        let gen = generation();
        for (i, &k) in keys.iter().enumerate() {
            insert::<Small>(k, i as u64 % 16, gen);
        }
        assert_eq!(CURRENT.load(Ordering::Acquire), start + 1);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(lookup::<Small>(k), Some(i as u64 % 16), "key {k:#x}");
        }
        invalidate();
        assert!(keys.iter().all(|&k| lookup::<Small>(k).is_none()));
        assert!(LEVELS.iter().all(|l| l.iter().all(|s| s.load(Ordering::Relaxed) == 0)));
    }

    #[test]
    fn keys_that_do_not_fit_are_not_cached() {
        let _serial = SERIAL.lock().unwrap();
        insert::<Small>(MAX_KEY, 0x8000_0000_0000_0001, generation());
        assert_eq!(lookup::<Small>(MAX_KEY), None);
    }
}
