/* host_idle: a single-threaded program that goes idle after a slow start. It allocates one
 * IDLE_BLOCK_BYTES (16) block from idle_leak_block every 100 us for 400 ms by its own clock,
 * prints "first <n>\n" (the blocks so far) on stdout, goes on the same way for another 400 ms,
 * prints "idle <pid> <total>\n", then sleeps until killed (at most 10 minutes).
 *
 * Under residue a program that never started a thread has no writer thread to take its
 * partly filled batch while it sleeps; it writes the batch out itself whenever the events in
 * it are 100 ms old (interposer/src/transport.rs). The SIGKILL test kills it while it sleeps:
 * the first n blocks, allocated 400 ms before the last ones, must have reached the collector.
 * Some 8,000 events fill less than one 64 KiB batch, so without that rule none would. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define IDLE_BLOCK_BYTES 16

void *idle_sink;

__attribute__((noinline)) void idle_leak_block(void) {
    idle_sink = malloc(IDLE_BLOCK_BYTES);
    *(volatile char *)idle_sink = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Allocates a block every 100 us for `seconds`; returns how many. */
static long allocate_for(double seconds) {
    struct timespec pause = {0, 100000};
    long n = 0;
    double end = now() + seconds;
    while (now() < end) {
        idle_leak_block();
        n++;
        nanosleep(&pause, NULL);
    }
    return n;
}

int main(void) {
    char line[96];
    long first = allocate_for(0.4);
    int len = snprintf(line, sizeof line, "first %ld\n", first);
    (void)!write(1, line, (size_t)len);
    long total = first + allocate_for(0.4);
    len = snprintf(line, sizeof line, "idle %ld %ld\n", (long)getpid(), total);
    (void)!write(1, line, (size_t)len);
    for (int i = 0; i < 600; i++)
        sleep(1);
    return 0;
}
