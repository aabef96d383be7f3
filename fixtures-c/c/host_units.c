/* host_units: calls libunits.so's units_leak_b and units_leak_c once each and drops what they
 * return: two leaks, in two of the library's three compilation units. */
#include <stdio.h>

char *units_leak_b(void);
char *units_leak_c(void);

int main(void) {
    units_leak_b(); /* HOST_B_CALL_LINE: 9 */
    units_leak_c(); /* HOST_C_CALL_LINE: 10 */
    printf("host_units: done\n");
    return 0;
}
