//! A process's first misses read the module's unwind tables from its file (module
//! `file_tables`): walking through a freshly loaded module leaves the pages of its
//! `.eh_frame_hdr` and `.eh_frame` unmapped in the process, where reading them through the
//! mapping would make them (and, with the kernel's fault-around, up to 64 KiB around them)
//! resident. libgcc's walk, which reads the mapping, is the control: after it the pages are
//! there. Past the process's file reads, misses read the mapping.
//! Alone in its process: nothing else loads the plugins, walks through them or misses.

mod common;

use common::*;
use residue_unwind::{capture, capture_libgcc, stats};
use std::ffi::{c_int, c_void, CStr, CString};

/// The loaded segment holding a module's `.eh_frame_hdr`: `[start, end)`.
fn unwind_segment(path_end: &str) -> (usize, usize) {
    struct Search<'a> {
        path_end: &'a str,
        found: Option<(usize, usize)>,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> c_int {
        // SAFETY: dl_iterate_phdr passes a valid info struct and our `Search`.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search<'_>)) };
        // SAFETY: dlpi_name is a NUL-terminated string (possibly empty).
        let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
        if !name.ends_with(search.path_end) {
            return 0;
        }
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let hdr = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME).expect("an .eh_frame_hdr").p_vaddr;
        let load = phdrs
            .iter()
            .find(|p| p.p_type == libc::PT_LOAD && p.p_vaddr <= hdr && hdr < p.p_vaddr + p.p_memsz)
            .expect("a segment holding it");
        let base = info.dlpi_addr as usize;
        search.found = Some((base + load.p_vaddr as usize, base + (load.p_vaddr + load.p_memsz) as usize));
        1
    }
    let mut search = Search { path_end, found: None };
    // SAFETY: the callback matches dl_iterate_phdr's signature and only reads what it is given.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut search as *mut Search<'_> as *mut c_void) };
    search.found.expect("the module is loaded")
}

/// Pages of `[start, end)` mapped in this process (/proc/self/pagemap's present bit).
fn resident_pages((start, end): (usize, usize)) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    (start / 4096..end.div_ceil(4096))
        .filter(|page| {
            let mut entry = [0u8; 8];
            pagemap.seek(SeekFrom::Start(*page as u64 * 8)).unwrap();
            pagemap.read_exact(&mut entry).unwrap();
            u64::from_ne_bytes(entry) >> 63 == 1
        })
        .count()
}

/// Loads a plugin build (never closed): its entry point and its unwind tables' segment,
/// checked untouched.
fn load(name: &str) -> (PluginCall, (usize, usize)) {
    let path = CString::new(format!("{}/{name}", env!("RESIDUE_UNWIND_FIXTURE_DIR"))).unwrap();
    // SAFETY: dlopen/dlsym with valid C strings; the symbol has the `PluginCall` signature
    // (tests/c/plugin.c), and the handle is never closed.
    let call = unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!handle.is_null());
        let sym = libc::dlsym(handle, c"plugin_call".as_ptr());
        assert!(!sym.is_null());
        std::mem::transmute::<*mut c_void, PluginCall>(sym)
    };
    let tables = unwind_segment(name);
    assert_eq!(resident_pages(tables), 0, "loading {name} read its unwind tables");
    (call, tables)
}

#[test]
fn a_walk_through_a_new_module_reads_its_tables_from_the_file_until_the_process_has_read_enough() {
    let (call, tables) = load("libresidue_unwind_plugin_a.so");

    let before = stats().file_rows;
    let mut ours = [0u64; 64];
    let mut n = 0;
    through_plugin(call, || n = capture(&mut ours));
    assert!(stats().file_rows > before, "no rule came from a file");
    assert_eq!(resident_pages(tables), 0, "our walk read the plugin's unwind tables through the mapping");

    // The same walk by libgcc: the same frames, and the pages it read.
    let mut reference = [0u64; 64];
    let mut m = 0;
    through_plugin(call, || m = capture_libgcc(&mut reference));
    assert!(resident_pages(tables) > 0, "the control: libgcc reads the mapping");
    let plugin = call as *const () as u64;
    let in_plugin = |s: &[u64]| s.iter().position(|&ra| ra > plugin && ra < plugin + 256);
    let (i, j) = (in_plugin(&ours[..n]).expect("our walk passed the plugin"), in_plugin(&reference[..m]).unwrap());
    // The frame after the plugin's is `through_plugin`, one instance per closure: it differs.
    assert_eq!(ours[i], reference[j], "the plugin's frame");
    assert_eq!(ours[i + 2..n], reference[j + 2..m], "the frames after it");

    // Thousands of new call sites later, a new module's tables are read through the mapping.
    // SAFETY: reading an immutable table of function pointers.
    let many = unsafe { &many_table };
    for &f in many {
        through_c(f, 0, || {
            capture(&mut [0u64; 64]);
        });
    }
    let (call, tables) = load("libresidue_unwind_plugin_b.so");
    let before = stats().file_rows;
    through_plugin(call, || n = capture(&mut ours));
    assert_eq!(stats().file_rows, before, "a file read after {MANY} misses");
    assert!(resident_pages(tables) > 0, "our walk did not read the second plugin's tables");
    assert!(in_plugin(&ours[..n]).is_none(), "the walk passed the first plugin");
    let plugin = call as *const () as u64;
    assert!(ours[..n].iter().any(|&ra| ra > plugin && ra < plugin + 256), "the walk passed the second plugin");
}
