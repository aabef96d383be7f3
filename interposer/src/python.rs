//! Python frames for acquisitions made while a CPython thread runs: read from the interpreter's
//! own structures at record time, so the script needs no change, no import and no profile hook;
//! the cost is paid only when an acquisition is recorded.
//!
//! The thread's state comes from `PyGILState_GetThisThreadState()`, which answers without the
//! GIL (ctypes releases it around foreign calls). Its frame chain belongs to this thread, which
//! is inside our hook, so it cannot change while we walk it. Lines come from CPython's own
//! `PyCode_Addr2Line`, cached per (code object, instruction): the line table walk happens once
//! per call site. Code objects are interned: each is sent once as a `Code` record.
//!
//! Layouts are per version: 3.11 and 3.12 from their headers; 3.13 from the offsets CPython
//! publishes for debuggers at the start of `_PyRuntime` (`_Py_DebugOffsets`). Before the
//! first walk is trusted, it is replayed with `process_vm_readv`, which fails instead of
//! faulting, and every code object's type is checked; an unknown version or a failed check
//! turns Python frames off with a one-line notice, never a crash.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use residue_protocol::{frame, Encoder};

use crate::level_table::{LevelTable, Slot};
use crate::near::{CodeFields, Link, NearCaches, PyFrame};
use crate::state::Thread;
use crate::transport::emit;

/// Field offsets of one CPython version.
struct Layout {
    version: (u8, u8),
    /// The thread state's field that leads to the current frame: its `_PyCFrame` (3.11, 3.12,
    /// then `cframe_current` in it) or the frame itself (3.13: `cframe_current` is `None`).
    tstate_cframe: usize,
    cframe_current: Option<usize>,
    frame_code: usize,
    frame_previous: usize,
    frame_prev_instr: usize,
    /// 3.11 marks the frame a new evaluation loop entered; 3.12 pushes a shim frame owned by
    /// the C stack below it instead.
    frame_is_entry: Option<usize>,
    frame_owner: Option<usize>,
    code_filename: usize,
    code_qualname: usize,
    code_firstlineno: usize,
    code_adaptive: usize,
    ascii_state: usize,
    ascii_length: usize,
    ascii_size: usize,
    compact_size: usize,
}

static PY311: Layout = Layout {
    version: (3, 11),
    tstate_cframe: 56,
    cframe_current: Some(8),
    frame_code: 32,
    frame_previous: 48,
    frame_prev_instr: 56,
    frame_is_entry: Some(68),
    frame_owner: None,
    code_filename: 112,
    code_qualname: 128,
    code_firstlineno: 72,
    code_adaptive: 184,
    ascii_state: 32,
    ascii_length: 16,
    ascii_size: 48,
    compact_size: 72,
};

static PY312: Layout = Layout {
    version: (3, 12),
    tstate_cframe: 56,
    cframe_current: Some(0),
    frame_code: 0,
    frame_previous: 8,
    frame_prev_instr: 56,
    frame_is_entry: None,
    frame_owner: Some(70),
    code_filename: 112,
    code_qualname: 128,
    code_firstlineno: 68,
    code_adaptive: 192,
    ascii_state: 32,
    ascii_length: 16,
    ascii_size: 40,
    compact_size: 56,
};

/// 3.12's `FRAME_OWNED_BY_CSTACK`: the shim frame an evaluation loop pushes under its first frame.
const OWNED_BY_CSTACK: u8 = 3;
/// Deepest Python stack recorded.
pub const MAX_PY_FRAMES: usize = 128;

const OFF: u8 = 0;
const UNCHECKED: u8 = 1;
const ON: u8 = 2;
static STATUS: AtomicU8 = AtomicU8::new(OFF);
static LAYOUT: AtomicUsize = AtomicUsize::new(0);
static GET_TSTATE: AtomicUsize = AtomicUsize::new(0);
static ADDR2LINE: AtomicUsize = AtomicUsize::new(0);
static IS_INITIALIZED: AtomicUsize = AtomicUsize::new(0);
static CODE_TYPE: AtomicU64 = AtomicU64::new(0);
static UNICODE_TYPE: AtomicU64 = AtomicU64::new(0);

type GetTstate = unsafe extern "C" fn() -> *mut c_void;
type Addr2Line = unsafe extern "C" fn(*mut c_void, i32) -> i32;
type IsInitialized = unsafe extern "C" fn() -> i32;

