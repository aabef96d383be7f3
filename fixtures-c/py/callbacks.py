"""A C function that calls back into Python between two allocations (libcallback.so's
cb_around), for residue's Python tests (tests/tests/python.rs): `python3 callbacks.py LIB`.

Each block has its own size, and the line that made it ends with `# LEAK:<name>`:
  101 and 103: cb_around called from outer_a, around a callback;
  201 and 203: cb_around called (without a callback) from that callback, inside the first call;
  111 and 113: cb_around called from outer_b, around the same callback, which makes 201 and
               203 again (so 2 blocks of each);
  121 and 123: cb_around called from outer_b again, on another line, without a callback.
Blocks made inside one foreign call before and after a callback into Python have the same
Python stack; the callback's own have the callback's; no call's stack is another's.
"""

import ctypes
import sys

CALLBACK = ctypes.CFUNCTYPE(None)


def main():
    lib = ctypes.CDLL(sys.argv[1])
    lib.cb_around.argtypes = [ctypes.c_size_t, CALLBACK, ctypes.c_size_t]
    lib.cb_around.restype = None

    def callback():
        lib.cb_around(201, CALLBACK(), 203)  # LEAK:inner

    keep = CALLBACK(callback)

    def outer_a():
        lib.cb_around(101, keep, 103)  # LEAK:outer_a

    def outer_b():
        lib.cb_around(111, keep, 113)  # LEAK:outer_b
        lib.cb_around(121, CALLBACK(), 123)  # LEAK:outer_b_again

    outer_a()
    outer_b()
    print("callbacks: done")


main()
