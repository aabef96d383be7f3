//! Launching the target under the interposer: find `libresidue.so`, hand the child the write
//! end of a socket pair and the environment contract (ARCHITECTURE.md), keep the collector alive
//! through Ctrl-C, forward termination requests, and wait for the exit status.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::error::{Error, Result};

pub const PRELOAD_NAME: &str = "libresidue.so";
/// The descriptor number the child gets the stream on: high, so it never collides with the
/// descriptors a program opens itself (0-2 and the low numbers it expects to be free).
pub const CHILD_FD: i32 = 1021;

/// Locates `libresidue.so`: `RESIDUE_PRELOAD` if set, else next to the `residue` executable.
pub fn find_preload() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RESIDUE_PRELOAD").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(&p);
        return match std::fs::canonicalize(&path) {
            Ok(abs) if abs.is_file() => Ok(abs),
            _ => Err(Error::new(format!(
                "residue: RESIDUE_PRELOAD names {}, which is not a readable file; point it at libresidue.so or unset it",
                path.display()
            ))),
        };
    }
    let exe = std::env::current_exe().and_then(std::fs::canonicalize);
    let dir = exe.as_ref().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    match dir {
        Some(dir) if dir.join(PRELOAD_NAME).is_file() => Ok(dir.join(PRELOAD_NAME)),
        Some(dir) => Err(Error::new(format!(
            "residue: {PRELOAD_NAME} not found in {} (the directory of the residue executable); build it (cargo build -p residue-interposer) or set RESIDUE_PRELOAD to its path",
            dir.display()
        ))),
        None => Err(Error::new(format!(
            "residue: cannot locate the residue executable to find {PRELOAD_NAME} next to it; set RESIDUE_PRELOAD to its path"
        ))),
    }
}

/// What a cheap look at the target executable says about whether LD_PRELOAD can work.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TargetCheck {
    pub path: Option<PathBuf>,
    /// An ELF without PT_INTERP: statically linked, the dynamic loader never runs.
    pub is_static: bool,
    /// Set-user-ID or set-group-ID: the loader ignores LD_PRELOAD of non-system paths.
    pub setid: bool,
}

impl TargetCheck {
    /// Why the target cannot be tracked, if we know it up front.
    pub fn reason(&self) -> Option<String> {
        let p = self.path.as_ref()?.display();
        if self.is_static {
            Some(format!("{p} is statically linked, so LD_PRELOAD cannot hook it"))
        } else if self.setid {
            Some(format!("{p} is set-user-ID or set-group-ID, so the loader ignores LD_PRELOAD for it"))
        } else {
            None
        }
    }
}

/// Resolves `cmd` the way execvp does (PATH search unless it contains a slash).
pub fn resolve(cmd: &OsStr) -> Option<PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

pub fn check_target(cmd: &OsStr) -> TargetCheck {
    let Some(path) = resolve(cmd) else { return TargetCheck::default() };
    let setid = path.metadata().is_ok_and(|m| m.permissions().mode() & 0o6000 != 0);
    let is_static = elf_is_static(&path).unwrap_or(false);
    TargetCheck { path: Some(path), is_static, setid }
}

/// `Some(true)` for an ELF executable with no PT_INTERP; `None` when it is not an ELF we can
/// read (a script: its interpreter decides, and is normally dynamic).
pub fn elf_is_static(path: &Path) -> Option<bool> {
    let mut data = Vec::new();
    File::open(path).ok()?.take(1 << 16).read_to_end(&mut data).ok()?;
    if data.len() < 52 || data[..4] != *b"\x7fELF" || data[5] != 1 {
        return None; // not ELF, or big-endian (not this machine's)
    }
    let rd = |o: usize, n: usize| -> Option<u64> {
        let b = data.get(o..o + n)?;
        Some(b.iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
    };
    let (phoff, phentsize, phnum) = match data[4] {
        2 => (rd(0x20, 8)?, rd(0x36, 2)?, rd(0x38, 2)?),
        1 => (rd(0x1c, 4)?, rd(0x2a, 2)?, rd(0x2c, 2)?),
        _ => return None,
    };
    for i in 0..phnum {
        let ty = rd((phoff + i * phentsize) as usize, 4)?;
        if ty == 3 {
            return Some(false); // PT_INTERP
        }
    }
    Some(true)
}

/// The child's pid, for the signal forwarder (0: none yet).
static CHILD_PID: AtomicI32 = AtomicI32::new(0);
/// Signals that arrived before the child's pid was known (bit N: signal N), forwarded as soon
/// as it is ([`forward_pending`]). The forwarders are installed before the child starts: a
/// program can be ready, and be sent a signal through residue, before `spawn` returns.
static PENDING: AtomicU64 = AtomicU64::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD_PID.load(Ordering::Acquire);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our own child.
        unsafe { libc::kill(pid, sig) };
        return;
    }
    let bit = 1u64 << (sig as u32 & 63);
    PENDING.fetch_or(bit, Ordering::AcqRel);
    // The pid may have been published meanwhile, after forward_pending looked: whichever of
    // the two clears the bit forwards the signal.
    let pid = CHILD_PID.load(Ordering::Acquire);
    if pid > 0 && PENDING.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
        // SAFETY: as above.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Publishes the child's pid to the forwarders and passes on what arrived before.
