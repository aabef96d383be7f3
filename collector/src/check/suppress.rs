//! Suppressions: what a project declares is not its leak.
//!
//! One rule per line, `TYPE:PATTERN`, `#` starts a comment (LeakSanitizer's format, so an LSan
//! suppression file works as is). Patterns use LSan's matching ([`template_match`]).
//!
//! | type | kinds | matched against |
//! |---|---|---|
//! | `leak:` | heap | function, module path or source file of any frame |
//! | `fd:`, `stream:`, `dir:`, `mapping:` (any kind name) | that kind | same as `leak:` |
//! | `module:` | all | the owner module (the library the leak is reported under) |
//! | `python:` | all | the file or function of any Python frame |
//!
//! `leak:` keeps LSan's meaning (heap only): a file written for LSan must not silence a
//! descriptor leak nobody looked at.

use serde::Serialize;

use super::pattern::template_match;
use crate::report::{FrameOut, StackOut};

/// The built-in set, printed by `residue suppressions --print-default`. Each rule names an
/// allocation path that belongs to glibc, the dynamic loader or CPython's start-up, never a
/// frame that user code runs under (no `dlopen`, `_dl_init` or `Py_RunMain`: a library's
/// constructor runs under those, and its leaks must stay visible).
pub const DEFAULT: &str = "\
# residue's default suppressions (turn off with --no-default-suppressions).
# The dynamic loader: link maps, search paths, symbol-version tables and TLS blocks live
# until exit by design.
leak:_dl_new_object
leak:_dl_map_object
leak:_dl_map_object_deps
leak:_dl_check_map_versions
leak:_dl_important_hwcaps
leak:_dl_init_paths
leak:_dl_allocate_tls
leak:_dl_update_slotinfo
leak:_dl_resize_dtv
leak:_dl_add_to_slotinfo
mapping:_dl_map_segments
mapping:_dl_map_object
# glibc: dlerror's per-thread buffer, iconv module cache, locale data, NSS modules, thread
# stacks cached for reuse.
leak:_dlerror_run
leak:__gconv_open
leak:__gconv_read_conf
leak:_nl_find_locale
leak:_nl_load_locale
leak:_nl_intern_locale_data
mapping:_nl_load_locale_from_archive
leak:__nss_database_lookup
leak:nss_load_library
mapping:allocate_stack
# CPython start-up: the interpreter's own state, built before the first line of the script
# and deliberately not freed at exit.
leak:pymain_init
leak:Py_InitializeFromConfig
leak:pyinit_core
leak:init_interp_main
leak:_PyRuntime_Initialize
mapping:pymain_init
mapping:Py_InitializeFromConfig
";

/// What a rule matches against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Any frame (function, module, file), stacks of one kind (`leak:` is heap).
    Frames { kind: String },
    /// The owner module, any kind.
    Module,
    /// Python frames' file or function, any kind.
    Python,
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// The line as written, without comment or surrounding blanks (`leak:foo`).
    pub text: String,
    pub target: Target,
    pub pattern: String,
    /// `FILE:LINE`, or `default:LINE` for the built-in set.
    pub source: String,
    pub default: bool,
}

/// What one rule matched, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Matched {
    pub rule: String,
    pub source: String,
    pub default: bool,
    pub stacks: u64,
    pub count: u64,
    pub bytes: u64,
}

/// The rules in force, first match wins (each stack is counted under one rule only).
#[derive(Clone, Debug, Default)]
pub struct Suppressions {
    pub rules: Vec<Rule>,
}

impl Suppressions {
    /// Parses one file's text. Errors name `FILE:LINE` and what is wrong.
    pub fn parse(&mut self, text: &str, source: &str, default: bool) -> Result<(), String> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = format!("{source}:{}", i + 1);
            let Some((ty, pattern)) = line.split_once(':') else {
                return Err(format!("{at}: `{line}` is not TYPE:PATTERN (e.g. leak:my_function)"));
            };
            let (ty, pattern) = (ty.trim(), pattern.trim());
            if pattern.is_empty() {
                return Err(format!("{at}: `{line}` has an empty pattern (it would match everything)"));
            }
            let target = match ty {
                "leak" => Target::Frames { kind: "heap".into() },
                "module" => Target::Module,
                "python" => Target::Python,
                k if residue_protocol::Kind::from_name(k).is_some() => Target::Frames { kind: k.to_owned() },
                other => {
                    return Err(format!(
                        "{at}: unknown suppression type `{other}` (leak, fd, stream, dir, mapping, module or python)"
                    ))
                }
            };
            self.rules.push(Rule {
                text: format!("{ty}:{pattern}"),
                target,
                pattern: pattern.to_owned(),
                source: at,
                default,
            });
        }
        Ok(())
    }

    /// The index of the first rule that matches a stack owned by `module`.
    pub fn find(&self, module: &str, stack: &StackOut) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(module, stack))
    }
}

