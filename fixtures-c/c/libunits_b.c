/* libunits.so, unit b: units_leak_b leaks UNITS_B_BYTES (48) bytes through an inlined helper,
 * whose frame the report shows as inlined into units_leak_b. */
#include <stdlib.h>
#include <string.h>

static inline __attribute__((always_inline)) char *units_fill(size_t n) {
    char *p = malloc(n); /* UNITS_FILL_LINE: 7 */
    if (p)
        memset(p, 'b', n);
    return p;
}

__attribute__((noinline)) char *units_leak_b(void) {
    return units_fill(48); /* UNITS_LEAK_B_LINE: 14 */
}
