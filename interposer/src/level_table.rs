//! A global, lock-free table from 64-bit keys (hashes) to non-zero `u32` values that grows by
//! levels: the Python code ids and line numbers (module `python`).
//!
//! Why levels: a hashed table touches a page for nearly every entry, so a table sized for the
//! largest programs costs every host its full size in memory. A Python program calling a C
//! library has a few hundred code objects and lines that allocate; a 32 KiB first level holds
//! them, and a table is copied into its next level (8x larger) when it is half full. Readers
//! only ever look in the current level; what is written to the old one during a copy is lost,
//! which a cache re-computes and an intern table re-interns (a code sent twice under two ids:
//! correct, a few bytes more).
//!
//! A slot is a key and a value side by side (one cache line, one page). An intern table's
//! slot is claimed once (its key set, then its value) and never changes: a reader that sees the
//! key with value 0 treats the slot as absent. A cache's slot changes keys, and key and value
//! are two words: a reader could take one key's value for another's (the key may go A, B, A
//! between its loads: seen by this module's stress test). So a cache's slot is a seqlock: a
//! `put` makes its sequence odd, writes, and makes it even again; a read stands only if the
//! sequence was even and unchanged around it. A fork during a copy leaves the child's table at
//! the old level for good (`growing` stays set): fuller, still correct.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Linear-probe window: a key lives in one of this many slots after its hash.
const PROBES: usize = 8;

pub struct Slot {
    key: AtomicU64,
    value: AtomicU32,
    /// Odd while a `put` rewrites the slot, bumped by each (never moves in an intern table).
    seq: AtomicU32,
}

impl Slot {
    pub const fn empty() -> Slot {
        Slot { key: AtomicU64::new(0), value: AtomicU32::new(0), seq: AtomicU32::new(0) }
    }

    /// The key and value as they were together, or `None` while a `put` rewrites them.
    #[inline(always)]
    fn read(&self) -> Option<(u64, u32)> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 != 0 {
            return None;
        }
        let (k, v) = (self.key.load(Ordering::Relaxed), self.value.load(Ordering::Relaxed));
        // Orders the two loads above before the check below (the seqlock's reader side).
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some((k, v))
    }
}

/// A table of three levels (the caller's arrays, smallest first); see the module comment.
pub struct LevelTable {
    levels: [&'static [Slot]; 3],
    current: AtomicUsize,
    /// Keys inserted into the current level (approximately: racing inserts may count twice).
    filled: AtomicUsize,
    /// A thread is copying the current level into the next.
    growing: AtomicBool,
}

impl LevelTable {
    /// `levels`: smallest first, each length a power of two.
    pub const fn new(levels: [&'static [Slot]; 3]) -> LevelTable {
        LevelTable {
            levels,
            current: AtomicUsize::new(0),
            filled: AtomicUsize::new(0),
            growing: AtomicBool::new(false),
        }
    }

    /// The level in use. Acquire: pairs with the Release that published it after the copy.
    #[inline(always)]
    fn level(&self) -> &'static [Slot] {
        self.levels[self.current.load(Ordering::Acquire).min(self.levels.len() - 1)]
    }

