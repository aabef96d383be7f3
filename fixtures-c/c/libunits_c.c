/* libunits.so, unit c: units_leak_c leaks UNITS_C_BYTES (24) bytes. */
#include <stdlib.h>

__attribute__((noinline)) char *units_leak_c(void) {
    char *p = malloc(24); /* UNITS_LEAK_C_LINE: 5 */
    if (p)
        p[0] = 'c';
    return p;
}
