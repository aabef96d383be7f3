/* host_torture MODE: thread and signal conditions the interposer must survive with exact totals.
 * Every mode leaks a known number of blocks of a known size from torture_leak (residue_fixtures::
 * torture mirrors these numbers) and frees everything else.
 *   keydtor  40 threads; each sets a pthread key (created after the interposer's) whose destructor
 *            runs after the interposer's own and allocates: it leaks 1 block of 48 bytes and frees
 *            a block the thread made. Leaks 40 x 48.
 *   churn    2000 short-lived threads, 8 alive at a time; each makes 3 blocks and leaks 1 of
 *            64 bytes. Leaks 2000 x 64.
 *   signal   the main thread mallocs and frees in a loop while a 50 us interval timer's SIGALRM
 *            handler mallocs and frees too (glibc malloc is not async-signal-safe, but the
 *            interposer must add no deadlock of its own); then leaks 10 x 32.
 *   exitsig  the main thread mallocs and frees without end; a 20 us timer's SIGALRM handler calls
 *            exit(7) on its 500th signal, usually while the interrupted thread is inside an
 *            allocation hook: the exit must not wait forever on what the interrupted code holds.
 *            Leaks nothing of its own (MODES has no entry; the test checks the status).
 *   stress32 32 threads, each allocating 20000 blocks of 24 bytes into a shared ring and freeing
 *            blocks other threads made; what is left in the ring at the end is freed except the
 *            last 5 slots of each thread's lane. Leaks 32 x 5 x 24.
 *   handover the main thread mallocs and frees alone, then 3 threads join in while it goes on,
 *            all four allocating and freeing at once, half of it through a shared slot (so that
 *            blocks change threads): the interposer's sequence numbers go from the main
 *            thread's own counter to a shared one under load. Leaks 4 x 48 (one per thread).
 *   smallstack a thread created with the smallest stack pthread allows (PTHREAD_STACK_MIN): the
 *            interposer's thread-local storage comes out of it and must leave it room, and its
 *            hooks (open, fopen, malloc) must fit in what is left. Exit status 3 if the thread
 *            could not be created. Leaks 3 x 40.
 *   getattr  the main thread, then 4 threads, each ask pthread_getattr_np for their own stack
 *            before they allocate anything (as Rust's runtime does at startup): glibc holds the
 *            thread's lock and allocates inside, and the interposer, recording that allocation,
 *            must not ask pthread_getattr_np again (a deadlock). Leaks 5 x 56.
 *   unshare  unshare(CLONE_NEWUSER), which the kernel allows a single-threaded process only
 *            (exit status 4 if it fails), then the main thread and one more thread each leak
 *            1 block of 72 bytes. Leaks 2 x 72.
 *   unshare-after  as unshare, after a thread that leaks 1 block of 72 bytes has come and gone
 *            (under residue the interposer's writer thread, started with that thread, is then
 *            the only other one). Leaks 3 x 72.
 *   alone    leaks 1 block of 88 bytes; exit status 5 if the kernel counts more than one thread
 *            in the process before it ever called pthread_create (under residue: no writer
 *            thread before the program's first thread). */
#define _GNU_SOURCE /* pthread_getattr_np */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

void *torture_sink;

__attribute__((noinline)) void *torture_leak(size_t n) {
    void *p = malloc(n);
    memset(p, 7, n);
    return p;
}

static void keep(void *p) { torture_sink = p; }

/* keydtor */
static pthread_key_t key;
static void key_destructor(void *value) {
    keep(torture_leak(48));
    free(value);
}
static void *keydtor_thread(void *arg) {
    (void)arg;
    pthread_setspecific(key, malloc(100));
    free(malloc(10));
    return NULL;
}

/* churn */
static void *churn_thread(void *arg) {
    (void)arg;
    void *a = malloc(16), *b = malloc(200);
    keep(torture_leak(64));
    free(a);
    free(b);
    return NULL;
}

/* signal */
static volatile sig_atomic_t in_handler;
static void on_alarm(int sig) {
    (void)sig;
    in_handler = 1;
    void *p = malloc(40);
    *(volatile char *)p = 1;
    free(p);
    in_handler = 0;
}

/* exitsig */
static volatile int alarms;
static void exit_on_alarm(int sig) {
    (void)sig;
    if (++alarms == 500)
        exit(7);
}

/* stress32 */
#define THREADS 32
#define PER 20000
#define LANE 64
static void *volatile ring[THREADS][LANE];
static void *stress_thread(void *arg) {
    long me = (long)arg;
    for (long i = 0; i < PER; i++) {
        void *p = malloc(24);
        /* Free whatever another thread left in its lane slot, then leave ours. */
        long other = (me + 1 + i % (THREADS - 1)) % THREADS;
        void *q = __atomic_exchange_n(&ring[other][i % LANE], NULL, __ATOMIC_ACQ_REL);
        free(q);
        void *old = __atomic_exchange_n(&ring[me][i % LANE], p, __ATOMIC_ACQ_REL);
        free(old);
    }
    return NULL;
}

/* handover */
static void *volatile shared_slot;
static void pairs(long n) {
    for (long i = 0; i < n; i++) {
        void *p = malloc(40 + (size_t)(i & 7));
        *(volatile char *)p = 1;
        if (i & 1) {
            /* Whoever swaps last frees what the other left: blocks freed on another thread. */
            free(__atomic_exchange_n(&shared_slot, p, __ATOMIC_ACQ_REL));
        } else {
            free(p);
        }
    }
}
static void *handover_thread(void *arg) {
    (void)arg;
    pairs(150000);
    keep(torture_leak(48));
    return NULL;
}

