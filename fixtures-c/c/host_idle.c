/* host_idle: a single-threaded program that goes idle after a slow start. It allocates one
 * IDLE_BLOCK_BYTES (16) block from idle_leak_block every 100 us (spinning on the clock, no
 * sleep call) for 400 ms by its own clock, prints "first <n>\n" (the blocks so far) on stdout,
 * goes on the same way for another 400 ms, sleeps 10 ms, prints "idle <pid> <total>\n", then
 * sleeps until killed (at most 10 minutes).
 *
 * Under residue a program that never started a thread has no writer thread to take its
 * partly filled batch while it sleeps (interposer/src/transport.rs): it writes the batch out
 * itself whenever the events in it are 100 ms old, and as it goes to sleep. The SIGKILL test
 * kills it while it sleeps. The first n blocks, allocated 400 ms before the last ones, show
 * the 100 ms rule; all of them, the write on going idle (the 10 ms sleep came before the line).
 * Some 8,000 events fill less than one 64 KiB batch: without either, none would arrive.
 *
 * host_idle busy: after "first <n>", prints "busy <pid>\n" and goes on allocating the same way
 * until killed (at most 10 minutes), never idle: the first n blocks can only have arrived by
 * the 100 ms rule. */
#include <string.h>
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

/* Allocates a block every 100 us for `seconds`; returns how many. Waits by spinning: a sleep
 * call would be a moment of going idle. */
static long allocate_for(double seconds) {
    long n = 0;
    double end = now() + seconds;
    while (now() < end) {
        idle_leak_block();
        n++;
        double next = now() + 100e-6;
        while (now() < next)
            ;
    }
    return n;
}

int main(int argc, char **argv) {
    char line[96];
    long first = allocate_for(0.4);
    int len = snprintf(line, sizeof line, "first %ld\n", first);
    (void)!write(1, line, (size_t)len);
    if (argc > 1 && strcmp(argv[1], "busy") == 0) {
        len = snprintf(line, sizeof line, "busy %ld\n", (long)getpid());
        (void)!write(1, line, (size_t)len);
        allocate_for(600);
        return 0;
    }
    long total = first + allocate_for(0.4);
    struct timespec moment = {0, 10000000};
    nanosleep(&moment, NULL);
    len = snprintf(line, sizeof line, "idle %ld %ld\n", (long)getpid(), total);
    (void)!write(1, line, (size_t)len);
    for (int i = 0; i < 600; i++)
        sleep(1);
    return 0;
}