fn sym(name: &std::ffi::CStr) -> usize {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; called outside allocation hooks.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize };
    if found == 0 {
        crate::ffi::drop_dl_error();
    }
    found
}

/// Looks for a CPython runtime among the loaded modules (at start and after each dlopen).
pub fn detect() {
    if STATUS.load(Ordering::Acquire) != OFF || LAYOUT.load(Ordering::Relaxed) == usize::MAX {
        return;
    }
    let version = sym(c"Py_Version");
    // SAFETY: Py_Version is a `const unsigned long` in every CPython since 3.11.
    let hex = if version != 0 { unsafe { *(version as *const u64) } } else { 0 };
    let (major, minor) = if version != 0 {
        ((hex >> 24) as u8, (hex >> 16) as u8)
    } else {
        // Before 3.11 there is no Py_Version, but the interpreter still needs its notice
        // (an unknown version must not degrade silently): ask Py_GetVersion, "3.10.13 (main, ...".
        match old_version() {
            Some(v) => v,
            None => return,
        }
    };
    let layout: Option<&'static Layout> = match (major, minor) {
        (3, 11) => Some(&PY311),
        (3, 12) => Some(&PY312),
        (3, 13) => from_debug_offsets(hex),
        _ => None,
    };
    let layout = match layout {
        Some(l) => l,
        None => {
            LAYOUT.store(usize::MAX, Ordering::Relaxed);
            crate::lifecycle::notice(
                format!(
                    "Python {major}.{minor} is not one residue reads frames of (3.11, 3.12): stacks are native only"
                )
                .as_bytes(),
            );
            return;
        }
    };
    let (get, a2l, init) = (sym(c"PyGILState_GetThisThreadState"), sym(c"PyCode_Addr2Line"), sym(c"Py_IsInitialized"));
    let (code_type, unicode_type) = (sym(c"PyCode_Type"), sym(c"PyUnicode_Type"));
    if [get, a2l, init, code_type, unicode_type].contains(&0) {
        return;
    }
    GET_TSTATE.store(get, Ordering::Relaxed);
    ADDR2LINE.store(a2l, Ordering::Relaxed);
    IS_INITIALIZED.store(init, Ordering::Relaxed);
    CODE_TYPE.store(code_type as u64, Ordering::Relaxed);
    UNICODE_TYPE.store(unicode_type as u64, Ordering::Relaxed);
    LAYOUT.store(layout as *const Layout as usize, Ordering::Relaxed);
    STATUS.store(UNCHECKED, Ordering::Release);
}

/// `(major, minor)` from `Py_GetVersion()`, for interpreters older than `Py_Version`.
fn old_version() -> Option<(u8, u8)> {
    let f = sym(c"Py_GetVersion");
    if f == 0 {
        return None;
    }
    // SAFETY: Py_GetVersion (every CPython 3) formats constant build strings into a static
    // buffer and returns it NUL-terminated; it needs no interpreter state. detect() runs
    // outside allocation hooks.
    let s = unsafe {
        let get: unsafe extern "C" fn() -> *const std::ffi::c_char = std::mem::transmute(f);
        let p = get();
        if p.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(p).to_bytes()
    };
    let mut parts = s.split(|&b| b == b'.' || b == b' ');
    let mut num = || std::str::from_utf8(parts.next()?).ok()?.parse::<u8>().ok();
    Some((num()?, num()?))
}

/// The 3.13 layout, from the `_Py_DebugOffsets` at the start of `_PyRuntime` (cookie
/// "xdebugpy", then the version it describes): positions within that struct are fixed for a
/// minor version (read from 3.13's headers); the offsets they hold are the interpreter's own.
fn from_debug_offsets(hex: u64) -> Option<&'static Layout> {
    let runtime = sym(c"_PyRuntime") as u64;
    if runtime == 0 {
        return None;
    }
    let field = |at: u64| word(runtime + at, true);
    if field(0)?.to_le_bytes() != *b"xdebugpy" || field(8)? != hex {
        return None;
    }
    let small = |at: u64| field(at).filter(|&v| v < 4096).map(|v| v as usize);
    let ascii_size = small(560)?;
    let layout = Layout {
        version: (3, 13),
        tstate_cframe: small(184)?,
        cframe_current: None,
        frame_code: small(240)?,
        frame_previous: small(232)?,
        frame_prev_instr: small(248)?,
        frame_is_entry: None,
        frame_owner: Some(small(264)?),
        code_filename: small(280)?,
        code_qualname: small(296)?,
        code_firstlineno: small(312)?,
        code_adaptive: small(344)?,
        ascii_state: small(544)?,
        ascii_length: small(552)?,
        ascii_size,
        // PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject.
        compact_size: ascii_size + 16,
    };
    Some(Box::leak(Box::new(layout)))
}

