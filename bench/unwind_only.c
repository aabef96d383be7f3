/* libunwindonly.so, a reference row of bench/run (issue 6's table): an interposer that only
 * unwinds each allocation with libunwind's cached unw_backtrace (its per-thread trace cache,
 * the fast path) and does nothing else: no recording, no Python frames, no stream. Frees are
 * passed through. It is the cost of a correct native unwind with a well-known unwinder, so a
 * workload's ratio under it says how heavy the workload is for any tool that unwinds every
 * allocation, on this machine.
 *
 * bench/run compiles it into its scratch directory when libunwind is installed:
 *     cc -O2 -shared -fPIC -o libunwindonly.so unwind_only.c -l:libunwind.so.8
 * At exit it prints the number of unwinds and their mean depth on stderr (into the bench's
 * log), so that the depth it saw can be checked against residue's stacks. */
#include <stddef.h>
#include <stdio.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern int unw_backtrace(void **, int);

/* libunwind may allocate while it sets up its cache: those allocations are not unwound. */
static __thread int busy;
static unsigned long unwinds, frames;

static void unwind(void) {
    if (busy)
        return;
    busy = 1;
    void *pcs[128];
    int n = unw_backtrace(pcs, 128);
    /* Not atomic: the counts are a rough check on the first thread's depth, not a result. */
    unwinds++;
    frames += (unsigned long)(n > 0 ? n : 0);
    busy = 0;
}

void *malloc(size_t n) {
    unwind();
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b) {
    unwind();
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    unwind();
    return __libc_realloc(p, n);
}

void free(void *p) {
    __libc_free(p);
}

__attribute__((destructor)) static void report(void) {
    if (unwinds)
        fprintf(stderr, "unwind_only: %lu unwinds, mean depth %.1f frames\n", unwinds, (double)frames / (double)unwinds);
}
