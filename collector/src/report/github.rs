//! GitHub Actions workflow commands (`::error file=F,line=L,title=T::MESSAGE`), printed on
//! stdout when `GITHUB_ACTIONS=true`: each counted stack of a library or test over its limits
//! becomes an annotation on the pull request, at the first frame from the owner outward whose
//! source file is inside the workspace (GitHub can only annotate files of the repository).

use std::fmt::Write;
use std::path::Path;

use super::{Count, Report, StackOut};
use crate::check::{self, CheckOut};

/// Escaping of a command's message (`%`, CR, LF).
fn data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escaping of a property value (also `:` and `,`, which end a property).
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}

/// The repository-relative file and line of the first frame (owner outward) in `root`.
pub fn location(s: &StackOut, root: &Path) -> Option<(String, u32)> {
    let start = s.owner_frame.unwrap_or(0);
    s.frames.iter().skip(start).find_map(|f| {
        let file = Path::new(f.file.as_deref()?);
        let rel = file.strip_prefix(root).ok()?;
        Some((rel.to_str()?.to_owned(), f.line.unwrap_or(1).max(1)))
    })
}

pub fn render(r: &Report, c: &CheckOut, root: &Path) -> String {
    let mut out = String::new();
    for l in &c.libraries {
        for s in &l.stacks {
            let failing_test = s.test.as_ref().is_some_and(|t| c.tests.iter().any(|x| x.nodeid == *t && !x.pass));
            let judged_failing = if s.by_test { failing_test } else { !l.pass };
            if !judged_failing {
                continue;
            }
            let st = check::stack_of(r, s);
            let title = format!(
                "residue: {} leaked by {}",
                check::amount(&s.kind, Count { count: s.count, bytes: s.bytes }),
                check::pattern::basename(&l.module)
            );
            let mut msg = format!("{} from {}", title.trim_start_matches("residue: "), s.api);
            if let Some(t) = &s.test {
                let _ = write!(msg, " in test {t}");
            }
            msg.push('\n');
            msg.push_str(&check::stack_text(st, 12));
            let loc =
                location(st, root).map(|(f, line)| format!("file={},line={line},", property(&f))).unwrap_or_default();
            let _ = writeln!(out, "::error {loc}title={}::{}", property(&title), data(msg.trim_end()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(data("50% a\nb"), "50%25 a%0Ab");
        assert_eq!(property("a:b,c"), "a%3Ab%2Cc");
    }
}
