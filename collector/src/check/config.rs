//! `residue.toml`: per-library limits and suppression files a project keeps in its repository.
//!
//! ```toml
//! # Files of suppressions, relative to this file.
//! suppressions = ["residue.supp"]
//!
//! # Limits for every library in scope (what --max-bytes/--max-count set on the command line).
//! [limits]
//! heap = { max-bytes = 0 }
//!
//! # libfoo may keep 1 MiB of caches, zero descriptors.
//! [[library]]
//! match = "libfoo.so*"
//! heap = { max-bytes = 1048576 }
//! fd = { max-count = 0 }
//! ```
//!
//! A limit for a library is looked up most specific first: the first `[[library]]` whose
//! `match` glob matches the module's path or file name, then the command line, then
//! `[limits]`, then 0 (any leak fails).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pattern::{basename, glob_match};

/// The most a library may leave behind of one kind; `None` fields are not limited here.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limit {
    pub max_bytes: Option<u64>,
    pub max_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct LibraryFile {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(flatten)]
    kinds: BTreeMap<String, Limit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    suppressions: Vec<PathBuf>,
    #[serde(default)]
    limits: BTreeMap<String, Limit>,
    #[serde(default)]
    library: Vec<LibraryFile>,
}

/// Limits from all sources, resolved per library and kind by [`Config::limit`].
#[derive(Debug, Default)]
pub struct Config {
    /// Where it came from, for messages (`None`: no file).
    pub path: Option<PathBuf>,
    pub suppressions: Vec<PathBuf>,
    defaults: BTreeMap<String, Limit>,
    /// From --max-bytes/--max-count: `None` kind means every kind.
    cli: Vec<(Option<String>, Limit)>,
    libraries: Vec<(String, BTreeMap<String, Limit>)>,
}

fn check_kind(k: &str, at: &str) -> Result<(), String> {
    if residue_protocol::Kind::from_name(k).is_none() {
        return Err(format!("{at}: `{k}` is not a resource kind (heap, fd, stream, dir, mapping)"));
    }
    Ok(())
}

impl Config {
    /// Reads `path`; suppression paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let at = path.display().to_string();
        let f: File = toml::from_str(text).map_err(|e| format!("{at}: {}", e.to_string().trim_end()))?;
        for k in f.limits.keys() {
            check_kind(k, &format!("{at}: [limits]"))?;
        }
        for l in &f.library {
            for k in l.kinds.keys() {
                check_kind(k, &format!("{at}: [[library]] match = {:?}", l.pattern))?;
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Config {
            path: Some(path.to_owned()),
            suppressions: f.suppressions.iter().map(|s| dir.join(s)).collect(),
            defaults: f.limits,
            cli: Vec::new(),
            libraries: f.library.into_iter().map(|l| (l.pattern, l.kinds)).collect(),
        })
    }

    /// Adds a command-line limit (`kind` `None`: every kind).
    pub fn add_cli(&mut self, kind: Option<String>, limit: Limit) {
        self.cli.push((kind, limit));
    }

    /// The limit for `module` (a path) and `kind`: each of bytes and count from the most
    /// specific source that sets it; unset means 0.
    pub fn limit(&self, module: &str, kind: &str) -> Limit {
        let name = basename(module);
        let mut sources: Vec<Limit> = Vec::new();
        if let Some((_, kinds)) = self.libraries.iter().find(|(p, _)| glob_match(p, module) || glob_match(p, name)) {
            sources.extend(kinds.get(kind).copied());
        }
        // Later command-line flags win over earlier ones; kind-specific over "every kind".
        sources.extend(self.cli.iter().rev().filter(|(k, _)| k.as_deref() == Some(kind)).map(|(_, l)| *l));
        sources.extend(self.cli.iter().rev().filter(|(k, _)| k.is_none()).map(|(_, l)| *l));
        sources.extend(self.defaults.get(kind).copied());
        Limit {
            max_bytes: Some(sources.iter().find_map(|l| l.max_bytes).unwrap_or(0)),
            max_count: Some(sources.iter().find_map(|l| l.max_count).unwrap_or(0)),
        }
    }
}

/// Parses `KIND=N` or `N` (every kind), with optional size suffixes (k, KiB, M, MiB, G, GiB:
/// all powers of 1024).
pub fn parse_limit_arg(s: &str) -> Result<(Option<String>, u64), String> {
    let (kind, n) = match s.split_once('=') {
        Some((k, n)) => {
            check_kind(k, "--max-bytes/--max-count")?;
            (Some(k.to_owned()), n)
        }
        None => (None, s),
    };
    let n = n.trim();
    let split = n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len());
    let (digits, suffix) = n.split_at(split);
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("`{other}` is not a size suffix in `{s}` (use k, M or G)")),
    };
    let v: u64 = digits.parse().map_err(|_| format!("`{s}` is not KIND=N or N (e.g. heap=4096)"))?;
    Ok((kind, v.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_library_then_cli_then_defaults() {
        let text = r#"
suppressions = ["supp/residue.supp"]
[limits]
heap = { max-bytes = 100, max-count = 5 }
[[library]]
match = "libfoo.so*"
heap = { max-bytes = 1048576 }
fd = { max-count = 0 }
"#;
        let mut c = Config::parse(text, Path::new("/proj/residue.toml")).unwrap();
        assert_eq!(c.suppressions, [PathBuf::from("/proj/supp/residue.supp")]);
        let l = |c: &Config, m: &str, k: &str| {
            let l = c.limit(m, k);
            (l.max_bytes.unwrap(), l.max_count.unwrap())
        };
        assert_eq!(l(&c, "/usr/lib/libfoo.so.1", "heap"), (1_048_576, 5), "count falls through to [limits]");
        assert_eq!(l(&c, "/usr/lib/libbar.so", "heap"), (100, 5));
        assert_eq!(l(&c, "/usr/lib/libbar.so", "fd"), (0, 0), "unset is zero");
        c.add_cli(Some("heap".into()), Limit { max_bytes: Some(4096), max_count: None });
        c.add_cli(None, Limit { max_bytes: None, max_count: Some(9) });
        assert_eq!(l(&c, "/usr/lib/libbar.so", "heap"), (4096, 9));
        assert_eq!(l(&c, "/usr/lib/libfoo.so.1", "heap"), (1_048_576, 9));
        assert_eq!(l(&c, "/usr/lib/libbar.so", "stream"), (0, 9));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let e = Config::parse("[limits]\nsocks = { max-count = 0 }\n", Path::new("r.toml")).unwrap_err();
        assert!(e.contains("r.toml") && e.contains("`socks` is not a resource kind"), "{e}");
        let e = Config::parse("[limits]\nheap = { max-byte = 1 }\n", Path::new("r.toml")).unwrap_err();
        assert!(e.contains("r.toml") && e.contains("max-byte"), "{e}");
        assert!(Config::parse("bogus = 1\n", Path::new("r.toml")).is_err());
    }

    #[test]
    fn limit_arguments() {
        assert_eq!(parse_limit_arg("heap=4096").unwrap(), (Some("heap".into()), 4096));
        assert_eq!(parse_limit_arg("fd=0").unwrap(), (Some("fd".into()), 0));
        assert_eq!(parse_limit_arg("1MiB").unwrap(), (None, 1 << 20));
        assert_eq!(parse_limit_arg("heap=4k").unwrap(), (Some("heap".into()), 4096));
        assert!(parse_limit_arg("sock=1").is_err());
        assert!(parse_limit_arg("heap=lots").is_err());
        assert!(parse_limit_arg("heap=1X").is_err());
    }
}
