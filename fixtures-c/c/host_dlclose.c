/* host_dlclose [LIB [delete]]: dlopens libgone.so (LIB, default: next to this executable),
 * calls gone_run (which leaks one block), dlcloses it, and exits 0. The library is unmapped
 * before exit, so the collector must symbolize its frames from the module record.
 * With "delete", LIB is unlinked right after dlopen (pass a copy!) and is NOT dlclosed: the
 * library stays mapped until exit while its file is gone (an upgrade replacing a .so under a
 * running process), and the collector must still symbolize it.
 * Exits 3 if dlerror reports an error right after a dlopen that succeeded. */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char path[PATH_MAX];
    if (argc > 1) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n < 0) {
            perror("readlink");
            return 2;
        }
        exe[n] = 0;
        snprintf(path, sizeof path, "%s/libgone.so", dirname(exe));
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    /* After a dlopen that succeeded, dlerror has nothing to say (what the interposer looks up
     * in its dlopen hook must not leave it an error of its own). */
    const char *err = dlerror();
    if (err) {
        fprintf(stderr, "dlerror after a successful dlopen: %s\n", err);
        return 3;
    }
    int delete = argc > 2 && strcmp(argv[2], "delete") == 0;
    if (delete && unlink(path) != 0) {
        perror("unlink");
        return 2;
    }
    void (*run)(void) = (void (*)(void))dlsym(h, "gone_run");
    if (!run) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        return 2;
    }
    run();
    if (!delete && dlclose(h) != 0) {
        fprintf(stderr, "dlclose: %s\n", dlerror());
        return 2;
    }
    static const char msg[] = "host_dlclose: done\n";
    (void)!write(1, msg, sizeof msg - 1);
    return 0;
}
