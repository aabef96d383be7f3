//! Baselines: a previous JSON report, so CI fails only on what a change added.
//!
//! Stacks are matched by a key built from symbolized frames only: the kind and the acquiring
//! API, and per frame its
//! function with its module's file name (native) or its script's file name (Python). No
//! addresses (ASLR moves them every run), no line numbers (an unrelated edit above a call
//! moves them), no directories (CI checks out in a different place than a laptop). Stacks with
//! the same key are one entry, their amounts added up.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::pattern::basename;
use crate::report::{Count, StackOut};

/// The key of a stack: `kind|api|frame|frame|...`.
pub fn key(
    kind: &str,
    api: &str,
    frames: impl Iterator<Item = (String, Option<String>, Option<String>, Option<String>)>,
) -> String {
    let mut k = format!("{kind}|{api}");
    for (fkind, function, module, file) in frames {
        k.push('|');
        let place = match fkind.as_str() {
            "python" => file.as_deref().map(basename).unwrap_or("?"),
            _ => module.as_deref().map(basename).unwrap_or("?"),
        };
        k.push_str(function.as_deref().unwrap_or("?"));
        k.push('@');
        k.push_str(place);
    }
    k
}

pub fn stack_key(s: &StackOut) -> String {
    key(
        &s.kind,
        &s.api,
        s.frames.iter().map(|f| (f.kind.to_owned(), f.function.clone(), f.module.clone(), f.file.clone())),
    )
}

/// A short stable fingerprint of a key (FNV-1a 64), for SARIF and the JSON report.
pub fn fingerprint(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The previous run's amounts per stack key.
#[derive(Debug, Default)]
pub struct Baseline {
    pub path: String,
    pub stacks: HashMap<String, Count>,
}

impl Baseline {
    pub fn load(path: &Path) -> Result<Baseline, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the baseline {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            format!("the baseline {} is not JSON ({e}); pass a report written by --json", path.display())
        })?;
        Baseline::from_json(&v, &path.display().to_string())
    }

    pub fn from_json(v: &Value, path: &str) -> Result<Baseline, String> {
        match v["schema"].as_str() {
            Some(crate::report::SCHEMA) => {}
            other => {
                return Err(format!(
                    "the baseline {path} has schema {other:?}, not {:?}; pass a report written by `residue run --json` or `residue check --json`",
                    crate::report::SCHEMA
                ))
            }
        }
        let mut stacks: HashMap<String, Count> = HashMap::new();
        let libs = v["libraries"].as_array().into_iter().chain(v["unattributed"].as_array()).flatten();
        for lib in libs {
            for s in lib["stacks"].as_array().into_iter().flatten() {
                let frames = s["frames"].as_array().into_iter().flatten().map(|f| {
                    let st = |k: &str| f[k].as_str().map(str::to_owned);
                    (st("kind").unwrap_or_default(), st("function"), st("module"), st("file"))
                });
                let k = key(s["kind"].as_str().unwrap_or(""), s["api"].as_str().unwrap_or(""), frames);
                let c = stacks.entry(k).or_default();
                c.count += s["count"].as_u64().unwrap_or(0);
                c.bytes += s["bytes"].as_u64().unwrap_or(0);
            }
        }
        Ok(Baseline { path: path.to_owned(), stacks })
    }
}

/// How a stack compares with the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Not in the baseline: the whole amount counts.
    New,
    /// More blocks or bytes than the baseline: the increase counts.
    Grew { was: Count },
    /// Same or less: nothing counts.
    Unchanged { was: Count },
}

impl Baseline {
    pub fn compare(&self, key: &str, now: Count) -> Change {
        match self.stacks.get(key) {
            None => Change::New,
            Some(&was) if now.count > was.count || now.bytes > was.bytes => Change::Grew { was },
            Some(&was) => Change::Unchanged { was },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frames(v: &[(&str, &str, &str)]) -> Value {
        Value::Array(
            v.iter()
                .map(|(k, f, m)| {
                    if *k == "python" {
                        json!({"kind": k, "function": f, "module": null, "file": m, "line": 3})
                    } else {
                        json!({"kind": k, "function": f, "module": m, "file": "/src/x.c", "line": 7, "address": "0x7f0012345678"})
                    }
                })
                .collect(),
        )
    }

    #[test]
    fn keys_ignore_addresses_lines_and_directories() {
        let a = json!({"schema": "residue-report/1", "libraries": [{"module": "/a/libfoo.so", "stacks": [
            {"kind": "heap", "api": "malloc", "count": 2, "bytes": 20, "frames": frames(&[("native", "malloc", "/lib/libc.so.6"), ("native", "foo", "/a/libfoo.so"), ("python", "test_x", "/a/tests/test_x.py")])},
            {"kind": "heap", "api": "malloc", "count": 1, "bytes": 5, "frames": frames(&[("native", "malloc", "/lib/libc.so.6"), ("native", "foo", "/b/libfoo.so"), ("python", "test_x", "/b/tests/test_x.py")])},
        ]}], "unattributed": []});
        let b = Baseline::from_json(&a, "a.json").unwrap();
        assert_eq!(b.stacks.len(), 1, "the two stacks differ only in directories: {:?}", b.stacks);
        let (k, c) = b.stacks.iter().next().unwrap();
        assert_eq!(*c, Count { count: 3, bytes: 25 });
        assert_eq!(k, "heap|malloc|malloc@libc.so.6|foo@libfoo.so|test_x@test_x.py");
        assert_eq!(b.compare(k, Count { count: 3, bytes: 25 }), Change::Unchanged { was: *c });
        assert_eq!(b.compare(k, Count { count: 3, bytes: 26 }), Change::Grew { was: *c });
        assert_eq!(b.compare(k, Count { count: 1, bytes: 1 }), Change::Unchanged { was: *c });
        assert_eq!(b.compare("heap|other@libfoo.so", Count { count: 1, bytes: 1 }), Change::New);
        assert_ne!(key("fd", "open", std::iter::empty()), key("heap", "open", std::iter::empty()), "kinds never match");
        assert_ne!(key("heap", "malloc", std::iter::empty()), key("heap", "calloc", std::iter::empty()));
        assert_eq!(fingerprint(k), fingerprint(k));
        assert_eq!(fingerprint(k).len(), 16);
    }

    #[test]
    fn rejects_what_is_not_a_report() {
        let e = Baseline::from_json(&json!({"schema": "other/2"}), "x.json").unwrap_err();
        assert!(e.contains("x.json") && e.contains("residue-report/1"), "{e}");
    }
}
