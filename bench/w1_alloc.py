"""Workloads W1 and W2 of bench/run: a malloc-heavy pure-Python script.

W1 runs it with PYTHONMALLOC=malloc (every small object is a malloc/free), W2 with the
default pymalloc (small objects come from pymalloc's arenas, only larger ones reach malloc).
`python3 w1_alloc.py [ROUNDS [SCAN]]`: ROUNDS (default 50) rounds of building and dropping
small dicts, lists, tuples, strings and bytes, with a few large buffers. Deterministic.

SCAN (default 4) sets how much interpreter work that allocates nothing goes with each record:
the same allocations, spread over more time. With the default, a plain run here makes about
9.8 million heap events a second; with 7, about 8 million, issue 6's figure for its W1.
"""

import sys

SCAN = "abcdefghijklmnopqrstuvwxyz" * (int(sys.argv[2]) if len(sys.argv) > 2 else 4)


def round_(n):
    records = []
    for i in range(n):
        key = "item-%d" % i
        rec = {"key": key, "value": i, "tags": [key[:4], str(i)], "pair": (i, i * 2)}
        records.append(rec)
        # Interpreter work that allocates nothing (one-character strings and small ints are
        # cached), so the script is malloc-heavy but not only malloc.
        dashes = 0
        for c in key + SCAN:
            if c == "-":
                dashes += 1
        if dashes != 1:
            raise AssertionError(key)
        if i % 64 == 0:
            records.append(bytearray(2048 + i % 512))
    text = ",".join(r["key"] for r in records if isinstance(r, dict))
    total = sum(len(r["tags"]) for r in records if isinstance(r, dict))
    del records
    return len(text) + total


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    acc = 0
    for _ in range(rounds):
        acc += round_(20000)
    print(f"w1: {rounds} rounds, {acc}")


main()
