/* libbenchwork.so, workload W3 of bench/run: a C library called through ctypes 1,000,000
 * times (create/free pairs). bw_create allocates a small object with a buffer (two mallocs),
 * bw_destroy frees both. Built by fixtures-c/build.rs into target/<profile>/fixtures/. */
#include <stdlib.h>
#include <string.h>

struct bw_obj {
    size_t len;
    char *data;
};

struct bw_obj *bw_create(size_t len) {
    struct bw_obj *o = malloc(sizeof *o);
    o->len = len;
    o->data = malloc(len);
    memset(o->data, 0, len);
    return o;
}

void bw_destroy(struct bw_obj *o) {
    free(o->data);
    free(o);
}
