"""Known leaks through ctypes, each made from its own line of this script, for residue's Python
tests (tests/tests/python.rs): `python3 python_lines.py LIBLEAKY LIBTAIL MODE`.

Every line that leaks ends with a `# LEAK:<name>` marker; the tests find the line numbers by
those markers, so edits above them move nothing the tests assume.

MODE `lines` (the main thread):
  names    libleaky fx_strdup_names      10 blocks, 10 x 24 bytes (residue_fixtures::leaky)
  struct   libleaky fx_make_struct        2 blocks, 16 + 100 bytes
  tail     libtail tail_dup, 3 calls      3 blocks, 3 x 13 bytes ("tail-called!" + NUL); tail_dup
           is a jump to strdup: no libtail frame on the stack, named by the foreign call
  libc     libc strdup called directly    2 blocks, 2 x 11 bytes ("from-libc!" + NUL)
  Released, so never reported:
  - libc strdup + libc free, 5 times (ctypes calls into the C library are matched);
  - tail_dup + free, 4 times;
  - a module-global object holding a tail_dup'd buffer of 33 bytes (32 x "f" + NUL) that its
    __del__ frees: CPython runs it during finalization (Py_FinalizeEx, after atexit), which
    residue must still see. MODE `nofree` keeps the same buffer without __del__: one block of
    33 bytes in libtail, proving the buffer is tracked at all.

MODE `alternate`: libleaky fx_make_struct (a malloc of 16 bytes and one of 100) called from one
loop, taking turns between two lines two calls at a time, then through one helper function
(dup_from) taking turns between two callers. Each call's native stacks are the ones of the call before it, at the same
depth: only the Python frames tell the four places apart. Enough calls that the interposer
answers later ones from what it kept for earlier ones (stacks.rs, `quick`).
  odd, even               8 calls each: 8 blocks of 16 bytes and 8 of 100 each
  caller_one, caller_two  6 calls each through dup_from: 6 blocks of 16 bytes and 6 of 100 each

MODE `threads`: two threading.Threads, each calling fx_strdup_names once from its own function
(thread_a, thread_b): 2 x 10 blocks, each stack with its own thread's Python frames.
"""

import ctypes
import sys
import threading

FINAL_BYTES = b"f" * 32


def load(leaky_path, tail_path):
    leaky = ctypes.CDLL(leaky_path)
    tail = ctypes.CDLL(tail_path)
    tail.tail_dup.restype = ctypes.c_void_p
    tail.tail_dup.argtypes = [ctypes.c_char_p]
    libc = ctypes.CDLL(None)
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    return leaky, tail, libc


class Finalized:
    """Frees its C buffer when CPython finalizes the module globals."""

    def __init__(self, tail, free):
        self.buf = tail.tail_dup(FINAL_BYTES)
        # Bound now: at finalization, module globals (the CDLL objects) may already be None.
        self.free = free

    def __del__(self):
        self.free(self.buf)


class Kept:
    def __init__(self, tail):
        self.buf = tail.tail_dup(FINAL_BYTES)


def leak_names(leaky):
    leaky.fx_strdup_names()  # LEAK:names


def leak_struct(leaky):
    leaky.fx_make_struct()  # LEAK:struct


def leak_tail(tail):
    for _ in range(3):
        tail.tail_dup(b"tail-called!")  # LEAK:tail


def leak_libc(libc):
    for _ in range(2):
        libc.strdup(b"from-libc!")  # LEAK:libc


def balanced(tail, libc):
    for _ in range(5):
        libc.free(libc.strdup(b"freed-by-python"))
    for _ in range(4):
        libc.free(tail.tail_dup(b"also freed"))


def thread_a(leaky):
    leaky.fx_strdup_names()  # LEAK:thread_a


def thread_b(leaky):
    leaky.fx_strdup_names()  # LEAK:thread_b


def dup_from(leaky):
    leaky.fx_make_struct()  # LEAK:dup_from


def alternate(leaky):
    for i in range(16):
        if i % 4 < 2:
            leaky.fx_make_struct()  # LEAK:odd
        else:
            leaky.fx_make_struct()  # LEAK:even
    for i in range(12):
        if i % 2:
            dup_from(leaky)  # LEAK:caller_one
        else:
            dup_from(leaky)  # LEAK:caller_two


holder = None


def main():
    global holder
    if len(sys.argv) != 4:
        sys.exit("usage: python_lines.py LIBLEAKY LIBTAIL lines|nofree|alternate|threads")
    leaky, tail, libc = load(sys.argv[1], sys.argv[2])
    mode = sys.argv[3]
    if mode in ("lines", "nofree"):
        leak_names(leaky)
        leak_struct(leaky)
        leak_tail(tail)
        leak_libc(libc)
        balanced(tail, libc)
        holder = Finalized(tail, libc.free) if mode == "lines" else Kept(tail)
    elif mode == "alternate":
        alternate(leaky)  # LEAK:alternate_call
    elif mode == "threads":
        # One after the other: each thread's stack is its own whatever the scheduling.
        for target in (thread_a, thread_b):
            t = threading.Thread(target=target, args=(leaky,))
            t.start()
            t.join()
    else:
        sys.exit(f"unknown mode {mode}")
    print(f"python_lines: {mode}")


main()