/* smallstack */
static void *small_thread(void *arg) {
    (void)arg;
    /* Hooks whose stacks go through frames no cached rule covers yet, as a thread's first
     * calls do: the unwinder's slow paths must not overflow this stack. */
    int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0)
        close(fd);
    FILE *f = fopen("/dev/null", "r");
    if (f)
        fclose(f);
    for (int i = 0; i < 1000; i++)
        free(malloc(16 + (size_t)i));
    for (int i = 0; i < 3; i++)
        keep(torture_leak(40));
    return NULL;
}

/* getattr */
static void ask_own_stack(void) {
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0)
        pthread_attr_destroy(&attr);
}

static void *getattr_thread(void *arg) {
    (void)arg;
    ask_own_stack();
    keep(torture_leak(56));
    return NULL;
}

/* unshare */
static void *unshare_thread(void *arg) {
    (void)arg;
    keep(torture_leak(72));
    return NULL;
}

/* unshare(CLONE_NEWUSER), retried while it fails with EINVAL for up to a second: a thread that
 * pthread_join has seen end may still be leaving the thread group for a moment (plain too). */
static int unshare_user(void) {
    for (int i = 0; i < 1000; i++) {
        if (unshare(CLONE_NEWUSER) == 0)
            return 0;
        if (errno != EINVAL)
            break;
        usleep(1000);
    }
    perror("unshare");
    return -1;
}

/* The number of threads the kernel counts in this process (field 20 of /proc/self/stat, which
 * CPython 3.12+ reads at every os.fork()), or -1. */
static int own_threads(void) {
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p)
        return -1;
    int field = 2, threads = -1;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " "))
        if (++field == 20) {
            threads = atoi(tok);
            break;
        }
    return threads;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "unshare") == 0 || strcmp(mode, "unshare-after") == 0) {
        pthread_t t;
        if (mode[7] == '-') {
            pthread_create(&t, NULL, unshare_thread, NULL);
            pthread_join(t, NULL);
        }
        if (unshare_user() != 0)
            return 4;
        keep(torture_leak(72));
        pthread_create(&t, NULL, unshare_thread, NULL);
        pthread_join(t, NULL);
        return 0;
    }
    if (strcmp(mode, "alone") == 0) {
        int before = own_threads();
        keep(torture_leak(88));
        if (before != 1) {
            fprintf(stderr, "host_torture alone: %d threads before the first pthread_create\n", before);
            return 5;
        }
        return 0;
    }
    if (strcmp(mode, "getattr") == 0) {
        ask_own_stack();
        keep(torture_leak(56));
        for (int i = 0; i < 4; i++) {
            pthread_t t;
            pthread_create(&t, NULL, getattr_thread, NULL);
            pthread_join(t, NULL);
        }
        return 0;
    }
    if (strcmp(mode, "keydtor") == 0) {
        pthread_key_create(&key, key_destructor);
        for (int i = 0; i < 40; i++) {
            pthread_t t;
            pthread_create(&t, NULL, keydtor_thread, NULL);
            pthread_join(t, NULL);
        }
        return 0;
    }
    if (strcmp(mode, "churn") == 0) {
        for (int i = 0; i < 2000; i += 8) {
            pthread_t t[8];
            for (int j = 0; j < 8; j++)
                pthread_create(&t[j], NULL, churn_thread, NULL);
            for (int j = 0; j < 8; j++)
                pthread_join(t[j], NULL);
        }
        return 0;
    }
    if (strcmp(mode, "signal") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 50}, {0, 50}};
        setitimer(ITIMER_REAL, &it, NULL);
        for (int i = 0; i < 300000; i++) {
            void *p = malloc(1 + i % 300);
            *(volatile char *)p = 1;
            free(p);
        }
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
        for (int i = 0; i < 10; i++)
            keep(torture_leak(32));
        return 0;
    }
    if (strcmp(mode, "exitsig") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = exit_on_alarm;
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 20}, {0, 20}};
        setitimer(ITIMER_REAL, &it, NULL);
        for (unsigned i = 0;; i++) {
            void *p = malloc(1 + i % 500);
            *(volatile char *)p = 1;
            free(p);
        }
    }
    if (strcmp(mode, "handover") == 0) {
        pairs(50000);
        pthread_t t[3];
        for (int i = 0; i < 3; i++)
            pthread_create(&t[i], NULL, handover_thread, NULL);
        pairs(300000);
        for (int i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        free(__atomic_exchange_n(&shared_slot, NULL, __ATOMIC_ACQ_REL));
        keep(torture_leak(48));
        return 0;
    }
    if (strcmp(mode, "smallstack") == 0) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN);
        pthread_t t;
        if (pthread_create(&t, &attr, small_thread, NULL) != 0)
            return 3;
        pthread_join(t, NULL);
        return 0;
    }
    if (strcmp(mode, "stress32") == 0) {
        pthread_t t[THREADS];
        for (long i = 0; i < THREADS; i++)
            pthread_create(&t[i], NULL, stress_thread, (void *)i);
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);
        /* Free everything left, then leak exactly 5 known blocks per lane. */
        for (int i = 0; i < THREADS; i++)
            for (int j = 0; j < LANE; j++)
                free(ring[i][j]);
        for (int i = 0; i < THREADS * 5; i++)
            keep(torture_leak(24));
        return 0;
    }
    return 2;
}
