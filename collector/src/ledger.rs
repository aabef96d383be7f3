//! The ledger: which resources each process image holds, built from decoded records.
//!
//! Batches from different threads arrive out of sequence order, and heap addresses are reused
//! across threads (A frees X, B mallocs X). The rule that makes that safe (ARCHITECTURE.md):
//! per image and per `(kind, id)`, the event with the highest sequence number wins. We keep
//! exactly that latest event per id, so memory grows with the number of live ids and the
//! number of distinct stacks, never with the number of events.
//!
//! A release leaves a tombstone while it could still be overtaken: dropping it too early would
//! let a late acquire of an earlier cycle (seq below the release) resurrect the id as a false
//! leak. Each image tracks the highest seq below which every seq has arrived ([`SeqWindow`]);
//! a release at or below it can no longer be overtaken, so its tombstone is dropped (at once,
//! when batches arrive in order, which is the common case; by a sweep otherwise). If a seq
//! never arrives, that mark stops and tombstones stay, as before: never a wrong answer.

use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use residue_protocol::{Api, Kind, Record, Segment};

use crate::resolved::{self, Journal, Tuple, Visible};

/// A multiplicative hasher for integer keys: the ledger hashes millions of them; SipHash's DoS
/// resistance buys nothing here (the input comes from the target we launched) and costs
/// several times the time. The 128-bit product is folded so that the high bits (hashbrown's
/// tag) and the low bits (its bucket index) both depend on every bit of the key: heap
/// addresses are 16-byte aligned, so a plain `key * K` would leave the low bits zero.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    #[inline(always)]
    fn add(&mut self, i: u64) {
        let p = u128::from(self.0 ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for FxHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }
    #[inline(always)]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline(always)]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline(always)]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline(always)]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The latest event seen for one `(kind, id)`. 24 bytes: the ledger holds one per live
/// resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// Bytes for heap blocks; 0 where size means nothing.
    pub size: u64,
    /// Stack id of the acquire (meaningless for a released entry).
    pub stack: u32,
    /// The acquiring API for a live entry, the releasing one for a released entry.
    pub api: Api,
    pub live: bool,
    /// For a released entry: an acquire of this id was seen (if not, the resource was acquired
    /// before tracking started or by a path the interposer does not hook).
    pub origin_seen: bool,
}

/// Entries by `(kind, id)`. Heap blocks, nearly every entry, live in a [`HeapTable`] keyed by
/// address alone; the other kinds share a map.
#[derive(Debug, Default)]
pub struct Entries {
    heap: HeapTable,
    other: FxMap<(Kind, u64), Entry>,
}

/// One slot of a [`HeapTable`]: 32 bytes, two to a cache line.
#[derive(Clone, Copy, Debug)]
struct HeapSlot {
    /// 0: empty (address 0 is kept apart, in `HeapTable::zero`).
    key: u64,
    e: Entry,
}

const EMPTY: HeapSlot =
    HeapSlot { key: 0, e: Entry { seq: 0, size: 0, stack: 0, api: Api(0), live: false, origin_seen: false } };

/// Heap entries by address: open addressing with linear probing and backward-shift deletion
/// (no tombstones of its own). Every event costs a lookup at a random place in a table of
/// megabytes, i.e. a cache miss; unlike a std map, this one can tell where a key will be looked
/// up, so the stream reader prefetches the slots of the next events ([`Ledger::prefetch`]) and
/// their misses overlap instead of queueing.
#[derive(Debug, Default)]
pub struct HeapTable {
    slots: Vec<HeapSlot>,
    len: usize,
    /// 64 - log2(capacity): the slot is the top bits of the key's hash.
    shift: u32,
    zero: Option<Entry>,
}

