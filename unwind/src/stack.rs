//! The current thread's stack range, fetched once per thread into cells of its `memo`
//! (const-initialized TLS with no `Drop`: no destructor registered, which would allocate at
//! first use and run before the thread's last frees).
//!
//! The main thread's range is read here from /proc/self/maps with raw system calls; other
//! threads' come from pthread_getattr_np, which answers them from the thread's descriptor.
//! For the main thread glibc reads the same file through stdio and sscanf, allocating as it
//! goes, and those allocations came back through our hooks. It also mapped about 280 KiB of
//! the C library that a program may never use itself: W4 (README.md, Performance) keeps that
//! much less resident while it runs, though at its exit, where its own printf maps the same
//! stdio code, its peak moves by only 24 KiB.

use std::cell::Cell;

/// `hi` while the range is being fetched: a capture re-entered from inside
/// pthread_getattr_np (which allocates) sees no range.
const FETCHING: usize = 1;

/// `(lo, hi)`: the readable part of this thread's stack, `lo <= addr < hi`, kept in the
/// thread's `lo` and `hi` cells (module `memo` holds them, so that a capture reaches all its
/// thread-local state through one TLS access). `None` while the range is unknown (being
/// fetched, or pthread failed): the caller falls back to libgcc.
#[inline(always)]
pub(crate) fn bounds(lo: &Cell<usize>, hi: &Cell<usize>) -> Option<(usize, usize)> {
    let h = hi.get();
    if h > FETCHING {
        return Some((lo.get(), h));
    }
    if h == FETCHING {
        return None;
    }
    fetch(lo, hi)
}

#[cold]
#[inline(never)]
fn fetch(lo: &Cell<usize>, hi: &Cell<usize>) -> Option<(usize, usize)> {
    hi.set(FETCHING);
    match main_thread().or_else(from_pthread) {
        Some((l, h)) if h > FETCHING => {
            lo.set(l);
            hi.set(h);
            Some((l, h))
        }
        // Stay at FETCHING: retrying on every capture would re-read /proc each time.
        _ => None,
    }
}

/// See [`crate::stack_ranges`].
pub(crate) fn ranges() -> (Option<crate::StackRange>, Option<crate::StackRange>) {
    (main_thread(), from_pthread())
}

fn from_pthread() -> Option<(usize, usize)> {
    // SAFETY: a zeroed pthread_attr_t is a valid out-parameter for pthread_getattr_np, which
    // initializes it; it is destroyed exactly once after a successful init. The thread handle is
    // our own.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() {
            return None;
        }
        // glibc reports the lowest usable address (guard page excluded) and the size up to the
        // top, which for new threads includes the TCB: all mapped.
        let lo = addr as usize;
        Some((lo, lo.checked_add(size)?))
    }
}

/// The main thread's range, as glibc computes it (nptl/pthread_getattr_np.c), from the
/// `[stack]` mapping that holds the stack pointer: up to the mapping's top, down as far as the
/// stack may grow (RLIMIT_STACK below the top, and never past the mapping under it). `None` on
/// any other thread, on the main thread of a child forked from another thread (it runs on that
/// thread's stack, which pthread describes), or if /proc cannot be read. Leaves errno alone.
fn main_thread() -> Option<(usize, usize)> {
    let marker = std::hint::black_box(0u8);
    let sp = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
    // SAFETY: __errno_location returns this thread's errno slot; reading it before and
    // restoring it after the raw system calls below leaves the host's errno as it was.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    let r = main_thread_at(sp);
    // SAFETY: as above.
    unsafe { *errno = saved };
    r
}

fn main_thread_at(sp: usize) -> Option<(usize, usize)> {
    // SAFETY: gettid and getpid take no arguments and touch no memory.
    let (tid, pid) = unsafe { (libc::syscall(libc::SYS_gettid), libc::syscall(libc::SYS_getpid)) };
    if tid != pid {
        return None;
    }
    let (below, top) = stack_mapping(sp)?;
    let mut limit = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit64 on this process (pid 0) writes RLIMIT_STACK into `limit`, a valid
    // out-pointer; the new limit is null (unchanged).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::c_long,
            libc::RLIMIT_STACK as libc::c_long,
            std::ptr::null::<libc::rlimit64>(),
            &mut limit as *mut libc::rlimit64,
        )
    };
    let limit = if rc == 0 { usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX) } else { usize::MAX };
    let size = limit.min(top - below) & !(PAGE - 1);
    Some((top - size, top))
}

const PAGE: usize = 4096;

/// In /proc/self/maps, the mapping that holds `addr` if it is the `[stack]` one: the end of
/// the mapping listed before it, and its own end.
fn stack_mapping(addr: usize) -> Option<(usize, usize)> {
    // SAFETY: openat with a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return None;
    }
    let mut lines = Lines { fd, buf: [0; 1024], start: 0, end: 0, eof: false, skipping: false };
    let mut below = 0;
    let mut found = None;
    while let Some(line) = lines.next_line() {
        let Some((from, to, name)) = parse(line) else { break };
        if from <= addr && addr < to {
            found = (name == b"[stack]").then_some((below, to));
            break;
        }
        below = to;
    }
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    found
}

