/* libgone.so: leaks one block of GONE_LEAK_BYTES (4242) from gone_leak_block; host_dlclose
 * dlcloses the library before exiting, so the leak's frames point into an unloaded library
 * and must still be symbolized by name (residue_fixtures::gone mirrors these numbers). */
#include <stdlib.h>
#include <string.h>

#define GONE_LEAK_BYTES 4242

void *gone_sink;

__attribute__((noinline)) void gone_leak_block(void) {
    gone_sink = malloc(GONE_LEAK_BYTES);
    memset(gone_sink, 1, GONE_LEAK_BYTES);
}

void gone_run(void) { gone_leak_block(); }
