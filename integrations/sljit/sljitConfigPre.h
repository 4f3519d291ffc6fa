/*
 * sljitConfigPre.h: sljit places its generated code with progpack.
 *
 * Build sljit (or anything embedding it: PCRE2) with
 *     -DSLJIT_HAVE_CONFIG_PRE=1 -I<progpack>/integrations/sljit
 * and link libprogpack_capi. sljitLir.h includes this file first; it replaces sljit's
 * executable allocator with four hooks on progpack's C API:
 *
 *   SLJIT_MALLOC_EXEC(size, data)   a draft of `size` bytes; returns its writable image
 *                                   (heap memory, never executable)
 *   SLJIT_EXEC_OFFSET(ptr)          execution address minus writable address of that draft
 *   SLJIT_UPDATE_WX_FLAGS(from, to, 1)
 *                                   called by sljit_generate_code when the code is complete,
 *                                   with the execution range [from, to): shrink the draft to
 *                                   what sljit used (`size` was an upper bound), then
 *                                   finalize (one copy into a read+execute pack)
 *   SLJIT_FREE_EXEC(ptr, data)      `ptr` is an execution address: free the program there, or
 *                                   abandon the draft there if it was never finalized
 *
 * SLJIT_EXECUTABLE_ALLOCATOR 0 turns sljit's own allocator off (sljitConfig.h, sljitLir.c).
 * SLJIT_PROT_EXECUTABLE_ALLOCATOR 1 makes sljitLir.c apply the executable offset
 * (SLJIT_ADD_EXEC_OFFSET): labels, jumps and the returned entry point are execution
 * addresses, while code is written through the writable image.
 *
 * `data` (sljit's exec_allocator_data) is a progpack_allocator handle, or NULL for the
 * process-wide shared allocator (PCRE2 always passes NULL).
 *
 * Not supported: patching finalized code (sljit_set_jump_addr, sljit_set_const), which calls
 * SLJIT_UPDATE_WX_FLAGS(..., 0) to make code writable again. progpack never makes code
 * writable, so that call aborts with a message instead of faulting later. PCRE2 never
 * patches. A failure to place code also aborts: sljit's hook cannot report it, and running
 * the trap-filled range would crash less clearly.
 */
#ifndef PROGPACK_SLJIT_CONFIG_PRE_H
#define PROGPACK_SLJIT_CONFIG_PRE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../crates/progpack-capi/include/progpack.h"

#define SLJIT_EXECUTABLE_ALLOCATOR 0
#define SLJIT_PROT_EXECUTABLE_ALLOCATOR 1

/* Alignment of the first instruction: sljit's own allocator gives 8; 16 costs nothing. */
#define PROGPACK_SLJIT_ALIGN 16

static inline void progpack_sljit_die(const char *what, progpack_status st) {
    fprintf(stderr, "progpack (sljit hooks): %s: %s: %s\n", what, progpack_status_name(st),
            progpack_last_error());
    abort();
}

static inline progpack_allocator *progpack_sljit_allocator(void *exec_allocator_data) {
    progpack_allocator *a = (progpack_allocator *)exec_allocator_data;
    if (a == NULL && progpack_allocator_shared(&a) != PROGPACK_STATUS_OK) return NULL;
    return a;
}

/* SLJIT_MALLOC_EXEC: NULL tells sljit the allocation failed (it reports
   SLJIT_ERR_EX_ALLOC_FAILED; PCRE2 falls back to the interpreter or reports no memory). */
static inline void *progpack_sljit_malloc_exec(size_t size, void *exec_allocator_data) {
    progpack_allocator *a = progpack_sljit_allocator(exec_allocator_data);
    progpack_draft *draft;
    uint8_t *image;
    if (a == NULL ||
        progpack_draft_new(a, size, PROGPACK_SLJIT_ALIGN, &draft, &image, NULL) != PROGPACK_STATUS_OK)
        return NULL;
    return image;
}

/* SLJIT_EXEC_OFFSET: sljit calls it right after SLJIT_MALLOC_EXEC, also with NULL. */
static inline ptrdiff_t progpack_sljit_exec_offset(void *image) {
    progpack_draft *draft;
    uintptr_t exec;
    if (image == NULL) return 0;
    progpack_status st = progpack_draft_find((uintptr_t)image, &draft);
    if (st == PROGPACK_STATUS_OK) st = progpack_draft_info(draft, NULL, &exec, NULL);
    if (st != PROGPACK_STATUS_OK) progpack_sljit_die("SLJIT_EXEC_OFFSET on unknown memory", st);
    return (ptrdiff_t)(exec - (uintptr_t)image);
}

/* SLJIT_UPDATE_WX_FLAGS: enable_exec = 1 at the end of sljit_generate_code, with the
   execution range of the code: shrink the draft that starts there to that range (its tail
   chunks go back to the pack), then finalize it. */
static inline void progpack_sljit_update_wx_flags(void *from, void *to, int enable_exec) {
    progpack_draft *draft;
    progpack_program *program;
    progpack_status st;
    size_t used = (size_t)((uintptr_t)to - (uintptr_t)from);
    if (!enable_exec)
        progpack_sljit_die("code patching (sljit_set_jump_addr/sljit_set_const) would need "
                           "writable code; progpack never makes code writable",
                           PROGPACK_STATUS_INVALID_ARGUMENT);
    st = progpack_draft_find((uintptr_t)from, &draft);
    if (st == PROGPACK_STATUS_OK && used > 0) st = progpack_draft_shrink(draft, used);
    if (st == PROGPACK_STATUS_OK) st = progpack_draft_finalize(draft, &program);
    if (st != PROGPACK_STATUS_OK) progpack_sljit_die("finalizing sljit code", st);
}

/* SLJIT_FREE_EXEC: `ptr` is an execution address (sljit_free_code, PCRE2's allocator probe). */
static inline void progpack_sljit_free_exec(void *ptr, void *exec_allocator_data) {
    progpack_program *program;
    progpack_draft *draft;
    progpack_status st;
    (void)exec_allocator_data;
    if (progpack_program_find((uintptr_t)ptr, &program) == PROGPACK_STATUS_OK)
        st = progpack_program_free(program);
    else if ((st = progpack_draft_find((uintptr_t)ptr, &draft)) == PROGPACK_STATUS_OK)
        st = progpack_draft_abandon(draft);
    if (st != PROGPACK_STATUS_OK) progpack_sljit_die("SLJIT_FREE_EXEC on unknown code", st);
}

#define SLJIT_MALLOC_EXEC(size, exec_allocator_data) \
    progpack_sljit_malloc_exec((size_t)(size), (exec_allocator_data))
#define SLJIT_FREE_EXEC(ptr, exec_allocator_data) \
    progpack_sljit_free_exec((void *)(ptr), (exec_allocator_data))
#define SLJIT_EXEC_OFFSET(ptr) progpack_sljit_exec_offset((void *)(ptr))
#define SLJIT_UPDATE_WX_FLAGS(from, to, enable_exec) \
    progpack_sljit_update_wx_flags((void *)(from), (void *)(to), (enable_exec))

#endif /* PROGPACK_SLJIT_CONFIG_PRE_H */
