/* hooks_test.c: the four sljit hooks driven the way sljit drives them (sljitLir.c
 * allocate_executable_memory, sljitNativeX86_common.c sljit_generate_code, sljit_free_code,
 * and PCRE2's allocator probe in pcre2_jit_compile), without sljit itself. */
#include <stdint.h>
#include <string.h>

#include "sljitConfigPre.h"

static int failures, passed;
#define CHECK(c) ((c) ? (void)passed++ : (void)(failures++, fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c)))

static progpack_stats stats(void) {
    progpack_allocator *a;
    progpack_stats s;
    progpack_allocator_shared(&a);
    progpack_allocator_stats(a, &s);
    return s;
}

int main(void) {
    /* sljit_generate_code: allocate (size is an upper bound), get the offset, write code
       through the writable pointer, then UPDATE_WX_FLAGS(exec, exec + used, 1). */
    size_t size = 64, used = 6;
    uint8_t *code = SLJIT_MALLOC_EXEC(size, NULL);
    CHECK(code != NULL);
    ptrdiff_t offset = SLJIT_EXEC_OFFSET(code);
    CHECK(offset != 0); /* the image is heap memory, the code runs in a pack */
    const uint8_t ret42[] = {0xb8, 42, 0, 0, 0, 0xc3}; /* mov eax, 42; ret */
    memcpy(code, ret42, used);
    uint8_t *exec = code + offset;
    CHECK(stats().programs == 0 && stats().allocations == 1);
    SLJIT_UPDATE_WX_FLAGS(exec, exec + used, 1);
    CHECK(stats().programs == 1);
    progpack_program *placed;
    size_t placed_len;
    CHECK(progpack_program_find((uintptr_t)exec, &placed) == PROGPACK_STATUS_OK);
    CHECK(progpack_program_info(placed, NULL, &placed_len) == PROGPACK_STATUS_OK);
    CHECK(placed_len == used); /* shrunk from the upper bound to what sljit emitted */
    int (*fn)(void);
    memcpy(&fn, &exec, sizeof fn);
    CHECK(fn() == 42);
    /* sljit_free_code passes the execution address. */
    SLJIT_FREE_EXEC(exec, NULL);
    CHECK(stats().programs == 0 && stats().allocations == 0);

    /* PCRE2's probe: allocate 32 bytes and free at ptr + offset, never finalized. */
    void *probe = SLJIT_MALLOC_EXEC(32, NULL);
    CHECK(probe != NULL);
    SLJIT_FREE_EXEC((uint8_t *)probe + SLJIT_EXEC_OFFSET(probe), NULL);
    CHECK(stats().allocations == 0);

    /* sljit calls SLJIT_EXEC_OFFSET on a failed (NULL) allocation too. */
    CHECK(SLJIT_EXEC_OFFSET(NULL) == 0);
    CHECK(SLJIT_MALLOC_EXEC(0, NULL) == NULL); /* zero bytes: an error, reported as NULL */

    /* An allocator of the caller's own, passed as exec_allocator_data. */
    progpack_allocator *mine;
    progpack_config cfg = {0};
    cfg.no_randomize = 1;
    if (progpack_allocator_new(&cfg, &mine) != PROGPACK_STATUS_OK) return 1;
    code = SLJIT_MALLOC_EXEC(size, mine);
    offset = SLJIT_EXEC_OFFSET(code);
    memcpy(code, ret42, used);
    exec = code + offset;
    CHECK((uintptr_t)exec % 64 == 0); /* no randomization: a chunk boundary */
    SLJIT_UPDATE_WX_FLAGS(exec, exec + used, 1);
    memcpy(&fn, &exec, sizeof fn);
    CHECK(fn() == 42);
    progpack_stats s;
    progpack_allocator_stats(mine, &s);
    CHECK(s.programs == 1 && stats().programs == 0);
    SLJIT_FREE_EXEC(exec, mine);
    progpack_allocator_stats(mine, &s);
    CHECK(s.programs == 0);
    progpack_allocator_free(mine);

    printf("sljit hooks: %d passed, %d failed\n", passed, failures);
    return failures != 0;
}
