/* host_exit_variants HOW [N]: ends in a chosen way after leaking one block of 77 bytes from
 * exit_leak_block (so every variant has something to report):
 *   return N   return N from main
 *   exit N     exit(N)
 *   _exit N    _exit(N) (no atexit handlers, no destructors: the interposer's exit flush
 *              may not run, so the report may be marked incomplete)
 *   abort      abort() (SIGABRT)
 *   segv       a write through a null pointer (SIGSEGV)
 *   term       raise(SIGTERM) with the default disposition
 *   thread N   the main thread calls pthread_exit while another thread calls exit(N) */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *exit_sink;
/* Volatile so the compiler cannot see the null write coming and drop it. */
int *volatile exit_sink_null;

__attribute__((noinline)) void exit_leak_block(void) {
    exit_sink = malloc(77);
    *(volatile char *)exit_sink = 1;
}

static int code;

static void *exit_from_thread(void *arg) {
    (void)arg;
    usleep(1000);
    exit(code);
}

int main(int argc, char **argv) {
    const char *how = argc > 1 ? argv[1] : "return";
    code = argc > 2 ? atoi(argv[2]) : 0;
    exit_leak_block();
    if (strcmp(how, "exit") == 0)
        exit(code);
    if (strcmp(how, "_exit") == 0)
        _exit(code);
    if (strcmp(how, "abort") == 0)
        abort();
    if (strcmp(how, "segv") == 0)
        *(volatile int *)exit_sink_null = 1;
    if (strcmp(how, "term") == 0)
        raise(SIGTERM);
    if (strcmp(how, "thread") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, exit_from_thread, NULL);
        pthread_exit(NULL);
    }
    return code;
}
