//! The command line of `residue check` and `residue suppressions` (kept here so `main.rs` only
//! names the subcommands).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use super::config::parse_limit_arg;
use super::{exit, suppress, Options};
use crate::error::Result;

/// The exit statuses, in `residue check --help` (the README's CI section says the same).
pub const EXIT_HELP: &str = "\
Exit status:
  0      the target succeeded and what it left behind is within limits
  23     the target succeeded, but leaks exceed the limits (LeakSanitizer's status)
  1-255  the target's own non-zero exit status, passed through: the target failed
         (this wins over 23; the leak verdict is still printed and in every report)
  128+N  the target was killed by signal N (e.g. 134 for SIGABRT, 139 for SIGSEGV)
  2      invalid residue command line
  125    residue itself failed: unreadable suppressions/config/baseline, interposer not
         found, the target could not be tracked, or (on an otherwise passing run) a
         report file could not be written
  126    CMD was found but could not be executed
  127    CMD was not found
A target that itself exits 23, 125, 126 or 127 is told apart by the last line (the summary)
and by `check.verdict` in the JSON report.";

#[derive(Args, Debug)]
#[command(override_usage = "residue check [OPTIONS] -- CMD [ARGS]...", after_help = EXIT_HELP)]
pub struct CheckArgs {
    /// Only libraries whose path or file name matches this glob (repeatable). Without it, every
    /// library except the Python interpreter's and the loader's own residue.
    #[arg(long = "library", value_name = "GLOB")]
    pub libraries: Vec<String>,
    /// Only these kinds (comma-separated: heap,fd,stream,dir,mapping).
    #[arg(long = "kind", value_name = "KINDS")]
    pub kinds: Vec<String>,
    /// Most bytes a library may leave of a kind: KIND=N, or N for every kind (k/M/G suffixes).
    /// Default 0.
    #[arg(long, value_name = "KIND=N", value_parser = parse_limit_arg)]
    pub max_bytes: Vec<(Option<String>, u64)>,
    /// Most resources a library may leave of a kind: KIND=N, or N for every kind. Default 0.
    #[arg(long, value_name = "KIND=N", value_parser = parse_limit_arg)]
    pub max_count: Vec<(Option<String>, u64)>,
    /// A suppressions file (repeatable): leak:, fd:, stream:, dir:, mapping:, module:, python:.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Do not apply the built-in suppressions (`residue suppressions --print-default`).
    #[arg(long)]
    pub no_default_suppressions: bool,
    /// A previous JSON report: fail only on stacks that are new or grew.
    #[arg(long, value_name = "OLD.json")]
    pub baseline: Option<PathBuf>,
    /// Per-library limits and suppression files (default: ./residue.toml if present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the JSON report (schema residue-report/1 with a `check` section); `-` is stdout.
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Write JUnit XML: one test case per library in scope.
    #[arg(long, value_name = "OUT.xml")]
    pub junit: Option<PathBuf>,
    /// Write SARIF 2.1.0: one result per leaking stack.
    #[arg(long, value_name = "OUT.sarif")]
    pub sarif: Option<PathBuf>,
    /// Deepest native stack to capture.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub depth: u32,
    /// Show every frame of every counted stack.
    #[arg(long)]
    pub all: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct SuppressionsArgs {
    /// Print the built-in suppressions (what `--no-default-suppressions` turns off).
    #[arg(long, required = true)]
    pub print_default: bool,
}

pub fn run(a: CheckArgs) -> Result<i32> {
    super::run(&Options {
        libraries: a.libraries,
        kinds: a.kinds,
        max_bytes: a.max_bytes,
        max_count: a.max_count,
        suppressions: a.suppressions,
        no_default_suppressions: a.no_default_suppressions,
        baseline: a.baseline,
        config: a.config,
        json: a.json,
        junit: a.junit,
        sarif: a.sarif,
        depth: a.depth,
        all: a.all,
        cmd: a.cmd,
    })
}

pub fn suppressions(a: SuppressionsArgs) -> Result<i32> {
    if a.print_default {
        print!("{}", suppress::DEFAULT);
    }
    Ok(exit::PASS)
}
