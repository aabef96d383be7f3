//! The C fixtures built by this package's build.rs, and the numbers they are built to produce.
//!
//! Every constant here mirrors a comment in the C source it names; change both together. The
//! integration tests (`residue-tests`) assert residue's reports against these constants, so a
//! fixture whose real behaviour drifted from them makes the tests fail loudly rather than
//! pass vacuously.

use std::path::PathBuf;

/// `target/<profile>/fixtures`, where build.rs put every fixture.
pub const DIR: &str = env!("RESIDUE_FIXTURES_DIR");

/// The path of a fixture by file name (`"libleaky.so"`, `"host_threads"`).
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

/// libleaky.so: counted leaks.
pub fn libleaky() -> PathBuf {
    path("libleaky.so")
}
/// libclean.so: libleaky's clean twin.
pub fn libclean() -> PathBuf {
    path("libclean.so")
}
/// libgone.so: dlopened, leaks, dlclosed (by host_dlclose).
pub fn libgone() -> PathBuf {
    path("libgone.so")
}
/// libthreadwork.so: host_threads' allocations.
pub fn libthreadwork() -> PathBuf {
    path("libthreadwork.so")
}
/// libexample.so: the README example's library (examples/leaky_example.c).
pub fn libexample() -> PathBuf {
    path("libexample.so")
}
/// libbenchwork.so: bench workload W3's library (bench/w3_lib.c).
pub fn libbenchwork() -> PathBuf {
    path("libbenchwork.so")
}
/// host_leaky [REPS]: runs libleaky's scenarios REPS times (default 1), exits 0.
pub fn host_leaky() -> PathBuf {
    path("host_leaky")
}
/// host_clean [REPS]: the same against libclean.
pub fn host_clean() -> PathBuf {
    path("host_clean")
}
/// host_threads: libthreadwork's 8-thread workload.
pub fn host_threads() -> PathBuf {
    path("host_threads")
}
/// host_fork exit|_exit|exec: the parent leaks libleaky's set once; a child does too.
pub fn host_fork() -> PathBuf {
    path("host_fork")
}
/// host_dlclose [LIB]: dlopen libgone, leak, dlclose.
pub fn host_dlclose() -> PathBuf {
    path("host_dlclose")
}
/// host_sleep [N]: leaks, prints "leaked <pid>", sleeps until killed.
pub fn host_sleep() -> PathBuf {
    path("host_sleep")
}
/// host_victim MARKER [STATUS]: prints "pid <pid>", waits for a stdin line, works, writes
/// "finished" to MARKER, exits STATUS (default 7).
pub fn host_victim() -> PathBuf {
    path("host_victim")
}
/// host_exit_variants return|exit|_exit|abort|thread [N].
pub fn host_exit_variants() -> PathBuf {
    path("host_exit_variants")
}
/// libcxxleak.so: C++ leaks (demangled names, an inlined frame).
pub fn libcxxleak() -> PathBuf {
    path("libcxxleak.so")
}
/// host_cxx: runs libcxxleak's leaks once.
pub fn host_cxx() -> PathBuf {
    path("host_cxx")
}
/// host_live_threads exit|last-thread|ending: leaks from threads alive at exit / ending last /
/// ending as main exits.
pub fn host_live_threads() -> PathBuf {
    path("host_live_threads")
}
/// host_exec PROGRAM [ARGS]: leaks libleaky's table twice, then execs PROGRAM.
pub fn host_exec() -> PathBuf {
    path("host_exec")
}
/// host_spawn: posix_spawns a shell that prints whether it inherited the RESIDUE_FD stream.
pub fn host_spawn() -> PathBuf {
    path("host_spawn")
}
/// bench_w4 [PAIRS]: bench workload W4.
pub fn bench_w4() -> PathBuf {
    path("bench_w4")
}

