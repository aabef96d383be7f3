/* The README demo: a small C library with one honest bug, loaded from Python through ctypes
 * by examples/ctypes_leak.py. Built by fixtures-c/build.rs into target/<profile>/fixtures/
 * as libexample.so.
 *
 * greeting_new() builds a greeting and the caller is meant to release it with
 * greeting_free(); greeting_title() returns a strdup'd copy that nobody frees. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct greeting {
    char *text;
    size_t len;
};

struct greeting *greeting_new(const char *name) {
    struct greeting *g = malloc(sizeof *g);
    g->len = strlen("Hello, !") + strlen(name);
    g->text = malloc(g->len + 1);
    snprintf(g->text, g->len + 1, "Hello, %s!", name);
    return g;
}

/* The bug: the copy is handed out as a borrowed pointer, and nobody frees it. */
const char *greeting_title(const struct greeting *g) {
    char *title = strdup(g->text);
    title[0] = (char)(title[0] & ~0x20);
    return title;
}

void greeting_free(struct greeting *g) {
    free(g->text);
    free(g);
}
