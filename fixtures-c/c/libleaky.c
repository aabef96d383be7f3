/* libleaky.so: counted heap leaks, each made in its own distinctly named function so that a
 * leak checker's top attributed frame can be asserted by name.
 *
 * Built with -O1 -fno-optimize-sibling-calls and every leaking function noinline: the
 * leaking function's frame must still be on the stack when the allocator is entered.
 *
 * What one call of fx_run_all() leaves behind (mirrored by residue_fixtures::leaky in Rust;
 * change both together). Sizes are the sizes requested from the allocator:
 *
 *   function               api             blocks  bytes
 *   leaky_strdup_names     strdup          10      10 x 24 = 240   (LEAKY_NAME is 23 chars)
 *   leaky_make_struct      malloc          2       16 (struct) + 100 (its buffer) = 116
 *   leaky_calloc_image     calloc          1       64 x 32 x 4 = 8192
 *   leaky_realloc_grow     realloc         1       grown 16 -> 64 -> 256 -> 1024 -> 3000
 *   leaky_reallocarray     reallocarray    1       10 x 8 = 80
 *   leaky_open_file        malloc          2       FILE struct + read buffer, never fclose'd;
 *                                                  glibc's sizes, measured (see below)
 *   leaky_aligned          posix_memalign  1       1000 (alignment 64)
 *                          aligned_alloc   1       512 (alignment 256)
 *                          memalign        1       96 (alignment 32)
 *   leaky_strndup          strndup         3       3 x 6 = 18 (5 chars + NUL)
 *
 * leaky_open_file: glibc 2.36 x86-64 fopen() mallocs its FILE (struct locked_FILE, 472 bytes)
 * and the first read mallocs the stream buffer of st_blksize bytes: for /proc/self/status
 * that is 1024 (procfs reports a 1 KiB block size). 2 blocks, 1496 bytes. Measured on this
 * machine with a logging preload (not valgrind: valgrind runs __libc_freeres at exit, which
 * frees the buffer; a plain exit does not), identical over repeated runs. Another glibc or
 * kernel may differ: the tests take these numbers from residue_fixtures::leaky only.
 *
 * Every scenario also allocates and frees a scratch block, so the library's report is the
 * leaks alone and not "no events at all". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>

#include "fixture_api.h"

#define NOINLINE __attribute__((noinline))
#define LEAKY_NAME "residue-leaked-name-xyz" /* 23 characters */

/* Leaked pointers are kept here so that valgrind calls them "still reachable" rather than
 * "definitely lost"; residue does not care about reachability, only about release. */
void *leaky_sink[64];
static int sink_n;

static void keep(void *p) {
    leaky_sink[sink_n++ % 64] = p;
}

static void scratch(void) {
    void *volatile s = malloc(48);
    free(s);
}

struct leaky_struct {
    size_t len;
    char *buf;
};

NOINLINE void leaky_strdup_names(void) {
    for (int i = 0; i < 10; i++)
        keep(strdup(LEAKY_NAME));
    scratch();
}

NOINLINE void leaky_make_struct(void) {
    struct leaky_struct *s = malloc(sizeof *s); /* 16 bytes */
    s->len = 100;
    s->buf = malloc(s->len);
    memset(s->buf, 'x', s->len);
    keep(s);
    scratch();
}

NOINLINE void leaky_calloc_image(void) {
    unsigned char *img = calloc(64 * 32, 4);
    img[0] = 1;
    keep(img);
    scratch();
}

NOINLINE void leaky_realloc_grow(void) {
    static const size_t sizes[] = {16, 64, 256, 1024, 3000};
    char *p = NULL;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        p = realloc(p, sizes[i]);
        p[sizes[i] - 1] = 0;
    }
    keep(p);
    scratch();
}

NOINLINE void leaky_reallocarray(void) {
    long *a = reallocarray(NULL, 10, sizeof(long));
    a[9] = 9;
    keep(a);
    scratch();
}

NOINLINE void leaky_open_file(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        (void)fgetc(f); /* the first read allocates the stream buffer */
        keep(f);
    }
    scratch();
}

NOINLINE void leaky_aligned(void) {
    void *a = NULL;
    if (posix_memalign(&a, 64, 1000) == 0)
        keep(a);
    keep(aligned_alloc(256, 512));
    keep(memalign(32, 96));
    scratch();
}

NOINLINE void leaky_strndup(void) {
    for (int i = 0; i < 3; i++)
        keep(strndup("abcdefghijklmnopqrstuvwxyz", 5));
    scratch();
}

void fx_strdup_names(void) { leaky_strdup_names(); }
void fx_make_struct(void) { leaky_make_struct(); }
void fx_calloc_image(void) { leaky_calloc_image(); }
void fx_realloc_grow(void) { leaky_realloc_grow(); }
void fx_reallocarray(void) { leaky_reallocarray(); }
void fx_open_file(void) { leaky_open_file(); }
void fx_aligned(void) { leaky_aligned(); }
void fx_strndup(void) { leaky_strndup(); }

int fx_run_all(void) {
    fx_strdup_names();
    fx_make_struct();
    fx_calloc_image();
    fx_realloc_grow();
    fx_reallocarray();
    fx_open_file();
    fx_aligned();
    fx_strndup();
    return FX_SCENARIOS;
}
