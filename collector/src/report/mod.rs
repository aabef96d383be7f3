//! The report model: one structure built from the ledger and the symbolizer, rendered as text
//! (for people, on stderr) and as JSON (for scripts). Both renderers read the same model so
//! they can never disagree about what leaked.

pub mod github;
pub mod json;
pub mod junit;
pub mod sarif;
mod stack;
/// How far a stack is resolved (kept per stack by the symbolizer between preparing and building).
pub(crate) use stack::{Detail, Resolved};
pub mod text;

use std::collections::{BTreeMap, HashMap, HashSet};

use residue_protocol::Kind;
use serde::Serialize;

use crate::ledger::{Image, Ledger};
use crate::noise::{self, Origin};
use crate::symbolize::{ModuleMap, Symbolizer, Work};

pub const SCHEMA: &str = "residue-report/1";
/// How the interposer describes an anonymous mapping.
const ANONYMOUS: &str = "anonymous";
/// Distinct resource descriptions kept per stack.
pub const MAX_DESCRIPTIONS: usize = 100;

/// What the launcher (or the saved trace) knows about the process itself.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    pub pid: Option<u32>,
    pub argv: Vec<String>,
    /// Exit code, if the process exited.
    pub code: Option<i32>,
    /// Signal that killed it, if one did.
    pub signal: Option<u32>,
}

impl ProcessInfo {
    /// The status a shell would report: the exit code, or 128 + the signal number.
    pub fn status(&self) -> Option<i32> {
        match (self.signal, self.code) {
            (Some(s), _) if s != 0 => Some(128 + s as i32),
            (_, c) => c,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    pub count: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.count += other.count;
        self.bytes += other.bytes;
    }
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub pid: Option<u32>,
    /// The command line, arguments separated by spaces (`argv` has them exactly).
    pub command: String,
    pub argv: Vec<String>,
    /// Exit code, or 128 + signal; `null` when unknown (a trace saved without its end).
    pub exit_status: Option<i32>,
    pub signal: Option<u32>,
    /// The final image ended cleanly: every event it produced is in the stream.
    pub complete: bool,
}

#[derive(Debug, Serialize)]
pub struct FrameOut {
    /// `native`, `python` (a Python function), or `foreign` (the function a ctypes/cffi call
    /// was calling).
    pub kind: &'static str,
    pub function: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Runtime return address (hex in the JSON, see [`hex`]); none for Python frames.
    #[serde(serialize_with = "hex_opt")]
    pub address: Option<u64>,
    /// Offset in the module (hex in the JSON), for symbolizing elsewhere.
    #[serde(serialize_with = "hex_opt")]
    pub offset: Option<u64>,
    pub inlined: bool,
}

/// An address as the JSON spells it, `"0x7f…"`. Frames keep the number and are spelled only
/// when written out: most frames a report resolves are of summarized stacks that no format
/// shows, and formatting each one's address took 8.6 M of the 34 M instructions of bench W3's
/// report.
fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

/// [`hex`], or `null`.
fn hex_opt<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex(v, s),
        None => s.serialize_none(),
    }
}

