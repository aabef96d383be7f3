/* host_exec_race: runs libleaky's scenarios once (leaking its table), then starts a thread that
 * keeps trying to exec a program that does not exist (as execvp does, directory by directory
 * of PATH), and once the first attempt has failed allocates and frees in a loop on the main
 * thread while the attempts go on, and exits with them still going (status 0).
 * While an exec attempt is under way the interposer records nothing, so some of the loop's
 * calls go unrecorded: the report must say so, and still end complete, with libleaky's table. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "fixture_api.h"

static atomic_int failed_once;

static void *attempt(void *arg) {
    (void)arg;
    char *argv[] = {"/nonexistent/residue-fixture", NULL};
    char *envp[] = {NULL};
    for (;;) {
        execve(argv[0], argv, envp);
        atomic_store(&failed_once, 1);
    }
    return NULL;
}

int main(void) {
    fx_run_all();
    pthread_t t;
    if (pthread_create(&t, NULL, attempt, NULL) != 0)
        return 2;
    while (!atomic_load(&failed_once))
        usleep(100);
    for (int i = 0; i < 200000; i++) {
        void *volatile p = malloc(64);
        free(p);
    }
    exit(0);
}
