//! Whose leak is it: the user's libraries, the Python interpreter's own residue, or the dynamic
//! loader's bookkeeping.
//!
//! A leak checker run on `python3 script.py` sees hundreds of blocks the interpreter keeps
//! until exit (interned strings, module state, pymalloc arenas) and the loader's records of
//! every module it loaded. None of them is the user's to fix; listed with the user's leaks they
//! drown them. This module names each stack's origin; the report lists user stacks in full and
//! summarizes the rest (`--all` shows it).
//!
//! The rules, on a stack already resolved by the report (frames innermost first, the owner
//! frame chosen by the owner rule, a ctypes/cffi foreign function already made owner):
//!
//! 1. **Loader**: a frame of ld.so lies between the allocator and the owner (inclusive): the
//!    loader allocated it for its own purposes (link maps, search paths, scope and version
//!    arrays of `dlopen`, TLS vectors) and keeps it while the module stays loaded, i.e. to the
//!    end. valgrind and LeakSanitizer suppress these by default. Frames *outside* the owner do
//!    not count: a library's constructor run by dlopen allocates on its own behalf.
//! 2. **Interpreter** (memory only: heap blocks and mappings; a descriptor or stream left open
//!    by the interpreter's code was opened for the program, by `os.open` or `open` in the
//!    script, and is the user's): the owner module is the interpreter's own code: `libpython*`, a
//!    `python3.X` executable (a static build), or a standard-library extension module (a
//!    `lib-dynload` directory under `lib/python3.X`).
//! 3. **Interpreter** too: the owner is a system library (`/usr/lib/...`, `/lib/...`) that the
//!    interpreter's code called directly or through other system libraries (`libcrypto` ←
//!    `libssl` ← `_ssl`, `libsqlite3` ← `_sqlite3`, `libffi` ← `_ctypes`), and not through libffi:
//!    a ctypes/cffi call is the user's call whatever library it reaches.
//! 4. **User**: everything else: libraries loaded with ctypes or cffi, extension modules in
//!    site-packages or next to the script, system libraries those call, programs that are not
//!    Python at all.
//!
//! Only module paths and frame kinds are used: no file is read, so the check is the same on a
//! saved trace read elsewhere.

use std::path::Path;

use serde::Serialize;

use crate::owner::{self, file_name};
use crate::report::{FrameOut, StackOut};

/// Where a stack's leak comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The user's libraries: reported in full.
    User,
    /// What the Python interpreter and its standard library keep until exit.
    Interpreter,
    /// The dynamic loader's own bookkeeping (dlopen, TLS).
    Loader,
}

impl Origin {
    /// `user`, `interpreter`, `loader`: the JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            Origin::User => "user",
            Origin::Interpreter => "interpreter",
            Origin::Loader => "loader",
        }
    }

    /// Residue of the runtime rather than of the user's code.
    pub fn is_runtime(self) -> bool {
        self != Origin::User
    }
}

/// The dynamic loader (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`, `ld64.so.2`, `ld.so`).
pub fn is_loader(module: &str) -> bool {
    let n = file_name(module);
    n.starts_with("ld-linux") || n.starts_with("ld64.so") || n == "ld.so"
}

/// `python3`, `python3.11`, `python3.11d`, `python3.13t`: a CPython executable, which holds
/// the whole interpreter when it was built without a shared libpython (Debian's python3).
fn is_python_executable(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("python") else { return false };
    let version = rest.trim_end_matches(['d', 'm', 't']);
    version.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// The interpreter's own code: libpython, a python executable, or a standard-library extension
/// module (`.../lib/python3.X/lib-dynload/*.so`; virtual environments have none of their own).
pub fn is_interpreter(module: &str) -> bool {
    let name = file_name(module);
    if name.starts_with("libpython") || is_python_executable(name) {
        return true;
    }
    let p = Path::new(module);
    let parent = p.parent();
    parent.and_then(Path::file_name).is_some_and(|d| d == "lib-dynload")
        && parent
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|d| d.to_str())
            .is_some_and(|d| d.starts_with("python"))
}

/// libffi, through which ctypes and cffi call foreign functions.
pub fn is_libffi(module: &str) -> bool {
    file_name(module).starts_with("libffi")
}

/// A library of the system's library directories (`/lib`, `/usr/lib`, `/lib64`, `/usr/lib64`,
/// and their multiarch subdirectory), as the interpreter's extension modules link them.
/// Packages' own directories below those (`/usr/lib/python3/dist-packages/...`) are not.
fn is_system_library(module: &str) -> bool {
    let Some(dir) = Path::new(module).parent().and_then(|d| d.to_str()) else { return false };
    if !file_name(module).starts_with("lib") {
        return false;
    }
    ["/lib", "/usr/lib", "/lib64", "/usr/lib64"].iter().any(|root| match dir.strip_prefix(root) {
        Some("") => true,
        // One multiarch level: /usr/lib/x86_64-linux-gnu.
        Some(sub) => sub.starts_with('/') && !sub[1..].contains('/') && sub.contains("-linux-"),
        None => false,
    })
}

