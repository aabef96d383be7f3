/* host_victim MARKER [STATUS]: the target of the "collector killed mid-run" test.
 * 1. prints "pid <pid>\n" on stdout;
 * 2. waits for a line on stdin (the test kills the collector first, then writes it);
 * 3. allocates and frees 200,000 blocks and runs libleaky's scenarios, so that the interposer
 *    keeps writing into a pipe nobody reads any more (EPIPE, and SIGPIPE must not kill us);
 * 4. writes "finished\n" to MARKER and exits with STATUS (default 7).
 * The test checks the marker and, as the orphan's subreaper, the real exit status. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fixture_api.h"

__attribute__((noinline)) static void churn(long n) {
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(16 + (size_t)(i % 64));
        free(p);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: host_victim MARKER [STATUS]\n");
        return 2;
    }
    int status = argc > 2 ? atoi(argv[2]) : 7;
    char line[64];
    int len = snprintf(line, sizeof line, "pid %ld\n", (long)getpid());
    (void)!write(1, line, (size_t)len);
    char buf[16];
    (void)!read(0, buf, sizeof buf);
    churn(200000);
    fx_run_all();
    churn(200000);
    FILE *m = fopen(argv[1], "w");
    if (!m)
        return 3;
    fputs("finished\n", m);
    fclose(m);
    return status;
}
