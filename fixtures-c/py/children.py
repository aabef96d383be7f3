"""Children started by Python (issue 7). `children.py LIBLEAKY MODE`:
  fork | spawn   a multiprocessing Pool of 2 with that start method runs libleaky's scenarios
                 once per task, 2 tasks (chunksize 1), then closes and joins (workers leave
                 normally, not by terminate());
  subprocess     runs HOST (the third argument) with subprocess.run.
The parent itself leaks nothing of libleaky's."""
import ctypes
import multiprocessing as mp
import subprocess
import sys


def work(n):
    ctypes.CDLL(sys.argv[1]).fx_run_all()
    return n


if __name__ == "__main__":
    mode = sys.argv[2]
    if mode == "subprocess":
        subprocess.run([sys.argv[3]], check=True)
    else:
        mp.set_start_method(mode)
        pool = mp.Pool(2)
        print(pool.map(work, [1, 2], chunksize=1))
        pool.close()
        pool.join()
