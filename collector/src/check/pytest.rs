//! Attributing leaks to pytest tests (the plugin in `python/residue_pytest.py`).
//!
//! No protocol of its own: the plugin calls each test's body through a function whose code
//! object it names `__residue_test_<N>__` (and, with `--residue-repeat`, a first warm-up call
//! through `__residue_warmup_<N>__`). The interposer already records Python frames with every
//! stack, so a stack made by test N's body carries that frame, and one made by the warm-up
//! carries the other. The plugin writes one JSON line per test (id, node id, marker limits) to
//! the file named by `RESIDUE_PYTEST_MANIFEST`, which `residue check` sets and reads back.
//! Warm-up stacks are left out: what only the first call allocated is a cache, not a leak.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::Limit;
use super::LibCheck;
use crate::report::{Count, StackOut};

pub const MANIFEST_ENV: &str = "RESIDUE_PYTEST_MANIFEST";
const TEST_PREFIX: &str = "__residue_test_";
const WARMUP_PREFIX: &str = "__residue_warmup_";

/// A private directory for this run's manifest (mode 0700, created fresh: a name in a shared
/// /tmp that someone else created, or a symlink planted there, is never written through).
pub struct ManifestDir(PathBuf);

impl ManifestDir {
    pub fn create() -> std::io::Result<ManifestDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for attempt in 0..16u32 {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let dir = base.join(format!("residue-pytest-{}-{nanos}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(ManifestDir(dir)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no attempt made")))
    }

    pub fn manifest(&self) -> PathBuf {
        self.0.join("tests.jsonl")
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Deserialize)]
pub struct TestEntry {
    pub id: u64,
    pub nodeid: String,
    /// Per kind, from `@pytest.mark.residue(...)`; absent: judged by its library's limits.
    #[serde(default)]
    pub limits: BTreeMap<String, Limit>,
    #[serde(default)]
    pub repeat: bool,
    /// pytest's outcome of the call phase (`passed`, `failed`, `skipped`).
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Default)]
pub struct Manifest {
    pub tests: Vec<TestEntry>,
}

impl Manifest {
    /// `None` when the plugin did not run (no file).
    pub fn load(path: &Path) -> Result<Option<Manifest>, String> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
        let mut m = Manifest::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let e: TestEntry = serde_json::from_str(line)
                .map_err(|e| format!("the pytest plugin's manifest line {} is malformed ({e})", i + 1))?;
            // The plugin may write a test twice (its id first, then its outcome): keep the last.
            match m.tests.iter_mut().find(|t| t.id == e.id) {
                Some(t) => *t = e,
                None => m.tests.push(e),
            }
        }
        Ok(Some(m))
    }
}

/// One pytest test in the report.
#[derive(Debug, Serialize)]
pub struct TestOut {
    pub nodeid: String,
    /// pytest's own outcome for the call.
    pub outcome: Option<String>,
    pub repeat: bool,
    /// Everything its body leaked (after scope, suppressions and baseline), per kind.
    pub leaked: BTreeMap<String, Count>,
    /// The part judged by its marker's limits, per kind.
    pub leaked_by_marker: BTreeMap<String, Count>,
    pub limits: BTreeMap<String, Limit>,
    pub over: Vec<String>,
    pub pass: bool,
}

/// The id in a Python frame name ending with `PREFIX<N>__` (qualified names included).
fn frame_id(name: &str, prefix: &str) -> Option<u64> {
    let last = name.rsplit('.').next()?;
    last.strip_prefix(prefix)?.strip_suffix("__")?.parse().ok()
}

fn python_ids<'s>(s: &'s StackOut, prefix: &'s str) -> impl Iterator<Item = u64> + 's {
    s.frames.iter().filter(|f| f.kind == "python").filter_map(move |f| frame_id(f.function.as_deref()?, prefix))
}

pub struct Accumulator<'m> {
    manifest: Option<&'m Manifest>,
    by_id: HashMap<u64, usize>,
    leaked: Vec<BTreeMap<String, Count>>,
    by_marker: Vec<BTreeMap<String, Count>>,
    /// Modules whose limits judged some of the test's stacks.
    modules: Vec<BTreeSet<String>>,
}

