/* host_twins [ROUNDS]: twin_a and twin_b have the same body, so their frames are the same size:
 * leak_one's malloc is called from the same call site at the same stack pointer under either.
 * main calls them in the pattern a a a b b, ROUNDS times (default 100), and every block leaks:
 * 3 * ROUNDS blocks of TWIN_A_BYTES under twin_a, 2 * ROUNDS of TWIN_B_BYTES under twin_b
 * (fixtures::twins). The two stacks differ only in a word further out (leak_one's return
 * address): a recorder that took a loop's allocation for the previous one from the same place
 * and depth without checking the frames beyond would put every block under one twin. */
#include <stdlib.h>
#include <unistd.h>

/* noipa: neither inlined nor folded into one function (GCC merges identical bodies). */
#define SOLO __attribute__((noipa))

#define TWIN_A_BYTES 24
#define TWIN_B_BYTES 40

SOLO static char *leak_one(size_t n) {
    char *p = malloc(n);
    if (p)
        p[0] = 1;
    return p;
}

SOLO static char *twin_a(size_t n) {
    char *p = leak_one(n);
    if (p)
        p[1] = 'a';
    return p;
}

SOLO static char *twin_b(size_t n) {
    char *p = leak_one(n);
    if (p)
        p[1] = 'b';
    return p;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 100;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 5; k++) {
            if (k < 3)
                twin_a(TWIN_A_BYTES);
            else
                twin_b(TWIN_B_BYTES);
        }
    }
    /* write, not printf: stdout's buffer would be one more block left at exit. */
    (void)!write(1, "host_twins: done\n", 17);
    return 0;
}
