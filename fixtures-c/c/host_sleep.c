/* host_sleep [N]: runs libleaky's scenarios once, leaks N (default 100,000) blocks of
 * SLEEP_BLOCK_BYTES (16) from sleep_leak_block, prints "leaked <pid>\n" on stdout, then sleeps
 * until killed (at most 10 minutes). The SIGKILL test waits for that line and kills it: the
 * report holds whatever reached the collector, marked incomplete. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fixture_api.h"

#define SLEEP_BLOCK_BYTES 16

void *sleep_sink;

__attribute__((noinline)) void sleep_leak_block(void) {
    sleep_sink = malloc(SLEEP_BLOCK_BYTES);
    *(volatile char *)sleep_sink = 1;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    fx_run_all();
    for (long i = 0; i < n; i++)
        sleep_leak_block();
    char line[64];
    int len = snprintf(line, sizeof line, "leaked %ld\n", (long)getpid());
    (void)!write(1, line, (size_t)len);
    for (int i = 0; i < 600; i++)
        sleep(1);
    return 0;
}
