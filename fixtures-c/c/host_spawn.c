/* host_spawn: starts `/bin/sh -c SCRIPT` with posix_spawn (glibc's posix_spawn execs through
 * its internal __execve, not the interposable execve), waits for it, and exits with its status.
 * SCRIPT prints "inherited" if the descriptor named by RESIDUE_FD is open in the shell, "clean"
 * otherwise: the interposer keeps its stream close-on-exec except around its own exec hooks,
 * so a child started by other means must not inherit it (ARCHITECTURE.md). */
#include <spawn.h>
#include <stdio.h>
#include <sys/wait.h>

extern char **environ;

int main(void) {
    char *argv[] = {"sh", "-c",
                    "if [ -n \"$RESIDUE_FD\" ] && [ -e /proc/self/fd/$RESIDUE_FD ]; then echo inherited; "
                    "else echo clean; fi",
                    NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ);
    if (rc != 0) {
        fprintf(stderr, "posix_spawn failed: %d\n", rc);
        return 2;
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return 2;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
