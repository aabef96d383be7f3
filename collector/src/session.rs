//! One traced run of a target, shared by `residue run` and `residue check`: find the
//! interposer, warn about targets LD_PRELOAD cannot reach, launch, read the stream live, wait
//! for the target, and gather what went wrong with the trace itself.

use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::children;
use crate::error::{Error, Result};
use crate::launch;
use crate::report::ProcessInfo;
use crate::stream::{self, StreamState};

/// What a traced run left: the decoded stream, how the target ended, and the trace's problems
/// (one sentence each, for the report).
pub struct Traced {
    pub state: StreamState,
    /// The streams of followed children (forked or exec'd), in the order they connected.
    pub children: Vec<StreamState>,
    pub info: ProcessInfo,
    pub problems: Vec<String>,
    /// Why the target could not be tracked, when nothing arrived (also in `problems`).
    pub untracked: Option<String>,
}

/// Runs `argv` under the interposer. `who` prefixes the up-front warning (`residue`,
/// `residue check`); `tee` receives the raw stream (`--output`); `follow` gives children
/// streams of their own.
pub fn trace(argv: &[OsString], depth: u32, tee: Option<File>, who: &str, follow: bool) -> Result<Traced> {
    let preload = launch::find_preload()?;
    let check = launch::check_target(&argv[0]);
    if let Some(reason) = check.reason() {
        eprintln!("{who}: warning: {reason}; it will run, but residue will likely see nothing");
    }
    let fd_limit = launch::raise_fd_limit();
    let listener = if follow {
        match children::Listener::new() {
            Ok(l) => Some(l),
            Err(e) => {
                // The program runs all the same; its children are then only listed.
                eprintln!("residue: cannot create the socket children connect to ({e}): children are not followed");
                None
            }
        }
    } else {
        None
    };
    let socket = listener.as_ref().map(|l| l.path().to_owned());
    let mut launched =
        launch::spawn(&launch::Options { argv, preload: &preload, depth, fd_limit, children: socket.as_deref() })?;
    let pid = launched.child.id();
    let root_exited = Arc::new(AtomicBool::new(false));
    let acceptor = listener
        .map(|l| l.accept(root_exited.clone()))
        .transpose()
        .map_err(|e| Error::io("residue: cannot start the thread that accepts children", e))?;
    let reader = stream::spawn_live(launched.stream, tee, root_exited.clone())
        .map_err(|e| Error::io("residue: cannot start the reader thread", e))?;
    let (code, signal) = launch::wait(&mut launched.child);
    root_exited.store(true, Ordering::Release);
    let outcome =
        reader.join().map_err(|_| Error::new("residue: the reader thread panicked; this is a bug in residue"))?;
    let state = outcome.state;
    let children: Vec<StreamState> =
        acceptor.map(|a| a.finish().into_iter().map(|o| o.state).collect()).unwrap_or_default();

    let mut problems = Vec::new();
    if let Some(e) = &state.error {
        problems.push(e.to_string());
    }
    if let Some(e) = outcome.tee_error {
        problems.push(format!("writing the trace file failed ({e}); it is incomplete, the report is not"));
    }
    if outcome.stopped_on_idle {
        problems.push(
            "the target exited but the stream stayed open (a descendant holds it) and went quiet; residue stopped reading after 1 s".into(),
        );
    }
    let untracked = (!state.ledger.header_seen).then(|| {
        let why = check
            .reason()
            .unwrap_or_else(|| "it may be statically linked or set-user-ID, or it cleared LD_PRELOAD".to_owned());
        format!("the target could not be tracked: no events arrived ({why})")
    });
    problems.extend(untracked.clone());
    let info = ProcessInfo {
        pid: Some(pid),
        argv: argv.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        code,
        signal,
    };
    Ok(Traced { state, children, info, problems, untracked })
}
