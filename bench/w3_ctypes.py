"""Workload W3 of bench/run: a ctypes loop of create/free pairs into a C library
(bench/w3_lib.c, built as target/<profile>/fixtures/libbenchwork.so).
`python3 w3_ctypes.py LIB [PAIRS [WORK]]` (default 1,000,000 pairs, WORK 0).

WORK (default 0) adds that many rounds of interpreter work that allocates nothing to each
pair (a scan of a short string, as in w1_alloc.py): the same allocations, spread over more
time. bench/README.md says which WORK makes this workload as heavy as issue 6's W3 by the
issue's own rulers.
"""

import ctypes
import sys

SCAN = "abcdefghijklmnopqrstuvwxyz-"


def main():
    lib = ctypes.CDLL(sys.argv[1])
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    work = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    lib.bw_create.restype = ctypes.c_void_p
    lib.bw_create.argtypes = [ctypes.c_size_t]
    lib.bw_destroy.restype = None
    lib.bw_destroy.argtypes = [ctypes.c_void_p]
    create, destroy = lib.bw_create, lib.bw_destroy
    # Two loops rather than one with `range(work)` inside: W3 by default runs exactly the
    # loop earlier tables measured (an empty inner loop still costs the interpreter time).
    if work == 0:
        for i in range(pairs):
            destroy(create(32 + (i & 255)))
    else:
        dashes = 0
        for i in range(pairs):
            destroy(create(32 + (i & 255)))
            for _ in range(work):
                for c in SCAN:
                    if c == "-":
                        dashes += 1
        if dashes != pairs * work:
            raise AssertionError(dashes)
    print(f"w3: {pairs} pairs")


main()
