/* libthreadwork.so: the allocation work of host_threads, in a library of its own so that the
 * report's entry for this library holds exactly these blocks (thread creation's own glibc
 * allocations are owned by the host executable, which calls pthread_create).
 *
 * THREADWORK_THREADS threads each allocate THREADWORK_PER_THREAD blocks in tw_alloc_block,
 * block j of size 8 + j % 16. While allocating, thread i frees the even-numbered blocks of
 * thread (i + 1) % THREADWORK_THREADS as soon as they are published: half of all blocks are
 * freed by another thread than the one that allocated them, concurrently with allocations,
 * so freed addresses are reused across threads (the ordering trap). Left behind, all from
 * tw_alloc_block with api malloc:
 *   blocks: 8 x 100,000 = 800,000
 *   bytes:  per thread, the odd j: 12,500 cycles of 16 x (8 x 8 + 1+3+...+15 = 128)
 *           = 1,600,000; total 12,800,000.
 * Mirrored by residue_fixtures::threads. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define THREADWORK_THREADS 8
#define THREADWORK_PER_THREAD 200000

static void *blocks[THREADWORK_THREADS][THREADWORK_PER_THREAD];
static _Atomic long published[THREADWORK_THREADS];

__attribute__((noinline)) void *tw_alloc_block(long j) {
    void *p = malloc(8 + (size_t)(j % 16));
    *(volatile char *)p = (char)j;
    return p;
}

__attribute__((noinline)) static void tw_free_block(void *p) {
    free(p);
}

/* Frees the even-numbered blocks of `victim` published so far, from *next on. */
static void free_published(int victim, long *next, int wait_for_all) {
    for (;;) {
        long avail = atomic_load_explicit(&published[victim], memory_order_acquire);
        for (; *next < avail; (*next)++)
            if (*next % 2 == 0)
                tw_free_block(blocks[victim][*next]);
        if (!wait_for_all || *next == THREADWORK_PER_THREAD)
            return;
        sched_yield();
    }
}

void *tw_thread_main(void *arg) {
    int me = (int)(long)arg;
    int victim = (me + 1) % THREADWORK_THREADS;
    long next = 0;
    for (long j = 0; j < THREADWORK_PER_THREAD; j++) {
        blocks[me][j] = tw_alloc_block(j);
        atomic_store_explicit(&published[me], j + 1, memory_order_release);
        if (j % 64 == 63)
            free_published(victim, &next, 0);
    }
    free_published(victim, &next, 1);
    return NULL;
}

int tw_threads(void) { return THREADWORK_THREADS; }
