/* libcountevents.so: a calibration preload for bench/run, not a leak checker. Counts heap
 * acquisitions and releases (forwarding to glibc's __libc_* entry points) and, at exit,
 * appends "acquires releases\n" to the file named by RESIDUE_BENCH_COUNT_FILE. bench/run uses
 * the count to print events per second of each workload and trace bytes per event.
 * realloc counts as a release and an acquire when it moves or frees, strdup as the malloc it
 * makes inside glibc. Built by fixtures-c/build.rs into target/<profile>/fixtures/. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

static _Atomic unsigned long acquires, releases;

static void *acq(void *p) {
    if (p)
        atomic_fetch_add_explicit(&acquires, 1, memory_order_relaxed);
    return p;
}

void *malloc(size_t n) { return acq(__libc_malloc(n)); }
void *calloc(size_t n, size_t m) { return acq(__libc_calloc(n, m)); }
void *memalign(size_t a, size_t n) { return acq(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return acq(__libc_memalign(a, n)); }
void *valloc(size_t n) { return acq(__libc_valloc(n)); }
void *pvalloc(size_t n) { return acq(__libc_pvalloc(n)); }

int posix_memalign(void **out, size_t a, size_t n) {
    if (a % sizeof(void *) != 0 || (a & (a - 1)) != 0)
        return EINVAL;
    void *p = __libc_memalign(a, n);
    if (!p)
        return ENOMEM;
    *out = acq(p);
    return 0;
}

void free(void *p) {
    if (p)
        atomic_fetch_add_explicit(&releases, 1, memory_order_relaxed);
    __libc_free(p);
}

void *realloc(void *old, size_t n) {
    void *p = __libc_realloc(old, n);
    if (old && p != old && (p || n == 0))
        atomic_fetch_add_explicit(&releases, 1, memory_order_relaxed);
    if (p && p != old)
        atomic_fetch_add_explicit(&acquires, 1, memory_order_relaxed);
    return p;
}

void *reallocarray(void *old, size_t n, size_t m) {
    size_t total;
    if (__builtin_mul_overflow(n, m, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(old, total);
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("RESIDUE_BENCH_COUNT_FILE");
    if (!path)
        return;
    char line[64];
    int len = snprintf(line, sizeof line, "%lu %lu\n", atomic_load(&acquires), atomic_load(&releases));
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
        (void)!write(fd, line, (size_t)len);
        close(fd);
    }
}