/// What one `fx_run_all()` of libleaky.so leaves behind (c/libleaky.c's table).
pub mod leaky {
    /// One leaking function: what it leaves behind, per allocating API.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Leak {
        pub function: &'static str,
        pub api: &'static str,
        pub count: u64,
        pub bytes: u64,
    }

    /// The length of the strdup'd string plus its NUL.
    pub const NAME_BYTES: u64 = 24;
    /// glibc 2.36 x86-64: `struct locked_FILE`, malloc'd by fopen.
    pub const FILE_STRUCT_BYTES: u64 = 472;
    /// The stream buffer of /proc/self/status: its st_blksize (1 KiB on procfs).
    pub const FILE_BUFFER_BYTES: u64 = 1024;

    pub const LEAKS: &[Leak] = &[
        Leak { function: "leaky_strdup_names", api: "strdup", count: 10, bytes: 10 * NAME_BYTES },
        Leak { function: "leaky_make_struct", api: "malloc", count: 2, bytes: 16 + 100 },
        Leak { function: "leaky_calloc_image", api: "calloc", count: 1, bytes: 64 * 32 * 4 },
        Leak { function: "leaky_realloc_grow", api: "realloc", count: 1, bytes: 3000 },
        Leak { function: "leaky_reallocarray", api: "reallocarray", count: 1, bytes: 10 * 8 },
        Leak { function: "leaky_open_file", api: "malloc", count: 2, bytes: FILE_STRUCT_BYTES + FILE_BUFFER_BYTES },
        Leak { function: "leaky_aligned", api: "posix_memalign", count: 1, bytes: 1000 },
        Leak { function: "leaky_aligned", api: "aligned_alloc", count: 1, bytes: 512 },
        Leak { function: "leaky_aligned", api: "memalign", count: 1, bytes: 96 },
        Leak { function: "leaky_strndup", api: "strndup", count: 3, bytes: 3 * 6 },
    ];

    /// Blocks left behind by one `fx_run_all()`: 23.
    pub const COUNT: u64 = {
        let mut n = 0;
        let mut i = 0;
        while i < LEAKS.len() {
            n += LEAKS[i].count;
            i += 1;
        }
        n
    };
    /// Bytes left behind by one `fx_run_all()`: 14,750.
    pub const BYTES: u64 = {
        let mut n = 0;
        let mut i = 0;
        while i < LEAKS.len() {
            n += LEAKS[i].bytes;
            i += 1;
        }
        n
    };

    /// The names of all leaking functions, each once.
    pub const FUNCTIONS: &[&str] = &[
        "leaky_strdup_names",
        "leaky_make_struct",
        "leaky_calloc_image",
        "leaky_realloc_grow",
        "leaky_reallocarray",
        "leaky_open_file",
        "leaky_aligned",
        "leaky_strndup",
    ];
}

/// libthreadwork.so under host_threads (c/libthreadwork.c).
pub mod threads {
    pub const THREADS: u64 = 8;
    pub const PER_THREAD: u64 = 200_000;
    /// Half of all blocks survive: the odd-numbered ones.
    pub const COUNT: u64 = THREADS * PER_THREAD / 2;
    /// Block j has 8 + j % 16 bytes; the odd j of one thread sum to 1,600,000.
    pub const BYTES: u64 = THREADS * 1_600_000;
    /// Where every surviving block was allocated.
    pub const FUNCTION: &str = "tw_alloc_block";
}

/// libgone.so under host_dlclose (c/libgone.c).
pub mod gone {
    pub const COUNT: u64 = 1;
    pub const BYTES: u64 = 4242;
    pub const FUNCTION: &str = "gone_leak_block";
    /// Descriptors leaked (from FD_FUNCTION), still open when the library is unloaded.
    pub const FDS: u64 = 1;
    pub const FD_FUNCTION: &str = "gone_leak_fd";
}

/// host_sleep (c/host_sleep.c): blocks leaked by the executable before it sleeps.
pub mod sleep {
    pub const DEFAULT_BLOCKS: u64 = 100_000;
    pub const BLOCK_BYTES: u64 = 16;
    pub const FUNCTION: &str = "sleep_leak_block";
}

/// host_idle (c/host_idle.c): a single-threaded program that allocates slowly, then sleeps.
/// Every block it allocates is leaked.
pub mod idle {
    pub const BLOCK_BYTES: u64 = 16;
    pub const FUNCTION: &str = "idle_leak_block";
}

/// libcxxleak.so under host_cxx (c/libcxxleak.cpp). Both blocks come from libstdc++'s operator
/// new, which mallocs.
pub mod cxx {
    /// `new Widget` in `residue_fx::Widget::make(int)`.
    pub const WIDGET_FUNCTION: &str = "residue_fx::Widget::make";
    pub const WIDGET_BYTES: u64 = 16;
    /// `new int[32]` in the always_inline `residue_fx::alloc_ints(unsigned)`, inlined into
    /// `residue_fx::fill_table(unsigned)`.
    pub const INLINED_FUNCTION: &str = "residue_fx::alloc_ints";
    pub const TABLE_FUNCTION: &str = "residue_fx::fill_table";
    pub const TABLE_BYTES: u64 = 32 * 4;
    pub const COUNT: u64 = 2;
    pub const BYTES: u64 = WIDGET_BYTES + TABLE_BYTES;
}

