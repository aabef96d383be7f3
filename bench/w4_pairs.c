/* bench_w4 [PAIRS]: workload W4 of bench/run: PAIRS (default 10,000,000) malloc/free pairs
 * from four call sites (four functions, four sizes, at different stack depths), a few live
 * blocks at a time. Each new block is used: filled (memset) and up to STIR (48) of its bytes
 * stirred with a little arithmetic, as a program would. Without that a pair is a ~7 ns tcache
 * round trip and the ratio measures nothing but the hook.
 *
 * STIR is fixed at compile time, so that the default build's code stays the one earlier tables
 * measured (with the count read at run time the plain run is 10% faster). bench_w4_light is
 * built with STIR 2: as heavy as issue 6's own W4 by its three rulers (bench/run --w4-light,
 * bench/README.md).
 * Built by fixtures-c/build.rs into target/<profile>/fixtures/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

static void *live[4];

static unsigned long checksum;

#ifndef STIR
#define STIR 48
#endif

static void *use(void *p, size_t n, long i) {
    memset(p, (int)i, n);
    unsigned char *b = p;
    unsigned long x = (unsigned long)i;
    for (size_t k = 0; k < STIR && k < n; k++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        b[k] ^= (unsigned char)(x >> 56);
        checksum += b[k];
    }
    return p;
}

NOINLINE static void site_a(long i) { free(live[0]); live[0] = use(malloc(16 + (size_t)(i & 15)), 16, i); }
NOINLINE static void site_b(long i) { free(live[1]); live[1] = use(malloc(64 + (size_t)(i & 63)), 64, i); }
NOINLINE static void deeper_c(long i) { free(live[2]); live[2] = use(malloc(256), 256, i); }
NOINLINE static void site_c(long i) { deeper_c(i); }
NOINLINE static void deeper_d(long i) { free(live[3]); live[3] = use(malloc(1000 + (size_t)(i & 7)), 1000, i); }
NOINLINE static void middle_d(long i) { deeper_d(i); }
NOINLINE static void site_d(long i) { middle_d(i); }

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 10000000;
    for (long i = 0; i < pairs; i++) {
        switch (i & 3) {
        case 0: site_a(i); break;
        case 1: site_b(i); break;
        case 2: site_c(i); break;
        default: site_d(i); break;
        }
    }
    for (int i = 0; i < 4; i++)
        free(live[i]);
    printf("w4: %ld pairs, checksum %lu\n", pairs, checksum);
    return 0;
}