/// The origin of one resolved stack owned by `library` (the owning module's path, as in the
/// report's `Library::module`). Stable API: `residue check` calls it too.
pub fn classify(stack: &StackOut, library: &str) -> Origin {
    classify_frames(&stack.kind, &stack.frames, stack.owner_frame, library)
}

/// Memory is what the interpreter keeps for itself until exit. Descriptors and streams it
/// closes: one the interpreter's code opened and left open was opened for the program
/// (`os.open`, `socket.socket`, `open` in the script), so it stays the user's.
fn interpreter_can_keep(kind: &str) -> bool {
    matches!(kind, "heap" | "mapping")
}

/// A native frame's module (Python and foreign frames have none that counts here).
fn native_module(f: &FrameOut) -> Option<&str> {
    if f.kind == "native" {
        f.module.as_deref()
    } else {
        None
    }
}

/// [`classify`] on a stack's parts: its kind (`heap`, `fd`, ...), frames innermost first, the
/// owner frame's index, the owner.
pub fn classify_frames(kind: &str, frames: &[FrameOut], owner_frame: Option<usize>, library: &str) -> Origin {
    let Some(owner) = owner_frame else {
        return if is_interpreter(library) && interpreter_can_keep(kind) { Origin::Interpreter } else { Origin::User };
    };
    if frames.iter().take(owner + 1).filter_map(native_module).any(is_loader) {
        return Origin::Loader;
    }
    if !interpreter_can_keep(kind) {
        return Origin::User;
    }
    if is_interpreter(library) {
        return Origin::Interpreter;
    }
    // Called through ctypes/cffi: the foreign function owns it, whatever library it is in.
    if frames.get(owner).is_some_and(|f| f.kind == "foreign") || !is_system_library(library) {
        return Origin::User;
    }
    // A system library: who called it? Walk outward across it and other system libraries.
    for f in &frames[owner + 1..] {
        let Some(m) = native_module(f) else { continue };
        if m == library {
            continue;
        }
        if is_loader(m) {
            // Run by the loader (a constructor): on its own behalf, not the interpreter's.
            return Origin::User;
        }
        if is_libffi(m) {
            return Origin::User;
        }
        if is_interpreter(m) {
            return Origin::Interpreter;
        }
        if owner::is_machinery(m) || is_system_library(m) {
            continue;
        }
        return Origin::User;
    }
    Origin::User
}

#[cfg(test)]
mod tests {
    use super::*;

    const PY: &str = "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0";
    const DYN: &str = "/root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload";
    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const LD: &str = "/lib64/ld-linux-x86-64.so.2";
    const FFI: &str = "/lib/x86_64-linux-gnu/libffi.so.8";

    fn f(kind: &'static str, module: &str) -> FrameOut {
        FrameOut {
            kind,
            function: None,
            module: (kind != "python").then(|| module.to_owned()),
            file: None,
            line: None,
            address: None,
            offset: None,
            inlined: false,
        }
    }

    fn stack(mods: &[&str]) -> Vec<FrameOut> {
        mods.iter().map(|m| if *m == "py" { f("python", "") } else { f("native", m) }).collect()
    }

    fn classify_mods(mods: &[&str], owner: usize) -> Origin {
        let frames = stack(mods);
        let lib = frames[owner].module.clone().unwrap();
        classify_frames("heap", &frames, Some(owner), &lib)
    }

