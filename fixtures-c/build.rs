//! Compiles the C fixtures (`c/`), the README example (`../examples/`) and the bench's native
//! workloads (`../bench/`) with gcc (g++ for the one C++ library) into `target/<profile>/fixtures/`, the directory the
//! tests, the example script and `bench/run` look in. Plain `std::process::Command`, no
//! build-dependency crates: the fixtures must build wherever gcc does.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Shared-library flags: -O1 so the code is realistic, no sibling calls and no inlining of
/// the leaking functions (they are `noinline`), so that the leaking function's frame is on
/// the stack when the allocator is entered.
const LIB_FLAGS: &[&str] = &["-g", "-O1", "-fno-optimize-sibling-calls", "-fPIC", "-shared", "-Wall"];
/// libtail.so exists to be a tail jump: -O2 with sibling calls optimized, as distributions build.
const TAIL_LIB_FLAGS: &[&str] = &["-g", "-O2", "-fPIC", "-shared", "-Wall"];
const EXE_FLAGS: &[&str] = &["-g", "-O1", "-fno-optimize-sibling-calls", "-Wall"];
/// The bench's C workload is measured, not asserted on: built the way a release build would be.
const BENCH_FLAGS: &[&str] = &["-g", "-O2", "-Wall"];

enum Kind {
    /// A C library built with TAIL_LIB_FLAGS.
    TailCallLib,
    Lib,
    /// A C++ library, compiled and linked by g++ (libstdc++).
    CxxLib,
    Exe,
    /// A C++ executable, compiled and linked by g++.
    CxxExe,
    BenchExe,
}

struct Artifact {
    out: &'static str,
    kind: Kind,
    /// Sources relative to the package directory.
    sources: &'static [&'static str],
    /// Extra arguments after the sources (libraries to link, a define).
    link: &'static [&'static str],
}

const ARTIFACTS: &[Artifact] = &[
    Artifact { out: "libleaky.so", kind: Kind::Lib, sources: &["c/libleaky.c"], link: &[] },
    Artifact { out: "host_deepbind", kind: Kind::Exe, sources: &["c/host_deepbind.c"], link: &["-ldl"] },
    Artifact { out: "host_unwind", kind: Kind::CxxExe, sources: &["c/host_unwind.cc"], link: &["-lffi"] },
    Artifact { out: "host_jit", kind: Kind::Exe, sources: &["c/host_jit.c"], link: &[] },
    Artifact {
        out: "host_static",
        kind: Kind::Exe,
        sources: &["c/host_exit_variants.c"],
        link: &["-static", "-pthread"],
    },
    Artifact { out: "host_torture", kind: Kind::Exe, sources: &["c/host_torture.c"], link: &["-pthread"] },
    Artifact { out: "libhandles.so", kind: Kind::Lib, sources: &["c/libhandles.c"], link: &[] },
    Artifact { out: "libhandles_clean.so", kind: Kind::Lib, sources: &["c/libhandles_clean.c"], link: &[] },
    Artifact { out: "host_handles", kind: Kind::Exe, sources: &["c/handles_host.c"], link: &["-lhandles"] },
    Artifact { out: "host_handles_clean", kind: Kind::Exe, sources: &["c/handles_host.c"], link: &["-lhandles_clean"] },
    Artifact { out: "libclean.so", kind: Kind::Lib, sources: &["c/libclean.c"], link: &[] },
    Artifact { out: "libcallback.so", kind: Kind::Lib, sources: &["c/libcallback.c"], link: &[] },
    Artifact { out: "libgone.so", kind: Kind::Lib, sources: &["c/libgone.c"], link: &[] },
    Artifact { out: "libthreadwork.so", kind: Kind::Lib, sources: &["c/libthreadwork.c"], link: &["-pthread"] },
    Artifact { out: "libexample.so", kind: Kind::Lib, sources: &["../examples/leaky_example.c"], link: &[] },
    Artifact { out: "libbenchwork.so", kind: Kind::Lib, sources: &["../bench/w3_lib.c"], link: &[] },
    Artifact { out: "libcountevents.so", kind: Kind::Lib, sources: &["../bench/count_events.c"], link: &[] },
    Artifact { out: "libcxxleak.so", kind: Kind::CxxLib, sources: &["c/libcxxleak.cpp"], link: &[] },
    Artifact { out: "libtail.so", kind: Kind::TailCallLib, sources: &["c/libtail.c"], link: &[] },
    Artifact { out: "host_leaky", kind: Kind::Exe, sources: &["c/host_fixture.c"], link: &["-lleaky"] },
    Artifact { out: "host_clean", kind: Kind::Exe, sources: &["c/host_fixture.c"], link: &["-lclean"] },
    Artifact {
        out: "host_threads",
        kind: Kind::Exe,
        sources: &["c/host_threads.c"],
        link: &["-lthreadwork", "-pthread"],
    },
    Artifact { out: "host_fork", kind: Kind::Exe, sources: &["c/host_fork.c"], link: &["-lleaky"] },
    Artifact { out: "host_dlclose", kind: Kind::Exe, sources: &["c/host_dlclose.c"], link: &["-ldl"] },
    Artifact { out: "host_sleep", kind: Kind::Exe, sources: &["c/host_sleep.c"], link: &["-lleaky"] },
    Artifact { out: "host_idle", kind: Kind::Exe, sources: &["c/host_idle.c"], link: &[] },
    Artifact { out: "host_victim", kind: Kind::Exe, sources: &["c/host_victim.c"], link: &["-lleaky"] },
    Artifact { out: "host_exit_variants", kind: Kind::Exe, sources: &["c/host_exit_variants.c"], link: &["-pthread"] },
    Artifact { out: "host_cxx", kind: Kind::Exe, sources: &["c/host_cxx.c"], link: &["-lcxxleak"] },
    Artifact { out: "host_live_threads", kind: Kind::Exe, sources: &["c/host_live_threads.c"], link: &["-pthread"] },
    Artifact { out: "host_exec", kind: Kind::Exe, sources: &["c/host_exec.c"], link: &["-lleaky"] },
    Artifact {
        out: "host_exec_race",
        kind: Kind::Exe,
        sources: &["c/host_exec_race.c"],
        link: &["-lleaky", "-pthread"],
    },
    Artifact {
        out: "libunits.so",
        kind: Kind::Lib,
        sources: &["c/libunits_a.c", "c/libunits_b.c", "c/libunits_c.c"],
        link: &[],
    },
    // The same with its debug sections compressed, as distributions ship debug files.
    Artifact {
        out: "libunits_z.so",
        kind: Kind::Lib,
        sources: &["c/libunits_a.c", "c/libunits_b.c", "c/libunits_c.c"],
        link: &["-gz=zlib"],
    },
    Artifact { out: "host_units", kind: Kind::Exe, sources: &["c/host_units.c"], link: &["-lunits"] },
    Artifact { out: "host_spawn", kind: Kind::Exe, sources: &["c/host_spawn.c"], link: &[] },
    Artifact { out: "host_twins", kind: Kind::Exe, sources: &["c/host_twins.c"], link: &[] },
    Artifact { out: "bench_w4", kind: Kind::BenchExe, sources: &["../bench/w4_pairs.c"], link: &[] },
    // W4 as heavy as issue 6's by its rulers (bench/run --w4-light); -D applies wherever it stands.
    Artifact { out: "bench_w4_light", kind: Kind::BenchExe, sources: &["../bench/w4_pairs.c"], link: &["-DSTIR=2"] },
    Artifact {
        out: "bench_threads",
        kind: Kind::BenchExe,
        sources: &["../bench/threads_pairs.c"],
        link: &["-pthread"],
    },
];

