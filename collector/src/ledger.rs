//! The ledger: which resources each process image holds, built from decoded records.
//!
//! Batches from different threads arrive out of sequence order, and heap addresses are reused
//! across threads (A frees X, B mallocs X). The rule that makes that safe (ARCHITECTURE.md):
//! per image and per `(kind, id)`, the event with the highest sequence number wins. We keep
//! exactly that latest event per id, so memory grows with the number of distinct ids (for the
//! heap, roughly the peak number of live blocks, because allocators reuse addresses) and the
//! number of distinct stacks, never with the number of events.
//!
//! Released ids are kept as tombstones on purpose: dropping them would let a late acquire of an
//! earlier cycle (seq below the release we already saw) resurrect the id as a false leak.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use residue_protocol::{Api, Kind, Record, Segment};

/// FxHash: the ledger hashes millions of integer keys; SipHash's DoS resistance buys nothing
/// here (the input comes from the target we launched) and costs several times the time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The latest event seen for one `(kind, id)`.
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
    pub entries: FxMap<(Kind, u64), Entry>,
    pub stacks: FxMap<u32, Box<[u64]>>,
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
    /// Records that followed an `Exec`, before any `ImageStart`: a new image's if the exec
    /// succeeded, the old image's if it failed.
    pub tentative: bool,
}

impl Image {
    /// This image was replaced by exec: its address space is gone, so drop its ledger and
    /// keep a summary.
    fn retire(&mut self) {
        self.live_at_exec = Some(self.live().count() as u64);
        self.entries = FxMap::default();
        self.stacks = FxMap::default();
        self.modules = Vec::new();
        self.descriptions = FxMap::default();
        self.codes = FxMap::default();
        self.open_at_exit = Vec::new();
    }

    /// Applies "highest seq wins" to one acquire or release.
    fn event(&mut self, kind: Kind, id: u64, new: Entry) {
        use std::collections::hash_map::Entry as Slot;
        match self.entries.entry((kind, id)) {
            Slot::Vacant(v) => {
                v.insert(new);
            }
            Slot::Occupied(mut o) => {
                let old = o.get_mut();
                if new.seq > old.seq {
                    if old.live {
                        self.descriptions.remove(&old.seq);
                    }
                    // A release that follows an acquire we saw (or a release we already counted
                    // as unseen whose acquire is seen later) has a known origin.
                    let origin_seen = !new.live && (old.live || old.origin_seen);
                    *old = Entry { origin_seen: origin_seen || new.live, ..new };
                } else if new.live && !old.live {
                    // An older acquire arriving late: the release we hold now has its origin.
                    old.origin_seen = true;
                }
            }
        }
    }

    /// Live resources of this image: `(kind, id, entry)`.
    pub fn live(&self) -> impl Iterator<Item = (Kind, u64, &Entry)> {
        self.entries.iter().filter(|(_, e)| e.live).map(|(&(k, id), e)| (k, id, e))
    }