/// One Python frame of a stack (`"python"`: innermost first).
#[derive(Debug, Serialize)]
pub struct PythonFrameOut {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The function a ctypes/cffi call (libffi `ffi_call`) was calling when a resource was
/// acquired: named even when its own frame is not on the stack (a tail call compiled to a
/// jump).
#[derive(Debug, Serialize)]
pub struct ForeignCallOut {
    pub function: Option<String>,
    /// The library it is in.
    pub module: Option<String>,
    /// Its runtime address (hex in the JSON).
    #[serde(serialize_with = "hex")]
    pub address: u64,
}

#[derive(Debug, Serialize)]
pub struct StackOut {
    pub kind: String,
    pub api: String,
    pub count: u64,
    pub bytes: u64,
    pub stack_id: u32,
    /// Innermost first; the interposer's own frames are left out.
    pub frames: Vec<FrameOut>,
    /// Index in `frames` of the frame that owns the leak (first outside the allocator).
    pub owner_frame: Option<usize>,
    /// What the resources are, where the interposer said (paths, socket peers); at most
    /// `MAX_DESCRIPTIONS`, distinct.
    pub descriptions: Vec<String>,
    /// What a handle points to (path, socket family and peer, pipe, "anonymous" for a
    /// mapping): the first of `descriptions`, which lists them all when they differ.
    pub target: Option<String>,
    /// The stack record never arrived (the target died before flushing it).
    pub stack_missing: bool,
    /// The Python frames that led here, innermost first (also merged into `frames`); empty for
    /// a stack no Python thread ran.
    pub python: Vec<PythonFrameOut>,
    /// The ctypes/cffi call this was acquired under, if any.
    pub foreign_call: Option<ForeignCallOut>,
    /// Whose it is (`noise`): `user`, `interpreter` or `loader`.
    pub origin: Origin,
    /// In a forked child's report: inherited from this parent (acquired there before the fork)
    /// and never released by the child. The stack is the parent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inherited_from: Option<u32>,
}

impl StackOut {
    /// Takes in `other`, a stack that reads the same (see `listed_key`): its amounts and
    /// descriptions; the entry keeps the lower stack id.
    fn absorb(&mut self, other: StackOut) {
        self.count += other.count;
        self.bytes += other.bytes;
        self.stack_id = self.stack_id.min(other.stack_id);
        for d in other.descriptions {
            if self.descriptions.len() < MAX_DESCRIPTIONS && !self.descriptions.contains(&d) {
                self.descriptions.push(d);
            }
        }
        self.descriptions.sort();
        self.target = self.descriptions.first().cloned();
    }
}

/// Everything a listed entry shows but its amounts, stack id and descriptions: entries with
/// the same key read the same in every report format.
fn listed_key(s: &StackOut) -> Option<String> {
    let shown = (&s.kind, &s.api, &s.frames, s.owner_frame, &s.python, &s.foreign_call, s.origin, s.inherited_from);
    serde_json::to_string(&(shown, s.stack_missing)).ok()
}

/// What a forked child's report needs of its parent: the image that forked it, and when.
#[derive(Clone, Copy)]
pub struct Inherited<'a> {
    pub parent: &'a crate::ledger::Image,
    pub parent_pid: u32,
    pub fork_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct Library {
    /// Absolute path of the owning module; `[unknown]` when no frame is in a known module,
    /// `[stack not in trace]` when the stack record is missing.
    pub module: String,
    /// Whose leaks these are (`noise`). Only `user` entries are listed by default; the others
    /// are summarized in `runtime_residue` unless the report was asked for everything (`--all`).
    /// A module can have one entry per origin (`_ctypes` for its own state and for the
    /// loader's records of the libraries it dlopened).
    pub origin: Origin,
    /// Per kind name (`heap`, `fd`, ...).
    pub unreleased: BTreeMap<String, Count>,
    /// `unreleased.mapping` split into anonymous and file-backed mappings (present when the
    /// library holds mappings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings: Option<MappingSplit>,
    pub stacks: Vec<StackOut>,
}

/// Mappings by what backs them.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct MappingSplit {
    pub anonymous: Count,
    pub file: Count,
}

/// A library loaded at run time (dlopen), and what it still held when the process exited. One
/// that was unloaded while holding resources is warned about: nothing can release them now.
#[derive(Debug, Serialize)]
pub struct RuntimeLibrary {
    pub module: String,
    /// dlclose'd before exit (its last load, when it was loaded several times).
    pub unloaded: bool,
    /// Per kind, what is still unreleased under this library (all origins).
    pub still_held: BTreeMap<String, Count>,
}

/// What the runtime itself kept until exit, of one origin.
#[derive(Debug, Default, Serialize)]
pub struct ResidueSummary {
    pub unreleased: BTreeMap<String, Count>,
    pub count: u64,
    pub bytes: u64,
    /// Distinct stacks.
    pub stacks: usize,
    /// Its modules (absolute paths), heaviest first.
    pub modules: Vec<String>,
    /// Listed in `libraries` too (the report was asked for everything).
    pub listed: bool,
}

/// The interpreter's and the loader's residue (`noise`): not the user's leaks.
#[derive(Debug, Default, Serialize)]
pub struct RuntimeResidue {
    pub interpreter: ResidueSummary,
    pub loader: ResidueSummary,
}

