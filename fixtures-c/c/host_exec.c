/* host_exec PROGRAM [ARGS...]: runs libleaky's scenarios twice (leaking twice libleaky's
 * table in this image), then replaces itself with PROGRAM through execv. A leak checker that
 * follows the exec reports only the new image's leaks: nothing of the old image's heap
 * survives an exec. */
#include <stdio.h>
#include <unistd.h>

#include "fixture_api.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: host_exec PROGRAM [ARGS...]\n");
        return 2;
    }
    fx_run_all();
    fx_run_all();
    execv(argv[1], argv + 1);
    perror("execv");
    return 127;
}