    #[test]
    fn module_names() {
        assert!(is_interpreter(PY));
        assert!(is_interpreter("/usr/bin/python3.11"));
        assert!(is_interpreter("/usr/bin/python3"));
        assert!(is_interpreter("/opt/py/bin/python3.13t"));
        assert!(!is_interpreter("/usr/bin/python3-config"));
        assert!(!is_interpreter("/usr/bin/pythonista.so"));
        assert!(is_interpreter(&format!("{DYN}/_ssl.cpython-311-x86_64-linux-gnu.so")));
        assert!(is_interpreter("/usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so"));
        assert!(!is_interpreter("/venv/lib/python3.11/site-packages/numpy/core/_multiarray_umath.so"));
        assert!(!is_interpreter("/home/u/lib-dynload/libfoo.so"), "lib-dynload under a python directory only");
        assert!(is_system_library("/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(is_system_library("/usr/lib64/libsqlite3.so.0"));
        assert!(!is_system_library("/usr/lib/python3/dist-packages/lxml/etree.so"));
        assert!(!is_system_library("/usr/lib/python3/dist-packages/libfoo.so"));
        assert!(!is_system_library("/work/target/debug/fixtures/libleaky.so"));
        assert!(is_loader(LD) && !is_loader(LIBC));
    }

    #[test]
    fn interpreter_code_and_its_libraries() {
        // libpython's own allocation.
        assert_eq!(classify_mods(&[LIBC, PY, "py", PY], 1), Origin::Interpreter);
        // A static interpreter.
        assert_eq!(classify_mods(&[LIBC, "/usr/bin/python3.11", "py"], 1), Origin::Interpreter);
        // libcrypto ← libssl ← _ssl: the standard library's dependency.
        let ssl = format!("{DYN}/_ssl.cpython-311-x86_64-linux-gnu.so");
        let crypto = "/lib/x86_64-linux-gnu/libcrypto.so.3";
        let chain = [LIBC, crypto, crypto, "/lib/x86_64-linux-gnu/libssl.so.3", &ssl, PY, "py", PY];
        assert_eq!(classify_mods(&chain, 1), Origin::Interpreter);
        // _ctypes allocating a closure through libffi.
        let ctypes = format!("{DYN}/_ctypes.cpython-311-x86_64-linux-gnu.so");
        assert_eq!(classify_mods(&[LIBC, FFI, &ctypes, PY], 1), Origin::Interpreter);
    }

    #[test]
    fn user_code_through_ctypes_or_extensions() {
        let ctypes = format!("{DYN}/_ctypes.cpython-311-x86_64-linux-gnu.so");
        // greeting_title in libexample, called by ctypes.
        let lib = "/work/target/release/fixtures/libexample.so";
        assert_eq!(classify_mods(&[LIBC, lib, FFI, FFI, &ctypes, PY, "py"], 1), Origin::User);
        // A system library the user called with ctypes: through libffi, so the user's.
        let z = "/lib/x86_64-linux-gnu/libz.so.1";
        assert_eq!(classify_mods(&[LIBC, z, FFI, &ctypes, PY], 1), Origin::User);
        // The foreign function owns a tail-called strdup.
        let mut frames = stack(&[LIBC, "/t/libtail.so", FFI, &ctypes, PY]);
        frames[1].kind = "foreign";
        assert_eq!(classify_frames("heap", &frames, Some(1), "/t/libtail.so"), Origin::User);
        // An extension module of a package, and a system library it calls.
        let ext = "/venv/lib/python3.11/site-packages/cryptography/hazmat/bindings/_rust.abi3.so";
        assert_eq!(classify_mods(&[LIBC, ext, PY, "py"], 1), Origin::User);
        let crypto = "/lib/x86_64-linux-gnu/libcrypto.so.3";
        assert_eq!(classify_mods(&[LIBC, crypto, ext, PY, "py"], 1), Origin::User);
        // A library's constructor run by dlopen from ctypes.CDLL: the library's own.
        assert_eq!(classify_mods(&[LIBC, z, LD, LD, LIBC, &ctypes, PY], 1), Origin::User);
        // Not Python at all.
        assert_eq!(classify_mods(&[LIBC, "/opt/app/libfoo.so", "/opt/app/host", LIBC], 1), Origin::User);
    }

    #[test]
    fn loader_bookkeeping() {
        let ctypes = format!("{DYN}/_ctypes.cpython-311-x86_64-linux-gnu.so");
        // calloc ← _dl_new_object ← ... ← dlopen (libc) ← py_dl_open (_ctypes).
        let frames = [LD, LD, LD, LIBC, LIBC, &ctypes, PY, "py"];
        assert_eq!(classify_mods(&frames, 5), Origin::Loader);
        // ... and the same from a user's library calling dlopen.
        assert_eq!(classify_mods(&[LD, LD, LIBC, "/opt/libplugin_host.so", "/opt/app"], 3), Origin::Loader);
        // The loader outside the owner does not count (rule 1).
        assert_eq!(classify_mods(&[LIBC, "/opt/libfoo.so", LD, LIBC, "/opt/app"], 1), Origin::User);
    }

    #[test]
    fn no_owner_frame() {
        assert_eq!(classify_frames("heap", &[], None, PY), Origin::Interpreter);
        assert_eq!(classify_frames("heap", &[], None, "[unknown]"), Origin::User);
    }

    #[test]
    fn descriptors_left_open_by_python_code_are_the_users() {
        // os.open() in the script: open ← posix (libpython) ← the evaluation loop.
        let frames = stack(&[LIBC, PY, "py", PY]);
        assert_eq!(classify_frames("fd", &frames, Some(1), PY), Origin::User);
        assert_eq!(classify_frames("stream", &frames, Some(1), PY), Origin::User);
        assert_eq!(classify_frames("mapping", &frames, Some(1), PY), Origin::Interpreter);
        // The loader's are the loader's whatever the kind.
        assert_eq!(classify_frames("fd", &stack(&[LD, LIBC, PY]), Some(2), PY), Origin::Loader);
    }
}