fn layout() -> &'static Layout {
    // SAFETY: set by detect() to a static Layout before STATUS leaves OFF.
    unsafe { &*(LAYOUT.load(Ordering::Relaxed) as *const Layout) }
}

/// Reads a word. `checked` uses process_vm_readv, which reports a bad address instead of
/// faulting; it is only used until the layout has proven itself once.
#[inline(always)]
fn word(addr: u64, checked: bool) -> Option<u64> {
    // One test for both conditions (a branch per load adds up over a walk).
    if (addr < 4096) | !addr.is_multiple_of(8) {
        return None;
    }
    if !checked {
        // SAFETY: the layout was validated on a first walk, and every pointer followed here is
        // a field of a live object of this thread's frame chain.
        return Some(unsafe { *(addr as *const u64) });
    }
    let mut v = 0u64;
    let local = libc::iovec { iov_base: (&mut v as *mut u64).cast(), iov_len: 8 };
    let remote = libc::iovec { iov_base: addr as *mut c_void, iov_len: 8 };
    // SAFETY: reads 8 bytes of our own address space into `v`; an unmapped address fails with
    // EFAULT rather than faulting.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    (n == 8).then_some(v)
}

/// A word at `base + off`, where `base` is an object of this thread's frame chain that passed
/// [`plausible`]: with `CHECKED`, read as [`word`] reads; without, read directly, the layout
/// having proven itself (a walk then costs a few loads a frame, not a test per load).
#[inline(always)]
fn field<const CHECKED: bool>(base: u64, off: usize) -> Option<u64> {
    if CHECKED {
        return word(base + off as u64, true);
    }
    // SAFETY: `base` is a live object of this thread's frame chain (a frame, its code object,
    // the code's name; non-null and aligned, checked by the caller), and `off` a field inside
    // it per the validated layout. The thread is inside our hook: the chain cannot change.
    Some(unsafe { std::ptr::read_unaligned((base + off as u64) as *const u64) })
}

/// The byte at `base + off` (as [`field`]).
#[inline(always)]
fn field_byte<const CHECKED: bool>(base: u64, off: usize) -> Option<u8> {
    let at = base + off as u64;
    let w = field::<CHECKED>(at & !7, 0)?;
    Some((w >> ((at & 7) * 8)) as u8)
}

/// What a pointer to an object must look like before its fields are read.
#[inline(always)]
fn plausible(p: u64) -> bool {
    (p >= 4096) & p.is_multiple_of(8)
}

fn byte(addr: u64, checked: bool) -> Option<u8> {
    let w = word(addr & !7, checked)?;
    Some((w >> ((addr & 7) * 8)) as u8)
}

/// Appends this thread's Python frames (innermost first) to `out`; returns how many. `call`:
/// the number of the foreign call the capture is made in (0: none), whose Python stack is the
/// same for every capture made while its caller's frame is current (near.rs, `CallFrames`).
/// Inlined as far as the check that the process runs Python at all (every capture of a C
/// program asks).
/// No Python runtime to walk: [`frames`] returns 0 whatever it is asked.
#[inline(always)]
pub fn off() -> bool {
    STATUS.load(Ordering::Acquire) == OFF
}

#[inline(always)]
pub fn frames(t: &Thread, out: &mut [u64], call: u64) -> usize {
    let status = STATUS.load(Ordering::Acquire);
    if status == OFF {
        return 0;
    }
    frames_of_runtime(t, out, status, call)
}

const _: () = assert!(MAX_PY_FRAMES == crate::near::CALL_FRAMES);

