//! dlclose, then a different module at the same address: a cached rule for the old module's
//! return address is wrong for the new one. After `invalidate` the walk must be right again.
//! Alone in its process: no other test invalidates behind its back.

mod common;

use common::*;
use residue_unwind::invalidate;
use std::ffi::{c_void, CString};

struct Plugin {
    handle: *mut c_void,
    call: PluginCall,
}

fn load(name: &str) -> Plugin {
    let path = format!("{}/libresidue_unwind_plugin_{name}.so", env!("RESIDUE_UNWIND_FIXTURE_DIR"));
    let cpath = CString::new(path.clone()).unwrap();
    // SAFETY: dlopen/dlsym with valid C strings; the symbol has the `PluginCall` signature
    // (tests/c/plugin.c), and is only called while the handle is open.
    unsafe {
        let handle = libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!handle.is_null(), "dlopen {path} failed");
        let sym = libc::dlsym(handle, c"plugin_call".as_ptr());
        assert!(!sym.is_null());
        Plugin { handle, call: std::mem::transmute::<*mut c_void, PluginCall>(sym) }
    }
}

fn unload(p: Plugin) {
    // SAFETY: the handle came from dlopen and nothing of the module is in use any more.
    assert_eq!(unsafe { libc::dlclose(p.handle) }, 0);
}

fn capture_through(p: &Plugin) -> Pair {
    let mut out = None;
    through_plugin(p.call, || out = Some(capture_both()));
    out.unwrap()
}

#[test]
fn invalidate_after_dlclose_drops_rules_of_the_unloaded_module() {
    let a = load("a");
    let addr_a = a.call as usize;
    for _ in 0..3 {
        assert_same(&capture_through(&a));
    }
    unload(a);
    invalidate();
    let b = load("b");
    let addr_b = b.call as usize;
    for _ in 0..3 {
        assert_same(&capture_through(&b));
    }
    // Now the other way round, without invalidate: if the module lands at the same address,
    // the cached rule (b's 8 KiB frame) is wrong for a's 512-byte frame and the walk must
    // differ from libgcc's; this shows the test can see a stale rule.
    unload(b);
    let a = load("a");
    if a.call as usize == addr_b {
        assert!(check(&capture_through(&a)).is_err(), "a stale rule went unnoticed");
    } else {
        eprintln!(
            "plugin reloaded elsewhere ({addr_a:#x}, {addr_b:#x}, {:#x}): stale case not exercised",
            a.call as usize
        );
    }
    invalidate();
    for _ in 0..3 {
        assert_same(&capture_through(&a));
    }
    unload(a);
    // The plugins' own tables were used, not libgcc's.
    assert_eq!(residue_unwind::stats().fallbacks, 0);
}
