/* host_fork MODE: the parent runs libleaky's scenarios once (leaking exactly what libleaky.c
 * documents), then forks a child that runs them too (so a child whose events leak into the
 * parent's stream doubles the parent's counts) and frees some memory, then:
 *   MODE "exit":  the child returns through exit(0) (atexit handlers, library destructors);
 *   MODE "_exit": the child ends with _exit(0);
 *   MODE "exec":  the child execs /bin/true.
 * Before forking, the parent also makes one block of 200000 bytes (fork_shared_block: large, so
 * malloc maps it apart and no later allocation reuses its address) that it keeps
 * and the child frees: the child's release of what it inherited must be matched, not unseen.
 * Like perf's option parser, the parent overwrites the argument it consumed with a null pointer
 * before forking: the child is still reported with the arguments the process started with.
 * The parent waits for the child, prints "host_fork: child <pid> done", and exits 0 if the child
 * exited 0, 1 otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture_api.h"

void *fork_shared;

__attribute__((noinline)) void fork_shared_block(void) {
    fork_shared = malloc(200000);
    memset(fork_shared, 5, 200000);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "exit";
    if (argc > 1)
        argv[1] = NULL;
    fx_run_all();
    fork_shared_block();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        free(fork_shared);
        fx_run_all();
        for (int i = 0; i < 1000; i++)
            free(malloc(32 + i));
        if (strcmp(mode, "exec") == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        if (strcmp(mode, "_exit") == 0)
            _exit(0);
        exit(0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return 2;
    }
    char line[64];
    int len = snprintf(line, sizeof line, "host_fork: child %ld done\n", (long)pid);
    (void)!write(1, line, (size_t)len);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