    /// Releases whose acquire was never seen, per kind.
    pub fn released_origin_unseen(&self) -> Vec<(Kind, u64)> {
        let mut per: FxMap<Kind, u64> = FxMap::default();
        for ((kind, _), e) in &self.entries {
            if !e.live && !e.origin_seen {
                *per.entry(*kind).or_default() += 1;
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
        self.modules.push(Module { id, base, path, build_id, segments, unloaded: false, file });
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
    /// Records of tags this build does not know (a newer interposer).
    pub unknown_records: u64,
    /// An `Exec` was the last image record: the next one may belong to a new image.
    after_exec: bool,
}

impl Ledger {
    /// The image records go to. Records before any `ImageStart` go to a placeholder image that
    /// the `ImageStart` adopts when it arrives: the interposer may queue its `ImageStart` in a
    /// thread's batch that is flushed after other threads' events.
    fn current(&mut self) -> &mut Image {
        if self.after_exec {
            // First record after an `Exec`: the exec may have succeeded (this record is the new
            // image's, arriving before its `ImageStart`) or failed (it is the old image's). Keep
            // it apart until we know.
            self.after_exec = false;
            let pid = self.images.last().map_or(0, |i| i.pid);
            self.images.push(Image { pid, exec: true, tentative: true, ..Image::default() });
        }
        if self.images.is_empty() {
            self.images.push(Image::default());
        }
        self.images.last_mut().expect("just ensured")
    }

    /// The exec before the tentative image failed: its records were the old image's.
    fn merge_tentative(&mut self) {
        if !self.images.last().is_some_and(|i| i.tentative) || self.images.len() < 2 {
            return;
        }
        let t = self.images.pop().expect("checked");
        let prev = self.images.last_mut().expect("checked");
        for ((kind, id), e) in t.entries {
            prev.event(kind, id, e);
        }
        prev.stacks.extend(t.stacks);
        prev.descriptions.extend(t.descriptions);
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
    }

    /// The image whose leaks are reported: the last one.
    pub fn final_image(&self) -> Option<&Image> {
        self.images.last()
    }

    /// The final image ended cleanly: nothing it recorded is missing.
    pub fn complete(&self) -> bool {
        self.final_image().is_some_and(|i| i.exited && !i.tentative)
    }

    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Header { .. } => self.header_seen = true,
            Record::ImageStart { pid, ppid, root, exec, time_ns: _, exe, argv } => {
                self.after_exec = false;
                let start = Image { pid, ppid, root, exec, exe, argv, started: true, ..Image::default() };
                let adopt = self.images.last().is_some_and(|i| !i.started);
                if adopt {
                    // Fill in the placeholder (or tentative image) that already holds this
                    // image's early records.
                    let cur = self.images.last_mut().expect("checked");
                    let early = std::mem::replace(cur, start);
                    cur.entries = early.entries;
                    cur.stacks = early.stacks;
                    cur.descriptions = early.descriptions;
                    cur.codes = early.codes;
                    cur.open_at_exit = early.open_at_exit;
                    cur.modules = early.modules;
                    cur.forks = early.forks;
                    cur.acquires = early.acquires;
                    cur.releases = early.releases;
                    cur.exited = early.exited;
                    cur.exec_path = early.exec_path;
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
            Record::Batch { .. } => {
                self.current();
            }
            Record::Module { id, base, path, build_id, segments } => {
                self.current().add_module(id, base, path, build_id, segments)
            }
            Record::ModuleUnload { id, .. } => {
                if let Some(m) = self.current().modules.iter_mut().rev().find(|m| m.id == id) {
                    m.unloaded = true;
                }
            }
            Record::Stack { id, frames } => {
                self.current().stacks.insert(id, frames.into_boxed_slice());
            }
            Record::Acquire { seq, kind, api, id, size, stack } => {
                let img = self.current();
                img.acquires += 1;
                img.event(kind, id, Entry { seq, size, stack, api, live: true, origin_seen: true });
            }
            Record::Release { seq, kind, api, id } => {
                let img = self.current();
                img.releases += 1;
                img.event(kind, id, Entry { seq, size: 0, stack: 0, api, live: false, origin_seen: false });
            }
            Record::Fork { child, .. } => self.current().forks.push(child),
            Record::Exec { path, .. } => {
                // A second exec attempt: the first failed, and what followed it was ours.
                self.merge_tentative();
                self.after_exec = false;
                self.current().exec_path = Some(path);
                self.after_exec = true;
            }
            Record::ImageExit { .. } => {
                // While tentative, this is either the new image's exit (its ImageStart still
                // queued behind) or the old image's after a failed exec: the next ImageStart,
                // Exec or the end of input decides, and carries `exited` along.
                self.current().exited = true;
            }
            Record::Notice { text } => self.notices.push(text),
            Record::OpenAtExit { seq: _, kind, id, text } => {
                self.current().open_at_exit.push((kind, id, text));
            }
            Record::Code { id, first_line, filename, name } => {
                self.current().codes.insert(id, Code { first_line, filename, name });
            }
            Record::Describe { seq, text } => {
                self.current().descriptions.insert(seq, text);
            }
            Record::ProcessEnd { pid, code, signal } => self.process_end = Some((pid, code, signal)),
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
