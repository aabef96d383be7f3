//! Reading the event stream: decode bytes into the ledger as they arrive, live from the pipe
//! (in a thread, while the target runs) or from a saved trace.
//!
//! Decoding live matters: the target blocks when the pipe is full, so the collector must keep
//! up, and holding raw events until the end would make memory grow with the event count.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use residue_protocol::{DecodeError, Decoder};

use crate::ledger::Ledger;

/// Decoder + ledger, fed arbitrary chunks of the stream.
#[derive(Debug, Default)]
pub struct StreamState {
    decoder: Decoder,
    /// Bytes of an incomplete record, waiting for the rest.
    pending: Vec<u8>,
    pub ledger: Ledger,
    /// The first decode error; decoding stops there (the rest is unreadable).
    pub error: Option<DecodeError>,
    pub bytes: u64,
}

impl StreamState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes every whole record in `chunk` (plus what was pending) into the ledger.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if self.error.is_some() {
            return;
        }
        // Decode straight from the chunk when nothing is pending (the common case), so large
        // reads are not copied.
        let owned;
        let buf: &[u8] = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(chunk);
            owned = std::mem::take(&mut self.pending);
            &owned
        };
        let mut pos = 0;
        loop {
            match self.decoder.next(&buf[pos..]) {
                Ok(Some((record, n))) => {
                    pos += n;
                    self.ledger.apply(record);
                }
                Ok(None) => break,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        self.pending = buf[pos..].to_vec();
    }

    /// End of input: a partial record left over means the stream was cut inside it.
    pub fn finish(&mut self) {
        self.ledger.finish();
        if self.error.is_none() && !self.pending.is_empty() {
            self.error = Some(DecodeError::truncated(self.decoder.offset()));
        }
    }
}

/// Reads a saved trace.
pub fn read_file(path: &std::path::Path) -> std::io::Result<StreamState> {
    let mut f = File::open(path)?;
    let mut state = StreamState::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        state.feed(&buf[..n]);
        if state.error.is_some() {
            break;
        }
    }
    state.finish();
    Ok(state)
}

/// What the live reader ends with.
#[derive(Debug)]
pub struct LiveOutcome {
    pub state: StreamState,
    /// Writing the `--output` copy failed (the report is still complete).
    pub tee_error: Option<std::io::Error>,
    /// Stopped while a (grandchild) process still held the pipe open.
    pub stopped_on_idle: bool,
}