impl<'m> Accumulator<'m> {
    pub fn new(manifest: Option<&'m Manifest>) -> Self {
        let n = manifest.map_or(0, |m| m.tests.len());
        Accumulator {
            manifest,
            by_id: manifest.map(|m| m.tests.iter().enumerate().map(|(i, t)| (t.id, i)).collect()).unwrap_or_default(),
            leaked: vec![BTreeMap::new(); n],
            by_marker: vec![BTreeMap::new(); n],
            modules: vec![BTreeSet::new(); n],
        }
    }

    /// Made by a warm-up call of `--residue-repeat`.
    pub fn is_warmup(&self, s: &StackOut) -> bool {
        self.manifest.is_some() && python_ids(s, WARMUP_PREFIX).any(|id| self.by_id.contains_key(&id))
    }

    /// The test whose body made `s` (innermost such frame), and whether its marker's limits
    /// judge it (then its library's do not).
    pub fn attribute(&mut self, module: &str, s: &StackOut, counted: Count) -> Option<(String, bool)> {
        let m = self.manifest?;
        let i = python_ids(s, TEST_PREFIX).find_map(|id| self.by_id.get(&id).copied())?;
        let t = &m.tests[i];
        let c = self.leaked[i].entry(s.kind.clone()).or_default();
        c.count += counted.count;
        c.bytes += counted.bytes;
        let by_marker = t.limits.contains_key(&s.kind);
        if by_marker {
            let c = self.by_marker[i].entry(s.kind.clone()).or_default();
            c.count += counted.count;
            c.bytes += counted.bytes;
        } else {
            self.modules[i].insert(module.to_owned());
        }
        Some((t.nodeid.clone(), by_marker))
    }

    /// Every test of the manifest, in the order pytest ran them. A test fails when its
    /// marker-judged leaks exceed the marker, or when a library its other leaks count against
    /// is over its limits.
    pub fn finish(self, libs: &[LibCheck]) -> Vec<TestOut> {
        let Some(m) = self.manifest else { return Vec::new() };
        m.tests
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut over: Vec<String> = self.by_marker[i]
                    .iter()
                    .filter(|(k, c)| t.limits.get(*k).is_some_and(|l| super::over(**c, *l)))
                    .map(|(k, _)| k.clone())
                    .collect();
                let lib_failed = self.modules[i].iter().any(|m| libs.iter().any(|l| l.module == *m && !l.pass));
                if lib_failed {
                    over.extend(self.leaked[i].keys().filter(|k| !t.limits.contains_key(*k)).cloned());
                    over.sort();
                    over.dedup();
                }
                TestOut {
                    nodeid: t.nodeid.clone(),
                    outcome: t.outcome.clone(),
                    repeat: t.repeat,
                    leaked: self.leaked[i].clone(),
                    leaked_by_marker: self.by_marker[i].clone(),
                    limits: t.limits.clone(),
                    pass: over.is_empty(),
                    over,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names() {
        assert_eq!(frame_id("__residue_test_12__", TEST_PREFIX), Some(12));
        assert_eq!(frame_id("Runner._wrap.<locals>.__residue_test_3__", TEST_PREFIX), Some(3));
        assert_eq!(frame_id("__residue_warmup_3__", TEST_PREFIX), None);
        assert_eq!(frame_id("__residue_test_x__", TEST_PREFIX), None);
        assert_eq!(frame_id("test_leak", TEST_PREFIX), None);
    }

    #[test]
    fn manifest_keeps_the_last_line_of_a_test() {
        let p = std::env::temp_dir().join(format!("residue-manifest-test-{}", std::process::id()));
        std::fs::write(
            &p,
            "{\"id\": 1, \"nodeid\": \"t.py::a\"}\n{\"id\": 2, \"nodeid\": \"t.py::b\", \"limits\": {\"heap\": {\"max-bytes\": 10, \"max-count\": null}}}\n{\"id\": 1, \"nodeid\": \"t.py::a\", \"outcome\": \"passed\"}\n",
        )
        .unwrap();
        let m = Manifest::load(&p).unwrap().unwrap();
        assert_eq!(m.tests.len(), 2);
        assert_eq!(m.tests[0].outcome.as_deref(), Some("passed"));
        assert_eq!(m.tests[1].limits["heap"], Limit { max_bytes: Some(10), max_count: None });
        std::fs::write(&p, "not json\n").unwrap();
        assert!(Manifest::load(&p).unwrap_err().contains("line 1"));
        std::fs::remove_file(&p).unwrap();
        assert!(Manifest::load(&p).unwrap().is_none());
    }
}
