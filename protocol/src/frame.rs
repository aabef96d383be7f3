//! What a stack's frame values mean. Most are native return addresses; user-space addresses
//! stay below 2^47 (2^56 with 5-level paging), so the top three bits tag the other kinds:
//!
//! | top bits | meaning |
//! |---|---|
//! | `0b000` | native return address (look up `addr - 1`) |
//! | `0b100` | a Python frame: code id (29 bits) and line (32 bits) |
//! | `0b110` | a Python frame that was entered by a new evaluation-loop invocation: the outermost Python frame run by one native `_PyEval_EvalFrameDefault` |
//! | `0b101` | the foreign function a ctypes/cffi call (libffi `ffi_call`) was calling |
//!
//! Native frames come first (innermost first), then Python frames (innermost first), then at
//! most one foreign-call value. Python frames are merged into the native stack by the reader:
//! each native evaluation-loop frame stands for the Python frames up to and including the
//! next entry frame.

const TAG_SHIFT: u32 = 61;
const PY: u64 = 0b100;
const PY_ENTRY: u64 = 0b110;
const FOREIGN: u64 = 0b101;
/// Largest code id a frame value can carry.
pub const MAX_CODE_ID: u32 = (1 << 29) - 1;

/// One frame value, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Native(u64),
    Python { code: u32, line: u32, entry: bool },
    Foreign(u64),
}

pub const fn python(code: u32, line: u32, entry: bool) -> u64 {
    let tag = if entry { PY_ENTRY } else { PY };
    tag << TAG_SHIFT | ((code & MAX_CODE_ID) as u64) << 32 | line as u64
}

pub const fn foreign(addr: u64) -> u64 {
    FOREIGN << TAG_SHIFT | (addr & ((1 << TAG_SHIFT) - 1))
}

pub const fn classify(v: u64) -> Frame {
    match v >> TAG_SHIFT {
        PY => Frame::Python { code: ((v >> 32) as u32) & MAX_CODE_ID, line: v as u32, entry: false },
        PY_ENTRY => Frame::Python { code: ((v >> 32) as u32) & MAX_CODE_ID, line: v as u32, entry: true },
        FOREIGN => Frame::Foreign(v & ((1 << TAG_SHIFT) - 1)),
        _ => Frame::Native(v),
    }
}
