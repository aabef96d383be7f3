/* host_exec PROGRAM [ARGS...]: runs libleaky's scenarios twice (leaking twice libleaky's
 * table in this image), then replaces itself with PROGRAM through execv. A leak checker that
 * follows the exec reports only the new image's leaks: nothing of the old image's heap
 * survives an exec.
 * host_exec --cloexec PROGRAM: the same, but first marks every descriptor from 3 up
 * close-on-exec (close_range with CLOSE_RANGE_CLOEXEC, then fcntl on each), as programs that
 * exec themselves clean do, and execs PROGRAM (no arguments) through execl, which no hook sees.
 * When the exec fails, the image goes on: the scenarios run a third time (from another call
 * site: new stacks, sent after the failed exec) and the exit status is 127. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/close_range.h>

#include "fixture_api.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: host_exec PROGRAM [ARGS...]\n");
        return 2;
    }
    fx_run_all();
    fx_run_all();
    if (strcmp(argv[1], "--cloexec") == 0 && argc > 2) {
        close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
        for (int fd = 3; fd < 1024; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        execl(argv[2], argv[2], (char *)NULL);
        perror("execl");
        return 127;
    }
    execv(argv[1], argv + 1);
    fx_run_all();
    return 127;
}
