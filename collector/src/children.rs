//! Following children: the collector listens on a Unix socket in a private directory (0700,
//! made with mkdtemp, so no other user can connect or predict the path); every child image of
//! the target that starts a stream of its own (a forked child, or an exec'd child's new image)
//! connects there, and its stream is read live, into its own ledger, like the root's.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::stream::{self, LiveOutcome};

/// The socket children connect to; removed with its directory when dropped.
pub struct Listener {
    dir: PathBuf,
    socket: PathBuf,
    listener: UnixListener,
}

impl Listener {
    /// In `$TMPDIR`, or where that is unusable (missing, read-only, too long a path for a
    /// socket address), in /tmp or /dev/shm: a bad TMPDIR must not keep the program from running.
    pub fn new() -> io::Result<Self> {
        let tmp = std::env::temp_dir();
        let mut first_error = None;
        for dir in [tmp.as_path(), Path::new("/tmp"), Path::new("/dev/shm")] {
            match Self::new_in(dir) {
                Ok(l) => return Ok(l),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| io::Error::other("no directory for the socket")))
    }

    fn new_in(dir: &Path) -> io::Result<Self> {
        let mut template = dir.join("residue-XXXXXX").into_os_string().into_encoded_bytes();
        template.push(0);
        // SAFETY: template is a writable NUL-terminated buffer ending in XXXXXX, as mkdtemp
        // requires; it creates the directory with mode 0700.
        if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        // SAFETY: mkdtemp only replaced the X's with ASCII.
        let dir = PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(template) });
        let socket = dir.join("children");
        let listener = UnixListener::bind(&socket).inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })?;
        listener.set_nonblocking(true)?;
        Ok(Listener { dir, socket, listener })
    }

    pub fn path(&self) -> &Path {
        &self.socket
    }

    /// Accepts children until [`Acceptor::finish`], reading each one's stream on its own thread.
    pub fn accept(self, root_exited: Arc<AtomicBool>) -> io::Result<Acceptor> {
        // finish() drops its end: the hangup wakes the poll at once (a poll with a timeout made
        // every run wait for it, 25 ms on average, after the program had exited).
        let (wake, woken) = UnixStream::pair()?;
        let handle = std::thread::Builder::new().name("residue-children".into()).spawn(move || {
            let mut readers = Vec::new();
            let mut stopping = false;
            loop {
                // Drain what is pending (once more after the stop: a child may have connected
                // just before it), then wait for more.
                while let Ok((conn, _)) = self.listener.accept() {
                    let fd = OwnedFd::from(conn);
                    let _ = set_blocking(&fd);
                    if let Ok(h) = stream::spawn_live(fd, None, root_exited.clone()) {
                        readers.push(h);
                    }
                }
                if stopping {
                    break;
                }
                let mut pfds = [
                    libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: woken.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                ];
                // SAFETY: two valid pollfds, for descriptors this thread owns.
                unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
                stopping = pfds[1].revents != 0;
            }
            readers
        })?;
        Ok(Acceptor { wake, handle })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub struct Acceptor {
    /// Dropped to stop the acceptor.
    wake: UnixStream,
    handle: JoinHandle<Vec<JoinHandle<LiveOutcome>>>,
}

impl Acceptor {
    /// Stops accepting and waits for every child's stream to end (its exit record, end of
    /// file, or a second of silence after the root exited: a daemonized child may run on).
    pub fn finish(self) -> Vec<LiveOutcome> {
        drop(self.wake);
        let readers = self.handle.join().unwrap_or_default();
        readers.into_iter().filter_map(|h| h.join().ok()).collect()
    }
}
