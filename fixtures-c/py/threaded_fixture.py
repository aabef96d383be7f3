"""Runs a fixture library's scenarios from several Python threads at once (ctypes releases
the GIL around each call, so the C code really runs concurrently):
`python3 threaded_fixture.py LIB [THREADS]` (default 4 threads, each running fx_run_all once).

Under residue, libleaky's report must be exactly THREADS times residue_fixtures::leaky.
"""

import ctypes
import sys
import threading


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: threaded_fixture.py LIB [THREADS]")
    lib = ctypes.CDLL(sys.argv[1])
    lib.fx_run_all.restype = ctypes.c_int
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    start = threading.Barrier(n)
    results = []

    def work():
        start.wait()
        results.append(lib.fx_run_all())

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"threaded_fixture: {len(results)} threads, {sum(results)} scenarios")


main()