/// `from-to perms offset dev inode   name`: one line's range and name (empty if none).
fn parse(line: &[u8]) -> Option<(usize, usize, &[u8])> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let range = fields.next()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let (from, to) = (hex(&range[..dash])?, hex(&range[dash + 1..])?);
    let name = fields.nth(4).unwrap_or(b"");
    (from < to).then_some((from, to, name))
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0usize, |v, &c| Some(v << 4 | (c as char).to_digit(16)? as usize))
}

/// The lines of a file, read with raw `read`s into a buffer on the stack. A line longer than
/// the buffer (a long path) is cut to the buffer: its range, at its start, is all that is used.
struct Lines {
    fd: libc::c_long,
    buf: [u8; 1024],
    start: usize,
    end: usize,
    eof: bool,
    /// Dropping the rest of a line that did not fit.
    skipping: bool,
}

impl Lines {
    fn next_line(&mut self) -> Option<&[u8]> {
        loop {
            let nl = self.buf[self.start..self.end].iter().position(|&b| b == b'\n');
            match nl {
                Some(i) if self.skipping => {
                    self.start += i + 1;
                    self.skipping = false;
                    continue;
                }
                None if self.skipping => self.start = self.end,
                Some(i) => {
                    let line = self.start..self.start + i;
                    self.start += i + 1;
                    return Some(&self.buf[line]);
                }
                None if self.start == 0 && self.end == self.buf.len() => {
                    self.skipping = true;
                    self.start = self.end;
                    return Some(&self.buf[..]);
                }
                None => {}
            }
            if self.eof {
                // The last line, if it has no newline.
                let line = self.start..self.end;
                self.start = self.end;
                return (!line.is_empty() && !self.skipping).then(|| &self.buf[line]);
            }
            self.buf.copy_within(self.start..self.end, 0);
            (self.end, self.start) = (self.end - self.start, 0);
            let free = &mut self.buf[self.end..];
            // SAFETY: reads into the unused tail of our own buffer, at most its length.
            let n = unsafe { libc::syscall(libc::SYS_read, self.fd, free.as_mut_ptr(), free.len()) };
            match usize::try_from(n) {
                Ok(n) if n > 0 => self.end += n,
                _ => self.eof = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Lines};
    use std::io::Write;

    fn lines_of(text: &[u8]) -> Vec<Vec<u8>> {
        let mut file = std::env::temp_dir();
        file.push(format!("residue-unwind-lines-{}-{}", std::process::id(), text.len()));
        std::fs::File::create(&file).unwrap().write_all(text).unwrap();
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: open with a NUL-terminated path; closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0);
        let mut lines = Lines { fd: fd.into(), buf: [0; 1024], start: 0, end: 0, eof: false, skipping: false };
        let mut out = Vec::new();
        while let Some(l) = lines.next_line() {
            out.push(l.to_vec());
        }
        // SAFETY: the descriptor opened above, closed once.
        unsafe { libc::close(fd) };
        std::fs::remove_file(&file).unwrap();
        out
    }

    /// Lines of any length come out one each; one longer than the buffer is cut to it, and
    /// the lines after it are intact.
    #[test]
    fn lines_longer_than_the_buffer_are_cut_and_the_next_ones_kept() {
        let long = format!("1000-2000 r--p 00000000 08:01 42   /{}", "x".repeat(5000));
        let mut text = Vec::new();
        for i in 0..300 {
            text.extend_from_slice(
                format!("{:x}-{:x} rw-p 00000000 00:00 0\n", i * 0x1000, i * 0x1000 + 0x1000).as_bytes(),
            );
        }
        text.extend_from_slice(long.as_bytes());
        text.extend_from_slice(b"\n7ffd0000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\nlast");
        let lines = lines_of(&text);
        assert_eq!(lines.len(), 303);
        assert_eq!(lines[0], b"0-1000 rw-p 00000000 00:00 0");
        assert_eq!(lines[299], b"12b000-12c000 rw-p 00000000 00:00 0");
        assert_eq!(lines[300], &long.as_bytes()[..1024]);
        assert_eq!(parse(&lines[300]).map(|(a, b, _)| (a, b)), Some((0x1000, 0x2000)));
        assert_eq!(parse(&lines[301]), Some((0x7ffd_0000, 0x7ffd_2000, &b"[stack]"[..])));
        assert_eq!(lines[302], b"last");
        assert_eq!(lines_of(b""), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn a_line_parses_to_its_range_and_name() {
        assert_eq!(
            parse(b"7f1c2a000000-7f1c2a022000 r--p 00000000 08:01 1234   /usr/lib/libc.so.6"),
            Some((0x7f1c_2a00_0000, 0x7f1c_2a02_2000, &b"/usr/lib/libc.so.6"[..]))
        );
        assert_eq!(parse(b"1000-2000 rw-p 00000000 00:00 0"), Some((0x1000, 0x2000, &b""[..])));
        assert_eq!(parse(b"2000-1000 rw-p 00000000 00:00 0"), None);
        assert_eq!(parse(b"zz-1000 rw-p"), None);
        assert_eq!(parse(b""), None);
    }

    /// Off the main thread (the test harness runs tests on threads of its own) the maps are
    /// not read: pthread answers.
    #[test]
    fn other_threads_take_pthreads_answer() {
        let (ours, glibc) = super::ranges();
        assert_eq!(ours, None);
        let (lo, hi) = glibc.expect("pthread_getattr_np answers for this thread");
        let here = 0u8;
        let sp = std::ptr::addr_of!(here) as usize;
        assert!(lo <= sp && sp < hi);
    }
}
