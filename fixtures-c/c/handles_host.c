/* host_handles / host_handles_clean: one source, linked once against libhandles.so and once
 * against its clean twin libhandles_clean.so (rpath $ORIGIN).
 *
 *   host_handles [REPS] [close|close_range|closefrom|dup2 FILE]
 *
 * Runs hx_run_all() REPS times (default 1). With an action, it then turns on the leak
 * checker's own stream descriptor (RESIDUE_FD, as a program that closes every descriptor it did
 * not open would) and runs hx_run_all() once more, so that the report must hold REPS + 1 runs:
 *   close        close(RESIDUE_FD)
 *   close_range  close_range(3, ~0U, 0)
 *   closefrom    closefrom(3) (glibc closes them with the close_range system call: no close or
 *                close_range call a hook would see)
 *   dup2 FILE    opens FILE, dup2()s it onto RESIDUE_FD's number, writes "host data\n" through
 *                that number and closes FILE's own descriptor (the duplicate, now the host's
 *                own, stays open: one more descriptor, opened by dup2 in main)
 * Exits 0. Prints with write(2), opens nothing else itself: every handle the report shows
 * under a fixture library is the library's. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int hx_run_all(void);

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 0; i < reps; i++)
        hx_run_all();
    if (argc > 2) {
        const char *env = getenv("RESIDUE_FD");
        int own = env ? atoi(env) : -1;
        if (!strcmp(argv[2], "close")) {
            close(own);
        } else if (!strcmp(argv[2], "close_range")) {
            close_range(3, ~0U, 0);
        } else if (!strcmp(argv[2], "closefrom")) {
            closefrom(3);
        } else if (!strcmp(argv[2], "dup2") && argc > 3 && own >= 0) {
            int f = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
            dup2(f, own);
            close(f);
            static const char data[] = "host data\n";
            (void)!write(own, data, sizeof data - 1);
        }
        hx_run_all();
    }
    static const char msg[] = "handles host: done\n";
    (void)!write(1, msg, sizeof msg - 1);
    return 0;
}