/// How long the pipe may stay silent after the root process exited before we stop waiting for
/// a daemonized descendant that keeps it open.
const IDLE_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Starts the reader thread. `root_exited` is set by the launcher once waitpid returned.
pub fn spawn_live(
    fd: OwnedFd,
    mut tee: Option<File>,
    root_exited: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<LiveOutcome>> {
    std::thread::Builder::new().name("residue-reader".into()).spawn(move || {
        let mut state = StreamState::new();
        let mut tee_error = None;
        let mut buf = vec![0u8; 1 << 16];
        let mut last_data = Instant::now();
        let mut exit_noticed: Option<Instant> = None;
        let mut stopped_on_idle = false;
        let mut pipe = File::from(fd);
        loop {
            let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: pfd is a valid pollfd for the duration of the call; nfds is 1.
            let r = unsafe { libc::poll(&mut pfd, 1, 50) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if r == 0 {
                if root_exited.load(Ordering::Acquire) {
                    // Idle time counts from the later of the root's exit and the last byte.
                    let since = *exit_noticed.get_or_insert_with(Instant::now);
                    // The root is gone. Its final image wrote ImageExit and nothing more is
                    // buffered: done. Otherwise give stragglers a moment, then stop (a
                    // daemonized grandchild may hold the write end forever).
                    if state.ledger.complete() || state.error.is_some() {
                        break;
                    }
                    if since.max(last_data).elapsed() >= IDLE_AFTER_EXIT {
                        stopped_on_idle = true;
                        break;
                    }
                }
                continue;
            }
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            last_data = Instant::now();
            if let Some(f) = tee.as_mut() {
                if let Err(e) = f.write_all(&buf[..n]) {
                    tee_error = Some(e);
                    tee = None;
                }
            }
            state.feed(&buf[..n]);
        }
        state.finish();
        // Keep the idle rule honest: a stop with a complete ledger is a normal end.
        if state.ledger.complete() {
            stopped_on_idle = false;
        }
        LiveOutcome { state, tee_error, stopped_on_idle }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use residue_protocol::{header, Api, Encoder, Kind, HEADER_LEN};
    use std::os::fd::FromRawFd;

    pub(crate) fn sample_trace() -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 14];
        buf[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let mut pos = HEADER_LEN;
        let argv: [&[u8]; 2] = [b"host", b"arg"];
        pos = e.image_start(&mut buf, pos, 77, 1, true, false, 0, b"/opt/host", &argv);
        pos = e.batch(&mut buf, pos, 77);
        pos = e.acquire(&mut buf, pos, 1, Kind::HEAP, Api::STRDUP, 0x1000, 6, 5);
        pos = e.acquire(&mut buf, pos, 2, Kind::HEAP, Api::MALLOC, 0x2000, 100, 6);
        pos = e.release(&mut buf, pos, 3, Kind::HEAP, Api::FREE, 0x2000);
        pos = e.stack(&mut buf, pos, 5, &[0x10, 0x20]);
        pos = e.image_exit(&mut buf, pos, 4);
        buf.truncate(pos);
        buf
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let t = sample_trace();
        let mut a = StreamState::new();
        a.feed(&t);
        a.finish();
        let mut b = StreamState::new();
        for byte in &t {
            b.feed(std::slice::from_ref(byte));
        }
        b.finish();
        assert!(a.error.is_none() && b.error.is_none());
        assert!(a.ledger.complete() && b.ledger.complete());
        let live = |s: &StreamState| s.ledger.final_image().unwrap().live().map(|(_, id, _)| id).collect::<Vec<_>>();
        assert_eq!(live(&a), vec![0x1000]);
        assert_eq!(live(&b), vec![0x1000]);
    }

    #[test]
    fn cut_trace_is_truncated() {
        let t = sample_trace();
        let mut s = StreamState::new();
        s.feed(&t[..t.len() - 1]);
        s.finish();
        let e = s.error.expect("truncated");
        assert_eq!(e.kind, residue_protocol::DecodeErrorKind::Truncated);
        assert!(!s.ledger.complete());
        assert_eq!(s.ledger.final_image().unwrap().live().count(), 1);
    }

    fn pipe() -> (OwnedFd, File) {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid 2-element array for pipe2 to fill.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just returned these descriptors; we own them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from(OwnedFd::from_raw_fd(fds[1]))) }
    }

    /// A daemonized grandchild keeps the write end open: once the root exited and its final
    /// image's exit record is in, the reader stops without waiting for EOF.
    #[test]
    fn live_reader_stops_after_root_exit_without_eof() {
        let (r, mut w) = pipe();
        let exited = Arc::new(AtomicBool::new(false));
        let h = spawn_live(r, None, exited.clone()).unwrap();
        w.write_all(&sample_trace()).unwrap();
        exited.store(true, Ordering::Release);
        let t = Instant::now();
        let out = h.join().unwrap();
        assert!(t.elapsed() < Duration::from_millis(800), "{:?}", t.elapsed());
        assert!(out.state.ledger.complete() && !out.stopped_on_idle);
        drop(w);

        // Without the exit record (root killed), it waits about a second of silence.
        let (r, mut w) = pipe();
        let exited = Arc::new(AtomicBool::new(false));
        let h = spawn_live(r, None, exited.clone()).unwrap();
        let t = sample_trace();
        w.write_all(&t[..t.len() - 3]).unwrap(); // drop the image-exit record
        exited.store(true, Ordering::Release);
        let start = Instant::now();
        let out = h.join().unwrap();
        assert!(start.elapsed() >= IDLE_AFTER_EXIT, "{:?}", start.elapsed());
        assert!(out.stopped_on_idle && !out.state.ledger.complete());
        assert!(out.state.error.is_none(), "whole records only");
        drop(w);
    }

    /// EOF ends the stream even while the root runs; the raw bytes are teed as they came.
    #[test]
    fn live_reader_eof_and_tee() {
        let (r, mut w) = pipe();
        let dir = std::env::temp_dir().join(format!("residue-tee-{}", std::process::id()));
        let tee = File::create(&dir).unwrap();
        let h = spawn_live(r, Some(tee), Arc::new(AtomicBool::new(false))).unwrap();
        w.write_all(&sample_trace()).unwrap();
        drop(w);
        let out = h.join().unwrap();
        assert!(out.state.ledger.complete());
        assert_eq!(std::fs::read(&dir).unwrap(), sample_trace());
        std::fs::remove_file(&dir).unwrap();
    }
}
