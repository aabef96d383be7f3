/* bench_threads [THREADS [PAIRS]]: per-thread memory. THREADS threads (default 64), alive at
 * once, each make PAIRS malloc/free pairs (default 100) and wait for the others at a barrier,
 * so every thread's tables are live together at the peak. The interposer's cost per thread is
 * (peak under it - peak plain) / THREADS, measured in bench/README.md ("Per-thread memory").
 * Built by fixtures-c/build.rs into target/<profile>/fixtures/. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_barrier_t all_done;
static int pairs = 100;

__attribute__((noinline)) static void *work(void *arg) {
    for (int i = 0; i < pairs; i++) {
        char *p = malloc(64 + i);
        *(volatile char *)p = 1;
        free(p);
    }
    pthread_barrier_wait(&all_done);
    return arg;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 64;
    if (argc > 2)
        pairs = atoi(argv[2]);
    if (threads < 1 || threads > 4096 || pairs < 0)
        return 2;
    pthread_t *t = calloc(threads, sizeof *t);
    if (!t || pthread_barrier_init(&all_done, NULL, threads) != 0)
        return 2;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, work, NULL) != 0)
            return 2;
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    printf("threads: %d threads, %d pairs each\n", threads, pairs);
    return 0;
}
