/* libclean.so: libleaky's clean twin. The same API and the same allocations through the same
 * APIs (strdup, calloc, realloc growth, reallocarray, an fopen'd /proc file read once, the
 * aligned allocators, strndup), and every one of them released: a leak checker must report
 * nothing for this library. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>

#include "fixture_api.h"

#define NOINLINE __attribute__((noinline))

struct clean_struct {
    size_t len;
    char *buf;
};

NOINLINE void clean_strdup_names(void) {
    char *names[10];
    for (int i = 0; i < 10; i++)
        names[i] = strdup("residue-leaked-name-xyz");
    for (int i = 0; i < 10; i++)
        free(names[i]);
}

NOINLINE void clean_make_struct(void) {
    struct clean_struct *s = malloc(sizeof *s);
    s->len = 100;
    s->buf = malloc(s->len);
    memset(s->buf, 'x', s->len);
    free(s->buf);
    free(s);
}

NOINLINE void clean_calloc_image(void) {
    unsigned char *volatile img = calloc(64 * 32, 4);
    img[0] = 1;
    free(img);
}

NOINLINE void clean_realloc_grow(void) {
    static const size_t sizes[] = {16, 64, 256, 1024, 3000};
    char *p = NULL;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        p = realloc(p, sizes[i]);
        p[sizes[i] - 1] = 0;
    }
    free(p);
}

NOINLINE void clean_reallocarray(void) {
    long *volatile a = reallocarray(NULL, 10, sizeof(long));
    a[9] = 9;
    free(a);
}

NOINLINE void clean_open_file(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        (void)fgetc(f);
        fclose(f);
    }
}

NOINLINE void clean_aligned(void) {
    void *a = NULL;
    if (posix_memalign(&a, 64, 1000) == 0)
        free(a);
    free(aligned_alloc(256, 512));
    free(memalign(32, 96));
}

NOINLINE void clean_strndup(void) {
    for (int i = 0; i < 3; i++)
        free(strndup("abcdefghijklmnopqrstuvwxyz", 5));
}

void fx_strdup_names(void) { clean_strdup_names(); }
void fx_make_struct(void) { clean_make_struct(); }
void fx_calloc_image(void) { clean_calloc_image(); }
void fx_realloc_grow(void) { clean_realloc_grow(); }
void fx_reallocarray(void) { clean_reallocarray(); }
void fx_open_file(void) { clean_open_file(); }
void fx_aligned(void) { clean_aligned(); }
void fx_strndup(void) { clean_strndup(); }

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
