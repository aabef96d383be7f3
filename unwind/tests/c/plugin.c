/* A module to dlopen, dlclose and replace: built twice by build.rs with different FRAME sizes
 * (both need a 32-bit immediate, so the code layout is the same). When the second copy lands
 * where the first was, the same return address has a different unwind rule: exactly what
 * `invalidate` after dlclose is for. */
typedef void (*cb_t)(void *arg);

__attribute__((noinline)) int plugin_call(cb_t cb, void *arg) {
    volatile char pad[FRAME];
    pad[0] = 1;
    pad[FRAME - 1] = 2;
    cb(arg);
    return pad[0] + pad[FRAME - 1];
}
