//! One stack → the frames a report shows and the library that owns it.
//!
//! A stack's values are native return addresses (innermost first), then Python frames
//! (innermost first), then at most one foreign-call value (protocol `frame` module). Python
//! frames are merged in place of the native evaluation-loop frames that ran them; the
//! foreign function a ctypes/cffi call was calling decides the owner when the owner rule
//! would otherwise stop at libffi or above it (with `-O2`, a wrapper like `return strdup(x)`
//! is a jump and leaves no frame of its library on the stack).

use std::rc::Rc;

use residue_protocol::frame::{classify, Frame as Value};

use super::{ForeignCallOut, FrameOut, PythonFrameOut};
use crate::ledger::Image;
use crate::noise::{self, is_libffi};
use crate::owner;
use crate::symbolize::{Frame, ModuleMap, Symbolizer};

/// What a stack resolves to.
pub enum Resolved {
    /// The interposer's own thread allocated this (not the target's).
    InterposerOwn,
    Stack {
        library: String,
        frames: Vec<FrameOut>,
        owner_frame: Option<usize>,
        /// The Python frames alone, innermost first (also merged into `frames`).
        python: Vec<PythonFrameOut>,
        /// The function a ctypes/cffi call was calling when this was acquired.
        foreign_call: Option<ForeignCallOut>,
    },
}

fn is_libc(module: &str) -> bool {
    std::path::Path::new(module)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
}

/// The native frame that runs Python frames (3.11 and 3.12 name it the same).
fn is_eval_loop(name: Option<&str>) -> bool {
    name == Some("_PyEval_EvalFrameDefault")
}

/// How much of a stack [`resolve`] works out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// What a report shows: every native frame symbolized from the debug information.
    Full,
    /// What decides the owner and the origin (module paths, frame kinds, a few function names
    /// from the symbol tables), with the same answer as `Full`: native frames carry their
    /// module only. For stacks a report summarizes without listing them, so that their
    /// modules' debug information (the C library's, libpython's: tens of MiB) is never read.
    Owner,
}

fn module_out(addr: u64, module: Option<&str>) -> FrameOut {
    FrameOut {
        kind: "native",
        function: None,
        module: module.map(str::to_owned),
        file: None,
        line: None,
        address: Some(addr),
        offset: None,
        inlined: false,
    }
}

fn native_out(f: &Frame) -> FrameOut {
    FrameOut {
        kind: "native",
        function: f.function.clone(),
        module: f.module.clone(),
        file: f.file.clone(),
        line: f.line,
        address: Some(f.address),
        offset: f.offset,
        inlined: f.inlined,
    }
}

/// The name of the function a native frame is in (the outermost of its inline chain), from the
/// symbol table: the owner rules compare it with a few C functions' names.
fn outer_name(sym: &mut Symbolizer, modules: &ModuleMap<'_>, addr: u64) -> Option<Rc<str>> {
    sym.function_name(modules, addr)
}

/// Where libffi's frames begin (the innermost of them) in a stack made under a foreign call:
/// the run of frames just inside our innermost ffi_call hook that share a module. By position,
/// not by the module's name: cffi's wheels carry their own libffi inside `_cffi_backend`
/// (`cffistatic_ffi_call`). A libffi module by name is the fallback.
fn ffi_boundary(mods: &[Option<&str>], skip: usize, mut name: impl FnMut(usize) -> Option<Rc<str>>) -> Option<usize> {
    let is_hook = |n: Option<Rc<str>>| n.is_some_and(|n| &*n == "ffi_call" || &*n == "cffistatic_ffi_call");
    let hook = (skip..mods.len()).find(|&i| mods[i].is_some_and(owner::is_interposer) && is_hook(name(i)));
    if let Some(inner) = hook.and_then(|h| h.checked_sub(1)).filter(|&i| i >= skip) {
        if let Some(m) = mods[inner] {
            let mut j = inner;
            while j > skip && mods[j - 1] == Some(m) {
                j -= 1;
            }
            return Some(j);
        }
    }
    mods.iter().position(|m| m.is_some_and(is_libffi))
}

/// Whether a native frame of stack `raw` is in CPython's function `name` (by the symbol
/// tables).
pub fn runs(modules: &ModuleMap<'_>, sym: &mut Symbolizer, raw: &[u64], name: &str) -> bool {
    raw.iter().any(|&v| match classify(v) {
        Value::Native(a) => {
            let module = modules.find(a.wrapping_sub(1)).map(|m| m.path.as_str());
            cpython_name(sym, modules, a, module).as_deref() == Some(name)
        }
        _ => false,
    })
}

