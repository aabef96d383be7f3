"""Known leaks through cffi's ABI mode (`ffi.dlopen`, calls made by libffi's ffi_call), for
residue's Python tests (tests/tests/python.rs): `python3 cffi_calls.py LIBLEAKY LIBTAIL`.

cffi's wheels from PyPI carry their own copy of libffi inside `_cffi_backend`, with its entry
point renamed `cffistatic_ffi_call`; Debian's build links the shared libffi. Either way the
report must name the function Python called, even when that function left no frame.

Every leaking line ends with a `# LEAK:<name>` marker (the tests find line numbers by them):
  cffi_names  libleaky fx_strdup_names   10 blocks, 10 x 24 bytes (residue_fixtures::leaky)
  cffi_tail   libtail tail_dup, 3 calls   3 blocks, 3 x 16 bytes ("through-cffi!!!" + NUL):
              tail_dup is a jump to strdup, so no libtail frame is on the stack
Released, so never reported: tail_dup + the C library's free through cffi, 4 times.
"""

import sys

import cffi


def load(leaky_path, tail_path):
    ffi = cffi.FFI()
    ffi.cdef(
        """
        void fx_strdup_names(void);
        char *tail_dup(const char *s);
        void free(void *p);
        """
    )
    return ffi, ffi.dlopen(leaky_path), ffi.dlopen(tail_path), ffi.dlopen(None)


def leak_names(leaky):
    leaky.fx_strdup_names()  # LEAK:cffi_names


def leak_tail(tail):
    for _ in range(3):
        tail.tail_dup(b"through-cffi!!!")  # LEAK:cffi_tail


def balanced(tail, libc):
    for _ in range(4):
        libc.free(tail.tail_dup(b"freed through cffi"))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: cffi_calls.py LIBLEAKY LIBTAIL")
    ffi, leaky, tail, libc = load(sys.argv[1], sys.argv[2])
    leak_names(leaky)
    leak_tail(tail)
    balanced(tail, libc)
    print(f"cffi_calls: cffi {cffi.__version__}, backend {ffi.__class__.__module__}")


main()