    #[inline(always)]
    fn home(level: &[Slot], key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - level.len().trailing_zeros())) as usize
    }

    /// The value of `key`, if present.
    #[inline]
    pub fn get(&self, key: u64) -> Option<u32> {
        debug_assert!(key != 0);
        let level = self.level();
        let (h, mask) = (Self::home(level, key), level.len() - 1);
        for i in 0..PROBES {
            match level[(h + i) & mask].read() {
                Some((0, _)) => return None,
                Some((k, v)) if k == key => return (v != 0).then_some(v),
                // Another key, or one being written: look on (a miss at worst).
                _ => {}
            }
        }
        None
    }

    /// Caches `value` (non-zero) for `key`; may evict another key (a cache, not a map).
    pub fn put(&self, key: u64, value: u32) {
        debug_assert!(key != 0 && value != 0);
        let level = self.level();
        let (h, mask) = (Self::home(level, key), level.len() - 1);
        let mut target = (h, false);
        for i in 0..PROBES {
            let k = level[(h + i) & mask].key.load(Ordering::Relaxed);
            if k == 0 || k == key {
                target = ((h + i) & mask, k == 0);
                break;
            }
        }
        let s = &level[target.0];
        let seq = s.seq.load(Ordering::Relaxed);
        if seq & 1 != 0
            || s.seq.compare_exchange(seq, seq.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            // Another `put` is rewriting this slot: this one is dropped (a cache).
            return;
        }
        // Orders the odd sequence before the writes (the seqlock's writer side).
        fence(Ordering::Release);
        s.key.store(key, Ordering::Relaxed);
        s.value.store(value, Ordering::Relaxed);
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
        if target.1 {
            self.count_new(level);
        }
    }

    /// The value of `key`, or `make()`'s, stored for the next caller. Never evicts: with the
    /// window full, `make()` is called and its value not kept.
    pub fn intern(&self, key: u64, make: impl FnOnce() -> Option<u32>) -> Option<u32> {
        debug_assert!(key != 0);
        let level = self.level();
        let (h, mask) = (Self::home(level, key), level.len() - 1);
        for i in 0..PROBES {
            let s = &level[(h + i) & mask];
            let k = s.key.load(Ordering::Acquire);
            if k == key {
                let v = s.value.load(Ordering::Acquire);
                if v != 0 {
                    return Some(v);
                }
                // Being made by another thread: make our own (a duplicate, never a wrong one).
            } else if k == 0 && s.key.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                let v = make()?;
                s.value.store(v, Ordering::Release);
                self.count_new(level);
                return Some(v);
            }
        }
        make()
    }

    fn count_new(&self, level: &'static [Slot]) {
        if self.filled.fetch_add(1, Ordering::Relaxed) + 1 > level.len() / 2 {
            self.grow(level);
        }
    }

    /// Copies the half-full level `from` into the next one and makes that current. One thread
    /// does it; the others go on with `from` meanwhile.
    #[cold]
    #[inline(never)]
    fn grow(&self, from: &'static [Slot]) {
        let n = self.current.load(Ordering::Acquire);
        if n + 1 >= self.levels.len() || !std::ptr::eq(self.levels[n], from) {
            return;
        }
        if self.growing.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        let to = self.levels[n + 1];
        let mask = to.len() - 1;
        let mut copied = 0;
        for s in from {
            let Some((k, v)) = s.read().filter(|&(k, v)| k != 0 && v != 0) else { continue };
            let h = Self::home(to, k);
            // Nobody writes `to` before it is published: the first free slot is ours.
            if let Some(d) = (0..PROBES).map(|i| &to[(h + i) & mask]).find(|d| d.key.load(Ordering::Relaxed) == 0) {
                d.key.store(k, Ordering::Relaxed);
                d.value.store(v, Ordering::Relaxed);
                copied += 1;
            }
        }
        self.filled.store(copied, Ordering::Relaxed);
        self.current.store(n + 1, Ordering::Release);
        self.growing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: [Slot; 16] = [const { Slot::empty() }; 16];
    static B: [Slot; 128] = [const { Slot::empty() }; 128];
    static C: [Slot; 1024] = [const { Slot::empty() }; 1024];

    fn key(i: u64) -> u64 {
        0x1000 + i * 0x40
    }

    /// An intern table fills its levels in turn and keeps every key's value across the copies;
    /// a cache keeps what it was given the same way.
    #[test]
    fn entries_survive_each_level_change() {
        static T: LevelTable = LevelTable::new([&A, &B, &C]);
        let mut seen = Vec::new();
        for i in 0..200 {
            let v = T.intern(key(i), || Some(i as u32 + 1)).unwrap();
            assert_eq!(v, i as u32 + 1);
            seen.push(T.current.load(Ordering::Relaxed));
        }
        // 16 slots: the ninth key moves the table on; 128: the 65th key.
        assert_eq!(seen[7], 0);
        assert_eq!(seen[8], 1);
        assert_eq!(seen[64], 2);
        for i in 0..200 {
            assert_eq!(T.get(key(i)), Some(i as u32 + 1), "key {i}");
            // Interned before: `make` is not called again.
            assert_eq!(T.intern(key(i), || panic!("made twice")), Some(i as u32 + 1));
        }
        assert_eq!(T.get(key(1000)), None);
    }

    /// Threads interning and caching the same keys while the tables change levels under them:
    /// a value read for a key is always one made or put for that key (a value encodes its
    /// key), never another key's, and never 0.
    #[test]
    fn concurrent_use_across_level_changes_never_mixes_keys() {
        static IA: [Slot; 16] = [const { Slot::empty() }; 16];
        static IB: [Slot; 128] = [const { Slot::empty() }; 128];
        static IC: [Slot; 1024] = [const { Slot::empty() }; 1024];
        static INTERN: LevelTable = LevelTable::new([&IA, &IB, &IC]);
        // The cache's levels stay small: its slots change keys all the time.
        static CA: [Slot; 16] = [const { Slot::empty() }; 16];
        static CB: [Slot; 16] = [const { Slot::empty() }; 16];
        static CC: [Slot; 16] = [const { Slot::empty() }; 16];
        static CACHE: LevelTable = LevelTable::new([&CA, &CB, &CC]);
        // Values: the key's index in the low 16 bits, who made it above.
        std::thread::scope(|s| {
            for thread in 1..=4u32 {
                s.spawn(move || {
                    for round in 0..50u32 {
                        for i in 0..300u32 {
                            let k = key(u64::from(i));
                            let v = INTERN.intern(k, || Some(thread << 16 | i)).unwrap();
                            assert_eq!(v & 0xffff, i);
                            CACHE.put(k, (round + 1) << 16 | i);
                            if let Some(v) = CACHE.get(key(u64::from((i * 7) % 300))) {
                                assert_eq!(v & 0xffff, (i * 7) % 300);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(INTERN.current.load(Ordering::Relaxed), 2);
        assert_eq!(CACHE.current.load(Ordering::Relaxed), 2);
        for i in 0..300u32 {
            assert_eq!(INTERN.get(key(u64::from(i))).map(|v| v & 0xffff), Some(i));
            assert!(CACHE.get(key(u64::from(i))).is_none_or(|v| v & 0xffff == i));
        }
    }

    #[test]
    fn a_cache_replaces_values_and_grows() {
        static A2: [Slot; 16] = [const { Slot::empty() }; 16];
        static B2: [Slot; 128] = [const { Slot::empty() }; 128];
        static C2: [Slot; 1024] = [const { Slot::empty() }; 1024];
        static T: LevelTable = LevelTable::new([&A2, &B2, &C2]);
        for i in 0..100 {
            T.put(key(i), 7);
        }
        T.put(key(3), 9);
        assert_eq!(T.current.load(Ordering::Relaxed), 2);
        assert_eq!(T.get(key(3)), Some(9));
        assert!((0..100).filter(|&i| i != 3).all(|i| T.get(key(i)) == Some(7)));
    }
}
