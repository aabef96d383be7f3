/* Test fixture for residue-unwind, compiled twice by build.rs (PREFIX o2_ with -O2
 * -fomit-frame-pointer, PREFIX o0_ with -O0). Every function calls back into Rust at the
 * bottom so the test captures a stack that runs through these frames. */
#include <alloca.h>
#include <string.h>

typedef void (*cb_t)(void *arg);

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define F(name) CAT(PREFIX, name)

int F(recurse)(int depth, cb_t cb, void *arg);

/* Plain recursion; the addition after the call keeps it from becoming a loop or a tail call. */
__attribute__((noinline)) int F(recurse)(int depth, cb_t cb, void *arg) {
    volatile int pad[4];
    pad[0] = depth;
    if (depth <= 0) {
        cb(arg);
        return pad[0];
    }
    int r = F(recurse)(depth - 1, cb, arg);
    return r + pad[0];
}

int F(with_alloca)(int n, cb_t cb, void *arg);

/* alloca makes gcc keep a frame pointer even at -O2: the CFA is rbp-based here. */
__attribute__((noinline)) int F(with_alloca)(int n, cb_t cb, void *arg) {
    char *volatile buf = alloca(n);
    memset(buf, 1, n);
    cb(arg);
    return buf[n - 1];
}

int F(realigned)(int unused, cb_t cb, void *arg);

/* An over-aligned local: the stack pointer is realigned, the CFA follows rbp. */
__attribute__((noinline)) int F(realigned)(int unused, cb_t cb, void *arg) {
    __attribute__((aligned(64))) volatile char buf[64];
    buf[0] = (char)unused;
    cb(arg);
    return buf[0];
}

int F(big_frame)(int depth, cb_t cb, void *arg);

/* A frame larger than any small-offset encoding would hold. */
__attribute__((noinline)) int F(big_frame)(int depth, cb_t cb, void *arg) {
    volatile char big[70000];
    big[0] = (char)depth;
    big[69999] = 2;
    if (depth <= 0)
        cb(arg);
    else
        F(big_frame)(depth - 1, cb, arg);
    return big[0] + big[69999];
}
