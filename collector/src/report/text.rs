//! The human report, printed on stderr so the target's own output stays untouched. Compact by
//! default (the top frames of the first stacks of each library); `--all` shows everything.

use std::fmt::Write;
use std::path::Path;

use super::{Count, FrameOut, Report, ResidueSummary};
use crate::noise::Origin;

/// How much of the report to show.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub frames: usize,
    pub stacks: usize,
    pub libraries: usize,
}

impl Limits {
    pub const COMPACT: Limits = Limits { frames: 12, stacks: 5, libraries: 20 };
    pub const ALL: Limits = Limits { frames: usize::MAX, stacks: usize::MAX, libraries: usize::MAX };
}

/// `1234 bytes`, `12.1 KiB`, `3.0 MiB`: exact when small, readable when large.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 10 * 1024 {
        return format!("{n} byte{}", if n == 1 { "" } else { "s" });
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// "3 heap blocks (96 bytes)", "2 fds".
fn amount(kind: &str, c: Count) -> String {
    let noun = match kind {
        "heap" => "heap block",
        "fd" => "file descriptor",
        "stream" => "FILE stream",
        "dir" => "directory stream",
        "mapping" => "mapping",
        other => other,
    };
    let s = if c.count == 1 { "" } else { "s" };
    if kind == "heap" || c.bytes > 0 {
        format!("{} {noun}{s} ({})", c.count, bytes(c.bytes))
    } else {
        format!("{} {noun}{s}", c.count)
    }
}

/// Amounts per kind in the protocol's kind order (heap first), not alphabetical.
fn amounts(m: &std::collections::BTreeMap<String, Count>) -> String {
    let mut v: Vec<(&String, &Count)> = m.iter().collect();
    v.sort_by_key(|(k, _)| residue_protocol::Kind::from_name(k).map_or(u16::MAX, |k| u16::from(k.0)));
    v.iter().map(|(k, c)| amount(k, **c)).collect::<Vec<_>>().join(", ")
}

fn basename(p: &str) -> &str {
    Path::new(p).file_name().and_then(|n| n.to_str()).unwrap_or(p)
}

fn frame_line(i: usize, f: &FrameOut, owner: bool) -> String {
    let mut s = format!("    {}#{i:<2} ", if owner { "→" } else { " " });
    match &f.function {
        Some(func) => s.push_str(func),
        None => match f.address {
            Some(a) => {
                let _ = write!(s, "{a:#x}");
            }
            None => s.push('?'),
        },
    }
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        let _ = write!(s, " at {file}:{line}");
    }
    match (&f.module, &f.offset) {
        (Some(m), Some(o)) if f.function.is_none() => {
            let _ = write!(s, " ({}+{o:#x})", basename(m));
        }
        (Some(m), _) => {
            let _ = write!(s, " ({})", basename(m));
        }
        (None, _) if f.kind == "python" => s.push_str(" [python]"),
        (None, _) => s.push_str(" (no module)"),
    }
    if f.kind == "foreign" {
        s.push_str(" [called via ctypes/cffi]");
    }
    if f.inlined {
        s.push_str(" [inlined]");
    }
    s
}

/// One line for the runtime's residue of one origin, when there is some and it is not listed.
fn residue_line(origin: &str, what: &str, s: &ResidueSummary) -> Option<String> {
    if s.count == 0 || s.listed {
        return None;
    }
    let stacks = if s.stacks == 1 { "stack" } else { "stacks" };
    Some(format!(
        "{origin} residue: {} in {} {stacks}, {what}, kept until exit; not your leaks (--all shows it)",
        amounts(&s.unreleased),
        s.stacks
    ))
}

/// One line for a followed child: who it is and what it left behind.
fn child_line(c: &Report) -> String {
    let pid = c.process.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let parent = c.parent_pid.map(|p| format!(", forked by {p}")).unwrap_or_default();
    let what = if c.totals.count == 0 {
        "nothing unreleased".to_owned()
    } else {
        format!(
            "{} unreleased in {} {}",
            amounts(&c.totals.unreleased),
            c.totals.libraries,
            if c.totals.libraries == 1 { "library" } else { "libraries" }
        )
    };
    let incomplete = if c.tracked && !c.process.complete { "; trace INCOMPLETE" } else { "" };
    let more = if c.totals.count > 0 { " (--all or --json shows it)" } else { "" };
    format!("child process {pid}{parent}: `{}`: {what}{incomplete}{more}", c.process.command)
}

