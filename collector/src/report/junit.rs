//! JUnit XML for `residue check --junit`: one test case per library in scope (failing with its
//! leak stacks), one per pytest test when the plugin ran, and one for the target's own exit
//! status (an `error`, not a `failure`, when the target failed: CI dashboards keep "the tests
//! failed" and "the code leaked" apart).
//!
//! The shape is the one Jenkins, GitLab and GitHub's test reporters read (`testsuites` >
//! `testsuite` > `testcase` > `failure`/`error`/`skipped`); `tests/schemas/junit.xsd` is the
//! schema the integration tests validate it with.

use std::fmt::Write;

use super::{Count, Report};
use crate::check::{self, CheckOut};

/// XML attribute escaping (line breaks kept as character references, since a parser
/// normalizes literal ones in attributes to spaces); characters XML 1.0 cannot carry at all
/// are dropped.
pub fn escape(s: &str) -> String {
    escape_with(s, true)
}

/// XML element text escaping: line breaks stay literal, so the stacks read as lines.
pub fn escape_text(s: &str) -> String {
    escape_with(s, false)
}

fn escape_with(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if !attribute => out.push(c),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || matches!(c as u32, 0xFFFE | 0xFFFF) => {}
            c => out.push(c),
        }
    }
    out
}

struct Case {
    name: String,
    classname: &'static str,
    /// (element, type, message, body)
    outcome: Option<(&'static str, &'static str, String, String)>,
}

pub fn render(r: &Report, c: &CheckOut) -> String {
    let mut cases = Vec::new();
    let status = match c.verdict {
        "not-tracked" => Some("residue could not track the target (or the program it exec'd)".to_owned()),
        "target-crashed" => Some(format!("the target was killed by signal {}", r.process.signal.unwrap_or(0))),
        "target-failed" => Some(format!("the target exited with status {}", c.exit_status)),
        _ => None,
    };
    cases.push(Case {
        name: format!("exit status of {}", r.process.command),
        classname: "residue.process",
        outcome: status.map(|m| ("error", "target-failed", m, String::new())),
    });
    for l in &c.libraries {
        let name = check::pattern::basename(&l.module).to_owned();
        let outcome = (!l.pass).then(|| {
            let over: Vec<String> = l
                .over
                .iter()
                .map(|k| {
                    format!("{} leaked (limit: {})", check::amount(k, l.leaked[k]), check::limit_text(l.limits[k]))
                })
                .collect();
            let mut body = format!("{}\n", l.module);
            for s in &l.stacks {
                let _ = writeln!(
                    body,
                    "  {} from {}{}",
                    check::amount(&s.kind, Count { count: s.count, bytes: s.bytes }),
                    s.api,
                    s.test.as_deref().map(|t| format!(" in test {t}")).unwrap_or_default()
                );
                body.push_str(&check::stack_text(check::stack_of(r, s), 16));
            }
            let first = l
                .stacks
                .first()
                .map(|s| {
                    let st = check::stack_of(r, s);
                    st.owner_frame.and_then(|i| st.frames.get(i)).map(check::frame_text).unwrap_or_default()
                })
                .unwrap_or_default();
            ("failure", "leak", format!("{}: {}; first stack: {first}", name, over.join(", ")), body)
        });
        cases.push(Case { name, classname: "residue.libraries", outcome });
    }
    for t in &c.tests {
        let outcome = (!t.pass).then(|| {
            let parts: Vec<String> = t.leaked.iter().map(|(k, v)| check::amount(k, *v)).collect();
            let msg = format!("{} leaked {} (over: {})", t.nodeid, parts.join(", "), t.over.join(", "));
            let mut body = String::new();
            for l in &c.libraries {
                for s in l.stacks.iter().filter(|s| s.test.as_deref() == Some(t.nodeid.as_str())) {
                    let _ = writeln!(
                        body,
                        "  {} from {} ({})",
                        check::amount(&s.kind, Count { count: s.count, bytes: s.bytes }),
                        s.api,
                        l.module
                    );
                    body.push_str(&check::stack_text(check::stack_of(r, s), 16));
                }
            }
            ("failure", "leak", msg, body)
        });
        cases.push(Case { name: t.nodeid.clone(), classname: "residue.pytest", outcome });
    }
    for g in &c.scope.unmatched_libraries {
        cases.push(Case {
            name: g.clone(),
            classname: "residue.libraries",
            outcome: Some(("skipped", "", format!("--library {g} matched no loaded library"), String::new())),
        });
    }

    let count = |e: &str| cases.iter().filter(|k| k.outcome.as_ref().is_some_and(|o| o.0 == e)).count();
    let (failures, errors, skipped) = (count("failure"), count("error"), count("skipped"));
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let suite = escape(&format!("residue check: {}", r.process.command));
    let _ = writeln!(
        x,
        "<testsuites name=\"residue check\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">",
        cases.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\">",
        cases.len()
    );
    let _ = writeln!(x, "    <properties>");
    let _ = writeln!(x, "      <property name=\"verdict\" value=\"{}\"/>", c.verdict);
    let _ = writeln!(x, "      <property name=\"exit_status\" value=\"{}\"/>", c.exit_status);
    let _ = writeln!(x, "      <property name=\"command\" value=\"{}\"/>", escape(&r.process.command));
    let _ = writeln!(x, "    </properties>");
    for k in &cases {
        let open = format!("    <testcase name=\"{}\" classname=\"{}\"", escape(&k.name), k.classname);
        match &k.outcome {
            None => {
                let _ = writeln!(x, "{open}/>");
            }
            Some((elem, ty, msg, body)) => {
                let _ = writeln!(x, "{open}>");
                let ty = if ty.is_empty() { String::new() } else { format!(" type=\"{ty}\"") };
                if body.is_empty() {
                    let _ = writeln!(x, "      <{elem} message=\"{}\"{ty}/>", escape(msg));
                } else {
                    let _ = writeln!(x, "      <{elem} message=\"{}\"{ty}>{}</{elem}>", escape(msg), escape_text(body));
                }
                let _ = writeln!(x, "    </testcase>");
            }
        }
    }
    let _ = writeln!(x, "    <system-out>{}</system-out>", escape_text(&c.summary));
    let _ = writeln!(x, "  </testsuite>");
    let _ = writeln!(x, "</testsuites>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(escape("<module> & \"x\"\n"), "&lt;module&gt; &amp; &quot;x&quot;&#10;");
        assert_eq!(escape("a\u{1}b"), "ab");
        assert_eq!(escape_text("<a>\n\tb"), "&lt;a&gt;\n\tb");
    }
}
