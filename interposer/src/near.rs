//! Per-thread direct-mapped caches in front of the global intern tables (stacks, Python code
//! objects, Python lines). A thread's caches live on the heap (`Thread::near`), zeroed: all
//! zero is empty. The global tables are megabytes of hashed slots shared by every
//! thread, so each probe is likely a cache miss; a thread's hot keys are a few hundred and fit
//! here, in its own memory. Entries are copies of what the global tables answered: keys carry
//! everything that makes them unique (generation included), so an entry is never stale, only
//! evicted.

/// A direct-mapped table of `N` (key, value) pairs; key 0 is empty (callers' keys are never 0).
pub struct Near<const N: usize> {
    entries: [(u64, u32); N],
}

impl<const N: usize> Near<N> {
    #[inline(always)]
    fn index(key: u64) -> usize {
        const { assert!(N.is_power_of_two()) };
        // The keys are already hashes: their low bits are as good as any.
        key as usize & (N - 1)
    }

    #[inline(always)]
    pub fn get(&self, key: u64) -> Option<u32> {
        let e = self.entries[Self::index(key)];
        (e.0 == key).then_some(e.1)
    }

    #[inline(always)]
    pub fn put(&mut self, key: u64, value: u32) {
        self.entries[Self::index(key)] = (key, value);
    }
}

/// The caches of one thread (see [`crate::state::Thread::near`]).
pub struct NearCaches {
    /// Stack hash -> stack id.
    pub stacks: Near<256>,
    /// Code identity key -> code id.
    pub codes: Near<64>,
    /// (code, instruction) key -> line + 1.
    pub lines: Near<64>,
}
