/* libgone.so: leaks one block of GONE_LEAK_BYTES (4242) from gone_leak_block and one
 * descriptor (/dev/null) from gone_leak_fd; host_dlclose dlcloses the library before exiting,
 * so the leaks' frames point into an unloaded library and must still be symbolized by name,
 * and the report warns that an unloaded library still holds them (residue_fixtures::gone
 * mirrors these numbers). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#define GONE_LEAK_BYTES 4242

void *gone_sink;

__attribute__((noinline)) void gone_leak_block(void) {
    gone_sink = malloc(GONE_LEAK_BYTES);
    memset(gone_sink, 1, GONE_LEAK_BYTES);
}

int gone_fd = -1;

__attribute__((noinline)) void gone_leak_fd(void) { gone_fd = open("/dev/null", O_RDONLY); }

void gone_run(void) {
    gone_leak_block();
    gone_leak_fd();
}