fn forward_pending(pid: i32) {
    CHILD_PID.store(pid, Ordering::Release);
    let pending = PENDING.swap(0, Ordering::AcqRel);
    for sig in (1..64).filter(|s| pending & (1u64 << s) != 0) {
        // SAFETY: kill with our own child's pid and a signal number that was delivered to us.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards a signal that a process sent (kill, sigqueue: `timeout -s INT`, a supervisor), not
/// one the terminal sent to the whole foreground group, which reached the target already.
extern "C" fn forward_sent_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code <= 0 {
        forward_signal(sig);
    }
}

fn sigaction_with(sig: libc::c_int, handler: libc::sighandler_t, flags: libc::c_int) -> libc::sigaction {
    // SAFETY: a zeroed sigaction is a valid "default, no flags, empty mask" value.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler;
    new.sa_flags = libc::SA_RESTART | flags;
    // SAFETY: as above; `old` is filled in by the kernel.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialized sigaction structs; sig is a catchable signal.
    unsafe {
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(sig, &new, &mut old);
    }
    old
}

/// Raises the collector's own descriptor limit (it keeps one descriptor per loaded module
/// open until the report). Returns the original, which the child gets back.
pub fn raise_fd_limit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let raised = libc::rlimit { rlim_cur: lim.rlim_max.min(1 << 16), rlim_max: lim.rlim_max };
    if raised.rlim_cur > lim.rlim_cur {
        // SAFETY: raised is a valid rlimit within the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
    Some(lim)
}

/// A running target.
pub struct Launched {
    pub child: Child,
    /// Read end of the event stream.
    pub stream: OwnedFd,
}

pub struct Options<'a> {
    pub argv: &'a [OsString],
    pub preload: &'a Path,
    pub depth: u32,
    /// The descriptor limit the user had (restored in the child).
    pub fd_limit: Option<libc::rlimit>,
    /// The socket children connect to, when they are followed.
    pub children: Option<&'a Path>,
}

/// Which of the standard descriptors 0, 1 and 2 were closed when residue started (bit n: fd
/// n), recorded by a constructor: Rust's runtime then opens /dev/null on them before `main`,
/// and the program must find them closed as they were handed to residue (`cmd <&-` makes
/// `cat` fail, and a program may test for it).
static CLOSED_AT_START: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[used]
#[link_section = ".init_array"]
static RECORD_CLOSED_STD_FDS: extern "C" fn() = record_closed_std_fds;

extern "C" fn record_closed_std_fds() {
    let mut closed = 0u8;
    for fd in 0..3 {
        // SAFETY: F_GETFD on any integer is safe; it fails with EBADF if fd is not open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            closed |= 1 << fd;
        }
    }
    CLOSED_AT_START.store(closed, std::sync::atomic::Ordering::Relaxed);
}

/// `preferred`, unless the user handed residue a descriptor of that number to pass down to
/// the program (`exec 1021<file; residue run -- ...`): the program inherits it and must find
/// it as it was. Then the next lower number that nothing passes down (closed here, or one of
/// residue's own, all close-on-exec).
fn free_child_fd(preferred: i32) -> i32 {
    let inherited = |fd: i32| {
        // SAFETY: F_GETFD on any integer is safe; it fails with EBADF if fd is not open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC == 0
    };
    (3..=preferred).rev().find(|&fd| !inherited(fd)).unwrap_or(preferred)
}

