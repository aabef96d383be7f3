/* libunits.so, unit a (of three: a library of several compilation units). host_units never
 * calls into this unit, so a report of its leaks looks up no address here: the collector then
 * parses only units b and c (collector/src/dwarf.rs, Sections::keep_units_for). */
#include <stdlib.h>

__attribute__((noinline)) void *units_unused_a(size_t n) {
    return calloc(1, n);
}
