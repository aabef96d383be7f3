//! The two kinds of patterns `residue check` matches names with.
//!
//! - [`template_match`]: LeakSanitizer's suppression syntax, so suppression files written for
//!   LSan mean the same here: `*` matches any run of characters, a leading `^` anchors at the
//!   start and a trailing `$` at the end; otherwise the pattern may match anywhere (a
//!   substring). `leak:libfoo.so` therefore matches `/opt/lib/libfoo.so.1`.
//! - [`glob_match`]: shell globs for `--library` and `residue.toml` (`*`, `?`, `[abc]`,
//!   `[!a-z]`), matched against the whole string.

/// LeakSanitizer's `TemplateMatch`: `*` wildcards, `^`/`$` anchors, substring otherwise.
pub fn template_match(pattern: &str, s: &str) -> bool {
    let (anchored_start, p) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (anchored_end, p) = match p.strip_suffix('$') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    // An unanchored side is an implicit `*`; then it is a whole-string `*`-only match.
    let mut full: Vec<char> = Vec::with_capacity(p.len() + 2);
    if !anchored_start {
        full.push('*');
    }
    full.extend(p.chars());
    if !anchored_end {
        full.push('*');
    }
    let t: Vec<char> = s.chars().collect();
    wildcard_at(&full, &t, false)
}

/// A shell glob matched against the whole of `s`.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    wildcard_at(&p, &t, true)
}

/// Whole-string match of `p` against `t`; `*` always, `?` and `[...]` only when `classes`.
fn wildcard_at(p: &[char], t: &[char], classes: bool) -> bool {
    // Iterative matcher with one backtrack point (the last `*`): linear for typical patterns.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' if classes => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' if classes => {
                    if let Some((matched, len)) = class(&p[pi..], t[ti]) {
                        if matched {
                            pi += len;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at the start of `p`: whether `c` is in it and the class's length in
/// pattern characters; `None` if the class is not closed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    None
}

/// The file name of a path (the whole string when it has no `/`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsan_templates() {
        assert!(template_match("libfoo.so", "/opt/lib/libfoo.so.1"), "substring");
        assert!(template_match("leaky_*", "leaky_strdup_names"));
        assert!(template_match("^leaky_", "leaky_strdup_names"));
        assert!(!template_match("^eaky", "leaky_strdup_names"));
        assert!(template_match("names$", "leaky_strdup_names"));
        assert!(!template_match("name$", "leaky_strdup_names"));
        assert!(template_match("^leaky_strdup_names$", "leaky_strdup_names"));
        assert!(!template_match("^leaky_strdup$", "leaky_strdup_names"));
        assert!(template_match("^a*c$", "abbbc"));
        assert!(!template_match("^a*c$", "abbbcd"));
        assert!(template_match("dup*es", "leaky_strdup_names"));
        assert!(!template_match("names*dup", "leaky_strdup_names"), "parts in order");
        assert!(template_match("*", ""));
        assert!(template_match("^*$", "x"));
        assert!(template_match("a*$", "xxa"), "anchored end with a wildcard before it");
        assert!(!template_match("ab*b$", "ab"), "the last part may not overlap the first");
    }

    #[test]
    fn shell_globs() {
        assert!(glob_match("libleaky.so", "libleaky.so"));
        assert!(!glob_match("libleaky", "libleaky.so"), "whole string");
        assert!(glob_match("lib*.so*", "libfoo.so.1.2"));
        assert!(glob_match("*/fixtures/*", "/t/debug/fixtures/libleaky.so"));
        assert!(glob_match("lib?eaky.so", "libleaky.so"));
        assert!(glob_match("lib[a-m]eaky.so", "libleaky.so"));
        assert!(!glob_match("lib[!a-m]eaky.so", "libleaky.so"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("[x", "[x"), "an unclosed class is literal");
        assert_eq!(basename("/a/b/libc.so.6"), "libc.so.6");
    }
}