/// Starts the target with the interposer preloaded and the stream on `CHILD_FD` (or the
/// nearest number below it that the program does not inherit).
pub fn spawn(opts: &Options<'_>) -> Result<Launched> {
    if opts.preload.as_os_str().as_bytes().iter().any(|b| matches!(b, b':' | b' ' | b'\t')) {
        return Err(Error::new(format!(
            "residue: {} cannot be preloaded because LD_PRELOAD splits paths at colons and spaces; move it to a plain path and set RESIDUE_PRELOAD",
            opts.preload.display()
        )));
    }
    // A connected pair of Unix stream sockets rather than a pipe: the stream flows one way, and
    // one byte flows back when the collector has read the final image's exit record. The exiting
    // target waits for that byte (bounded), so the collector has seen every module record, and
    // opened every module file, while the target and its mappings still exist: a library
    // deleted right after it was loaded is still symbolized.
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-element array for socketpair to fill.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(Error::io("residue: cannot create the event socket", std::io::Error::last_os_error()));
    }
    // SAFETY: socketpair just returned these two descriptors; we own them from here on.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Bigger buffers let the target run ahead of the reader in bursts. Best effort: the kernel
    // caps them at net.core.{w,r}mem_max.
    for (fd, opt) in [(&write_end, libc::SO_SNDBUF), (&read_end, libc::SO_RCVBUF)] {
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt on a socket we own with a c_int option value; failure is harmless.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }

    let child_fd = free_child_fd(match opts.fd_limit {
        Some(l) if l.rlim_cur != libc::RLIM_INFINITY && l.rlim_cur <= CHILD_FD as u64 => (l.rlim_cur as i32 - 1).max(3),
        _ => CHILD_FD,
    });
    let mut preload = opts.preload.as_os_str().to_owned();
    if let Some(theirs) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(theirs);
    }
    let mut cmd = Command::new(&opts.argv[0]);
    cmd.args(&opts.argv[1..])
        .env("RESIDUE_FD", child_fd.to_string())
        .env("RESIDUE_DEPTH", opts.depth.to_string())
        .env("LD_PRELOAD", preload)
        // A RESIDUE_PID inherited from an outer residue would make our root think it is an
        // unfollowed child and stay silent.
        .env_remove("RESIDUE_PID")
        .env_remove("RESIDUE_SOCKET");
    if let Some(socket) = opts.children {
        cmd.env("RESIDUE_SOCKET", socket);
    }

    // Ctrl-C and Ctrl-\ reach the target through the terminal's process group; the collector
    // must outlive the target to report, and passes on only what a process sent it. Termination
    // requests are passed on whoever sent them, and so are the signals a program is commonly
    // sent to act on (reload, dump, resize): they are meant for the program, and residue's
    // default action for them would be to die and leave it running untraced. All are in place
    // before the child starts (what arrives before its pid is known is passed on once it is);
    // the child gets the user's dispositions back.
    let sent = forward_sent_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    let any = forward_signal as extern "C" fn(libc::c_int);
    let forwarded: [(libc::c_int, libc::sighandler_t, libc::c_int); 8] = [
        (libc::SIGINT, sent as libc::sighandler_t, libc::SA_SIGINFO),
        (libc::SIGQUIT, sent as libc::sighandler_t, libc::SA_SIGINFO),
        (libc::SIGTERM, any as libc::sighandler_t, 0),
        (libc::SIGHUP, any as libc::sighandler_t, 0),
        (libc::SIGUSR1, sent as libc::sighandler_t, libc::SA_SIGINFO),
        (libc::SIGUSR2, sent as libc::sighandler_t, libc::SA_SIGINFO),
        (libc::SIGALRM, sent as libc::sighandler_t, libc::SA_SIGINFO),
        (libc::SIGWINCH, sent as libc::sighandler_t, libc::SA_SIGINFO),
    ];
    let old = forwarded.map(|(sig, handler, flags)| (sig, sigaction_with(sig, handler, flags)));
    let wfd = write_end.as_raw_fd();
    let fd_limit = opts.fd_limit;
    let closed_std = CLOSED_AT_START.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl, sigaction, close, setrlimit) on plain data.
    unsafe {
        cmd.pre_exec(move || {
            if wfd == child_fd {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(wfd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wfd, child_fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (sig, action) in &old {
                libc::sigaction(*sig, action, std::ptr::null_mut());
            }
            for fd in (0..3).filter(|fd| closed_std & (1 << fd) != 0) {
                libc::close(fd);
            }
            if let Some(l) = fd_limit {
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        let mut err = Error::io(format!("residue: cannot run {}", opts.argv[0].to_string_lossy()), e);
        err.exit_code = code;
        err
    })?;
    // Our copy of the write end must go, or the reader never sees end of stream.
    drop(write_end);
    forward_pending(child.id() as i32);
    Ok(Launched { child, stream: read_end })
}

/// Waits for the child: `(exit code, signal)`.
pub fn wait(child: &mut Child) -> (Option<i32>, Option<u32>) {
    loop {
        match child.wait() {
            Ok(st) => return (st.code(), st.signal().map(|s| s as u32)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_static_executables() {
        assert_eq!(elf_is_static(Path::new("/bin/true")), Some(false));
        // A shell script is not an ELF: no verdict.
        let dir = std::env::temp_dir().join(format!("residue-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(elf_is_static(&script), None);
        let src = dir.join("st.c");
        std::fs::write(&src, "int main(void){return 0;}\n").unwrap();
        let exe = dir.join("st");
        let ok = Command::new("gcc").arg("-static").arg("-o").arg(&exe).arg(&src).status();
        if ok.is_ok_and(|s| s.success()) {
            assert_eq!(elf_is_static(&exe), Some(true));
            assert!(check_target(exe.as_os_str()).reason().unwrap().contains("statically linked"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolves_on_path() {
        let p = resolve(OsStr::new("true")).expect("true on PATH");
        assert!(p.is_absolute());
        assert_eq!(resolve(OsStr::new("./x")), Some(PathBuf::from("./x")));
        assert_eq!(resolve(OsStr::new("definitely-not-a-command-residue")), None);
    }
}
