/* libtail.so: a wrapper that gcc -O2 compiles to a tail jump (`jmp strdup@plt`), so that when
 * strdup's malloc runs no frame of this library is on the stack. A leak checker can only name
 * it through what called it: the ctypes/cffi foreign-call record (libffi's ffi_call).
 *
 * Built with -O2 and sibling-call optimization left on (build.rs: Kind::TailCallLib), unlike
 * the other fixtures. Each call leaves strlen(s) + 1 bytes (tests/tests/python.rs). */
#include <string.h>

char *tail_dup(const char *s) { return strdup(s); }
