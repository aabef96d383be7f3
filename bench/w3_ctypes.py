"""Workload W3 of bench/run: a ctypes loop of create/free pairs into a C library
(bench/w3_lib.c, built as target/<profile>/fixtures/libbenchwork.so).
`python3 w3_ctypes.py LIB [PAIRS]` (default 1,000,000 pairs)."""

import ctypes
import sys


def main():
    lib = ctypes.CDLL(sys.argv[1])
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    lib.bw_create.restype = ctypes.c_void_p
    lib.bw_create.argtypes = [ctypes.c_size_t]
    lib.bw_destroy.restype = None
    lib.bw_destroy.argtypes = [ctypes.c_void_p]
    create, destroy = lib.bw_create, lib.bw_destroy
    for i in range(pairs):
        destroy(create(32 + (i & 255)))
    print(f"w3: {pairs} pairs")


main()
