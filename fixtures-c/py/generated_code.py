"""Code objects that come and go, for residue's Python tests (tests/tests/python.rs):
`python3 generated_code.py LIBTAIL ROUNDS`.

Each round compiles two functions from fresh source, calls each once (each leaks one tail_dup'd
block of 4 bytes, b"gen" + NUL) and drops them, so that the next round's code objects, names and
file names are likely to reuse the memory of this round's:

  round i, A: `f_<i>` in file `gen_<i>.py`, its call on line 2
  round i, B: `g` in file `same.py` (one string for every round), after i blank lines: its
              call on line i + 2

A stack must name the function, file and line that made it, never an earlier round's.
"""

import ctypes
import gc
import sys


def run_round(tail, i):
    a = {}
    exec(compile(f"def f_{i}(tail):\n    return tail.tail_dup(b'gen')\n", f"gen_{i}.py", "exec"), a)
    a[f"f_{i}"](tail)
    b = {}
    exec(compile("\n" * i + "def g(tail):\n    return tail.tail_dup(b'gen')\n", "same.py", "exec"), b)
    b["g"](tail)


def main():
    tail = ctypes.CDLL(sys.argv[1])
    tail.tail_dup.restype = ctypes.c_void_p
    tail.tail_dup.argtypes = [ctypes.c_char_p]
    rounds = int(sys.argv[2])
    for i in range(rounds):
        run_round(tail, i)
        gc.collect()
    print(f"generated_code: {rounds} rounds")


main()