/// [`outer_name`] for a frame of `module` where only CPython's functions' names matter (the
/// evaluation loop, the arena allocator): none for the allocation machinery (libc, the loader,
/// libgcc_s, libstdc++, the interposer), which holds none of them. Not asking spares loading
/// their symbol tables: the C library's alone took 0.6 ms of every Python run's report,
/// whose summarized stacks all pass through it.
fn cpython_name(sym: &mut Symbolizer, modules: &ModuleMap<'_>, addr: u64, module: Option<&str>) -> Option<Rc<str>> {
    module.filter(|m| !owner::is_machinery(m))?;
    outer_name(sym, modules, addr)
}

pub fn resolve(img: &Image, modules: &ModuleMap<'_>, sym: &mut Symbolizer, raw: &[u64], detail: Detail) -> Resolved {
    let mut natives = Vec::new();
    let mut pythons = Vec::new();
    let mut foreign = None;
    for &v in raw {
        match classify(v) {
            Value::Native(a) => natives.push(a),
            Value::Python { code, line, entry } => pythons.push((code, line, entry)),
            Value::Foreign(a) => foreign = Some(a),
        }
    }
    let mods: Vec<Option<&str>> =
        natives.iter().map(|&a| modules.find(a.wrapping_sub(1)).map(|m| m.path.as_str())).collect();
    // Leading interposer frames are the same in every stack: leave them out.
    let skip = mods.iter().take_while(|m| m.is_some_and(owner::is_interposer)).count();
    let rest = &mods[skip..];
    if rest.iter().any(|m| m.is_some_and(owner::is_interposer))
        && rest.iter().all(|m| m.is_some_and(owner::is_machinery))
    {
        // Only allocator machinery and the interposer: its own writer thread (thread locals).
        // Interposer frames with target frames around them are hooks (dlopen): the target's.
        return Resolved::InterposerOwn;
    }
    let mut owner = owner::owner_index(&mods);
    // CPython's memory API (PyMem_Malloc, PyObject_Malloc) allocates for its caller: an
    // extension module's PyMem_Malloc is the extension's, libpython's own use stays libpython's.
    if let Some(o) = owner.filter(|&o| mods[o].is_some_and(noise::is_interpreter)) {
        let mut j = o;
        while j < natives.len()
            && mods[j] == mods[o]
            && owner::is_python_allocator(outer_name(sym, modules, natives[j]).as_deref().unwrap_or_default())
        {
            j += 1;
        }
        if j > o && j < natives.len() {
            owner = Some(j);
        }
    }
    let mut library = owner.and_then(|i| mods[i]).unwrap_or("[unknown]").to_owned();
    // A foreign call: the function ctypes/cffi called owns what was allocated under it, unless
    // a frame of some library inside the call already does.
    let ffi = foreign.and_then(|_| ffi_boundary(&mods, skip, |i| outer_name(sym, modules, natives[i])));
    // ctypes.CDLL(None).strdup is found by dlsym, which answers with our hook: the C library's
    // function the user called, and reported as the C library's.
    let libc = || img.modules.iter().find(|m| is_libc(&m.path)).map(|m| m.path.clone());
    let foreign_module = |f: u64| {
        modules.find(f).map(|m| m.path.clone()).and_then(|p| if owner::is_interposer(&p) { libc() } else { Some(p) })
    };
    let foreign_owner = match (foreign, ffi, owner) {
        (Some(f), Some(ffi), Some(o)) if o >= ffi => foreign_module(f).map(|p| (f, ffi, p)),
        _ => None,
    };
    if let Some((_, _, path)) = &foreign_owner {
        library = path.clone();
        owner = None;
    }

    let foreign_frames = |sym: &mut Symbolizer, f: u64| {
        let module = foreign_module(f);
        if detail == Detail::Owner {
            return vec![FrameOut { kind: "foreign", ..module_out(f, module.as_deref()) }];
        }
        let mut out: Vec<FrameOut> = sym.symbolize_function(modules, f).iter().map(native_out).collect();
        for o in &mut out {
            o.kind = "foreign";
            if o.module != module {
                // Our hook standing for the C library's function (`__strdup` is an alias).
                o.module.clone_from(&module);
                o.function = o.function.take().map(|n| n.trim_start_matches("__").to_owned());
                o.file = None;
                o.line = None;
            }
        }
        out
    };
    let foreign_call = foreign.map(|f| {
        let sf = foreign_frames(sym, f);
        ForeignCallOut {
            // The outermost of an inline chain is the function itself.
            function: sf.last().and_then(|s| s.function.clone()),
            module: foreign_module(f),
            address: f,
        }
    });
    let python: Vec<PythonFrameOut> = pythons
        .iter()
        .map(|&(code, line, _)| {
            let f = python_out(img, code, line);
            PythonFrameOut { function: f.function.unwrap_or_default(), file: f.file, line: f.line }
        })
        .collect();

    // Room for every frame (an inline chain or a foreign call may still add a few): the frames
    // are large values, and growing one by one copied them over and over.
    let mut frames = Vec::with_capacity(natives.len() + pythons.len() + 4);
    let mut owner_frame = None;
    let mut py = pythons.into_iter().peekable();
    for (i, &addr) in natives.iter().enumerate().skip(skip) {
        if let Some((f, ffi, _)) = &foreign_owner {
            if i == *ffi {
                // The called foreign function, just inside libffi.
                owner_frame = Some(frames.len());
                let out = foreign_frames(sym, *f);
                frames.extend(out);
            }
        }
        if Some(i) == owner {
            owner_frame = Some(frames.len());
        }
        if mods[i].is_some_and(owner::is_interposer) {
            // Our hooks inside the stack (ffi_call, dlopen): they stand for the function they
            // hook, whose caller is the next frame.
            continue;
        }
        if py.peek().is_some() && is_eval_loop(cpython_name(sym, modules, addr, mods[i]).as_deref()) {
            // This evaluation loop ran the Python frames up to and including the next entry.
            for (code, line, entry) in py.by_ref() {
                frames.push(python_out(img, code, line));
                if entry {
                    break;
                }
            }
            continue;
        }
        match detail {
            Detail::Full => frames.extend(sym.symbolize(modules, addr).iter().map(native_out)),
            Detail::Owner => frames.push(module_out(addr, mods[i])),
        }
    }
    // Python frames no evaluation loop claimed (its native frame was beyond the captured
    // depth, or not symbolized): keep them, outermost last.
    frames.extend(py.map(|(code, line, _)| python_out(img, code, line)));
    Resolved::Stack { library, frames, owner_frame, python, foreign_call }
}

