// libcxxleak.so: C++ leaks, for demangled names and inlined frames in the report.
//
// What one cxx_run_all() leaves behind (mirrored by residue_fixtures::cxx); both through
// libstdc++'s operator new, which calls malloc (api "malloc"):
//   residue_fx::Widget::make(int)     new Widget: 1 block of 16 bytes
//   residue_fx::fill_table(unsigned)  new int[32]: 1 block of 128 bytes, made in an
//                                     always_inline helper (residue_fx::alloc_ints), so the
//                                     innermost libcxxleak frame is an inlined one
// Owner: the first frame outside the allocation machinery (libstdc++'s operator new is
// machinery), so both owner frames are in libcxxleak, with demangled names.
#include <cstdlib>

namespace residue_fx {

struct Widget {
    int id;
    void *data;
    static Widget *make(int id);
};

__attribute__((noinline)) Widget *Widget::make(int id) {
    Widget *w = new Widget;  // 16 bytes
    w->id = id;
    w->data = nullptr;
    return w;
}

__attribute__((always_inline)) inline int *alloc_ints(unsigned n) {
    return new int[n];
}

__attribute__((noinline)) int *fill_table(unsigned n) {
    int *t = alloc_ints(n);
    for (unsigned i = 0; i < n; i++)
        t[i] = static_cast<int>(i);
    return t;
}

}  // namespace residue_fx

extern "C" {

void *cxx_sink[2];

int cxx_run_all(void) {
    cxx_sink[0] = residue_fx::Widget::make(7);
    cxx_sink[1] = residue_fx::fill_table(32);
    return 2;
}

}
