/* host_leaky / host_clean: one source, linked once against libleaky.so and once against its
 * clean twin libclean.so (rpath $ORIGIN). Runs every scenario `reps` times (argv[1], default 1)
 * and exits 0. Prints with write(2) rather than stdio so that the host itself allocates no
 * stdout buffer: everything the report shows under a fixture library is the library's. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture_api.h"

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 0; i < reps; i++)
        fx_run_all();
    static const char msg[] = "fixture host: done\n";
    (void)!write(1, msg, sizeof msg - 1);
    return 0;
}
