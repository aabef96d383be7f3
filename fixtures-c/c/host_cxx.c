/* host_cxx: runs libcxxleak's C++ leaks once (see libcxxleak.cpp) and exits 0. */
#include <unistd.h>

int cxx_run_all(void);

int main(void) {
    cxx_run_all();
    static const char msg[] = "host_cxx: done\n";
    (void)!write(1, msg, sizeof msg - 1);
    return 0;
}
