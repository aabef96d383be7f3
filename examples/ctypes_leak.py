"""residue's README demo: a Python program calling a leaky C library through ctypes.

    cargo build --release
    ./target/release/residue run -- python3 examples/ctypes_leak.py

The library (examples/leaky_example.c) is built by that cargo build into
target/<profile>/fixtures/libexample.so. RESIDUE_EXAMPLE_LIB overrides where to find it.
"""

import ctypes
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_library():
    explicit = os.environ.get("RESIDUE_EXAMPLE_LIB")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "fixtures", "libexample.so")
        if os.path.exists(path):
            return path
    sys.exit("libexample.so not found: run `cargo build --release` first (or set RESIDUE_EXAMPLE_LIB)")


lib = ctypes.CDLL(find_library())
lib.greeting_new.restype = ctypes.c_void_p
lib.greeting_new.argtypes = [ctypes.c_char_p]
lib.greeting_title.restype = ctypes.c_char_p  # ctypes copies the bytes; the C string is never freed
lib.greeting_title.argtypes = [ctypes.c_void_p]
lib.greeting_free.restype = None
lib.greeting_free.argtypes = [ctypes.c_void_p]

for name in (b"ada", b"grace", b"linus"):
    g = lib.greeting_new(name)
    print(lib.greeting_title(g).decode())
    lib.greeting_free(g)
