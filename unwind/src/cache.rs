//! The global rule cache: return address -> compact rule, lock-free.
//!
//! Two tables, each slot a single `AtomicU64`, so a reader can never see half of an entry:
//! - `RULES` interns the distinct rules (a few hundred in a real process: frame sizes repeat).
//!   A slot is written once, 0 -> rule, and never changes; the slot index is the rule's id.
//! - `SLOTS` maps an address to a rule: one word `addr << 16 | value`. Key and value are one
//!   atomic word, so "a key with another address's rule" cannot be observed; a lost or
//!   overwritten insert only costs a re-parse. The 16-bit value is either a rule id (top bit
//!   clear) or, for the common small rules, the rule itself packed into 15 bits by the
//!   architecture's `Packing` (top bit set): one dependent load less per frame on the hot path.
//!
//! Rules are plain values, never pointers into a module: a stale entry is wrong, not unsafe.
//! [`invalidate`] clears `SLOTS` (after dlclose), `RULES` survive (they name no module).
//! Both live in .bss: untouched pages cost nothing.

use std::sync::atomic::{AtomicU64, Ordering};

const SLOT_BITS: u32 = 17;
const SLOT_COUNT: usize = 1 << SLOT_BITS;
const SLOT_MASK: usize = SLOT_COUNT - 1;
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

static SLOTS: [AtomicU64; SLOT_COUNT] = [const { AtomicU64::new(0) }; SLOT_COUNT];
static RULES: [AtomicU64; RULE_COUNT] = [const { AtomicU64::new(0) }; RULE_COUNT];
/// Bumped by every invalidate; an insert that raced with one retracts itself.
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn hash(x: u64, bits: u32) -> usize {
    // Fibonacci hashing: return addresses differ in their low bits, the multiply spreads them.
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// The cached rule for `key` (a return address), or `None`. Rules are never 0.
#[inline(always)]
pub(crate) fn lookup<P: Packing>(key: u64) -> Option<u64> {
    let h = hash(key, SLOT_BITS);
    for i in 0..PROBES {
        let w = SLOTS[(h + i) & SLOT_MASK].load(Ordering::Acquire);
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
    let h = hash(key, SLOT_BITS);
    let mut target = h & SLOT_MASK;
    for i in 0..PROBES {
        let idx = (h + i) & SLOT_MASK;
        let w = SLOTS[idx].load(Ordering::Relaxed);
        if w == 0 || w >> ID_BITS == key {
            target = idx;
            break;
        }
    }
    // Plain store: if another thread wrote the same slot meanwhile, one of the two entries is
    // lost and will be derived again. A full window evicts its first slot.
    SLOTS[target].store(word, Ordering::SeqCst);
    if GENERATION.load(Ordering::SeqCst) != gen {
        // Either the invalidate's sweep comes after our store and clears it, or we see its
        // bump here and withdraw our own entry (only if it is still ours).
        let _ = SLOTS[target].compare_exchange(word, 0, Ordering::SeqCst, Ordering::Relaxed);
    }
}

/// Drop every cached address. Allocation-free; takes about a hundred microseconds.
pub(crate) fn invalidate() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    for slot in SLOTS.iter() {
        // Load first: storing into a page never touched would commit it for nothing.
        if slot.load(Ordering::Relaxed) != 0 {
            slot.store(0, Ordering::SeqCst);
        }
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

    #[test]
    fn keys_that_do_not_fit_are_not_cached() {
        let _serial = SERIAL.lock().unwrap();
        insert::<Small>(MAX_KEY, 0x8000_0000_0000_0001, generation());
        assert_eq!(lookup::<Small>(MAX_KEY), None);
    }
}
