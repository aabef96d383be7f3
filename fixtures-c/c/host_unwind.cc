/* host_unwind MODE: control leaving hooked frames by other means than a return. Calls go through
 * libffi's ffi_call, which the interposer hooks (ctypes and cffi call C this way), so the
 * interposer's own frame is on the stack when control leaves:
 *   throw    the called C++ function leaks 1 block of 33 bytes (unwind_leak) and throws; main
 *            catches it and exits 0.
 *   longjmp  the called function leaks 1 block of 33 bytes (unwind_leak) and longjmps back to
 *            main, which then leaks 1 block of 44 bytes from after_jump: that one was made
 *            outside any foreign call and must not be attributed to the jumper.
 * residue_fixtures::unwind mirrors these numbers. */
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ffi.h>
#include <stdexcept>

void *unwind_sink[2];
static jmp_buf back;

extern "C" __attribute__((noinline)) void *unwind_leak(size_t n) {
    void *p = malloc(n);
    memset(p, 3, n);
    return p;
}

extern "C" __attribute__((noinline)) int thrower(int x) {
    unwind_sink[0] = unwind_leak(33);
    if (x)
        throw std::runtime_error("thrown through ffi_call");
    return 0;
}

extern "C" __attribute__((noinline)) int jumper(int x) {
    unwind_sink[0] = unwind_leak(33);
    longjmp(back, x);
}

extern "C" __attribute__((noinline)) void after_jump(void) { unwind_sink[1] = unwind_leak(44); }

static void call(int (*fn)(int)) {
    ffi_cif cif;
    ffi_type *args[1] = {&ffi_type_sint};
    int x = 1;
    void *vals[1] = {&x};
    ffi_arg r;
    ffi_prep_cif(&cif, FFI_DEFAULT_ABI, 1, &ffi_type_sint, args);
    ffi_call(&cif, FFI_FN(fn), &r, vals);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "throw") == 0) {
        try {
            call(thrower);
        } catch (const std::exception &e) {
            printf("caught: %s\n", e.what());
            return 0;
        }
        return 1;
    }
    if (strcmp(mode, "longjmp") == 0) {
        if (setjmp(back) == 0) {
            call(jumper);
            return 1;
        }
        after_jump();
        puts("jumped back");
        return 0;
    }
    return 2;
}
