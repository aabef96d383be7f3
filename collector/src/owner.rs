//! The owner rule: a leak belongs to the first frame, innermost first, outside the allocation
//! machinery. `strdup` in libc called from libfoo is libfoo's leak; `operator new` in
//! libstdc++ called from libbar is libbar's.

/// The file name of a module's path (`libc.so.6` of `/lib/x86_64-linux-gnu/libc.so.6`). The
/// report asks it of every frame of every stack it looks at, so without `Path`'s component
/// parsing (a tenth of the time spent resolving a Python program's ~200 summarized stacks); a
/// module's path names a file, so its last component is never `.`, `..` or empty, where
/// `Path::file_name` would differ. A byte loop back from the end: only the file name is
/// scanned, where `rsplit('/')`'s searcher cost some 260 instructions a call.
pub fn file_name(path: &str) -> &str {
    // `/` is ASCII: the byte after it starts a character.
    path.as_bytes().iter().rposition(|&b| b == b'/').map_or(path, |i| &path[i + 1..])
}

/// Modules that allocate on someone else's behalf: the interposer itself, libc, the dynamic
/// loader, libgcc_s (unwinding) and libstdc++ (operator new, containers).
pub fn is_machinery(module: &str) -> bool {
    let name = file_name(module);
    const PREFIXES: [&str; 7] = ["libresidue", "libc.so", "libc-", "ld-linux", "ld64.so", "libgcc_s", "libstdc++"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || name == "ld.so"
}

/// CPython's memory API: functions that allocate for their caller. Names as symbolized (the
/// outermost function of a frame's inline chain), 3.8 to 3.13; the pymalloc internals that
/// allocate arenas are not among them (an arena is shared, not its trigger's).
pub fn is_python_allocator(function: &str) -> bool {
    const NAMES: [&str; 22] = [
        "_PyMem_DebugRawAlloc",
        "PyMem_Malloc",
        "PyMem_Calloc",
        "PyMem_Realloc",
        "PyMem_RawMalloc",
        "PyMem_RawCalloc",
        "PyMem_RawRealloc",
        "_PyMem_RawMalloc",
        "_PyMem_RawCalloc",
        "_PyMem_RawRealloc",
        "PyObject_Malloc",
        "PyObject_Calloc",
        "PyObject_Realloc",
        "_PyObject_Malloc",
        "_PyObject_Calloc",
        "_PyObject_Realloc",
        "_PyMem_DebugMalloc",
        "_PyMem_DebugCalloc",
        "_PyMem_DebugRealloc",
        "_PyMem_DebugRawMalloc",
        "_PyMem_DebugRawCalloc",
        "_PyMem_DebugRawRealloc",
    ];
    NAMES.contains(&function)
}

/// The interposer's own frames are never shown: they are the same in every stack.
pub fn is_interposer(module: &str) -> bool {
    file_name(module).starts_with("libresidue")
}

/// Index of the owner frame among a stack's frame modules (innermost first; `None` for an
/// address in no known module, which is not machinery: JIT code or an unreported mapping).
/// If every frame is machinery, the innermost frame owns it. `None` for an empty stack.
pub fn owner_index(modules: &[Option<&str>]) -> Option<usize> {
    if modules.is_empty() {
        return None;
    }
    Some(modules.iter().position(|m| !m.is_some_and(is_machinery)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frame_outside_machinery_owns() {
        let stack = [
            Some("/work/target/debug/libresidue.so"),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            Some("/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
            Some("/opt/app/libfoo.so"),
            Some("/opt/app/host"),
        ];
        assert_eq!(owner_index(&stack), Some(3));
    }

    #[test]
    fn all_machinery_falls_back_to_innermost() {
        let stack = [
            Some("/lib/x86_64-linux-gnu/libc.so.6"),
            Some("/lib64/ld-linux-x86-64.so.2"),
            Some("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
        ];
        assert_eq!(owner_index(&stack), Some(0));
        assert_eq!(owner_index(&[]), None);
    }

    #[test]
    fn unknown_module_is_not_machinery() {
        assert_eq!(owner_index(&[Some("/lib/x86_64-linux-gnu/libc.so.6"), None, Some("/a/b")]), Some(1));
    }

    #[test]
    fn python_memory_api_allocates_for_its_caller() {
        assert!(is_python_allocator("PyMem_Malloc") && is_python_allocator("_PyObject_Malloc"));
        assert!(!is_python_allocator("_PyObject_ArenaMmap"), "an arena is nobody's in particular");
        assert!(!is_python_allocator("PyList_New"));
    }

    #[test]
    fn names_match_by_file_name_only() {
        assert!(is_machinery("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_machinery("/lib/libc-2.31.so"));
        assert!(!is_machinery("/usr/lib/libcurl.so.4"), "libc prefix must not swallow libcurl");
        assert!(!is_machinery("/home/u/libc.so.6/libfoo.so"), "directory names do not count");
        assert!(!is_machinery("/usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so"));
        assert!(is_interposer("/x/libresidue.so"));
        // A bare name is its own file name; a multi-byte character before the file name
        // does not split it.
        assert_eq!(file_name("libc.so.6"), "libc.so.6");
        assert_eq!(file_name("/opt/é/libfoo.so"), "libfoo.so");
        assert_eq!(file_name("/libé.so"), "libé.so");
    }
}