impl Rule {
    pub fn matches(&self, module: &str, stack: &StackOut) -> bool {
        let m = |s: &Option<String>| s.as_deref().is_some_and(|s| template_match(&self.pattern, s));
        match &self.target {
            Target::Module => template_match(&self.pattern, module),
            Target::Python => stack.frames.iter().filter(|f| f.kind == "python").any(|f| m(&f.function) || m(&f.file)),
            Target::Frames { kind } => {
                *kind == stack.kind
                    && stack.frames.iter().any(|f: &FrameOut| m(&f.function) || m(&f.module) || m(&f.file))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn frame(kind: &'static str, function: &str, module: Option<&str>, file: Option<&str>) -> FrameOut {
        FrameOut {
            kind,
            function: Some(function.into()),
            module: module.map(Into::into),
            file: file.map(Into::into),
            line: Some(1),
            address: None,
            offset: None,
            inlined: false,
        }
    }

    fn stack(kind: &str, frames: Vec<FrameOut>) -> StackOut {
        StackOut {
            kind: kind.into(),
            api: "malloc".into(),
            count: 1,
            bytes: 8,
            stack_id: 1,
            frames,
            owner_frame: Some(1),
            descriptions: vec![],
            target: None,
            stack_missing: false,
            python: vec![],
            foreign_call: None,
            origin: crate::noise::Origin::User,
            inherited_from: None,
        }
    }

    #[test]
    fn parses_types_comments_and_errors() {
        let mut s = Suppressions::default();
        s.parse(
            "# comment\n\nleak:foo  # trailing\nfd:^open_log$\nmodule:libz.so\npython:conftest.py\n",
            "f.supp",
            false,
        )
        .unwrap();
        let texts: Vec<_> = s.rules.iter().map(|r| (r.text.as_str(), r.source.as_str())).collect();
        assert_eq!(
            texts,
            [
                ("leak:foo", "f.supp:3"),
                ("fd:^open_log$", "f.supp:4"),
                ("module:libz.so", "f.supp:5"),
                ("python:conftest.py", "f.supp:6")
            ]
        );
        assert!(s.parse("bogus:x\n", "g", false).unwrap_err().starts_with("g:1: unknown suppression type `bogus`"));
        assert!(s.parse("leak:\n", "g", false).unwrap_err().contains("empty pattern"));
        assert!(s.parse("leak_foo\n", "g", false).unwrap_err().contains("not TYPE:PATTERN"));
        let mut d = Suppressions::default();
        d.parse(DEFAULT, "default", true).expect("the default set parses");
        assert!(d.rules.len() > 20);
    }

    #[test]
    fn kinds_frames_modules_and_python() {
        let heap = stack(
            "heap",
            vec![
                frame("native", "malloc", Some("/lib/libc.so.6"), None),
                frame("native", "leaky_strdup_names", Some("/t/libleaky.so"), Some("/src/libleaky.c")),
                frame("python", "test_leak", None, Some("/proj/tests/test_x.py")),
            ],
        );
        let mut fd = stack(
            "fd",
            heap.frames
                .iter()
                .map(|f| frame(f.kind, f.function.as_deref().unwrap(), f.module.as_deref(), f.file.as_deref()))
                .collect(),
        );
        fd.kind = "fd".into();
        let rule = |t: &str| {
            let mut s = Suppressions::default();
            s.parse(t, "t", false).unwrap();
            s.rules.remove(0)
        };
        let m = "/t/libleaky.so";
        assert!(rule("leak:leaky_strdup").matches(m, &heap));
        assert!(!rule("leak:leaky_strdup").matches(m, &fd), "leak: is heap only, as in LSan");
        assert!(rule("fd:leaky_strdup").matches(m, &fd));
        assert!(!rule("fd:leaky_strdup").matches(m, &heap));
        assert!(rule("leak:libleaky.c").matches(m, &heap), "source file");
        assert!(rule("leak:libc.so").matches(m, &heap), "module of any frame");
        assert!(!rule("leak:^strdup$").matches(m, &heap));
        assert!(rule("module:libleaky.so$").matches(m, &fd), "module: is every kind");
        assert!(!rule("module:libc.so").matches(m, &heap), "module: is the owner only");
        assert!(rule("python:test_x.py").matches(m, &heap));
        assert!(rule("python:^test_leak$").matches(m, &fd));
        assert!(!rule("python:leaky_strdup").matches(m, &heap), "python: looks at Python frames only");
    }
}