fn python_out(img: &Image, code: u32, line: u32) -> FrameOut {
    let c = img.codes.get(&code);
    FrameOut {
        kind: "python",
        function: Some(c.map_or_else(|| format!("<python code #{code}>"), |c| c.name.clone())),
        module: None,
        file: c.map(|c| c.filename.clone()),
        line: Some(line).filter(|&l| l != 0),
        address: None,
        offset: None,
        inlined: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Code, Module};
    use crate::testutil::{compile_so, elf_symbol};
    use residue_protocol::frame::{foreign, python};
    use residue_protocol::Segment;
    use std::path::Path;
    use std::sync::Arc;

    fn module(id: u32, path: &Path, base: u64) -> Module {
        Module {
            id,
            base,
            path: path.to_str().unwrap().into(),
            build_id: vec![],
            segments: vec![Segment { vaddr: 0, memsz: 0x100_0000, offset: 0, flags: 5 }],
            unloaded: false,
            runtime: false,
            file: std::fs::File::open(path).ok().map(Arc::new),
        }
    }

    fn sym(path: &Path, name: &str) -> u64 {
        elf_symbol(&std::fs::read(path).unwrap(), name).unwrap_or_else(|| panic!("{name} in {}", path.display())).0
    }

    /// ctypes called `wrap_dup` in libwrap, which tail-called strdup: libwrap has no frame on
    /// the stack, yet owns the block through the foreign-call value. Python frames replace the
    /// evaluation loop's native frame.
    #[test]
    fn foreign_call_owns_and_python_frames_merge() {
        let dir = std::env::temp_dir().join(format!("residue-stack-{}", std::process::id()));
        let ffi = compile_so(&dir, "libffi-test.so", "void ffi_call(void) { __asm__ volatile(\"nop\"); }\n");
        let wrap = compile_so(&dir, "libwrap.so", "char *wrap_dup(char *s) { return s; }\n");
        let eval =
            compile_so(&dir, "libpyeval.so", "void _PyEval_EvalFrameDefault(void) { __asm__ volatile(\"nop\"); }\n");
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let (b_libc, b_ffi, b_wrap, b_eval) =
            (0x1000_0000_0000u64, 0x2000_0000_0000u64, 0x3000_0000_0000u64, 0x4000_0000_0000u64);
        let modules =
            vec![module(1, libc, b_libc), module(2, &ffi, b_ffi), module(3, &wrap, b_wrap), module(4, &eval, b_eval)];
        let mut img = Image::default();
        // Private ledger fields rule out struct-update syntax.
        img.modules.extend(modules);
        img.codes.insert(7, Code { first_line: 1, filename: "app.py".into(), name: "inner".into() });
        img.codes.insert(8, Code { first_line: 5, filename: "app.py".into(), name: "outer".into() });
        let raw = [
            b_libc + sym(libc, "malloc") + 1,
            b_ffi + sym(&ffi, "ffi_call") + 1,
            b_eval + sym(&eval, "_PyEval_EvalFrameDefault") + 1,
            python(7, 3, false),
            python(8, 9, true),
            foreign(b_wrap + sym(&wrap, "wrap_dup")),
        ];
        let map = ModuleMap::new(&img.modules);
        let mut s = Symbolizer::new();
        let Resolved::Stack { library, frames, owner_frame, python, foreign_call } =
            resolve(&img, &map, &mut s, &raw, Detail::Full)
        else {
            panic!("not the interposer's")
        };
        assert_eq!(library, wrap.to_str().unwrap());
        let fc = foreign_call.expect("the foreign value");
        assert_eq!((fc.function.as_deref(), fc.module.as_deref()), (Some("wrap_dup"), wrap.to_str()));
        let py: Vec<_> = python.iter().map(|p| (p.function.as_str(), p.file.as_deref(), p.line)).collect();
        assert_eq!(py, [("inner", Some("app.py"), Some(3)), ("outer", Some("app.py"), Some(9))]);
        let names: Vec<_> = frames.iter().map(|f| (f.kind, f.function.clone().unwrap_or_default())).collect();
        let kinds: Vec<_> = names.iter().map(|n| n.0).collect();
        assert_eq!(kinds, ["native", "foreign", "native", "python", "python"], "{names:?}");
        assert!(names[0].1.ends_with("malloc"));
        assert_eq!(names[1].1, "wrap_dup");
        assert_eq!(names[2].1, "ffi_call");
        assert_eq!((names[3].1.as_str(), frames[3].line), ("inner", Some(3)));
        assert_eq!((names[4].1.as_str(), frames[4].file.as_deref()), ("outer", Some("app.py")));
        assert_eq!(owner_frame, Some(1));

        // Without the foreign value, the owner rule stops at libffi, the first non-machinery.
        let Resolved::Stack { library, owner_frame, foreign_call, .. } =
            resolve(&img, &map, &mut s, &raw[..5], Detail::Full)
        else {
            panic!()
        };
        assert_eq!((library.as_str(), owner_frame), (ffi.to_str().unwrap(), Some(1)));
        assert!(foreign_call.is_none());

        // Only machinery and the interposer: the interposer's own thread.
        let own = compile_so(&dir, "libresidue.so", "void writer(void) { __asm__ volatile(\"nop\"); }\n");
        img.modules.push(module(5, &own, 0x5000_0000_0000));
        let map = ModuleMap::new(&img.modules);
        let raw = [
            b_libc + sym(libc, "malloc") + 1,
            0x5000_0000_0000 + sym(&own, "writer") + 1,
            b_libc + sym(libc, "malloc") + 1,
        ];
        assert!(matches!(resolve(&img, &map, &mut s, &raw, Detail::Full), Resolved::InterposerOwn));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A summarized stack (what a Python run's runtime residue is: hundreds of stacks, each
    /// through the C library) is resolved without reading the C library's symbol table: only
    /// CPython's function names matter there, and the machinery holds none of them. The Python
    /// frames still take the evaluation loop's place, and the arena allocator is still found.
    #[test]
    fn a_summarized_stack_reads_no_symbols_of_the_machinery() {
        let dir = std::env::temp_dir().join(format!("residue-summary-{}", std::process::id()));
        let eval = compile_so(
            &dir,
            "libpython-test.so",
            "void _PyEval_EvalFrameDefault(void) { __asm__ volatile(\"nop\"); }\n\
             void _PyObject_ArenaMmap(void) { __asm__ volatile(\"nop\"); }\n",
        );
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let (b_libc, b_eval) = (0x1000_0000_0000u64, 0x4000_0000_0000u64);
        let mut img = Image::default();
        img.modules.extend([module(1, libc, b_libc), module(4, &eval, b_eval)]);
        img.codes.insert(7, Code { first_line: 1, filename: "app.py".into(), name: "inner".into() });
        let raw = [
            b_libc + sym(libc, "malloc") + 1,
            b_eval + sym(&eval, "_PyObject_ArenaMmap") + 1,
            b_eval + sym(&eval, "_PyEval_EvalFrameDefault") + 1,
            python(7, 3, true),
            b_libc + sym(libc, "__libc_start_main") + 1,
        ];
        let map = ModuleMap::new(&img.modules);
        let mut s = Symbolizer::new();
        let Resolved::Stack { frames, .. } = resolve(&img, &map, &mut s, &raw, Detail::Owner) else { panic!() };
        let kinds: Vec<_> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["native", "native", "python", "native"], "{frames:?}");
        assert!(runs(&map, &mut s, &raw, "_PyObject_ArenaMmap"));
        assert!(!runs(&map, &mut s, &raw, "malloc"), "the C library's names are not asked");
        assert_eq!(s.names_read(), [eval.to_str().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
