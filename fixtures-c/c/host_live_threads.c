/* host_live_threads MODE: leaks from threads that are still running when the process ends,
 * or that end last.
 *   MODE "exit":        LIVE_THREADS threads each leak LIVE_BLOCKS blocks of LIVE_BLOCK_BYTES
 *                       from live_leak_block, report in, and block forever; main waits for all
 *                       of them and calls exit(0) while they are still alive. Their events
 *                       sit in per-thread batches no one flushed: they must not be lost.
 *   MODE "last-thread": main calls pthread_exit right after starting the threads; each thread
 *                       leaks its blocks and returns; the process ends when the last one does.
 *   MODE "ending":      each thread leaks its blocks, reports in and returns; main calls exit(0)
 *                       as soon as all have reported, while they may still be ending (their TLS
 *                       destructors, where residue's hands their last events over, run after
 *                       they report: as after Python's Thread.join, which returns before them).
 * Either way: 4 x 1000 = 4000 blocks, 4000 x 32 = 128,000 bytes (residue_fixtures::live_threads).
 * Output is write(2), not stdio, so nothing else is allocated from this executable's frames
 * on the way out. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIVE_THREADS 4
#define LIVE_BLOCKS 1000
#define LIVE_BLOCK_BYTES 32

static _Atomic int reported;
static int block_forever;
void *live_sink;

__attribute__((noinline)) void live_leak_block(void) {
    live_sink = malloc(LIVE_BLOCK_BYTES);
    *(volatile char *)live_sink = 1;
}

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < LIVE_BLOCKS; i++)
        live_leak_block();
    atomic_fetch_add(&reported, 1);
    while (block_forever)
        pause();
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "exit";
    block_forever = strcmp(mode, "exit") == 0;
    int wait_for_reports = block_forever || strcmp(mode, "ending") == 0;
    pthread_t t;
    for (int i = 0; i < LIVE_THREADS; i++)
        if (pthread_create(&t, NULL, worker, NULL) != 0)
            return 2;
    if (!wait_for_reports)
        pthread_exit(NULL);
    while (atomic_load(&reported) < LIVE_THREADS)
        usleep(1000);
    static const char msg[] = "host_live_threads: exiting\n";
    (void)!write(1, msg, sizeof msg - 1);
    exit(0);
}