/// host_live_threads (c/host_live_threads.c): blocks leaked by threads that are still running
/// at exit (or that end the process by ending last).
pub mod live_threads {
    pub const THREADS: u64 = 4;
    pub const BLOCKS_PER_THREAD: u64 = 1000;
    pub const BLOCK_BYTES: u64 = 32;
    pub const COUNT: u64 = THREADS * BLOCKS_PER_THREAD;
    pub const BYTES: u64 = COUNT * BLOCK_BYTES;
    pub const FUNCTION: &str = "live_leak_block";
}

/// host_exit_variants (c/host_exit_variants.c): one block, whatever the way out.
pub mod exit_variants {
    pub const BYTES: u64 = 77;
    pub const FUNCTION: &str = "exit_leak_block";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaky_totals_match_the_c_table() {
        assert_eq!(leaky::COUNT, 23);
        assert_eq!(leaky::BYTES, 14_750);
    }

    #[test]
    fn thread_bytes_match_the_size_formula() {
        let per_thread: u64 = (0..threads::PER_THREAD).filter(|j| j % 2 == 1).map(|j| 8 + j % 16).sum();
        assert_eq!(threads::BYTES, per_thread * threads::THREADS);
    }

    #[test]
    fn every_fixture_was_built() {
        for f in [libleaky(), libclean(), libgone(), libthreadwork(), libexample(), libbenchwork(), host_leaky()] {
            assert!(f.exists(), "{} missing", f.display());
        }
    }
}

/// host_torture (c/host_torture.c): what each mode leaks, all from torture_leak.
pub mod torture {
    pub const FUNCTION: &str = "torture_leak";
    /// (mode, blocks, bytes per block)
    pub const MODES: [(&str, u64, u64); 10] = [
        ("keydtor", 40, 48),
        ("churn", 2000, 64),
        ("signal", 10, 32),
        ("stress32", 160, 24),
        ("handover", 4, 48),
        ("smallstack", 3, 40),
        ("getattr", 5, 56),
        ("unshare", 2, 72),
        ("unshare-after", 3, 72),
        ("alone", 1, 88),
    ];
}

/// host_unwind (c/host_unwind.cc): leaks left behind when control leaves hooked frames by a
/// C++ throw or a longjmp.
pub mod unwind {
    pub const FUNCTION: &str = "unwind_leak";
    pub const THROWN_BYTES: u64 = 33;
    pub const AFTER_JUMP_BYTES: u64 = 44;
    pub const AFTER_JUMP_FUNCTION: &str = "after_jump";
    pub const JUMPER_FUNCTION: &str = "jumper";
}

/// host_jit (c/host_jit.c): generated code with its unwind information registered at run time
/// (`__register_frame`, as a JIT does) calls back into `FUNCTION`, which leaks one block of
/// `BYTES`; `CALLER` called the generated code. Nothing else is left behind.
pub mod jit {
    pub const FUNCTION: &str = "jit_leak";
    pub const CALLER: &str = "jit_caller";
    pub const BYTES: u64 = 77;
}

/// host_units: two leaks in libunits.so, a library of three compilation units (libunits_a.c,
/// never called; libunits_b.c; libunits_c.c).
pub fn host_units() -> PathBuf {
    path("host_units")
}
/// libunits.so: see [`host_units`].
pub fn libunits() -> PathBuf {
    path("libunits.so")
}

/// libunits.so built with its debug sections compressed (zlib).
pub fn libunits_z() -> PathBuf {
    path("libunits_z.so")
}

/// libunits.so's leaks (c/libunits_b.c, c/libunits_c.c).
/// host_twins.c: one call site, at one stack depth, under two callers.
pub mod twins {
    /// Blocks per round under twin_a and twin_b, and their sizes.
    pub const A_PER_ROUND: u64 = 3;
    pub const B_PER_ROUND: u64 = 2;
    pub const A_BYTES: u64 = 24;
    pub const B_BYTES: u64 = 40;
}

pub mod units {
    /// units_leak_b's block (malloc in the inlined units_fill).
    pub const B_BYTES: u64 = 48;
    /// units_leak_c's block.
    pub const C_BYTES: u64 = 24;
    /// The malloc call in units_fill (libunits_b.c).
    pub const FILL_LINE: u64 = 7;
    /// units_leak_b's call of units_fill (libunits_b.c).
    pub const LEAK_B_LINE: u64 = 14;
    /// The malloc call in units_leak_c (libunits_c.c).
    pub const LEAK_C_LINE: u64 = 5;
    /// host_units.c's calls of units_leak_b and units_leak_c.
    pub const HOST_B_CALL_LINE: u64 = 9;
    pub const HOST_C_CALL_LINE: u64 = 10;
}