#[inline(never)]
fn frames_of_runtime(t: &Thread, out: &mut [u64], status: u8, call: u64) -> usize {
    let checked = status == UNCHECKED;
    // SAFETY: the function pointer was resolved from the CPython runtime by detect(); the
    // function only reads runtime state and is callable without the GIL.
    let running = unsafe {
        let init: IsInitialized = std::mem::transmute(IS_INITIALIZED.load(Ordering::Relaxed));
        init() != 0
    };
    if !running {
        // Not yet running, or finalizing: thread states may be gone.
        return 0;
    }
    // The thread's state, as looked up earlier in the same foreign call: while the call runs,
    // the thread keeps its state (the finalization that deletes other threads' states has not
    // begun: the runtime is still initialized, checked above for this capture). A capture in
    // the same call takes it from here rather than from the thread-specific slot again.
    let tstate = match t.py_tstate.get() {
        (c, tstate) if call != 0 && c == call => tstate,
        _ => {
            // SAFETY: as above; PyGILState_GetThisThreadState reads this thread's TSS slot.
            let tstate = unsafe {
                let get: GetTstate = std::mem::transmute(GET_TSTATE.load(Ordering::Relaxed));
                get() as u64
            };
            t.py_tstate.set((call, tstate));
            tstate
        }
    };
    if tstate == 0 {
        return 0;
    }
    match walk(t, tstate, out, checked, call) {
        Some(n) => {
            if checked && n > 0 {
                STATUS.store(ON, Ordering::Release);
            }
            n
        }
        None => {
            if checked {
                STATUS.store(OFF, Ordering::Release);
                let (ma, mi) = layout().version;
                crate::lifecycle::notice(
                    format!("Python {ma}.{mi}'s frames did not have the expected layout: stacks are native only")
                        .as_bytes(),
                );
            }
            0
        }
    }
}

/// Where a walk takes its field offsets from: a version whose layout is known when this is
/// compiled, or the layout detected at run time. A known version gets its own copy of the walk
/// with the offsets as immediates: no load of the layout per field, fewer registers spilled
/// (3.11's loop went from about 90 instructions a frame to about 55; W1 -7% instructions).
trait Offsets {
    fn layout() -> &'static Layout;
}

struct Known311;
struct Known312;
struct Detected;

impl Offsets for Known311 {
    #[inline(always)]
    fn layout() -> &'static Layout {
        &PY311
    }
}

impl Offsets for Known312 {
    #[inline(always)]
    fn layout() -> &'static Layout {
        &PY312
    }
}

impl Offsets for Detected {
    #[inline(always)]
    fn layout() -> &'static Layout {
        layout()
    }
}

fn walk(t: &Thread, tstate: u64, out: &mut [u64], checked: bool, call: u64) -> Option<usize> {
    if checked {
        return walk_frames::<true, Detected>(t, tstate, out, 0);
    }
    let l = LAYOUT.load(Ordering::Relaxed);
    if l == &PY311 as *const Layout as usize {
        walk_frames::<false, Known311>(t, tstate, out, call)
    } else if l == &PY312 as *const Layout as usize {
        walk_frames::<false, Known312>(t, tstate, out, call)
    } else {
        walk_frames::<false, Detected>(t, tstate, out, call)
    }
}