/// Set when the target ran a Python interpreter.
#[derive(Debug, Default, Serialize)]
pub struct PythonOut {
    /// pymalloc served small objects (512 bytes or less) from its arenas, invisible to residue:
    /// `true` when its arenas were seen or the run did not set `PYTHONMALLOC=malloc`, `false`
    /// when it did, `null` when unknown (a saved trace whose arenas were all released).
    pub pymalloc: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct OpenAtExit {
    pub kind: String,
    pub id: u64,
    pub description: String,
}

#[derive(Debug, Serialize)]
pub struct ImageOut {
    pub pid: u32,
    pub ppid: u32,
    /// The process residue launched (the first image).
    pub root: bool,
    pub exe: String,
    pub argv: Vec<String>,
    /// Started by exec from the image before it.
    pub exec: bool,
    /// Wrote its exit record (ended cleanly).
    pub exited: bool,
    /// What it exec'd into.
    pub exec_path: Option<String>,
    /// Exec'd into but never tracked (static, set-user-ID, LD_PRELOAD cleared).
    pub untracked: bool,
    /// Live resources dropped when it exec'd (its heap died with it; not leaks).
    pub live_at_exec: Option<u64>,
    pub acquires: u64,
    pub releases: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub unreleased: BTreeMap<String, Count>,
    pub count: u64,
    pub bytes: u64,
    pub libraries: usize,
    pub stacks: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub process: Process,
    /// False when the stream was empty: the target could not be tracked at all, and the empty
    /// `libraries` means nothing.
    pub tracked: bool,
    pub libraries: Vec<Library>,
    /// Leaks no library can be named for, same shape as `libraries` with `module` set to
    /// `[unknown]` (the owner address is in no reported module: JIT code, a missing Module
    /// record) or `[stack not in trace]` (the Stack record never arrived).
    pub unattributed: Vec<Library>,
    pub totals: Totals,
    /// Releases of resources acquired before tracking started (or by an unhooked path).
    pub released_origin_unseen: BTreeMap<String, u64>,
    /// In a forked child's report: releases of what it inherited from its parent, matched.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub released_inherited: BTreeMap<String, u64>,
    pub children_not_followed: Vec<u32>,
    /// Left out of `libraries`: what the interposer's own threads allocated (its writer
    /// thread's thread-local storage), which is residue's, not the target's.
    pub interposer_own: Count,
    /// Resources open when the final image exited whose acquisition was never seen (inherited
    /// descriptors such as 0-2, or ones opened by a raw system call).
    pub open_at_exit_origin_unseen: Vec<OpenAtExit>,
    pub images: Vec<ImageOut>,
    pub notices: Vec<String>,
    /// Problems with the trace itself (truncation, corruption, missing stacks), one sentence each.
    pub problems: Vec<String>,
    /// The interpreter's and the loader's residue, summarized (`libraries` lists them only
    /// under `--all`).
    pub runtime_residue: RuntimeResidue,
    /// The target ran CPython (`null` otherwise).
    pub python: Option<PythonOut>,
    /// Libraries loaded at run time, in load order, whether they were unloaded, and what they
    /// still held.
    pub runtime_libraries: Vec<RuntimeLibrary>,
    /// Children that were followed (forked, or exec'd with their own stream), each a report of
    /// the same shape, in the order they connected.
    pub children: Vec<Report>,
    /// For a child's report: the process that started it.
    pub parent_pid: Option<u32>,
    /// For a child's report: started by an image that later exec'd (a launcher script such as
    /// pyenv's shim, before it became the program), or by one of those children, rather than by
    /// the program itself.
    pub from_launcher: bool,
    /// False in a launcher's helper's report without `--all`: its `libraries` hold their
    /// amounts, not their stacks.
    #[serde(skip_serializing_if = "is_true")]
    pub stacks_listed: bool,
    /// The collector's own peak resident memory (`residue run` only): it grows with the live set
    /// and the distinct stacks, not with the number of events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector_peak_rss_kib: Option<u64>,
    /// Runtime-residue entries not listed in `libraries` (see [`Report::show_all`]).
    #[serde(skip)]
    pub runtime: Vec<Library>,
}

impl Report {
    /// What `residue run` knows that the trace does not: whether the target ran with
    /// `PYTHONMALLOC` (its value, if set; `malloc` and `malloc_debug` bypass pymalloc).
    pub fn run_environment(&mut self, pythonmalloc: Option<&std::ffi::OsStr>) {
        if let Some(p) = self.python.as_mut() {
            if p.pymalloc.is_none() {
                p.pymalloc = Some(!pythonmalloc.is_some_and(|v| v == "malloc" || v == "malloc_debug"));
            }
        }
    }