/// Renders the whole report.
pub fn render(r: &Report, limits: Limits) -> String {
    let mut out = String::new();
    let p = &r.process;
    let status = match (p.exit_status, p.signal) {
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        (Some(code), None) => format!("exited with status {code}"),
        (None, None) => "ended with an unknown status".to_owned(),
    };
    let pid = p.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let state = if !r.tracked {
        "not tracked"
    } else if p.complete {
        "trace complete"
    } else {
        "trace INCOMPLETE"
    };
    let _ = writeln!(out, "residue: `{}`{pid} {status}; {state}", p.command);
    if r.images.len() > 1 {
        let chain: Vec<String> = r.images.iter().map(|i| format!("{} (pid {})", i.exe, i.pid)).collect();
        let _ = writeln!(out, "residue: images: {}; leaks are those of the last image", chain.join(" → exec → "));
    }
    for n in &r.notices {
        let _ = writeln!(out, "residue: note: {n}");
    }
    if !r.children_not_followed.is_empty() {
        let pids: Vec<String> = r.children_not_followed.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "residue: forked children not followed: pid {}", pids.join(", "));
    }
    for pr in &r.problems {
        let _ = writeln!(out, "residue: {pr}");
    }
    for l in r.runtime_libraries.iter().filter(|l| l.unloaded && !l.still_held.is_empty()) {
        let _ = writeln!(
            out,
            "residue: warning: {} was unloaded (dlclose) while still holding {}: nothing can release them now",
            basename(&l.module),
            amounts(&l.still_held)
        );
    }
    if r.python.as_ref().is_some_and(|p| p.pymalloc != Some(false)) {
        let _ = writeln!(
            out,
            "residue: note: Python objects of 512 bytes or less come from pymalloc's arenas and are not seen one by one; `residue run --python-malloc` (PYTHONMALLOC=malloc) shows them"
        );
    }
    if !r.tracked {
        return out;
    }
    let untracked_end = r.images.last().is_some_and(|i| i.untracked);
    if !p.complete && !untracked_end {
        let _ = writeln!(
            out,
            "residue: the final image did not finish its trace (killed, crashed, or _exit): some releases may be missing, so some of what follows may have been released"
        );
    }

    let all: Vec<&super::Library> = r.libraries.iter().chain(&r.unattributed).collect();
    for (li, lib) in all.iter().enumerate() {
        if li == limits.libraries {
            let rest = &all[li..];
            let _ = writeln!(out, "\n... {} more libraries (--all shows them)", rest.len());
            break;
        }
        let origin =
            if lib.origin == Origin::User { String::new() } else { format!(" [{} residue]", lib.origin.name()) };
        let split = lib
            .mappings
            .map(|m| format!(" (mappings: {} anonymous, {} file-backed)", m.anonymous.count, m.file.count))
            .unwrap_or_default();
        let _ = writeln!(out, "\n{}{origin}: {} unreleased{split}", lib.module, amounts(&lib.unreleased));
        for (si, st) in lib.stacks.iter().enumerate() {
            if si == limits.stacks {
                let _ = writeln!(out, "  ... {} more stacks (--all shows them)", lib.stacks.len() - si);
                break;
            }
            let c = Count { count: st.count, bytes: st.bytes };
            let _ = writeln!(out, "  {} from {}", amount(&st.kind, c), st.api);
            if !st.descriptions.is_empty() {
                let shown: Vec<&str> = st.descriptions.iter().take(3).map(String::as_str).collect();
                let more = st.descriptions.len().saturating_sub(3);
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                let _ = writeln!(out, "      ({}{more})", shown.join(", "));
            }
            if st.stack_missing {
                let _ = writeln!(out, "      (stack not in trace)");
            }
            if let Some(fc) = &st.foreign_call {
                let module = fc.module.as_deref().map_or("no module", basename);
                let _ = match &fc.function {
                    Some(f) => writeln!(out, "    foreign call: {f} ({module})"),
                    None => writeln!(out, "    foreign call: {:#x} ({module})", fc.address),
                };
            }
            // Keep the owner frame in view even when the allocator's own frames are many.
            let start = match st.owner_frame {
                Some(o) if o + 1 > limits.frames => o.saturating_sub(2),
                _ => 0,
            };
            if start > 0 {
                let _ = writeln!(out, "      ... {start} frames inside the allocator");
            }
            for (fi, f) in st.frames.iter().enumerate().skip(start) {
                if fi - start == limits.frames {
                    let _ = writeln!(out, "      ... {} more frames", st.frames.len() - fi);
                    break;
                }
                let _ = writeln!(out, "{}", frame_line(fi, f, st.owner_frame == Some(fi)));
            }
        }
    }

    let mut residue = String::new();
    for (origin, what, s) in [
        (
            "interpreter",
            "the Python interpreter's own (interned objects, module state, caches)",
            &r.runtime_residue.interpreter,
        ),
        ("loader", "the dynamic loader's records of what it loaded (dlopen, TLS)", &r.runtime_residue.loader),
    ] {
        if let Some(line) = residue_line(origin, what, s) {
            let _ = writeln!(residue, "{line}");
        }
    }
    if !residue.is_empty() {
        let _ = write!(out, "\n{residue}");
    }

    let launcher: Vec<&Report> = r.children.iter().filter(|c| c.from_launcher).collect();
    if !launcher.is_empty() && limits.libraries != usize::MAX {
        let mut total = std::collections::BTreeMap::new();
        for c in &launcher {
            for (k, v) in &c.totals.unreleased {
                let e: &mut Count = total.entry(k.clone()).or_default();
                e.count += v.count;
                e.bytes += v.bytes;
            }
        }
        let left =
            if total.is_empty() { "nothing unreleased".to_owned() } else { format!("{} unreleased", amounts(&total)) };
        let _ = write!(
            out,
            "\nresidue: {} process{} started before the final exec (the launcher's helpers) were followed too: {left} (--all shows them)\n",
            launcher.len(),
            if launcher.len() == 1 { "" } else { "es" }
        );
    }
    for c in r.children.iter().filter(|c| !c.from_launcher || limits.libraries == usize::MAX) {
        let _ = write!(out, "\n{}", child_line(c));
        // Children in full only when everything was asked for: a launcher script alone (pyenv's
        // shim) forks several helpers, whose own leftovers are rarely the question.
        if limits.libraries == usize::MAX {
            out.push_str(&render(c, limits));
        }
    }

    let mut summary = String::from("\nsummary: ");
    if untracked_end {
        summary.push_str("what the final program left behind is unknown (it was not tracked)");
    } else if r.totals.count == 0 {
        summary.push_str(if p.complete {
            "no unreleased resources"
        } else {
            "no unreleased resources seen, but the trace is incomplete"
        });
    } else {
        let _ = write!(
            summary,
            "{} unreleased in {} {} ({} distinct stack{})",
            amounts(&r.totals.unreleased),
            r.totals.libraries,
            if r.totals.libraries == 1 { "library" } else { "libraries" },
            r.totals.stacks,
            if r.totals.stacks == 1 { "" } else { "s" }
        );
    }
    if !r.released_origin_unseen.is_empty() {
        let v: Vec<String> = r.released_origin_unseen.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = write!(summary, "; released with origin unseen (acquired before tracking): {}", v.join(", "));
    }
    // Descriptors 0-2 are inherited by every process: only the others are worth a line.
    let unseen: Vec<String> = r
        .open_at_exit_origin_unseen
        .iter()
        .filter(|o| !(o.kind == "fd" && o.id <= 2))
        .map(|o| format!("{} {} ({})", o.kind, o.id, o.description))
        .collect();
    if !unseen.is_empty() {
        let shown = unseen.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = if unseen.len() > 5 { format!(" and {} more", unseen.len() - 5) } else { String::new() };
        let _ = write!(summary, "; open at exit but never seen opened (inherited or raw syscall): {shown}{more}");
    }
    let _ = writeln!(out, "{summary}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_formatting() {
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(96), "96 bytes");
        assert_eq!(bytes(20 * 1024), "20.0 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