/// The walk, with `CHECKED` reads (before the layout has proven itself) or plain ones.
#[inline(always)]
fn walk_frames<const CHECKED: bool, V: Offsets>(t: &Thread, tstate: u64, out: &mut [u64], call: u64) -> Option<usize> {
    let checked = CHECKED;
    let l = V::layout();
    let first = word(tstate + l.tstate_cframe as u64, checked)?;
    let mut f = match l.cframe_current {
        Some(_) if first == 0 => return Some(0),
        Some(off) => word(first + off as u64, checked)?,
        None => first,
    };
    // SAFETY: recording runs under the thread's guard; this is the only borrow of its caches.
    let mut near = unsafe { t.near() };
    if let Some(n) = near.as_deref_mut() {
        n.py_frames.check(GENERATION.load(Ordering::Relaxed));
    }
    // Inside a foreign call, with the same frame current again, running the same code (by its
    // identity: two callbacks' frames may take turns at one address) at the same instruction:
    // the Python stack kept for this call. Under that frame is the one that made the call, which
    // waits in it unchanged. (Not before the layout is proven: then `call` is 0.)
    let from = if !CHECKED && call != 0 && f != 0 && plausible(f) {
        let code = field::<CHECKED>(f, l.frame_code)?;
        if !plausible(code) {
            return None;
        }
        let at = (f, field::<CHECKED>(f, l.frame_prev_instr)?, identity::<CHECKED, V>(code)?.key);
        if let Some(n) = near.as_deref().and_then(|nc| nc.py_frames.in_call(call, at, out)) {
            return Some(n);
        }
        Some(at)
    } else {
        None
    };
    let limit = out.len().min(MAX_PY_FRAMES);
    let mut n = 0;
    while f != 0 && n < limit {
        if !CHECKED {
            // The frame an earlier walk met at this address, unchanged: its value as it was.
            if let Some(m) = near.as_deref().and_then(|nc| nc.py_frames.link(f)) {
                if let Some(value) = same_link::<V>(f, m) {
                    out[n] = value;
                    n += 1;
                    f = field::<CHECKED>(f, l.frame_previous)?;
                    continue;
                }
            }
        }
        if !plausible(f) {
            return None;
        }
        if let Some(owner) = l.frame_owner {
            if field_byte::<CHECKED>(f, owner)? == OWNED_BY_CSTACK {
                // The shim under an evaluation loop's first frame: that frame was the entry.
                if n > 0 {
                    out[n - 1] |= frame::python(0, 0, true);
                }
                f = field::<CHECKED>(f, l.frame_previous)?;
                continue;
            }
        }
        let code = field::<CHECKED>(f, l.frame_code)?;
        let instr = field::<CHECKED>(f, l.frame_prev_instr)?;
        let entry_byte = match l.frame_is_entry {
            Some(off) => field_byte::<CHECKED>(f, off)?,
            None => 0,
        };
        let entry = entry_byte != 0;
        if !plausible(code) {
            return None;
        }
        // This thread saw this code object, with the fields that identify it as they are now,
        // at this instruction before: the same frame value. Compared field by field, the
        // identity's hash is only needed on a miss. (Not taken before the layout is proven.)
        let fields = code_fields::<CHECKED, V>(code)?;
        let seen = match near.as_deref() {
            Some(nc) if !CHECKED => nc.py_frames.get(code, instr, &fields),
            _ => None,
        };
        let value = match seen {
            Some(v) => v,
            None => frame_value(t, near.as_deref_mut(), code, instr, &fields, checked)?,
        };
        let value = if entry { value | frame::python(0, 0, true) } else { value };
        out[n] = value;
        if !CHECKED {
            if let Some(nc) = near.as_deref_mut() {
                nc.py_frames.set_link(Link { frame: f, code, instr, entry: entry_byte, fields, value });
            }
        }
        n += 1;
        f = field::<CHECKED>(f, l.frame_previous)?;
    }
    if let (Some(at), Some(nc)) = (from, near) {
        nc.py_frames.keep_call(call, at, &out[..n]);
    }
    Some(n)
}

/// The value of frame `f` if it is as a walk met it before at the same address (`m`, whose frame
/// is `f`): not a shim, running the same code object at the same instruction, with the same
/// entry mark, and the code's identifying fields unchanged (as [`PyFrames::get`] compares them:
/// a code object freed and replaced at the same address has other fields). Every pointer
/// followed is one that was plausible when `m` was kept and is the same now.
///
/// [`PyFrames::get`]: crate::near::PyFrames::get
#[inline(always)]
fn same_link<V: Offsets>(f: u64, m: &Link) -> Option<u64> {
    let l = V::layout();
    if let Some(owner) = l.frame_owner {
        if field_byte::<false>(f, owner)? == OWNED_BY_CSTACK {
            return None;
        }
    }
    let code = field::<false>(f, l.frame_code)?;
    let instr = field::<false>(f, l.frame_prev_instr)?;
    let entry = match l.frame_is_entry {
        Some(off) => field_byte::<false>(f, off)?,
        None => 0,
    };
    if (code ^ m.code) | (instr ^ m.instr) | u64::from(entry ^ m.entry) != 0 {
        return None;
    }
    let filename = field::<false>(code, l.code_filename)?;
    let qualname = field::<false>(code, l.code_qualname)?;
    let first_line = field::<false>(code, l.code_firstlineno & !7)? >> ((l.code_firstlineno % 8) * 8);
    let c = &m.fields;
    if (filename ^ c.filename) | (qualname ^ c.qualname) | (first_line ^ c.first_line) != 0 {
        return None;
    }
    let name_len = field::<false>(qualname, l.ascii_length)?;
    let name_hash = field::<false>(qualname, l.ascii_length + 8)?;
    ((name_len ^ c.name_len) | (name_hash ^ c.name_hash) == 0).then_some(m.value)
}

