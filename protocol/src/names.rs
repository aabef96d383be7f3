//! Resource kinds and acquiring/releasing APIs. Both are open numbering spaces: a number this
//! build does not know still decodes, and prints as `kind#N` / `api#N`.

use std::fmt;

/// What sort of resource an event is about. Ids are per kind: heap address 0x1000 and
/// descriptor 0x1000 never match each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(pub u8);

impl Kind {
    pub const HEAP: Kind = Kind(0);
    pub const FD: Kind = Kind(1);
    pub const STREAM: Kind = Kind(2);
    pub const DIR: Kind = Kind(3);
    pub const MAPPING: Kind = Kind(4);
    pub const HANDLE: Kind = Kind(5);
    /// Windows kernel HANDLE (reserved for the Windows variant).
    pub const WIN_HANDLE: Kind = Kind(6);

    const NAMES: [&'static str; 7] = ["heap", "fd", "stream", "dir", "mapping", "handle", "win_handle"];

    /// The name used in reports and JSON, `None` for a number this build does not know.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES.get(usize::from(self.0)).copied()
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Kind(i as u8))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "kind#{}", self.0),
        }
    }
}

/// The function through which a resource was acquired or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Api(pub u8);

macro_rules! apis {
    ($($konst:ident = $num:literal => $name:literal,)*) => {
        impl Api {
            $(pub const $konst: Api = Api($num);)*

            /// The C function's name, `None` for a number this build does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($num => Some($name),)*
                    _ => None,
                }
            }
        }
    };
}

apis! {
    MALLOC = 1 => "malloc",
    CALLOC = 2 => "calloc",
    REALLOC = 3 => "realloc",
    REALLOCARRAY = 4 => "reallocarray",
    FREE = 5 => "free",
    POSIX_MEMALIGN = 6 => "posix_memalign",
    ALIGNED_ALLOC = 7 => "aligned_alloc",
    MEMALIGN = 8 => "memalign",
    VALLOC = 9 => "valloc",
    PVALLOC = 10 => "pvalloc",
    STRDUP = 11 => "strdup",
    STRNDUP = 12 => "strndup",
    // File descriptors, streams, directories, mappings (the handles issue).
    OPEN = 32 => "open",
    OPENAT = 33 => "openat",
    CREAT = 34 => "creat",
    DUP = 35 => "dup",
    DUP2 = 36 => "dup2",
    DUP3 = 37 => "dup3",
    FCNTL = 38 => "fcntl",
    PIPE = 39 => "pipe",
    PIPE2 = 40 => "pipe2",
    SOCKET = 41 => "socket",
    SOCKETPAIR = 42 => "socketpair",
    ACCEPT = 43 => "accept",
    ACCEPT4 = 44 => "accept4",
    EVENTFD = 45 => "eventfd",
    TIMERFD_CREATE = 46 => "timerfd_create",
    SIGNALFD = 47 => "signalfd",
    EPOLL_CREATE = 48 => "epoll_create",
    EPOLL_CREATE1 = 49 => "epoll_create1",
    INOTIFY_INIT = 50 => "inotify_init",
    INOTIFY_INIT1 = 51 => "inotify_init1",
    MEMFD_CREATE = 52 => "memfd_create",
    RECVMSG = 53 => "recvmsg",
    CLOSE = 54 => "close",
    CLOSE_RANGE = 55 => "close_range",
    FOPEN = 64 => "fopen",
    FDOPEN = 65 => "fdopen",
    FREOPEN = 66 => "freopen",
    POPEN = 67 => "popen",
    TMPFILE = 68 => "tmpfile",
    FMEMOPEN = 69 => "fmemopen",
    OPEN_MEMSTREAM = 70 => "open_memstream",
    FCLOSE = 71 => "fclose",
    PCLOSE = 72 => "pclose",
    OPENDIR = 80 => "opendir",
    FDOPENDIR = 81 => "fdopendir",
    CLOSEDIR = 82 => "closedir",
    MMAP = 88 => "mmap",
    MUNMAP = 89 => "munmap",
    MREMAP = 90 => "mremap",
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "api#{}", self.0),
        }
    }
}
