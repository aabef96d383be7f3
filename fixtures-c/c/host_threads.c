/* host_threads: runs libthreadwork's workload on its 8 threads, joins them, exits 0.
 * See libthreadwork.c for the exact blocks and bytes left behind. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

int tw_threads(void);
void *tw_thread_main(void *arg);

int main(void) {
    pthread_t t[64];
    int n = tw_threads();
    for (long i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, tw_thread_main, (void *)i) != 0) {
            perror("pthread_create");
            return 2;
        }
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    static const char msg[] = "host_threads: done\n";
    (void)!write(1, msg, sizeof msg - 1);
    return 0;
}