/// A frame's value (code id and line, without the entry mark) from the code object's identity,
/// through the thread's caches and the global tables; remembered in the thread's frame table.
#[cold]
#[inline(never)]
fn frame_value(
    t: &Thread,
    mut near: Option<&mut NearCaches>,
    code: u64,
    instr: u64,
    fields: &CodeFields,
    checked: bool,
) -> Option<u64> {
    let l = layout();
    let ident = &identity_of(code, fields);
    if word(code + 8, checked)? != CODE_TYPE.load(Ordering::Relaxed) {
        return None;
    }
    let offset = instr.wrapping_sub(code + l.code_adaptive as u64) as i64;
    let id = match near.as_ref().and_then(|n| n.codes.get(ident.key)) {
        Some(id) => id,
        None => {
            let id = code_id(t, ident, checked)?;
            if let Some(n) = near.as_deref_mut() {
                n.codes.put(ident.key, id);
            }
            id
        }
    };
    let line_key = mix(ident.key, offset as u64);
    let line = match near.as_ref().and_then(|n| n.lines.get(line_key)) {
        Some(line) => line,
        None => {
            let line = line_of(line_key, code, offset);
            if let Some(n) = near.as_deref_mut() {
                n.lines.put(line_key, line);
            }
            line
        }
    };
    let value = frame::python(id, line, false);
    if let Some(n) = near {
        n.py_frames.put(PyFrame { code, instr, fields: *fields, value });
    }
    Some(value)
}

static CODE_SLOTS: ([Slot; 1 << 11], [Slot; 1 << 14], [Slot; 1 << 16]) =
    ([const { Slot::empty() }; 1 << 11], [const { Slot::empty() }; 1 << 14], [const { Slot::empty() }; 1 << 16]);
/// Code identity -> code id: a code object's record is sent once.
static CODE_IDS: LevelTable = LevelTable::new([&CODE_SLOTS.0, &CODE_SLOTS.1, &CODE_SLOTS.2]);
static NEXT_CODE: AtomicU32 = AtomicU32::new(1);
/// Bumped when a forked child starts its own stream: code ids sent on the parent's stream mean
/// nothing on the child's, so every code object is sent again.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// See [`GENERATION`].
pub fn new_stream() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}
static LINE_SLOTS: ([Slot; 1 << 11], [Slot; 1 << 14], [Slot; 1 << 16]) =
    ([const { Slot::empty() }; 1 << 11], [const { Slot::empty() }; 1 << 14], [const { Slot::empty() }; 1 << 16]);
/// (code identity, instruction offset) -> line + 1.
static LINES: LevelTable = LevelTable::new([&LINE_SLOTS.0, &LINE_SLOTS.1, &LINE_SLOTS.2]);

fn mix(a: u64, b: u64) -> u64 {
    let h = (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h ^ (h >> 31)) | 1
}

/// The line `offset` (bytes into the code) is on: cached under `key` (the code's identity
/// mixed with the offset), else asked of CPython.
fn line_of(key: u64, code: u64, offset: i64) -> u32 {
    if let Some(line) = LINES.get(key) {
        return line - 1;
    }
    // SAFETY: ADDR2LINE is CPython's PyCode_Addr2Line and `code` a live code object of this
    // thread's frame chain; it only reads the code's line table.
    let line = unsafe {
        let f: Addr2Line = std::mem::transmute(ADDR2LINE.load(Ordering::Relaxed));
        f(code as *mut c_void, offset.clamp(-1, i64::from(i32::MAX)) as i32)
    };
    let line = (line.max(0) as u32).min(u32::MAX - 1);
    LINES.put(key, line + 1);
    line
}

/// What tells one code object from another that later occupies the same memory: its address,
/// the addresses of its file and name objects, the name's length and cached hash, and its first
/// line. Each is one load; a code object freed and replaced by one with the same addresses,
/// name length, name hash and first line is the only confusion left.
struct Identity {
    key: u64,
    filename: u64,
    qualname: u64,
    first_line: u32,
}