    /// Lists the interpreter's and the loader's residue in `libraries` too (`--all`), after the
    /// user's libraries, each entry with its `origin`; totals then count them.
    pub fn show_all(&mut self) {
        self.libraries.append(&mut self.runtime);
        self.runtime_residue.interpreter.listed = true;
        self.runtime_residue.loader.listed = true;
        self.totals = totals(&self.libraries, &self.unattributed);
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

fn weight(l: &Library) -> (u64, u64) {
    let c = l.unreleased.values().fold(Count::default(), |mut acc, c| {
        acc.add(*c);
        acc
    });
    (c.bytes, c.count)
}

fn totals(libraries: &[Library], unattributed: &[Library]) -> Totals {
    let mut t = Totals { libraries: libraries.len(), ..Totals::default() };
    for l in libraries.iter().chain(unattributed) {
        t.stacks += l.stacks.len();
        for (k, c) in &l.unreleased {
            t.unreleased.entry(k.clone()).or_default().add(*c);
            t.count += c.count;
            t.bytes += c.bytes;
        }
    }
    t
}

fn summarize(libs: &[Library], origin: Origin) -> ResidueSummary {
    let mut s = ResidueSummary::default();
    for l in libs.iter().filter(|l| l.origin == origin) {
        s.modules.push(l.module.clone());
        s.stacks += l.stacks.len();
        for (k, c) in &l.unreleased {
            s.unreleased.entry(k.clone()).or_default().add(*c);
            s.count += c.count;
            s.bytes += c.bytes;
        }
    }
    s
}

fn kind_name(k: Kind) -> String {
    k.to_string()
}

/// Shell-like rendering of a command line (quotes only where needed).
pub fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The live resources of one (stack, kind, api): the amount, the distinct descriptions, and how
/// much of it is anonymous memory (mappings the interposer described as "anonymous").
#[derive(Default)]
struct Group {
    amount: Count,
    descriptions: Vec<String>,
    anonymous: Count,
}

/// The native return addresses and the foreign-call functions of the stacks `ids` of `img`.
fn stack_addresses(img: &Image, ids: impl Iterator<Item = u32>) -> (Vec<u64>, Vec<u64>) {
    use residue_protocol::frame::{classify, Frame};
    let (mut returns, mut functions) = (Vec::new(), Vec::new());
    for id in ids {
        for &v in img.stacks.get(&id).unwrap_or(&[]) {
            match classify(v) {
                Frame::Native(a) => returns.push(a),
                Frame::Foreign(f) => functions.push(f),
                Frame::Python { .. } => {}
            }
        }
    }
    (returns, functions)
}

/// Which stacks a report lists frame by frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// All of them (`--all`, `residue check`, saved reports).
    All,
    /// The user's: the interpreter's and the loader's residue is summarized, and its stacks are
    /// resolved only as far as deciding that (`stack::Detail::Owner`), which spares reading
    /// the debug information of the modules only they pass through.
    User,
    /// None: the report is only counted (a launcher's helper process without `--all`: the
    /// text shows the helpers' totals in one line, the JSON each helper's amounts per library,
    /// `stacks_listed: false`). Every stack is resolved only as far as its owner and origin
    /// (`stack::Detail::Owner`, which gives the counts the same answer as `Full`).
    Counted,
}

impl Listed {
    /// What a report lists with `--all` given or not.
    pub fn with_all(all: bool) -> Listed {
        if all {
            Listed::All
        } else {
            Listed::User
        }
    }
}

/// How much of stack `id` (of a `kind` resource, in `img`) a report with `listed` needs.
fn detail_of(
    sym: &mut Symbolizer,
    img: &Image,
    modules: &ModuleMap<'_>,
    id: u32,
    kind: Kind,
    listed: Listed,
) -> stack::Detail {
    match listed {
        Listed::All => return stack::Detail::Full,
        Listed::Counted => return stack::Detail::Owner,
        Listed::User => {}
    }
    // A stack that never arrived has nothing to symbolize (and is reported as the user's).
    let Some(raw) = img.stacks.get(&id) else { return stack::Detail::Full };
    let key = (img as *const Image as usize, kind, id);
    if let Some(&d) = sym.details.get(&key) {
        return d;
    }
    let resolved = stack::resolve(img, modules, sym, raw, stack::Detail::Owner);
    let d = match &resolved {
        stack::Resolved::InterposerOwn => stack::Detail::Owner,
        stack::Resolved::Stack { library, frames, owner_frame, .. } => {
            if noise::classify_frames(&kind_name(kind), frames, *owner_frame, library).is_runtime() {
                stack::Detail::Owner
            } else {
                stack::Detail::Full
            }
        }
    };
    sym.details.insert(key, d);
    if d == stack::Detail::Owner {
        sym.owner_resolved.insert(key, resolved);
    }
    d
}

/// The (kind, stack) pairs among `stacks` that a report with `listed` shows frame by frame.
fn listed_stacks(
    sym: &mut Symbolizer,
    img: &Image,
    stacks: impl Iterator<Item = (Kind, u32)>,
    listed: Listed,
) -> HashSet<(Kind, u32)> {
    let modules = ModuleMap::new(&img.modules);
    let mut seen = HashSet::new();
    let mut out = HashSet::new();
    for (kind, id) in stacks {
        if seen.insert((kind, id)) && detail_of(sym, img, &modules, id, kind, listed) == stack::Detail::Full {
            out.insert((kind, id));
        }
    }
    out
}

/// Symbolizes ahead what the reports of `processes` will need, in the order they will be built
/// ([`build_with`], [`build_child`] with the same symbolizer): the stacks of what each final
/// image holds, and of what a forked child inherited and kept, as far as each process's
/// `Listed` shows them. Each module file is then parsed once for all the processes, and one at
/// a time.
pub fn prepare(sym: &mut Symbolizer, processes: &[(&Ledger, Option<Inherited<'_>>, Listed)]) {
    crate::symbolize::release_free_memory();
    let mut parts = Vec::new();
    for (k, &(ledger, ref inherited, listed)) in processes.iter().enumerate() {
        let Some(img) = ledger.final_image() else { continue };
        let ids = listed_stacks(sym, img, img.live().map(|(kind, _, e)| (kind, e.stack)), listed);
        parts.push((k, img, stack_addresses(img, ids.into_iter().map(|(_, id)| id))));
        if let Some(inh) = inherited {
            let kept = inh
                .parent
                .live()
                .filter(|&(kind, id, e)| e.seq < inh.fork_seq && img.entries.get(&(kind, id)).is_none())
                .map(|(kind, _, e)| (kind, e.stack));
            let ids = listed_stacks(sym, inh.parent, kept, listed);
            parts.push((k, inh.parent, stack_addresses(inh.parent, ids.into_iter().map(|(_, id)| id))));
        }
    }
    let maps: Vec<ModuleMap<'_>> = parts.iter().map(|(_, img, _)| ModuleMap::new(&img.modules)).collect();
    let work: Vec<Work<'_, '_>> = parts
        .into_iter()
        .zip(&maps)
        .map(|((process, _, (returns, functions)), modules)| Work { process, modules, returns, functions })
        .collect();
    sym.prepare_next(&work);
}

/// Builds the report of the ledger's final image.
pub fn build(ledger: &Ledger, info: &ProcessInfo, problems: Vec<String>) -> Report {
    build_with(ledger, info, problems, &mut Symbolizer::new(), None, Listed::All)
}

/// [`build`], with a symbolizer shared by the reports of several processes (the root and its
/// children use the same libraries: each file is parsed once).
pub fn build_with(
    ledger: &Ledger,
    info: &ProcessInfo,
    mut problems: Vec<String>,
    sym: &mut Symbolizer,
    inherited: Option<Inherited<'_>>,
    listed: Listed,
) -> Report {
    sym.next_process();
    let tracked = ledger.header_seen;
    let mut argv = info.argv.clone();
    if argv.is_empty() {
        if let Some(root) = ledger.images.first() {
            argv = if root.argv.is_empty() { vec![root.exe.clone()] } else { root.argv.clone() };
        }
    }
    let pid = info.pid.or_else(|| ledger.images.first().map(|i| i.pid).filter(|&p| p != 0));
    let process = Process {
        pid,
        command: command_line(&argv),
        argv,
        exit_status: info.status(),
        signal: info.signal.filter(|&s| s != 0),
        complete: ledger.complete(),
    };

    let mut libraries: Vec<Library> = Vec::new();
    let mut released_origin_unseen = BTreeMap::new();
    let mut released_inherited = BTreeMap::new();
    let mut open_at_exit_origin_unseen = Vec::new();
    let mut own = Count::default();
    let mut python = None;
    if let Some(img) = ledger.final_image() {
        // A forked child's releases of what it inherited are matched against the parent's
        // entries from before the fork, not counted as unseen.
        let mut matched: HashMap<Kind, u64> = HashMap::new();
        if let Some(inh) = &inherited {
            for ((kind, id), e) in img.entries.iter() {
                if !e.live
                    && !e.origin_seen
                    && inh.parent.entries.get(&(kind, id)).is_some_and(|p| p.seq < inh.fork_seq)
                {
                    *matched.entry(kind).or_default() += 1;
                }
            }
        }
        for (k, n) in img.released_origin_unseen() {
            let m = matched.get(&k).copied().unwrap_or(0);
            if m > 0 {
                released_inherited.insert(kind_name(k), m);
            }
            if n > m {
                released_origin_unseen.insert(kind_name(k), n - m);
            }
        }
        // Aggregate live entries per (stack, kind, api): memory here is per distinct stack.
        // What the image listed as open at exit describes live entries that had no description.
        let mut exit_text: HashMap<u64, &str> = HashMap::new();
        for (kind, id, text) in &img.open_at_exit {
            match img.entries.get(&(*kind, *id)) {
                Some(e) if e.live => {
                    exit_text.insert(e.seq, text);
                }
                _ => open_at_exit_origin_unseen.push(OpenAtExit {
                    kind: kind_name(*kind),
                    id: *id,
                    description: text.clone(),
                }),
            }
        }
        let mut groups: HashMap<(u32, Kind, residue_protocol::Api), Group> = HashMap::new();
        for (kind, _, e) in img.live() {
            let g = groups.entry((e.stack, kind, e.api)).or_default();
            g.amount.add(Count { count: 1, bytes: e.size });
            let d = img.descriptions.get(&e.seq).map(String::as_str).or_else(|| exit_text.get(&e.seq).copied());
            if kind == Kind::MAPPING && d == Some(ANONYMOUS) {
                g.anonymous.add(Count { count: 1, bytes: e.size });
            }
            if let Some(d) = d {
                if g.descriptions.len() < MAX_DESCRIPTIONS && !g.descriptions.iter().any(|x| x == d) {
                    g.descriptions.push(d.to_owned());
                }
            }
        }
        // What a forked child inherited and never touched: the parent's entries from before the
        // fork that the child neither released nor reused (any entry of the child for that id
        // means it released the inherited one first).
        let mut inherited_groups: HashMap<(u32, Kind, residue_protocol::Api), Group> = HashMap::new();
        if let Some(inh) = &inherited {
            for (kind, id, e) in inh.parent.live() {
                if e.seq >= inh.fork_seq || img.entries.get(&(kind, id)).is_some() {
                    continue;
                }
                let g = inherited_groups.entry((e.stack, kind, e.api)).or_default();
                g.amount.add(Count { count: 1, bytes: e.size });
                let d = inh.parent.descriptions.get(&e.seq).map(String::as_str);
                if kind == Kind::MAPPING && d == Some(ANONYMOUS) {
                    g.anonymous.add(Count { count: 1, bytes: e.size });
                }
                if let Some(d) = d {
                    if g.descriptions.len() < MAX_DESCRIPTIONS && !g.descriptions.iter().any(|x| x == d) {
                        g.descriptions.push(d.to_owned());
                    }
                }
            }
        }
        let mut sources = vec![(img, groups, None)];
        if let Some(inh) = &inherited {
            sources.push((inh.parent, inherited_groups, Some(inh.parent_pid)));
        }
        let mut by_lib: HashMap<(String, Origin), usize> = HashMap::new();
        // Listed entries of a library by what they show (`listed_key`), for merging.
        let mut listed_at: HashMap<(usize, String), usize> = HashMap::new();
        let mut arenas = false;
        let mut missing = 0usize;
        let mut interposer_own = Count::default();
        // Every address the stacks below need, symbolized ahead one module file at a time (a
        // parsed module is large: only one is in memory at once), with the ledger's free pages
        // given back first. Nothing left to do when `prepare` did it for every process.
        crate::symbolize::release_free_memory();
        let mut full = Vec::new();
        for (img, groups, _) in &sources {
            let ids = listed_stacks(sym, img, groups.keys().map(|k| (k.1, k.0)), listed);
            let (returns, functions) = stack_addresses(img, ids.iter().map(|&(_, id)| id));
            sym.prepare(&ModuleMap::new(&img.modules), returns, functions);
            full.push(ids);
        }
        for ((img, groups, inherited_from), full) in sources.into_iter().zip(full) {
            let modules = ModuleMap::new(&img.modules);
            for ((stack_id, kind, api), Group { amount: count, mut descriptions, anonymous }) in groups {
                descriptions.sort();
                let raw = img.stacks.get(&stack_id);
                let stack_missing = raw.is_none();
                missing += usize::from(stack_missing);
                let raw: &[u64] = raw.unwrap_or(&[]);
                let detail = if full.contains(&(kind, stack_id)) { stack::Detail::Full } else { stack::Detail::Owner };
                // A summarized stack was resolved already, to decide that it is (`detail_of`).
                let resolved = match detail {
                    stack::Detail::Owner => sym.owner_resolved.remove(&(img as *const Image as usize, kind, stack_id)),
                    stack::Detail::Full => None,
                };
                let (lib, frames, owner_frame, python, foreign_call) =
                    match resolved.unwrap_or_else(|| stack::resolve(img, &modules, sym, raw, detail)) {
                        stack::Resolved::InterposerOwn => {
                            interposer_own.add(count);
                            continue;
                        }
                        stack::Resolved::Stack { library, frames, owner_frame, python, foreign_call } => (
                            if stack_missing { "[stack not in trace]".to_owned() } else { library },
                            frames,
                            owner_frame,
                            python,
                            foreign_call,
                        ),
                    };
                // pymalloc's arenas are mmap'd by this function and never unmapped before exit.
                // (It is called through the allocator table, never inlined: an unlisted stack's
                // symbol table names it as well as DWARF would.)
                const ARENA: &str = "_PyObject_ArenaMmap";
                arenas |= match detail {
                    stack::Detail::Full => frames.iter().any(|f| f.function.as_deref() == Some(ARENA)),
                    stack::Detail::Owner => stack::runs(&modules, sym, raw, ARENA),
                };
                let mut st = StackOut {
                    kind: kind_name(kind),
                    api: api.to_string(),
                    count: count.count,
                    bytes: count.bytes,
                    stack_id,
                    frames,
                    owner_frame,
                    target: descriptions.first().cloned(),
                    descriptions,
                    stack_missing,
                    python,
                    foreign_call,
                    origin: Origin::User,
                    inherited_from,
                };
                let origin = noise::classify(&st, &lib);
                st.origin = origin;
                // The loader's bookkeeping is listed under the loader (with --all), not under whoever
                // called dlopen: one entry per module, and the caller is still the owner frame.
                let lib = match origin {
                    Origin::Loader => st
                        .frames
                        .iter()
                        .take(st.owner_frame.map_or(0, |o| o + 1))
                        .find_map(|f| f.module.as_deref().filter(|m| noise::is_loader(m)))
                        .map_or(lib, str::to_owned),
                    _ => lib,
                };
                if listed == Listed::Counted {
                    // Counted, never shown: the frames have said whose it is, and go (a launcher's
                    // helpers hold tens of thousands of stacks).
                    st.frames = Vec::new();
                    st.python = Vec::new();
                }
                let idx = *by_lib.entry((lib.clone(), origin)).or_insert_with(|| {
                    libraries.push(Library {
                        module: lib,
                        origin,
                        unreleased: BTreeMap::new(),
                        mappings: None,
                        stacks: Vec::new(),
                    });
                    libraries.len() - 1
                });
                let l = &mut libraries[idx];
                l.unreleased.entry(kind_name(kind)).or_default().add(count);
                if kind == Kind::MAPPING {
                    let split = l.mappings.get_or_insert_with(MappingSplit::default);
                    split.anonymous.add(anonymous);
                    split
                        .file
                        .add(Count { count: count.count - anonymous.count, bytes: count.bytes - anonymous.bytes });
                }
                // Two stacks that differ only in frames the report does not show (the return
                // address in the interpreter's loop that a Python frame stands for: CPython 3.13
                // leaves it from another instruction on a call site's first call than once the
                // site is specialized) are one entry, as they read the same.
                // (Only listed entries are merged: a summarized one's key is not worth making.)
                if let Some(key) = (detail == stack::Detail::Full).then(|| listed_key(&st)).flatten() {
                    match listed_at.entry((idx, key)) {
                        std::collections::hash_map::Entry::Occupied(e) => {
                            l.stacks[*e.get()].absorb(st);
                            continue;
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(l.stacks.len());
                        }
                    }
                }
                l.stacks.push(st);
            }
        }
        own = interposer_own;
        if !img.codes.is_empty() || img.modules.iter().any(|m| noise::is_interpreter(&m.path)) {
            python = Some(PythonOut { pymalloc: arenas.then_some(true) });
        }
        if missing > 0 {
            problems.push(format!(
                "{missing} stack(s) referenced by unreleased resources never arrived in the trace; their frames are unknown"
            ));
        }
    }
    for l in &mut libraries {
        // Ties (fopen's stream and its descriptor share a stack) by kind and API, so the order
        // never depends on a hash map's.
        l.stacks.sort_by(|a, b| {
            (b.bytes, b.count, a.stack_id, &a.kind, &a.api, a.inherited_from).cmp(&(
                a.bytes,
                a.count,
                b.stack_id,
                &b.kind,
                &b.api,
                b.inherited_from,
            ))
        });
    }
    libraries.sort_by(|a, b| (a.origin, weight(b)).cmp(&(b.origin, weight(a))).then_with(|| a.module.cmp(&b.module)));
    let (mut unattributed, libraries): (Vec<Library>, Vec<Library>) =
        libraries.into_iter().partition(|l| l.module.starts_with('['));
    let (runtime, mut libraries): (Vec<Library>, Vec<Library>) =
        libraries.into_iter().partition(|l| l.origin.is_runtime());
    let runtime_residue = RuntimeResidue {
        interpreter: summarize(&runtime, Origin::Interpreter),
        loader: summarize(&runtime, Origin::Loader),
    };
    let totals = totals(&libraries, &unattributed);
    let runtime_libraries = runtime_libraries(ledger, libraries.iter().chain(&runtime));
    let stacks_listed = listed != Listed::Counted;
    if !stacks_listed {
        // Counted: the amounts per library stay, the stacks go (pyenv's shim alone starts some
        // 40 helpers, whose 13,000 stacks made a `python3 -c pass` report of 77 MB).
        for l in libraries.iter_mut().chain(&mut unattributed) {
            l.stacks = Vec::new();
        }
    }

    let images = ledger
        .images
        .iter()
        .map(|i| ImageOut {
            pid: i.pid,
            ppid: i.ppid,
            root: i.root,
            exe: i.exe.clone(),
            argv: i.argv.clone(),
            exec: i.exec,
            exited: i.exited,
            exec_path: i.exec_path.clone(),
            live_at_exec: i.live_at_exec,
            untracked: i.untracked,
            acquires: i.acquires,
            releases: i.releases,
        })
        .collect();
    let children_not_followed = ledger.images.iter().flat_map(|i| i.forks.iter().copied()).collect();
    if let Some(img) = ledger.final_image().filter(|i| i.untracked) {
        problems.push(format!(
            "the target exec'd {} and nothing followed: that program could not be tracked (static, set-user-ID, or LD_PRELOAD cleared), or the exec failed and the process died; what it left behind is unknown",
            img.exe
        ));
    }
    let cut = ledger.stacks_without_base();
    if cut > 0 {
        problems.push(format!(
            "{cut} stack(s) were sent against a stack the trace does not hold (it was cut short): their frames are unknown"
        ));
    }
    if ledger.unknown_records > 0 {
        problems.push(format!(
            "{} record(s) of a newer format were skipped; a newer residue may report more",
            ledger.unknown_records
        ));
    }
    Report {
        schema: SCHEMA,
        process,
        tracked,
        libraries,
        unattributed,
        totals,
        released_origin_unseen,
        released_inherited,
        children_not_followed,
        interposer_own: own,
        open_at_exit_origin_unseen,
        images,
        notices: ledger.notices.clone(),
        problems,
        runtime_residue,
        python,
        runtime_libraries,
        children: Vec::new(),
        parent_pid: None,
        from_launcher: false,
        stacks_listed,
        collector_peak_rss_kib: None,
        runtime,
    }
}

/// Builds the report of a followed child's stream: how it ended is unknown to residue (it is not
/// residue's child); its pid, parent and command come from the stream.
pub fn build_child(
    ledger: &Ledger,
    problems: Vec<String>,
    sym: &mut Symbolizer,
    inherited: Option<Inherited<'_>>,
    listed: Listed,
) -> Report {
    let mut r = build_with(ledger, &ProcessInfo::default(), problems, sym, inherited, listed);
    r.parent_pid = ledger.images.first().map(|i| i.ppid).filter(|&p| p != 0);
    r
}

impl Report {
    /// Attaches the followed children, in the order they connected: a pid seen twice is one
    /// process that exec'd without carrying its stream over, and its last stream is its final
    /// image. `started` is when each child's stream began, and `final_start` when the root's
    /// final image did: children that began before it were started by a launcher (a script that
    /// later exec'd the program, such as pyenv's shim), the others by the program itself.
    /// Followed children are no longer "not followed".
    pub fn attach_children(&mut self, children: Vec<(Report, u64)>, final_start: u64) {
        let mut merged: Vec<(Report, u64)> = Vec::new();
        for (c, started) in children {
            match merged.iter().position(|(m, _)| m.process.pid.is_some() && m.process.pid == c.process.pid) {
                // The earlier stream's start is the process's start.
                Some(i) => merged[i].0 = c,
                None => merged.push((c, started)),
            }
        }
        let mut merged: Vec<Report> = merged
            .into_iter()
            .map(|(mut c, started)| {
                c.from_launcher = started < final_start;
                c
            })
            .collect();
        merged.sort_by_key(|c| c.from_launcher);
        let followed: Vec<u32> = merged.iter().filter_map(|c| c.process.pid).collect();
        self.children_not_followed.retain(|p| !followed.contains(p));
        self.children = merged;
    }
}

/// The final image's libraries loaded at run time, once each (the last load decides whether it
/// ended unloaded), with what is still held under each.
fn runtime_libraries<'a>(ledger: &Ledger, entries: impl Iterator<Item = &'a Library> + Clone) -> Vec<RuntimeLibrary> {
    let Some(img) = ledger.final_image() else { return Vec::new() };
    let mut out: Vec<RuntimeLibrary> = Vec::new();
    for m in img.modules.iter().filter(|m| m.runtime && !m.path.is_empty()) {
        match out.iter_mut().find(|r| r.module == m.path) {
            Some(r) => r.unloaded = m.unloaded,
            None => {
                out.push(RuntimeLibrary { module: m.path.clone(), unloaded: m.unloaded, still_held: BTreeMap::new() })
            }
        }
    }
    for r in &mut out {
        for l in entries.clone().filter(|l| l.module == r.module) {
            for (k, c) in &l.unreleased {
                r.still_held.entry(k.clone()).or_default().add(*c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stack_id: u32, count: u64, bytes: u64, descriptions: &[&str], line: u32) -> StackOut {
        let descriptions: Vec<String> = descriptions.iter().map(|d| d.to_string()).collect();
        StackOut {
            kind: "fd".to_owned(),
            api: "open".to_owned(),
            count,
            bytes,
            stack_id,
            frames: vec![FrameOut {
                kind: "native",
                function: Some("open_logs".to_owned()),
                module: Some("/lib/liblogs.so".to_owned()),
                file: Some("logs.c".to_owned()),
                line: Some(line),
                address: Some(0x7f00_0000_1234),
                offset: Some(0x1234),
                inlined: false,
            }],
            owner_frame: Some(0),
            target: descriptions.first().cloned(),
            descriptions,
            stack_missing: false,
            python: Vec::new(),
            foreign_call: None,
            origin: Origin::User,
            inherited_from: None,
        }
    }

    /// Entries that read the same share a key whatever their amounts, ids and descriptions;
    /// one frame apart, they do not. Merged, they add up and keep every description once.
    #[test]
    fn entries_that_read_the_same_merge() {
        let (a, b) =
            (entry(7, 2, 0, &["/var/log/b", "/var/log/a"], 12), entry(3, 1, 0, &["/var/log/c", "/var/log/a"], 12));
        assert_eq!(listed_key(&a), listed_key(&b));
        assert_ne!(listed_key(&a), listed_key(&entry(7, 2, 0, &[], 13)));
        let mut a = a;
        a.descriptions.sort();
        a.absorb(b);
        assert_eq!((a.count, a.bytes, a.stack_id), (3, 0, 3));
        assert_eq!(a.descriptions, ["/var/log/a", "/var/log/b", "/var/log/c"]);
        assert_eq!(a.target.as_deref(), Some("/var/log/a"));
    }

    /// Frames keep addresses as numbers; the JSON spells them as it always did: `"0x…"`, or
    /// `null` for a Python frame.
    #[test]
    fn addresses_serialize_as_hex_strings() {
        let mut e = entry(1, 1, 0, &[], 12);
        let native = serde_json::to_value(&e.frames[0]).unwrap();
        assert_eq!((native["address"].as_str(), native["offset"].as_str()), (Some("0x7f0000001234"), Some("0x1234")));
        e.frames[0].address = None;
        e.frames[0].offset = None;
        let python = serde_json::to_value(&e.frames[0]).unwrap();
        assert!(python["address"].is_null() && python["offset"].is_null());
        let call = ForeignCallOut { function: None, module: None, address: 0x7f00_0000_0abc };
        assert_eq!(
            serde_json::to_string(&call).unwrap(),
            r#"{"function":null,"module":null,"address":"0x7f0000000abc"}"#
        );
    }
}
