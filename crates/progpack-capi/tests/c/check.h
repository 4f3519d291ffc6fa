/* check.h: the smallest test harness: CHECK(cond) counts, or prints where and exits 1. */
#ifndef CHECK_H
#define CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include "progpack.h"

static unsigned long checks_passed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,  \
                    __LINE__, #cond, progpack_last_error());                         \
            exit(1);                                                                 \
        }                                                                            \
        __atomic_add_fetch(&checks_passed, 1, __ATOMIC_RELAXED);                     \
    } while (0)

/* A call that must succeed. */
#define OK(call) CHECK((call) == PROGPACK_STATUS_OK)

/* x86-64: mov eax, imm32; ret */
static inline void emit_ret_imm(uint8_t *p, uint32_t v) {
    p[0] = 0xb8;
    p[1] = (uint8_t)v;
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)(v >> 16);
    p[4] = (uint8_t)(v >> 24);
    p[5] = 0xc3;
}

typedef uint32_t (*ret_fn)(void);

static inline ret_fn as_fn(uintptr_t addr) {
    ret_fn f;
    _Static_assert(sizeof f == sizeof addr, "function pointers are addresses");
    __builtin_memcpy(&f, &addr, sizeof f);
    return f;
}

static inline int report(const char *name) {
    printf("%s: %lu passed, 0 failed\n", name, checks_passed);
    return 0;
}
#endif
