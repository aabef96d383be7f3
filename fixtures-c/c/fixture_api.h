/* The API shared by libleaky.so and its clean twin libclean.so: the same entry points doing the
 * same work, so a host or a ctypes script can swap one library for the other and the only
 * difference a leak checker may report is what libleaky leaves behind. */
#ifndef RESIDUE_FIXTURE_API_H
#define RESIDUE_FIXTURE_API_H

/* Runs every scenario once. Returns the number of scenarios run (FX_SCENARIOS). */
int fx_run_all(void);

/* One scenario each (each one's leak is documented in libleaky.c). */
void fx_strdup_names(void);
void fx_make_struct(void);
void fx_calloc_image(void);
void fx_realloc_grow(void);
void fx_reallocarray(void);
void fx_open_file(void);
void fx_aligned(void);
void fx_strndup(void);

#define FX_SCENARIOS 8

#endif
