/* libcallback.so: a C function that calls back into Python between two allocations, for
 * residue's test of Python stacks inside foreign calls (tests/tests/python.rs,
 * fixtures-c/py/callbacks.py). Every block is kept (never freed): each is reported, by size. */
#include <stdlib.h>
#include <string.h>

typedef void (*cb_callback)(void);

/* Exported, so that the compiler cannot drop the blocks as never used. */
void *cb_kept[256];
int cb_count;

static void keep(size_t size) {
    void *p = malloc(size);
    memset(p, 1, size);
    cb_kept[cb_count++ & 255] = p;
}

/* Keeps a block of `before` bytes, calls `callback` (if any), keeps a block of `after` bytes. */
__attribute__((noinline)) void cb_around(size_t before, cb_callback callback, size_t after) {
    keep(before);
    if (callback)
        callback();
    keep(after);
}
