"""Runs libhandles.so (or its clean twin, given by path) through ctypes REPS times (default 1),
then leaks descriptors the Python way: `python3 handles.py LIB [REPS] [--clean]`.

Python-side leaks (none with --clean), all made from this script's frames:
  leak_os_open      os.open() never closed                      PY_OS_OPEN = 2 descriptors
  leak_socket       socket.socket() kept alive                  PY_SOCKETS = 1 descriptor
  leak_files        open() file objects kept in a list          PY_FILES   = 3 descriptors

"Kept alive" means alive until the process ends: CPython's finalization deallocates module
globals (closing their descriptors) before the C library's exit handlers run, so the kept
objects are also referenced from a daemon thread's frame, which finalization never clears, as
in a program whose background thread holds its connection and its log files to the end.

Under residue, libhandles' report must be exactly REPS times the counts in libhandles.c, the
clean twin's empty, and Python's own stdio (descriptors 0, 1, 2) never reported.
"""

import ctypes
import os
import socket
import subprocess
import sys
import threading
import time

PY_OS_OPEN = 2
PY_SOCKETS = 1
PY_FILES = 3

kept = []


def leak_os_open():
    for _ in range(PY_OS_OPEN):
        os.open("/etc/hostname", os.O_RDONLY)


def leak_socket():
    kept.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def leak_files():
    for _ in range(PY_FILES):
        kept.append(open("/etc/hostname", "rb"))


def balanced():
    """The same calls, released: nothing may be reported for them."""
    os.close(os.open("/etc/hostname", os.O_RDONLY))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM):
        pass
    with open("/etc/hostname", "rb") as f:
        f.read()
    os.listdir("/")


def spawn_child():
    """A child through subprocess (vfork on Linux): the child closes every descriptor from 3 up
    before exec, in our memory but its own descriptor table. None of the leaks above may be
    released by that, and the child's pipe is closed by the parent (nothing to report)."""
    subprocess.run(["/bin/true"], close_fds=True, check=True)


def holder(objects, ready):
    ready.set()
    while True:
        time.sleep(3600)
        objects.clear()  # never reached: the reference lives in this frame until exit


def main():
    args = [a for a in sys.argv[1:] if a != "--clean"]
    clean = "--clean" in sys.argv
    if not args:
        sys.exit("usage: handles.py LIB [REPS] [--clean]")
    lib = ctypes.CDLL(args[0])
    reps = int(args[1]) if len(args) > 1 else 1
    lib.hx_run_all.restype = ctypes.c_int
    for _ in range(reps):
        lib.hx_run_all()
    balanced()
    if not clean:
        leak_os_open()
        leak_socket()
        leak_files()
        ready = threading.Event()
        threading.Thread(target=holder, args=(list(kept), ready), daemon=True).start()
        ready.wait()
    spawn_child()
    print(f"handles.py: {reps} runs{' (clean)' if clean else ''}")


main()