/// Inlined into the frame walk, once per frame: with `CHECKED` a constant, each field is one
/// load.
#[inline(always)]
fn identity<const CHECKED: bool, V: Offsets>(code: u64) -> Option<Identity> {
    Some(identity_of(code, &code_fields::<CHECKED, V>(code)?))
}

/// The fields [`Identity`] is made of, as they are now (each one load).
#[inline(always)]
fn code_fields<const CHECKED: bool, V: Offsets>(code: u64) -> Option<CodeFields> {
    let l = V::layout();
    let filename = field::<CHECKED>(code, l.code_filename)?;
    let qualname = field::<CHECKED>(code, l.code_qualname)?;
    if !plausible(qualname) {
        return None;
    }
    let name_len = field::<CHECKED>(qualname, l.ascii_length)?;
    // PyASCIIObject.hash, right after the length in every version read here.
    let name_hash = field::<CHECKED>(qualname, l.ascii_length + 8)?;
    let first_line = field::<CHECKED>(code, l.code_firstlineno & !7)? >> ((l.code_firstlineno % 8) * 8);
    Some(CodeFields { filename, qualname, name_len, name_hash, first_line })
}

/// The identity of code object `code` whose fields are `c`: hashed into one key.
#[inline(always)]
fn identity_of(code: u64, c: &CodeFields) -> Identity {
    let salt = c.filename
        ^ c.qualname.rotate_left(17)
        ^ c.name_hash.rotate_left(7)
        ^ c.name_len
        ^ (c.first_line << 40)
        ^ GENERATION.load(Ordering::Relaxed).rotate_left(52);
    Identity { key: mix(code, salt), filename: c.filename, qualname: c.qualname, first_line: c.first_line as u32 }
}

/// The interned id of a code object, sending its record the first time.
fn code_id(t: &Thread, ident: &Identity, checked: bool) -> Option<u32> {
    // A full probe window sends the code again under a fresh id (correct, larger trace).
    CODE_IDS.intern(ident.key, || send_code(t, ident, checked))
}

fn send_code(t: &Thread, ident: &Identity, checked: bool) -> Option<u32> {
    let (filename, qualname) = (ident.filename, ident.qualname);
    let first_line = ident.first_line;
    let mut fbuf = [0u8; 512];
    let mut nbuf = [0u8; 256];
    let fname = string(filename, &mut fbuf, checked)?;
    let name = string(qualname, &mut nbuf, checked)?;
    let id = NEXT_CODE.fetch_add(1, Ordering::Relaxed).min(frame::MAX_CODE_ID);
    let need = Encoder::code_len_bound(fname.len(), name.len());
    emit(t, need, |enc, b, pos| enc.code(b, pos, id, first_line, fname, name));
    Some(id)
}

/// The UTF-8 text of a `str` object, truncated to `buf`.
fn string(s: u64, buf: &mut [u8], checked: bool) -> Option<&[u8]> {
    let l = layout();
    if word(s + 8, checked)? != UNICODE_TYPE.load(Ordering::Relaxed) {
        return None;
    }
    let len = word(s + l.ascii_length as u64, checked)? as usize;
    let state = byte(s + l.ascii_state as u64, checked)?;
    let (kind, compact, ascii) = ((state >> 2) & 7, state & 0x20 != 0, state & 0x40 != 0);
    if !compact {
        return Some(b"?");
    }
    let data = s + if ascii { l.ascii_size } else { l.compact_size } as u64;
    let mut n = 0;
    for i in 0..len {
        let c = match kind {
            1 => u32::from(byte(data + i as u64, checked)?),
            2 => {
                let a = data + 2 * i as u64;
                u32::from(byte(a, checked)?) | u32::from(byte(a + 1, checked)?) << 8
            }
            4 => {
                let a = data + 4 * i as u64;
                (word(a & !7, checked)? >> ((a & 7) * 8)) as u32
            }
            _ => return Some(b"?"),
        };
        let ch = char::from_u32(c).unwrap_or('?');
        if n + ch.len_utf8() > buf.len() {
            break;
        }
        n += ch.encode_utf8(&mut buf[n..]).len();
    }
    Some(&buf[..n])
}
