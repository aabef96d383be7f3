//! Builds the C test fixtures (frames with and without frame pointers) into a static archive in
//! OUT_DIR. Only the search path is emitted: the library itself never links the archive, the
//! integration tests and the bench ask for it by name, so nothing of it ends up in libresidue.so.
//! gcc and ar are invoked directly (no `cc` build-dependency, the lockfile is shared).

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Functions in the generated "many" fixture.
const MANY: usize = 3000;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src = "tests/c/frames.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");
    // The same source twice: optimized without frame pointers (CFA from rsp, the case a
    // frame-pointer walk gets wrong) and unoptimized (CFA from rbp everywhere).
    let variants = [("o2", "-O2", "-fomit-frame-pointer"), ("o0", "-O0", "-fno-omit-frame-pointer")];
    let mut objs = Vec::new();
    for (prefix, opt, fp) in variants {
        let obj = out.join(format!("frames_{prefix}.o"));
        run(Command::new("gcc")
            .args([opt, fp, "-fasynchronous-unwind-tables", "-fPIC", &format!("-DPREFIX={prefix}_"), "-c", src, "-o"])
            .arg(&obj));
        objs.push(obj);
    }
    // Two builds of one plugin, for the dlclose/invalidate test (loaded by path at run time).
    let plugin = "tests/c/plugin.c";
    println!("cargo:rerun-if-changed={plugin}");
    for (name, frame) in [("a", "512"), ("b", "8192")] {
        run(Command::new("gcc")
            .args(["-O2", "-fomit-frame-pointer", "-fasynchronous-unwind-tables", "-shared", "-fPIC"])
            .arg(format!("-DFRAME={frame}"))
            .arg(plugin)
            .arg("-o")
            .arg(out.join(format!("libresidue_unwind_plugin_{name}.so"))));
    }
    println!("cargo:rustc-env=RESIDUE_UNWIND_FIXTURE_DIR={}", out.display());
    // Many distinct call sites with many distinct frame sizes: thousands of cache keys and
    // hundreds of rules, some too large for the inline form.
    let many = out.join("many.c");
    let mut c = String::from("typedef void (*cb_t)(void *);\n");
    for i in 0..MANY {
        let size = 16 * (i % 200 + 1);
        c += &format!(
            "__attribute__((noinline)) int many_{i}(int n, cb_t cb, void *arg) {{\n\
             volatile char pad[{size}]; pad[0] = (char)n; cb(arg); return pad[0] + {i}; }}\n"
        );
    }
    c += &format!("typedef int (*many_t)(int, cb_t, void *);\nconst many_t many_table[{MANY}] = {{");
    for i in 0..MANY {
        c += &format!("many_{i},");
    }
    c += "};\n";
    std::fs::write(&many, c).expect("write many.c");
    let many_obj = out.join("many.o");
    run(Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-fasynchronous-unwind-tables", "-fPIC", "-c"])
        .arg(&many)
        .arg("-o")
        .arg(&many_obj));
    objs.push(many_obj);
    println!("cargo:rustc-env=RESIDUE_UNWIND_MANY={MANY}");
    let lib = out.join("libresidue_unwind_fixtures.a");
    let _ = std::fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).args(&objs));
    println!("cargo:rustc-link-search=native={}", out.display());
}
