//! SARIF 2.1.0 for `residue check --sarif` (GitHub code scanning, Azure DevOps, IDE viewers):
//! one result per counted stack, located at the first frame, from the owner outward, that has
//! a source file; the whole stack as a SARIF `stack`. Paths under the working directory are
//! relative to the `SRCROOT` base (so code scanning maps them onto the repository), others are
//! absolute `file://` URIs. `partialFingerprints` carries the baseline key's hash, stable
//! across runs and rebuilds, so a viewer tracks one leak over time.

use std::path::Path;

use serde_json::{json, Value};

use super::{Count, FrameOut, Report, StackOut};
use crate::check::{self, CheckOut};

const SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// Percent-encodes a path for a URI (RFC 3986 unreserved characters and `/` stay).
fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn artifact(file: &str, root: &Path) -> Value {
    let p = Path::new(file);
    match p.strip_prefix(root).ok().and_then(Path::to_str) {
        Some(rel) if p.is_absolute() => json!({"uri": encode_path(rel), "uriBaseId": "SRCROOT"}),
        _ if p.is_absolute() => json!({"uri": format!("file://{}", encode_path(file))}),
        _ => json!({"uri": encode_path(file)}),
    }
}

fn location(f: &FrameOut, root: &Path) -> Value {
    let mut loc = json!({});
    if let Some(file) = &f.file {
        let mut phys = json!({"artifactLocation": artifact(file, root)});
        if let Some(line) = f.line.filter(|&l| l > 0) {
            phys["region"] = json!({"startLine": line});
        }
        loc["physicalLocation"] = phys;
    }
    if let Some(func) = &f.function {
        loc["logicalLocations"] = json!([{"fullyQualifiedName": func, "kind": "function"}]);
    }
    loc
}

/// The first frame from the owner outward with a source file (else the owner frame).
fn primary(s: &StackOut) -> Option<&FrameOut> {
    let start = s.owner_frame.unwrap_or(0);
    s.frames.iter().skip(start).find(|f| f.file.is_some()).or_else(|| s.frames.get(start))
}

pub fn render(r: &Report, c: &CheckOut, root: &Path) -> String {
    let mut kinds: Vec<String> = Vec::new();
    for l in &c.libraries {
        for s in &l.stacks {
            if !kinds.contains(&s.kind) {
                kinds.push(s.kind.clone());
            }
        }
    }
    let rules: Vec<Value> = kinds
        .iter()
        .map(|k| {
            json!({
                "id": format!("residue/leak/{k}"),
                "name": format!("Unreleased{}", k[..1].to_uppercase() + &k[1..]),
                "shortDescription": {"text": format!("A {k} resource acquired here was never released")},
                "fullDescription": {"text": format!("residue traced the program and found {k} resources acquired at this stack still held when it exited.")},
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": ["leak", k]}
            })
        })
        .collect();
    let mut results = Vec::new();
    for l in &c.libraries {
        for s in &l.stacks {
            let st = check::stack_of(r, s);
            let over = if s.by_test {
                s.test.as_ref().is_some_and(|t| c.tests.iter().any(|x| x.nodeid == *t && !x.pass))
            } else {
                !l.pass
            };
            let mut text = format!(
                "{} from {} never released, owned by {}",
                check::amount(&s.kind, Count { count: s.count, bytes: s.bytes }),
                s.api,
                l.module
            );
            match (s.change, s.baseline) {
                ("new", _) => text.push_str(" (new since the baseline)"),
                ("grew", Some(b)) => {
                    text.push_str(&format!(" (grew from {} / {} bytes in the baseline)", b.count, b.bytes))
                }
                _ => {}
            }
            if let Some(t) = &s.test {
                text.push_str(&format!(" in test {t}"));
            }
            text.push_str(if over { "; over its limits." } else { "; within its limits." });
            let mut result = json!({
                "ruleId": format!("residue/leak/{}", s.kind),
                "ruleIndex": kinds.iter().position(|k| *k == s.kind).unwrap_or(0),
                "level": if over { "error" } else { "note" },
                "message": {"text": text},
                "partialFingerprints": {"residueStack/v1": s.fingerprint},
                "properties": {"count": s.count, "bytes": s.bytes, "module": l.module, "change": s.change},
            });
            if let Some(f) = primary(st) {
                result["locations"] = json!([location(f, root)]);
            }
            let frames: Vec<Value> = st
                .frames
                .iter()
                .map(|f| {
                    let mut fr = json!({"location": location(f, root)});
                    if let Some(m) = &f.module {
                        fr["module"] = json!(m);
                    }
                    fr
                })
                .collect();
            result["stacks"] =
                json!([{"message": {"text": "where it was acquired (innermost first)"}, "frames": frames}]);
            results.push(result);
        }
    }
    let root_uri = format!("file://{}/", encode_path(root.to_str().unwrap_or("/").trim_end_matches('/')));
    let log = json!({
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "residue",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{
                "commandLine": r.process.command,
                "executionSuccessful": r.tracked,
                "exitCode": c.exit_status,
            }],
            "originalUriBaseIds": {"SRCROOT": {"uri": root_uri}},
            "results": results,
        }]
    });
    let mut s = serde_json::to_string_pretty(&log).expect("a JSON value always serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(encode_path("/a b/c#.c"), "/a%20b/c%23.c");
        let root = Path::new("/proj");
        assert_eq!(artifact("/proj/src/x.c", root), json!({"uri": "src/x.c", "uriBaseId": "SRCROOT"}));
        assert_eq!(artifact("/usr/src/y.c", root), json!({"uri": "file:///usr/src/y.c"}));
        assert_eq!(artifact("./malloc/malloc.c", root), json!({"uri": "./malloc/malloc.c"}));
    }
}