impl HeapTable {
    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        let p = u128::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        (((p as u64) ^ ((p >> 64) as u64)) >> self.shift) as usize
    }

    fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    fn get(&self, key: u64) -> Option<&Entry> {
        if key == 0 {
            return self.zero.as_ref();
        }
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i];
            if s.key == key {
                return Some(&s.e);
            }
            if s.key == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading the slot `key` would be looked up at.
    #[inline(always)]
    fn prefetch(&self, key: u64) {
        if let Some(s) = self.slots.get(self.home(key) & self.slots.len().wrapping_sub(1)) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint: it never faults and has no visible effect; SSE is
            // part of the x86-64 baseline. The pointer is in bounds anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    (s as *const HeapSlot).cast::<i8>(),
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = s;
        }
    }

    /// The slot holding `key` (`Ok`), or the empty slot where it would go (`Err`), after making
    /// room for one more.
    #[inline(always)]
    fn find(&mut self, key: u64) -> Result<usize, usize> {
        if (self.len + 1) * 2 > self.slots.len() {
            // Doubles the capacity.
            self.rebuild(self.len + 1);
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Ok(i);
            }
            if k == 0 {
                return Err(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Empties slot `i`, shifting back the entries that probed past it.
    fn remove_at(&mut self, i: usize) {
        let mask = self.slots.len() - 1;
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let k = self.slots[j].key;
            if k == 0 {
                break;
            }
            // The entry at j may fill the hole if the hole lies between its home and j.
            let home = self.home(k);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole].key = 0;
        self.len -= 1;
    }

    /// Re-lays the table with room for `room` entries at most half full. Half, not more: every
    /// acquisition is a search for an absent key, which runs to the end of its cluster, and
    /// linear probing's clusters grow fast past half (2.5 slots on average at a half, 8.5 at
    /// three quarters). The table was at most three quarters full and grew to twice its
    /// entries, which took W1's 200,000 live blocks to a million slots (32 MiB, half of the
    /// collector's memory) instead of half a million.
    fn rebuild(&mut self, room: usize) {
        let cap = (room * 2).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; cap]);
        self.shift = 64 - cap.trailing_zeros();
        let mask = cap - 1;
        for s in old.into_iter().filter(|s| s.key != 0) {
            let mut i = self.home(s.key);
            while self.slots[i].key != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.slots.iter().filter(|s| s.key != 0).map(|s| (s.key, &s.e)).chain(self.zero.iter().map(|e| (0, e)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        for s in &mut self.slots {
            if s.key != 0 && !keep(&s.e) {
                s.key = 0;
                self.len -= 1;
            }
        }
        if self.zero.as_ref().is_some_and(|e| !keep(e)) {
            self.zero = None;
        }
        // Emptied slots broke probe runs: lay the survivors out again.
        self.rebuild(self.len);
    }

    fn shrink_to_fit(&mut self) {
        self.rebuild(self.len);
    }
}

impl Entries {
    pub fn get(&self, key: &(Kind, u64)) -> Option<&Entry> {
        if key.0 == Kind::HEAP {
            self.heap.get(key.1)
        } else {
            self.other.get(key)
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len() + self.other.len()
    }

    /// Used by tests (and `len` needs a twin for clippy).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = ((Kind, u64), &Entry)> {
        self.heap.iter().map(|(id, e)| ((Kind::HEAP, id), e)).chain(self.other.iter().map(|(&k, e)| (k, e)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.heap.retain(&mut keep);
        self.other.retain(|_, e| keep(e));
    }
}

impl std::ops::Index<&(Kind, u64)> for Entries {
    type Output = Entry;
    fn index(&self, key: &(Kind, u64)) -> &Entry {
        self.get(key).expect("no entry for this (kind, id)")
    }
}

/// Which seqs of an image have arrived: `done` (every seq in `1..=done` has) and a bitmap of
/// the ones above it, starting at seq `base`. Seqs are numbered densely by the interposer, so
/// `done` follows the stream closely and the bitmap spans only the batches in flight.
#[derive(Debug, Default, Clone)]
pub struct SeqWindow {
    done: u64,
    base: u64,
    words: VecDeque<u64>,
    /// A seq went missing for longer than the bitmap may grow: `done` stays where it is for
    /// good (tombstones are then kept, which is always correct).
    stalled: bool,
}

/// Bitmap limit: 2^24 seqs (2 MiB), seconds of events at full speed.
const MAX_WINDOW_WORDS: u64 = 1 << 18;

impl SeqWindow {
    #[inline]
    fn mark(&mut self, s: u64) {
        if s == self.done.wrapping_add(1) && self.words.is_empty() {
            self.done = s;
            return;
        }
        if s <= self.done || self.stalled {
            return;
        }
        if self.words.is_empty() {
            self.base = self.done + 1;
        }
        let idx = s - self.base;
        if idx / 64 >= MAX_WINDOW_WORDS {
            self.stall();
            return;
        }
        let w = (idx / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << (idx % 64);
        // Invariant while words is non-empty: base <= done + 1 < base + 64.
        while let Some(&front) = self.words.front() {
            let off = self.done + 1 - self.base;
            let run = u64::from((front >> off).trailing_ones()).min(64 - off);
            self.done += run;
            if off + run < 64 {
                break;
            }
            self.words.pop_front();
            self.base += 64;
        }
    }

    fn stall(&mut self) {
        self.stalled = true;
        self.words = VecDeque::new();
    }
}

/// Seqs that arrived while an image was tentative (after an `Exec`): whose seq space they are
/// in is known only later, so they are replayed into the right [`SeqWindow`] then.
#[derive(Debug, Default)]
pub struct Pending {
    seqs: Vec<u64>,
    overflowed: bool,
}

/// Seqs kept for replay; beyond that, the image they end up in stops dropping tombstones.
const MAX_PENDING_SEQS: usize = 1 << 16;

impl Pending {
    fn replay_into(self, w: &mut SeqWindow) {
        if self.overflowed {
            w.stall();
        }
        for s in self.seqs {
            w.mark(s);
        }
    }
}

/// The distinct stacks of an image, compact: each stack is a run of varint indices into a
/// table of distinct frame values (thousands of distinct values make up millions of frames),
/// about 2 bytes a frame instead of 8. A stack is expanded only when the report asks for it,
/// and only the stacks of unreleased resources ever are.
#[derive(Debug, Default)]
pub struct StackStore {
    values: Vec<u64>,
    value_index: FxMap<u64, u32>,
    bytes: Vec<u8>,
    by_id: FxMap<u32, StoredStack>,
}

#[derive(Debug)]
struct StoredStack {
    at: usize,
    expanded: OnceCell<Box<[u64]>>,
}

/// `own` followed by the outermost `shared` frames of `base` (all of it if it has fewer).
fn joined(mut own: Vec<u64>, base: &[u64], shared: usize) -> Vec<u64> {
    own.extend_from_slice(&base[base.len() - shared.min(base.len())..]);
    own
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint this module wrote (trusted input: never past the end, never over 64 bits).
fn get_varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

impl StackStore {
    /// Stores stack `id` (a repeated id replaces the earlier stack, as a map insert would).
    pub fn insert(&mut self, id: u32, frames: &[u64]) {
        let at = self.bytes.len();
        put_varint(&mut self.bytes, frames.len() as u64);
        self.put_frames(frames);
        self.by_id.insert(id, StoredStack { at, expanded: OnceCell::new() });
    }

    /// Appends `frames` in stored form: each one's index among the distinct values.
    fn put_frames(&mut self, frames: &[u64]) {
        for &f in frames {
            let next = self.values.len() as u32;
            let i = *self.value_index.entry(f).or_insert(next);
            if i == next {
                self.values.push(f);
            }
            put_varint(&mut self.bytes, u64::from(i));
        }
    }

    /// Stores stack `id` as `own` followed by the outermost `shared` frames of stack `base`,
    /// whose encoded frames are copied as they are (no lookup of their values). `false`, storing
    /// nothing, if `base` is not here.
    pub fn insert_shared(&mut self, id: u32, base: u32, shared: usize, own: &[u64]) -> bool {
        let Some(b) = self.by_id.get(&base) else { return false };
        let mut pos = b.at;
        let n = get_varint(&self.bytes, &mut pos) as usize;
        let shared = shared.min(n);
        let skip_varint = |bytes: &[u8], pos: &mut usize| {
            while bytes[*pos] & 0x80 != 0 {
                *pos += 1;
            }
            *pos += 1;
        };
        for _ in 0..n - shared {
            skip_varint(&self.bytes, &mut pos);
        }
        let tail = pos;
        for _ in 0..shared {
            skip_varint(&self.bytes, &mut pos);
        }
        let at = self.bytes.len();
        put_varint(&mut self.bytes, (own.len() + shared) as u64);
        self.put_frames(own);
        self.bytes.extend_from_within(tail..pos);
        self.by_id.insert(id, StoredStack { at, expanded: OnceCell::new() });
        true
    }

    /// The frames of stack `id`, expanded each time (for a stack sent against it: the report
    /// keeps only the expansions it asks for).
    pub fn frames_of(&self, id: u32) -> Option<Vec<u64>> {
        let s = self.by_id.get(&id)?;
        Some(match s.expanded.get() {
            Some(f) => f.to_vec(),
            None => self.expand(s.at).into_vec(),
        })
    }

    /// The frames of stack `id`, expanded on first use.
    pub fn get(&self, id: &u32) -> Option<&[u64]> {
        let s = self.by_id.get(id)?;
        Some(s.expanded.get_or_init(|| self.expand(s.at)))
    }

    fn expand(&self, mut pos: usize) -> Box<[u64]> {
        let n = get_varint(&self.bytes, &mut pos) as usize;
        (0..n).map(|_| self.values[get_varint(&self.bytes, &mut pos) as usize]).collect()
    }

    /// Drops every stack whose id is not in `ids`, and what only adding stacks needed.
    fn keep_only(&mut self, ids: &std::collections::HashSet<u32, BuildHasherDefault<FxHasher>>) {
        let mut kept = StackStore::default();
        for (&id, s) in &self.by_id {
            if ids.contains(&id) {
                kept.insert(id, &self.expand(s.at));
            }
        }
        kept.value_index = FxMap::default();
        *self = kept;
    }

    /// Adds every stack of `other` (replacing stacks of the same id).
    pub fn extend(&mut self, other: StackStore) {
        for (&id, s) in &other.by_id {
            let frames = other.expand(s.at);
            self.insert(id, &frames);
        }
    }
}

/// A module (executable or shared library) of an image.
#[derive(Debug)]
pub struct Module {
    pub id: u32,
    /// ELF load bias: runtime address = base + file virtual address.
    pub base: u64,
    pub path: String,
    pub build_id: Vec<u8>,
    pub segments: Vec<Segment>,
    pub unloaded: bool,
    /// Loaded at run time (dlopen), not with the program: its record came after the image's
    /// first event (the interposer sends the start-up set before it records anything).
    pub runtime: bool,
    /// The file, opened when the Module record arrived: a library deleted or replaced on disk
    /// while the target ran is still readable through this descriptor at report time.
    pub file: Option<Arc<File>>,
}

/// A Python code object: a function and where it is defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub first_line: u32,
    pub filename: String,
    pub name: String,
}

/// One process image: the root process, or what it exec'd into.
#[derive(Debug, Default)]
pub struct Image {
    pub pid: u32,
    pub ppid: u32,
    pub root: bool,
    /// Started by exec from an earlier image of the same pid.
    pub exec: bool,
    pub exe: String,
    pub argv: Vec<String>,
    /// `ImageExit` seen: everything this image recorded is in the stream.
    pub exited: bool,
    /// The path this image exec'd into (the `Exec` record), if it did.
    pub exec_path: Option<String>,
    /// Children forked by this image (not followed).
    pub forks: Vec<u32>,
    /// The same children with the sequence number of their fork: what this image held below it
    /// the child inherited.
    pub fork_seqs: Vec<(u32, u64)>,
    pub entries: Entries,
    pub stacks: StackStore,
    /// Which of this image's seqs have arrived (decides when tombstones can go).
    pub seqs: SeqWindow,
    /// While tentative: the seqs seen, for the image they turn out to belong to.
    pub pending: Pending,
    /// Sweep tombstones when the entries reach this many.
    pub sweep_at: usize,
    pub modules: Vec<Module>,
    /// Live entries when this image was replaced by exec (its ledger is then dropped).
    pub live_at_exec: Option<u64>,
    pub acquires: u64,
    pub releases: u64,
    /// What resources are (`Describe`: a path, a socket peer), by acquire seq; dropped when
    /// the resource is released.
    pub descriptions: FxMap<u64, String>,
    /// Resources the image itself listed as still open when it exited (`OpenAtExit`).
    pub open_at_exit: Vec<(Kind, u64, String)>,
    /// Python code objects by id (Python frames in stacks refer to them).
    pub codes: FxMap<u32, Code>,
    /// Exec'd into, but never reported anything (see [`Ledger::finish`]).
    pub untracked: bool,
    /// Its `ImageStart` has arrived.
    pub started: bool,
    /// When it started (ns since the epoch, the target's clock): tells a launcher's helpers,
    /// started before the final exec, from the program's own children.
    pub time_ns: u64,
    /// Records that followed an `Exec`, before any `ImageStart`: a new image's if the exec
    /// succeeded, the old image's if it failed.
    pub tentative: bool,
    /// Read from a resolved trace (resolved.rs): live heap blocks per interned tuple index,
    /// per tuple not interned, and releases of unseen origin. They become heap entries at
    /// the end ([`Ledger::finish`]).
    pub tuple_live: Vec<u64>,
    pub inline_live: FxMap<Tuple, u64>,
    pub unseen_heap: u64,
}

/// Entries below this many are never swept.
const MIN_SWEEP: usize = 1 << 16;

/// A released entry whose release is at or below `done`: every earlier event of any id has
/// arrived, so nothing can overtake it and any later event of its id replaces it anyway.
/// Releases of unseen origin stay: they are counted at report time (and are rare).
#[inline(always)]
fn droppable(e: &Entry, done: u64) -> bool {
    !e.live && e.origin_seen && e.seq <= done
}

/// "Highest seq wins": `new` arrives for an id whose latest event so far is `old`.
#[inline(always)]
fn merge(old: &mut Entry, new: Entry, descriptions: &mut FxMap<u64, String>) {
    if new.seq > old.seq {
        if old.live && !descriptions.is_empty() {
            descriptions.remove(&old.seq);
        }
        // A release that follows an acquire we saw (or a release we already counted as unseen
        // whose acquire is seen later) has a known origin.
        let origin_seen = !new.live && (old.live || old.origin_seen);
        *old = Entry { origin_seen: origin_seen || new.live, ..new };
    } else if new.live && !old.live {
        // An older acquire arriving late: the release we hold now has its origin.
        old.origin_seen = true;
    }
}

/// One event in the map of the other kinds; true if the map grew.
fn apply_event<K: Hash + Eq>(
    map: &mut FxMap<K, Entry>,
    key: K,
    new: Entry,
    done: u64,
    descriptions: &mut FxMap<u64, String>,
) -> bool {
    use std::collections::hash_map::Entry as Slot;
    match map.entry(key) {
        Slot::Vacant(v) => {
            // A release with nothing before it: origin unseen, kept (see `droppable`).
            v.insert(new);
            true
        }
        Slot::Occupied(mut o) => {
            merge(o.get_mut(), new, descriptions);
            if droppable(o.get(), done) {
                o.remove();
            }
            false
        }
    }
}

/// One heap event; true if the table grew.
#[inline(always)]
fn apply_heap_event(t: &mut HeapTable, id: u64, new: Entry, done: u64, descriptions: &mut FxMap<u64, String>) -> bool {
    if id == 0 {
        return match t.zero.as_mut() {
            Some(old) => {
                merge(old, new, descriptions);
                if droppable(old, done) {
                    t.zero = None;
                }
                false
            }
            None => {
                t.zero = Some(new);
                true
            }
        };
    }
    match t.find(id) {
        Ok(i) => {
            merge(&mut t.slots[i].e, new, descriptions);
            if droppable(&t.slots[i].e, done) {
                t.remove_at(i);
            }
            false
        }
        Err(i) => {
            t.slots[i] = HeapSlot { key: id, e: new };
            t.len += 1;
            true
        }
    }
}

/// [`apply_heap_event`], also telling what the report could see of the entry before and after.
#[inline(always)]
fn apply_heap_event_traced(
    t: &mut HeapTable,
    id: u64,
    new: Entry,
    done: u64,
    descriptions: &mut FxMap<u64, String>,
) -> (bool, Visible, Visible) {
    if id == 0 {
        let before = Visible::of(t.zero.as_ref());
        let grew = apply_heap_event(t, id, new, done, descriptions);
        return (grew, before, Visible::of(t.zero.as_ref()));
    }
    match t.find(id) {
        Ok(i) => {
            let before = Visible::of(Some(&t.slots[i].e));
            merge(&mut t.slots[i].e, new, descriptions);
            let after = Visible::of(Some(&t.slots[i].e));
            if droppable(&t.slots[i].e, done) {
                t.remove_at(i);
            }
            (false, before, after)
        }
        Err(i) => {
            t.slots[i] = HeapSlot { key: id, e: new };
            t.len += 1;
            (true, Visible::Gone, Visible::of(Some(&new)))
        }
    }
}

impl Image {
    /// This image was replaced by exec: its address space is gone, so drop its ledger and
    /// keep a summary.
    fn retire(&mut self) {
        // (A resolved trace's heap blocks are still counts here.)
        let counted = self.tuple_live.iter().sum::<u64>() + self.inline_live.values().sum::<u64>();
        self.live_at_exec = Some(self.live().count() as u64 + counted);
        self.entries = Entries::default();
        self.stacks = StackStore::default();
        self.seqs = SeqWindow::default();
        self.pending = Pending::default();
        self.modules = Vec::new();
        self.descriptions = FxMap::default();
        self.codes = FxMap::default();
        self.open_at_exit = Vec::new();
        self.tuple_live = Vec::new();
        self.inline_live = FxMap::default();
        self.unseen_heap = 0;
    }

    /// Notes that an event with seq `s` arrived.
    #[inline]
    fn arrived(&mut self, s: u64) {
        if self.tentative {
            if self.pending.seqs.len() < MAX_PENDING_SEQS {
                self.pending.seqs.push(s);
            } else {
                self.pending.overflowed = true;
            }
        } else {
            self.seqs.mark(s);
        }
    }

    /// Applies "highest seq wins" to one acquire or release; with a journal (`--output`), logs
    /// what that decided (`fixup`: a merge's decision, not an event of the stream).
    #[inline]
    fn event(&mut self, kind: Kind, id: u64, new: Entry, journal: Option<&mut Journal>, fixup: bool) {
        // A tentative image's seqs are not in its window (see `arrived`): `done` stays 0 there,
        // so nothing is dropped until we know which image it is.
        let done = self.seqs.done;
        let grew = match (kind == Kind::HEAP, journal) {
            (true, None) => apply_heap_event(&mut self.entries.heap, id, new, done, &mut self.descriptions),
            (true, Some(j)) => {
                let (grew, before, after) =
                    apply_heap_event_traced(&mut self.entries.heap, id, new, done, &mut self.descriptions);
                j.heap(new.live, fixup, before, after);
                grew
            }
            (false, j) => {
                let grew = apply_event(&mut self.entries.other, (kind, id), new, done, &mut self.descriptions);
                if let Some(j) = j {
                    j.other(new.live, fixup, kind, id, self.entries.other.get(&(kind, id)));
                }
                grew
            }
        };
        if grew && self.entries.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.sweep();
        }
    }

    /// A resolved trace's counts become heap entries, as the live ledger would have held them:
    /// the report aggregates them by stack, kind and API. Their ids and seqs are made up (ids
    /// from 1, seqs from the top of the range, where no description refers to them).
    fn materialize(&mut self, tuples: &[Tuple]) {
        let total: u64 =
            self.tuple_live.iter().sum::<u64>() + self.inline_live.values().sum::<u64>() + self.unseen_heap;
        let mut n = 0u64;
        let mut put = |heap: &mut HeapTable, e: Entry| {
            n += 1;
            let (Ok(i) | Err(i)) = heap.find(n);
            heap.slots[i] = HeapSlot { key: n, e: Entry { seq: u64::MAX - n, ..e } };
            heap.len += 1;
        };
        let heap = &mut self.entries.heap;
        heap.rebuild(heap.len() + usize::try_from(total).unwrap_or(usize::MAX).min(1 << 32));
        let live = |(api, size, stack): Tuple| Entry { seq: 0, size, stack, api, live: true, origin_seen: true };
        for (i, &c) in self.tuple_live.iter().enumerate() {
            for _ in 0..c {
                put(heap, live(tuples[i]));
            }
        }
        for (&t, &c) in &self.inline_live {
            for _ in 0..c {
                put(heap, live(t));
            }
        }
        for _ in 0..self.unseen_heap {
            put(heap, Entry { seq: 0, size: 0, stack: 0, api: Api(0), live: false, origin_seen: false });
        }
        self.tuple_live = Vec::new();
        self.inline_live = FxMap::default();
        self.unseen_heap = 0;
    }

    /// Drops the tombstones that can no longer be overtaken (see the module comment). Run when
    /// the entries doubled since the last sweep, so each entry costs O(1) sweeping on average.
    fn sweep(&mut self) {
        let done = self.seqs.done;
        self.entries.retain(|e| !droppable(e, done));
        self.sweep_at = (2 * self.entries.len()).max(MIN_SWEEP);
    }

    /// Live resources of this image: `(kind, id, entry)`.
    pub fn live(&self) -> impl Iterator<Item = (Kind, u64, &Entry)> {
        self.entries.iter().filter(|(_, e)| e.live).map(|((k, id), e)| (k, id, e))
    }

    /// Releases whose acquire was never seen, per kind.
    pub fn released_origin_unseen(&self) -> Vec<(Kind, u64)> {
        let mut per: FxMap<Kind, u64> = FxMap::default();
        for ((kind, _), e) in self.entries.iter() {
            if !e.live && !e.origin_seen {
                *per.entry(kind).or_default() += 1;
            }
        }
        let mut v: Vec<_> = per.into_iter().collect();
        v.sort();
        v
    }

    fn add_module(&mut self, id: u32, base: u64, mut path: String, build_id: Vec<u8>, segments: Vec<Segment>) {
        if !path.is_empty() && !path.starts_with('/') {
            // The loader reports a library found through a relative LD_LIBRARY_PATH entry by
            // its relative path. Resolve it now, while the target (and its cwd) is alive:
            // first against our cwd (the target's initial one), then the target's current one.
            let ours = std::fs::canonicalize(&path);
            let theirs = || std::fs::canonicalize(format!("/proc/{}/cwd/{path}", self.pid));
            if let Some(abs) = ours.or_else(|_| theirs()).ok().and_then(|p| p.to_str().map(str::to_owned)) {
                path = abs;
            }
        }
        // One descriptor per distinct path: a library mapped twice (or a dlopen/dlclose loop)
        // must not use up descriptors.
        let file = self
            .modules
            .iter()
            .find(|m| m.path == path && m.file.is_some())
            .and_then(|m| m.file.clone())
            .or_else(|| open_module(&path).or_else(|| open_mapped(self.pid, &path)).map(Arc::new));
        let runtime = self.acquires + self.releases > 0;
        self.modules.push(Module { id, base, path, build_id, segments, unloaded: false, runtime, file });
    }
}

/// Opens a module file for later symbolization; pseudo-modules (the vDSO) have no file.
fn open_module(path: &str) -> Option<File> {
    if !path.starts_with('/') {
        return None;
    }
    File::open(path).ok()
}

/// A module whose file is gone (deleted or replaced after it was loaded) is still readable
/// through the live target's mapping of it, `/proc/PID/map_files/START-END`, as long as the
/// target runs.
fn open_mapped(pid: u32, path: &str) -> Option<File> {
    if pid == 0 || !path.starts_with('/') {
        return None;
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let deleted = format!("{path} (deleted)");
    maps.lines().find_map(|line| {
        let mut fields = line.splitn(6, ' ');
        let range = fields.next()?;
        let name = fields.nth(4)?.trim_start();
        (name == path || name == deleted).then(|| File::open(format!("/proc/{pid}/map_files/{range}")).ok())?
    })
}

/// Everything the stream said, image by image.
#[derive(Debug, Default)]
pub struct Ledger {
    pub header_seen: bool,
    /// Every image in stream order; only the last keeps its entries, stacks and modules.
    pub images: Vec<Image>,
    pub notices: Vec<String>,
    /// `(pid, code, signal)` from a `ProcessEnd` record (saved traces).
    pub process_end: Option<(u32, i32, u32)>,
    /// The command `residue run` was given, from a `Command` record (saved traces).
    pub command: Option<Vec<String>>,
    /// Records of tags this build does not know (a newer interposer).
    pub unknown_records: u64,
    /// An `Exec` was the last image record: the next one may belong to a new image.
    after_exec: bool,
    /// `--output`: the ledger's decisions are logged here (resolved.rs).
    pub journal: Option<Box<Journal>>,
    /// Read from a resolved trace: the decisions come from the file, nothing is matched here.
    pub resolved: bool,
    /// A resolved trace's interned tuples.
    tuples: Vec<Tuple>,
    /// `StackShared` records whose base stack has not arrived yet (a thread's chunks can reach
    /// the stream out of order when the interposer's writer takes one from an idle thread),
    /// by base: (id, shared frames, own frames).
    waiting: FxMap<u32, Vec<(u32, usize, Vec<u64>)>>,
}

/// What a merge of a tentative image does with its entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MergeEntries {
    /// Replays them into the image before (matching, as the live ledger does).
    Replay,
    /// Drops them: a resolved trace's fix-ups that follow say what the merge decided.
    Drop,
    /// Adds their counts (a resolved trace cut before its fix-ups: the best guess).
    Add,
}

/// The image records go to (see [`Ledger::current`]); a function of the two fields, so that the
/// journal can be borrowed beside it.
fn current_of<'a>(images: &'a mut Vec<Image>, after_exec: &mut bool) -> &'a mut Image {
    if *after_exec {
        // First record after an `Exec`: the exec may have succeeded (this record is the new
        // image's, arriving before its `ImageStart`) or failed (it is the old image's). Keep
        // it apart until we know.
        *after_exec = false;
        let pid = images.last().map_or(0, |i| i.pid);
        images.push(Image { pid, exec: true, tentative: true, ..Image::default() });
    }
    if images.is_empty() {
        images.push(Image::default());
    }
    images.last_mut().expect("just ensured")
}

impl Ledger {
    /// The image records go to. Records before any `ImageStart` go to a placeholder image that
    /// the `ImageStart` adopts when it arrives: the interposer may queue its `ImageStart` in a
    /// thread's batch that is flushed after other threads' events.
    fn current(&mut self) -> &mut Image {
        current_of(&mut self.images, &mut self.after_exec)
    }

    /// The exec before the tentative image failed: its records were the old image's.
    fn merge_tentative(&mut self) {
        let mode = if self.resolved { MergeEntries::Add } else { MergeEntries::Replay };
        self.merge_tentative_with(mode);
    }

    fn merge_tentative_with(&mut self, mode: MergeEntries) {
        if !self.images.last().is_some_and(|i| i.tentative) || self.images.len() < 2 {
            return;
        }
        let mut journal = self.journal.as_deref_mut();
        if let Some(j) = journal.as_deref_mut() {
            j.merge();
        }
        let mut t = self.images.pop().expect("checked");
        let prev = self.images.last_mut().expect("checked");
        // The tentative records were this image's: so were their seqs.
        std::mem::take(&mut t.pending).replay_into(&mut prev.seqs);
        // Descriptions first: a replayed entry that replaces a live one takes the old one's
        // description along, whichever image it came from (a resolved trace's reader, which
        // merges before the fix-ups that follow, then does the same).
        prev.descriptions.extend(std::mem::take(&mut t.descriptions));
        match mode {
            MergeEntries::Replay => {
                for ((kind, id), e) in t.entries.iter() {
                    prev.event(kind, id, *e, journal.as_deref_mut(), true);
                }
            }
            MergeEntries::Drop => {}
            MergeEntries::Add => {
                for ((kind, id), e) in t.entries.iter() {
                    if kind != Kind::HEAP {
                        prev.entries.other.insert((kind, id), *e);
                    }
                }
                if prev.tuple_live.len() < t.tuple_live.len() {
                    prev.tuple_live.resize(t.tuple_live.len(), 0);
                }
                for (i, n) in t.tuple_live.iter().enumerate() {
                    prev.tuple_live[i] += n;
                }
                for (k, n) in &t.inline_live {
                    *prev.inline_live.entry(*k).or_default() += n;
                }
                prev.unseen_heap += t.unseen_heap;
            }
        }
        prev.stacks.extend(t.stacks);
        prev.codes.extend(t.codes);
        prev.open_at_exit.extend(t.open_at_exit);
        prev.modules.extend(t.modules);
        prev.forks.extend(t.forks);
        prev.acquires += t.acquires;
        prev.releases += t.releases;
        prev.exited |= t.exited;
        if t.exec_path.is_some() {
            prev.exec_path = t.exec_path;
        }
    }

    /// End of input: settle an image left tentative (its exec never produced an image).
    /// Nothing at all after an `Exec`: the exec replaced the image with one the interposer
    /// could not load into (static, set-uid, LD_PRELOAD cleared). That image is the final one
    /// and its resources are unknown: the old image's heap died with the exec.
    pub fn finish(&mut self) {
        self.merge_tentative();
        if std::mem::take(&mut self.after_exec) {
            if let Some(prev) = self.images.last_mut() {
                prev.retire();
                let (pid, exe) = (prev.pid, prev.exec_path.clone().unwrap_or_default());
                self.images.push(Image { pid, exe, exec: true, untracked: true, ..Image::default() });
            }
        }
        // Nothing more arrives: give back what only matching needed (tombstones, the map's
        // room to grow) before the report symbolizes, which needs memory of its own.
        let tuples = std::mem::take(&mut self.tuples);
        if let Some(img) = self.images.last_mut() {
            if self.resolved {
                img.materialize(&tuples);
            }
            img.sweep();
            img.entries.heap.shrink_to_fit();
            img.entries.other.shrink_to_fit();
            // The report needs the stacks of what is still live, nothing else.
            let wanted: std::collections::HashSet<u32, BuildHasherDefault<FxHasher>> =
                img.entries.iter().filter(|(_, e)| e.live).map(|(_, e)| e.stack).collect();
            img.stacks.keep_only(&wanted);
        }
    }

    /// The image whose leaks are reported: the last one.
    pub fn final_image(&self) -> Option<&Image> {
        self.images.last()
    }

    /// The final image ended cleanly: nothing it recorded is missing.
    pub fn complete(&self) -> bool {
        self.final_image().is_some_and(|i| i.exited && !i.tentative)
    }

    /// A `Batch` record: a thread's run of events starts (the records after it go to the
    /// current image, which may have to be created).
    #[inline]
    pub fn batch(&mut self) {
        self.current();
    }

    /// An `Acquire` record, without building a [`Record`] (the stream's hot path).
    #[inline]
    pub fn acquire(&mut self, seq: u64, kind: Kind, api: Api, id: u64, size: u64, stack: u32) {
        let img = current_of(&mut self.images, &mut self.after_exec);
        img.acquires += 1;
        img.arrived(seq);
        let e = Entry { seq, size, stack, api, live: true, origin_seen: true };
        img.event(kind, id, e, self.journal.as_deref_mut(), false);
    }

    /// A `Release` record, without building a [`Record`].
    #[inline]
    pub fn release(&mut self, seq: u64, kind: Kind, api: Api, id: u64) {
        let img = current_of(&mut self.images, &mut self.after_exec);
        img.releases += 1;
        img.arrived(seq);
        let e = Entry { seq, size: 0, stack: 0, api, live: false, origin_seen: false };
        img.event(kind, id, e, self.journal.as_deref_mut(), false);
    }

    /// A resolved trace's `TUPLE` record.
    pub fn define_tuple(&mut self, t: Tuple) -> Result<(), &'static str> {
        if self.tuples.len() >= resolved::MAX_TUPLES {
            return Err("more tuples than residue writes");
        }
        self.tuples.push(t);
        Ok(())
    }

    /// A resolved trace's `ALLOC` (`acquire`) or `FREE` of interned tuple `index`.
    #[inline]
    pub fn resolved_event(&mut self, acquire: bool, index: u64) -> Result<(), &'static str> {
        let i =
            usize::try_from(index).ok().filter(|&i| i < self.tuples.len()).ok_or("a tuple that was never defined")?;
        let img = current_of(&mut self.images, &mut self.after_exec);
        if acquire {
            img.acquires += 1;
            if img.tuple_live.len() <= i {
                img.tuple_live.resize(self.tuples.len().max(i + 1), 0);
            }
            img.tuple_live[i] += 1;
        } else {
            img.releases += 1;
            match img.tuple_live.get_mut(i) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return Err("a release of a block that is not live"),
            }
        }
        Ok(())
    }

    fn tuple_of(&self, r: resolved::Ref) -> Result<(Option<usize>, Tuple), &'static str> {
        match r {
            resolved::Ref::Index(i) => {
                let i = usize::try_from(i)
                    .ok()
                    .filter(|&i| i < self.tuples.len())
                    .ok_or("a tuple that was never defined")?;
                Ok((Some(i), self.tuples[i]))
            }
            resolved::Ref::Inline(t) => Ok((None, t)),
        }
    }

    /// The image a resolved record applies to: the last one for a fix-up (it corrects what was
    /// already logged), else the current one, whose event counts it adds to.
    fn resolved_image(&mut self, flags: u8) -> Result<&mut Image, &'static str> {
        use resolved::flag;
        if flags & flag::FIXUP != 0 {
            return self.images.last_mut().ok_or("a fix-up before any image");
        }
        let img = current_of(&mut self.images, &mut self.after_exec);
        if flags & flag::ACQUIRE != 0 {
            img.acquires += 1;
        } else {
            img.releases += 1;
        }
        Ok(img)
    }

    /// A resolved trace's `HEAP` record.
    pub fn resolved_heap(
        &mut self,
        flags: u8,
        removed: Option<resolved::Ref>,
        added: Option<resolved::Ref>,
    ) -> Result<(), &'static str> {
        use resolved::flag;
        let removed = removed.map(|r| self.tuple_of(r)).transpose()?;
        let added = added.map(|r| self.tuple_of(r)).transpose()?;
        let img = self.resolved_image(flags)?;
        if let Some((i, t)) = removed {
            let n = match i {
                Some(i) => img.tuple_live.get_mut(i),
                None => img.inline_live.get_mut(&t),
            };
            match n {
                Some(n) if *n > 0 => *n -= 1,
                _ => return Err("a release of a block that is not live"),
            }
            if i.is_none() && img.inline_live.get(&t) == Some(&0) {
                img.inline_live.remove(&t);
            }
        }
        if let Some((i, t)) = added {
            match i {
                Some(i) => {
                    if img.tuple_live.len() <= i {
                        img.tuple_live.resize(i + 1, 0);
                    }
                    img.tuple_live[i] += 1;
                }
                None => *img.inline_live.entry(t).or_default() += 1,
            }
        }
        if flags & flag::UNSEEN_UP != 0 {
            img.unseen_heap += 1;
        }
        if flags & flag::UNSEEN_DOWN != 0 {
            img.unseen_heap =
                img.unseen_heap.checked_sub(1).ok_or("a release of unseen origin that was never counted")?;
        }
        Ok(())
    }

    /// A resolved trace's `OTHER` record: the entry of `(kind, id)` is now `entry`.
    pub fn resolved_other(&mut self, flags: u8, kind: Kind, id: u64, entry: Option<Entry>) -> Result<(), &'static str> {
        let img = self.resolved_image(flags)?;
        let old = match entry {
            Some(e) => img.entries.other.insert((kind, id), e),
            None => img.entries.other.remove(&(kind, id)),
        };
        // As `merge` does: a live entry replaced takes its description along.
        if let Some(old) = old.filter(|o| o.live && entry.is_none_or(|e| e.seq != o.seq)) {
            img.descriptions.remove(&old.seq);
        }
        Ok(())
    }

    /// A resolved trace's `MERGE` record: the fix-ups that follow say what the merge decided.
    pub fn resolved_merge(&mut self) {
        self.merge_tentative_with(MergeEntries::Drop);
    }

    /// Starts loading what an event for heap block `id` will touch (see [`HeapTable`]).
    #[inline(always)]
    pub fn prefetch(&self, kind: Kind, id: u64) {
        if kind == Kind::HEAP {
            if let Some(img) = self.images.last() {
                img.entries.heap.prefetch(id);
            }
        }
    }

    /// A stack of a resolved trace.
    pub fn stack(&mut self, id: u32, frames: &[u64]) {
        self.current().stacks.insert(id, frames);
    }

    /// A `Stack` record of the stream: stored and, with `--output`, logged; then the
    /// `StackShared` records that waited for it.
    fn stack_record(&mut self, id: u32, frames: Vec<u64>) {
        let mut todo = vec![(id, frames)];
        while let Some((id, frames)) = todo.pop() {
            if let Some(j) = self.journal.as_deref_mut() {
                j.stack(id, &frames);
            }
            self.current().stacks.insert(id, &frames);
            for (waiting, shared, own) in self.waiting.remove(&id).unwrap_or_default() {
                todo.push((waiting, joined(own, &frames, shared)));
            }
        }
    }

    /// A `StackShared` record: stack `id` is `own` followed by the outermost `shared` frames of
    /// stack `base`, which the same thread sent before.
    fn shared_stack_record(&mut self, id: u32, base: u32, shared: usize, own: Vec<u64>) {
        if self.journal.is_none() {
            // Nothing needs its frames whole: stored against its base's stored frames.
            if self.current().stacks.insert_shared(id, base, shared, &own) {
                // What waited for this one is joined whole (stack_record takes any chain on).
                if let Some(waiting) = self.waiting.remove(&id) {
                    let frames = self.current().stacks.frames_of(id).unwrap_or_default();
                    for (waiting, shared, own) in waiting {
                        self.stack_record(waiting, joined(own, &frames, shared));
                    }
                }
                return;
            }
        } else if let Some(b) = self.current().stacks.frames_of(base) {
            return self.stack_record(id, joined(own, &b, shared));
        }
        self.waiting.entry(base).or_default().push((id, shared, own));
    }

    /// Stacks sent against a base that never arrived (a trace cut short): their ids stay
    /// unknown, as any stack id without its record.
    pub fn stacks_without_base(&self) -> usize {
        self.waiting.values().map(Vec::len).sum()
    }

    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Header { .. } => self.header_seen = true,
            Record::ImageStart { pid, ppid, root, exec, time_ns, exe, argv } => {
                self.after_exec = false;
                let start = Image { pid, ppid, root, exec, exe, argv, started: true, time_ns, ..Image::default() };
                let adopt = self.images.last().is_some_and(|i| !i.started);
                if adopt {
                    // Fill in the placeholder (or tentative image) that already holds this
                    // image's early records.
                    let cur = self.images.last_mut().expect("checked");
                    let early = std::mem::replace(cur, start);
                    cur.entries = early.entries;
                    cur.stacks = early.stacks;
                    // A placeholder's seqs are this image's already; a tentative image's are
                    // this image's too, now that its ImageStart says it is a new image.
                    cur.seqs = early.seqs;
                    early.pending.replay_into(&mut cur.seqs);
                    cur.sweep_at = early.sweep_at;
                    cur.descriptions = early.descriptions;
                    cur.codes = early.codes;
                    cur.open_at_exit = early.open_at_exit;
                    cur.modules = early.modules;
                    cur.forks = early.forks;
                    cur.fork_seqs = early.fork_seqs;
                    cur.acquires = early.acquires;
                    cur.releases = early.releases;
                    cur.exited = early.exited;
                    cur.exec_path = early.exec_path;
                    cur.tuple_live = early.tuple_live;
                    cur.inline_live = early.inline_live;
                    cur.unseen_heap = early.unseen_heap;
                    if early.tentative {
                        let n = self.images.len();
                        self.images[n - 2].retire();
                    }
                } else {
                    if let Some(prev) = self.images.last_mut() {
                        prev.retire();
                    }
                    self.images.push(start);
                }
            }
            Record::Batch { .. } => self.batch(),
            Record::Module { id, base, path, build_id, segments } => {
                self.current().add_module(id, base, path, build_id, segments)
            }
            Record::ModuleUnload { seq, id } => {
                let img = self.current();
                img.arrived(seq);
                if let Some(m) = img.modules.iter_mut().rev().find(|m| m.id == id) {
                    m.unloaded = true;
                }
            }
            Record::Stack { id, frames } => self.stack_record(id, frames),
            Record::StackShared { id, base, shared, frames } => self.shared_stack_record(id, base, shared, frames),
            Record::Acquire { seq, kind, api, id, size, stack } => self.acquire(seq, kind, api, id, size, stack),
            Record::Release { seq, kind, api, id } => self.release(seq, kind, api, id),
            Record::Fork { seq, child } => {
                let img = self.current();
                img.arrived(seq);
                img.forks.push(child);
                img.fork_seqs.push((child, seq));
            }
            Record::Exec { seq, path } => {
                // A second exec attempt: the first failed, and what followed it was ours.
                self.merge_tentative();
                self.after_exec = false;
                let img = self.current();
                img.arrived(seq);
                img.exec_path = Some(path);
                self.after_exec = true;
            }
            Record::ExecFailed { seq } => {
                // The exec announced last did not happen: what followed it was ours, and so is
                // what follows (an exit record included).
                self.merge_tentative();
                self.after_exec = false;
                self.current().arrived(seq);
            }
            Record::ImageExit { seq } => {
                // While tentative, this is either the new image's exit (its ImageStart still
                // queued behind) or the old image's after a failed exec: the next ImageStart,
                // Exec or the end of input decides, and carries `exited` along.
                let img = self.current();
                img.arrived(seq);
                img.exited = true;
            }
            Record::Notice { text } => self.notices.push(text),
            Record::OpenAtExit { seq, kind, id, text } => {
                let img = self.current();
                img.arrived(seq);
                img.open_at_exit.push((kind, id, text));
            }
            Record::Code { id, first_line, filename, name } => {
                self.current().codes.insert(id, Code { first_line, filename, name });
            }
            Record::Describe { seq, text } => {
                self.current().descriptions.insert(seq, text);
            }
            Record::ProcessEnd { pid, code, signal } => self.process_end = Some((pid, code, signal)),
            Record::Command { argv } => self.command = Some(argv),
            Record::Unknown { .. } => self.unknown_records += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(pid: u32, exec: bool) -> Record {
        Record::ImageStart { pid, ppid: 1, root: !exec, exec, time_ns: 0, exe: "/bin/x".into(), argv: vec!["x".into()] }
    }
    fn acq(seq: u64, id: u64, size: u64) -> Record {
        Record::Acquire { seq, kind: Kind::HEAP, api: Api::MALLOC, id, size, stack: 1 }
    }
    fn rel(seq: u64, id: u64) -> Record {
        Record::Release { seq, kind: Kind::HEAP, api: Api::FREE, id }
    }
    fn ledger(records: Vec<Record>) -> Ledger {
        let mut l = Ledger::default();
        l.apply(Record::Header { version: 1 });
        l.apply(start(10, false));
        for r in records {
            l.apply(r);
        }
        l
    }
    fn live_ids(l: &Ledger) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = l.final_image().unwrap().live().map(|(_, id, e)| (id, e.seq)).collect();
        v.sort();
        v
    }

    /// The heap table stays between a quarter and a half full as live blocks come (W1 peaks at
    /// ~200,000: half a million slots, not a million), and holds every one of them.
    #[test]
    fn the_heap_table_stays_at_most_half_full() {
        let n = 200_000u64;
        let l = ledger((1..=n).map(|i| acq(i, 0x1000 + 16 * i, i)).collect());
        let img = l.final_image().unwrap();
        let heap = &img.entries.heap;
        assert_eq!(heap.slots.len(), 1 << 19);
        assert_eq!(img.live().count() as u64, n);
        assert!((1..=n).all(|i| img.entries[&(Kind::HEAP, 0x1000 + 16 * i)].size == i));
    }

    /// Every arrival order of one id's history gives the same answer as the in-order replay.
    #[test]
    fn out_of_order_batches_any_permutation() {
        // True history of address 0x10: acq1 rel3 acq5 rel10 acq11 (live at the end).
        let events = [acq(1, 0x10, 8), rel(3, 0x10), acq(5, 0x10, 8), rel(10, 0x10), acq(11, 0x10, 24)];
        let mut idx: Vec<usize> = (0..events.len()).collect();
        let mut count = 0;
        permute(&mut idx, 0, &mut |order| {
            let l = ledger(order.iter().map(|&i| events[i].clone()).collect());
            assert_eq!(live_ids(&l), vec![(0x10, 11)], "order {order:?}");
            let e = l.final_image().unwrap().entries[&(Kind::HEAP, 0x10)];
            assert_eq!(e.size, 24);
            count += 1;
        });
        assert_eq!(count, 120);
        // Without the final acquire nothing is live, whatever the order.
        let events = &events[..4];
        let mut idx: Vec<usize> = (0..4).collect();
        permute(&mut idx, 0, &mut |order| {
            let l = ledger(order.iter().map(|&i| events[i].clone()).collect());
            assert!(live_ids(&l).is_empty(), "order {order:?}");
            assert!(l.final_image().unwrap().released_origin_unseen().is_empty(), "order {order:?}");
        });
    }

    /// Tombstones go once every earlier seq has arrived, whatever order the batches came in;
    /// the answer is the same as keeping them all.
    #[test]
    fn tombstones_drop_once_no_earlier_seq_can_arrive() {
        // Two threads, dense seqs 1..=12. Thread 1: X acquired, released; thread 2 reuses X and
        // keeps it; Y cycles twice on thread 1, and Z is acquired by thread 2 and kept.
        let t1 = vec![Record::Batch { tid: 1 }, acq(1, 0x10, 8), acq(2, 0x20, 8), rel(3, 0x10), rel(5, 0x20)];
        let t2 = vec![Record::Batch { tid: 2 }, acq(4, 0x10, 16), acq(6, 0x30, 8)];
        let t1b = vec![Record::Batch { tid: 1 }, acq(7, 0x20, 8), rel(8, 0x20)];
        let t2b = vec![Record::Batch { tid: 2 }, acq(9, 0x40, 8), rel(10, 0x40), acq(11, 0x50, 1), rel(12, 0x50)];
        let batches = [t1, t2, t1b, t2b];
        let mut idx: Vec<usize> = (0..batches.len()).collect();
        let mut orders = 0;
        permute(&mut idx, 0, &mut |order| {
            let l = ledger(order.iter().flat_map(|&i| batches[i].clone()).collect());
            let img = l.final_image().unwrap();
            assert_eq!(live_ids(&l), vec![(0x10, 4), (0x30, 6)], "order {order:?}");
            assert_eq!(img.seqs.done, 12, "order {order:?}");
            assert!(img.released_origin_unseen().is_empty(), "order {order:?}");
            // Released entries are gone: touched ones at once, the rest by the final sweep.
            let mut l = l;
            l.finish();
            assert_eq!(l.final_image().unwrap().entries.len(), 2, "order {order:?}");
            orders += 1;
        });
        assert_eq!(orders, 24);

        // In order, a release is dropped as it arrives: the ledger never holds a tombstone.
        let mut l = ledger(vec![]);
        for i in 0..1000u64 {
            l.apply(acq(2 * i + 1, 0x1000 + 16 * (i % 7), 8));
            l.apply(rel(2 * i + 2, 0x1000 + 16 * (i % 7)));
            assert!(l.final_image().unwrap().entries.is_empty());
        }
    }

    /// A seq that never arrives stops the drops: the release after the gap stays a tombstone,
    /// so an acquire of an earlier cycle arriving late cannot resurrect the id.
    #[test]
    fn a_missing_seq_keeps_tombstones() {
        let mut l = ledger(vec![acq(1, 0x10, 8), rel(2, 0x10), acq(4, 0x10, 8), rel(5, 0x10)]);
        assert_eq!(l.final_image().unwrap().seqs.done, 2);
        assert_eq!(l.final_image().unwrap().entries.len(), 1, "release 5 may still be overtaken");
        l.apply(acq(3, 0x10, 8)); // late, from before the release at 5
        assert!(live_ids(&l).is_empty());
        assert_eq!(l.final_image().unwrap().seqs.done, 5);
        // Far out of order: the window grows, then catches up.
        let mut l = ledger(vec![]);
        for s in (2..=5000u64).rev() {
            l.apply(Record::Fork { seq: s, child: 1 });
        }
        assert_eq!(l.final_image().unwrap().seqs.done, 0);
        l.apply(Record::Fork { seq: 1, child: 1 });
        assert_eq!(l.final_image().unwrap().seqs.done, 5000);
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    /// Thread A frees X, thread B mallocs X; B's batch arrives before A's.
    #[test]
    fn address_reuse_across_threads() {
        let l = ledger(vec![
            Record::Batch { tid: 2 },
            acq(7, 0x1000, 32), // B reuses X
            Record::Batch { tid: 1 },
            acq(2, 0x1000, 16), // A's original malloc
            rel(6, 0x1000),     // A's free
            acq(3, 0x2000, 8),
            rel(4, 0x2000),
        ]);
        assert_eq!(live_ids(&l), vec![(0x1000, 7)]);
        let img = l.final_image().unwrap();
        assert_eq!(img.entries[&(Kind::HEAP, 0x1000)].size, 32);
        assert_eq!((img.acquires, img.releases), (3, 2));
    }

    #[test]
    fn exec_starts_a_fresh_ledger() {
        let mut l = ledger(vec![acq(1, 0x10, 8), acq(2, 0x20, 8), Record::Exec { seq: 3, path: "/usr/bin/py".into() }]);
        l.apply(start(10, true));
        // The new image's seq space restarts; its own events only.
        l.apply(acq(1, 0x30, 4));
        l.apply(rel(2, 0x10)); // freeing an address the old image had: origin unseen here
        assert_eq!(l.images.len(), 2);
        assert_eq!(l.images[0].live_at_exec, Some(2));
        assert!(l.images[0].entries.is_empty());
        assert_eq!(l.images[0].exec_path.as_deref(), Some("/usr/bin/py"));
        assert_eq!(live_ids(&l), vec![(0x30, 1)]);
        assert_eq!(l.final_image().unwrap().released_origin_unseen(), vec![(Kind::HEAP, 1)]);
        assert!(!l.complete());
        l.apply(Record::ImageExit { seq: 3 });
        assert!(l.complete());
    }

    #[test]
    fn release_of_unknown_id_is_counted_not_fatal() {
        let l = ledger(vec![
            rel(5, 0xdead),
            rel(6, 0xbeef),
            Record::Release { seq: 7, kind: Kind::FD, api: Api::CLOSE, id: 3 },
            acq(8, 0xbeef, 1), // reuse after the unseen release: live again, no longer unseen
        ]);
        let img = l.final_image().unwrap();
        assert_eq!(img.released_origin_unseen(), vec![(Kind::HEAP, 1), (Kind::FD, 1)]);
        assert_eq!(live_ids(&l), vec![(0xbeef, 8)]);
    }

    #[test]
    fn kinds_do_not_match_each_other() {
        let l = ledger(vec![
            Record::Acquire { seq: 1, kind: Kind::FD, api: Api::OPEN, id: 3, size: 0, stack: 1 },
            rel(2, 3),
        ]);
        let live: Vec<_> = l.final_image().unwrap().live().map(|(k, id, _)| (k, id)).collect();
        assert_eq!(live, vec![(Kind::FD, 3)]);
    }

    /// A stack sent against another (`StackShared`) is its own frames and the base's outer
    /// ones, whether the base came before it, came after it (a chunk written out of order), or
    /// was itself sent against another; one whose base never comes is counted, not guessed.
    /// Without a journal the shared frames are copied in their stored form; with one (`--output`)
    /// the stack is joined whole, to be logged: both ways give the same stacks.
    #[test]
    fn shared_stacks_are_joined_to_their_base_whenever_it_arrives() {
        let shared =
            |id, base, shared, frames: &[u64]| Record::StackShared { id, base, shared, frames: frames.to_vec() };
        for journal in [false, true] {
            let mut l = Ledger::default();
            if journal {
                l.journal = Some(Box::new(crate::resolved::Journal::new()));
            }
            l.apply(Record::Header { version: 1 });
            l.apply(start(10, false));
            for r in [
                Record::Stack { id: 1, frames: vec![10, 20, 30, 40] },
                shared(2, 1, 3, &[11]),
                // Base 4 arrives after 5 and 6, which wait for it (6 through 5).
                shared(6, 5, 2, &[13, 14]),
                shared(5, 4, 4, &[]),
                shared(4, 2, 2, &[12, 15, 16]),
                // Base 9 never arrives.
                shared(7, 9, 1, &[17]),
            ] {
                l.apply(r);
            }
            let stacks = &l.final_image().unwrap().stacks;
            assert_eq!(stacks.get(&2), Some(&[11, 20, 30, 40][..]), "journal: {journal}");
            assert_eq!(stacks.get(&4), Some(&[12, 15, 16, 30, 40][..]), "journal: {journal}");
            assert_eq!(stacks.get(&5), Some(&[15, 16, 30, 40][..]), "journal: {journal}");
            assert_eq!(stacks.get(&6), Some(&[13, 14, 30, 40][..]), "journal: {journal}");
            assert_eq!(stacks.get(&7), None);
            assert_eq!(l.stacks_without_base(), 1);
            l.finish();
        }
    }

    #[test]
    fn records_before_image_start_do_not_panic() {
        let mut l = Ledger::default();
        l.apply(acq(1, 1, 1));
        l.apply(Record::Stack { id: 1, frames: vec![1, 2] });
        assert_eq!(l.images.len(), 1);
        assert_eq!(l.final_image().unwrap().live().count(), 1);
    }

    /// The interposer may queue ImageStart behind other threads' batches.
    #[test]
    fn late_image_start_adopts_earlier_records() {
        let mut l = Ledger::default();
        l.apply(Record::Header { version: 1 });
        l.apply(Record::Batch { tid: 11 });
        l.apply(acq(1, 0x10, 8));
        l.apply(Record::Batch { tid: 10 });
        l.apply(start(10, false));
        l.apply(acq(2, 0x20, 8));
        l.apply(Record::ImageExit { seq: 3 });
        assert_eq!(l.images.len(), 1);
        assert_eq!(l.images[0].pid, 10);
        assert_eq!(live_ids(&l), vec![(0x10, 1), (0x20, 2)]);
        assert!(l.complete());
    }

    /// The exec'd image's events arrive before its ImageStart: they must not land in the old
    /// image (whose seq space they would collide with).
    #[test]
    fn new_image_events_before_its_image_start() {
        let mut l = ledger(vec![acq(1, 0x10, 8), acq(2, 0x20, 8), Record::Exec { seq: 3, path: "/usr/bin/py".into() }]);
        l.apply(Record::Batch { tid: 10 });
        l.apply(acq(1, 0x30, 4));
        l.apply(rel(2, 0x30));
        l.apply(acq(3, 0x40, 4));
        assert!(!l.complete());
        l.apply(start(10, true));
        l.apply(Record::ImageExit { seq: 4 });
        assert_eq!(l.images.len(), 2);
        assert_eq!(l.images[0].live_at_exec, Some(2));
        assert!(l.images[1].exec && l.images[1].started && !l.images[1].tentative);
        assert_eq!(live_ids(&l), vec![(0x40, 3)]);
        assert!(l.complete());
    }

    /// execvp tries several paths: failed attempts leave the image running.
    #[test]
    fn failed_exec_keeps_the_image() {
        let mut l = ledger(vec![acq(1, 0x10, 8), Record::Exec { seq: 2, path: "/nope/py".into() }]);
        l.apply(Record::Batch { tid: 10 });
        l.apply(acq(3, 0x20, 8));
        l.apply(rel(4, 0x10));
        l.apply(Record::Exec { seq: 5, path: "/bin/py".into() }); // second attempt
        assert_eq!(l.images.len(), 1, "the first attempt's followers merged back");
        assert_eq!(live_ids(&l), vec![(0x20, 3)]);
        l.apply(acq(6, 0x30, 8)); // failed again, then the image exits
        l.apply(Record::ImageExit { seq: 7 });
        assert!(!l.complete(), "undecided until the end of input");
        l.finish();
        assert_eq!(l.images.len(), 1);
        assert_eq!(live_ids(&l), vec![(0x20, 3), (0x30, 6)]);
        assert!(l.complete());
        assert_eq!(l.images[0].acquires, 3);
        // End of input while tentative also settles it.
        let mut l = ledger(vec![Record::Exec { seq: 1, path: "/x".into() }, acq(2, 0x50, 1)]);
        l.finish();
        assert_eq!((l.images.len(), live_ids(&l)), (1, vec![(0x50, 2)]));
    }

    /// An interposer that says a failed exec failed (`ExecFailed`) settles it at once: the exit
    /// record that follows is the image's own, and the ledger is complete before the end of
    /// input (the collector then answers the exit record, which the process waits for).
    #[test]
    fn exec_failed_settles_the_attempt_at_once() {
        let mut l = ledger(vec![acq(1, 0x10, 8), Record::Exec { seq: 2, path: "/nope/py".into() }]);
        l.apply(Record::Batch { tid: 11 });
        l.apply(acq(3, 0x20, 8)); // another thread, while the attempt was under way
        l.apply(Record::ExecFailed { seq: 4 });
        assert_eq!(l.images.len(), 1, "merged back");
        l.apply(rel(5, 0x10));
        l.apply(Record::ImageExit { seq: 6 });
        assert!(l.complete(), "decided without the end of input");
        l.finish();
        assert_eq!((l.images.len(), live_ids(&l)), (1, vec![(0x20, 3)]));
        assert!(l.images[0].exited && l.images[0].exec_path.is_some());
    }

    #[test]
    fn exec_into_an_untracked_image_reports_nothing_of_the_old_heap() {
        let mut l = ledger(vec![acq(1, 0x10, 8), Record::Exec { seq: 2, path: "/bin/static".into() }]);
        l.finish();
        assert_eq!(l.images.len(), 2);
        let last = l.final_image().unwrap();
        assert!(last.untracked && last.exe == "/bin/static");
        assert_eq!(last.live().count(), 0);
        assert_eq!(l.images[0].live_at_exec, Some(1));
        assert!(!l.complete());
    }

    /// The exec'd image exits from a thread other than main: its exit record can precede its
    /// ImageStart (still queued in the main thread's batch).
    #[test]
    fn exit_before_image_start_of_an_exec_image() {
        let mut l = ledger(vec![acq(1, 0x10, 8), Record::Exec { seq: 2, path: "/bin/py".into() }]);
        l.apply(acq(1, 0x20, 8));
        l.apply(Record::ImageExit { seq: 2 });
        l.apply(start(10, true));
        l.finish();
        assert_eq!(l.images.len(), 2);
        assert!(l.complete());
        assert_eq!(live_ids(&l), vec![(0x20, 1)]);
    }

    #[test]
    fn exit_right_after_exec_is_decided_by_what_follows() {
        // A failed exec then exit: the old image exited.
        let mut l = ledger(vec![acq(1, 0x10, 8), Record::Exec { seq: 2, path: "/nope".into() }]);
        l.apply(Record::ImageExit { seq: 3 });
        l.finish();
        assert_eq!((l.images.len(), l.complete()), (1, true));
        assert_eq!(live_ids(&l), vec![(0x10, 1)]);
        // The new image's exit, its ImageStart behind it.
        let mut l = ledger(vec![acq(1, 0x10, 8), Record::Exec { seq: 2, path: "/bin/py".into() }]);
        l.apply(Record::ImageExit { seq: 1 });
        l.apply(start(10, true));
        l.finish();
        assert_eq!((l.images.len(), l.complete()), (2, true));
        assert!(live_ids(&l).is_empty());
    }
}