/// Headers: a change to one rebuilds everything (cheap, and never stale).
const HEADERS: &[&str] = &["c/fixture_api.h"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out: three levels up is target/<profile>.
    let profile_dir = out_dir.ancestors().nth(3).expect("OUT_DIR has at least three parents");
    let dir = profile_dir.join("fixtures");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));

    for h in HEADERS {
        println!("cargo:rerun-if-changed={}", manifest.join(h).display());
    }
    // Libraries first: the hosts link against them.
    let is_lib = |a: &&Artifact| matches!(a.kind, Kind::Lib | Kind::CxxLib | Kind::TailCallLib);
    for a in ARTIFACTS.iter().filter(is_lib) {
        build(&manifest, &dir, a);
    }
    for a in ARTIFACTS.iter().filter(|a| !is_lib(a)) {
        build(&manifest, &dir, a);
    }
    println!("cargo:rustc-env=RESIDUE_FIXTURES_DIR={}", dir.display());
}

fn build(manifest: &Path, dir: &Path, a: &Artifact) {
    let flags = match a.kind {
        Kind::Lib | Kind::CxxLib => LIB_FLAGS,
        Kind::TailCallLib => TAIL_LIB_FLAGS,
        Kind::Exe | Kind::CxxExe => EXE_FLAGS,
        Kind::BenchExe => BENCH_FLAGS,
    };
    let compiler = if matches!(a.kind, Kind::CxxLib | Kind::CxxExe) { "g++" } else { "gcc" };
    let mut cmd = Command::new(compiler);
    cmd.args(flags).arg("-o").arg(dir.join(a.out));
    for s in a.sources {
        // Canonical, so DWARF names examples/leaky_example.c, not fixtures-c/../examples/...
        let src = manifest.join(s);
        let src = src.canonicalize().unwrap_or(src);
        println!("cargo:rerun-if-changed={}", src.display());
        cmd.arg(src);
    }
    if !matches!(a.kind, Kind::Lib | Kind::CxxLib | Kind::TailCallLib) {
        // Hosts find the fixture libraries next to themselves, wherever target/ is.
        cmd.arg(format!("-L{}", dir.display())).arg("-Wl,-rpath,$ORIGIN");
    }
    cmd.args(a.link);
    let output = cmd.output().unwrap_or_else(|e| panic!("running {compiler} for {} (is it installed?): {e}", a.out));
    if !output.status.success() {
        panic!(
            "{compiler} failed building {} ({}):\n{:?}\n{}",
            a.out,
            output.status,
            cmd,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Warnings are shown by cargo only with -vv; surface them as build warnings instead.
    for line in String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains("warning:")) {
        println!("cargo:warning={}: {line}", a.out);
    }
}
