"""Loads a fixture library (libleaky.so or libclean.so, given by path) through ctypes and
runs its scenarios REPS times (default 1): `python3 ctypes_fixture.py LIB [REPS]`.

Under residue, the library's report must be exactly REPS times the fixture's constants
(residue_fixtures::leaky) for libleaky, and empty for libclean.
"""

import ctypes
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: ctypes_fixture.py LIB [REPS]")
    lib = ctypes.CDLL(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    lib.fx_run_all.restype = ctypes.c_int
    ran = sum(lib.fx_run_all() for _ in range(reps))
    print(f"ctypes_fixture: {ran} scenarios")


main()
