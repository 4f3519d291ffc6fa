/* rpn_jit.c: a tiny JIT in C on progpack.
 *
 * Compiles postfix expressions over one variable ("x 3 * 4 +", "x sq 1 -") into x86-64
 * functions int64_t f(int64_t x), places them with progpack, and checks every result against
 * an interpreter. "sq" is a call into the host (host_square) with `call rel32`: the allocator
 * is asked for a code range near the host's text, so the 32-bit displacement always reaches.
 *
 * Two passes, as every JIT on progpack does: measure the code (emit with no buffer), take a
 * draft of that length, emit into its writable image computing the call displacement against
 * the draft's execution address, finalize.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "progpack.h"

#define DIE(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), exit(1))
#define OK(call)                                                                      \
    do {                                                                              \
        progpack_status st_ = (call);                                                 \
        if (st_ != PROGPACK_STATUS_OK)                                                \
            DIE("%s: %s: %s", #call, progpack_status_name(st_), progpack_last_error()); \
    } while (0)

__attribute__((noinline)) int64_t host_square(int64_t v) { return v * v; }

/* An emitter that only counts when buf is NULL. */
typedef struct {
    uint8_t *buf;      /* the draft's writable image, or NULL while measuring */
    uintptr_t exec;    /* where buf[0] will run */
    size_t len;
} emitter;

static void put(emitter *e, const uint8_t *bytes, size_t n) {
    if (e->buf) memcpy(e->buf + e->len, bytes, n);
    e->len += n;
}
#define PUT(e, ...) put((e), (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}))

static void put_call(emitter *e, uintptr_t target) {
    uintptr_t next = e->exec + e->len + 5; /* rel32 counts from the next instruction */
    int64_t rel = (int64_t)target - (int64_t)next;
    if (e->buf && (rel < INT32_MIN || rel > INT32_MAX)) DIE("call target out of rel32 reach");
    int32_t r = (int32_t)rel;
    PUT(e, 0xe8, (uint8_t)r, (uint8_t)(r >> 8), (uint8_t)(r >> 16), (uint8_t)(r >> 24));
}

/* Emits the whole function. Frame: push rbp; mov rbp, rsp; push rdi (x lives at [rbp-8]).
   Values live on the machine stack; `depth` counts 8-byte slots below rbp to keep calls
   16-byte aligned. Returns 0, or -1 for a malformed expression. */
static int emit(emitter *e, const char *expr) {
    char copy[256];
    snprintf(copy, sizeof copy, "%s", expr);
    PUT(e, 0x55, 0x48, 0x89, 0xe5, 0x57); /* push rbp; mov rbp, rsp; push rdi */
    int depth = 1, values = 0;
    for (char *tok = strtok(copy, " "); tok; tok = strtok(NULL, " ")) {
        if (strcmp(tok, "x") == 0) {
            PUT(e, 0xff, 0x75, 0xf8); /* push qword [rbp-8] */
            depth++, values++;
        } else if (strcmp(tok, "sq") == 0) {
            if (values < 1) return -1;
            PUT(e, 0x5f); /* pop rdi */
            depth--;
            if (depth % 2) PUT(e, 0x48, 0x83, 0xec, 0x08); /* sub rsp, 8: align the call */
            put_call(e, (uintptr_t)host_square);
            if (depth % 2) PUT(e, 0x48, 0x83, 0xc4, 0x08); /* add rsp, 8 */
            PUT(e, 0x50);                                  /* push rax */
            depth++;
        } else if (strchr("+-*", tok[0]) && tok[1] == 0) {
            if (values < 2) return -1;
            PUT(e, 0x59, 0x58); /* pop rcx; pop rax */
            if (tok[0] == '+') PUT(e, 0x48, 0x01, 0xc8);       /* add rax, rcx */
            if (tok[0] == '-') PUT(e, 0x48, 0x29, 0xc8);       /* sub rax, rcx */
            if (tok[0] == '*') PUT(e, 0x48, 0x0f, 0xaf, 0xc1); /* imul rax, rcx */
            PUT(e, 0x50);                                      /* push rax */
            depth--, values--;
        } else {
            char *end;
            int64_t n = strtoll(tok, &end, 10);
            if (*end) return -1;
            uint64_t u = (uint64_t)n;
            PUT(e, 0x48, 0xb8, (uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16),
                (uint8_t)(u >> 24), (uint8_t)(u >> 32), (uint8_t)(u >> 40), (uint8_t)(u >> 48),
                (uint8_t)(u >> 56)); /* mov rax, imm64 */
            PUT(e, 0x50);            /* push rax */
            depth++, values++;
        }
    }
    if (values != 1) return -1;
    PUT(e, 0x58, 0xc9, 0xc3); /* pop rax; leave; ret */
    return 0;
}

/* The reference: the same expression, interpreted. */
static int64_t interpret(const char *expr, int64_t x) {
    char copy[256];
    int64_t stack[64];
    int sp = 0;
    snprintf(copy, sizeof copy, "%s", expr);
    for (char *tok = strtok(copy, " "); tok; tok = strtok(NULL, " ")) {
        if (strcmp(tok, "x") == 0) stack[sp++] = x;
        else if (strcmp(tok, "sq") == 0) stack[sp - 1] = host_square(stack[sp - 1]);
        else if (strchr("+-*", tok[0]) && tok[1] == 0) {
            int64_t b = stack[--sp], a = stack[--sp];
            stack[sp++] = tok[0] == '+' ? a + b : tok[0] == '-' ? a - b : a * b;
        } else stack[sp++] = strtoll(tok, NULL, 10);
    }
    return stack[0];
}

typedef int64_t (*jit_fn)(int64_t);

static progpack_program *compile(progpack_allocator *alloc, const char *expr, jit_fn *out) {
    emitter measure = {0};
    if (emit(&measure, expr) != 0) DIE("malformed expression: %s", expr);
    progpack_draft *draft;
    emitter e = {0};
    OK(progpack_draft_new(alloc, measure.len, 16, &draft, &e.buf, &e.exec));
    emit(&e, expr);
    if (e.len != measure.len) DIE("emitted %zu bytes, measured %zu", e.len, measure.len);
    progpack_program *program;
    OK(progpack_draft_finalize(draft, &program));
    uintptr_t addr;
    OK(progpack_program_info(program, &addr, NULL));
    if (addr != e.exec) DIE("program placed at %#lx, draft said %#lx", (unsigned long)addr,
                            (unsigned long)e.exec);
    memcpy(out, &addr, sizeof addr);
    return program;
}

int main(void) {
    static const char *exprs[] = {
        "x", "42", "x 3 * 4 +", "x sq 1 -", "x x * x * 7 -", "1 2 3 4 5 + + + +",
        "x sq sq", "x 1 + sq x 1 - sq -", "0 x - 9000000000 *", "x 2 * sq 3 sq + sq",
    };
    enum { N = sizeof exprs / sizeof *exprs };
    progpack_config cfg = {0};
    cfg.code_range_near = (uintptr_t)host_square; /* `call rel32` must reach the host */
    progpack_allocator *alloc;
    OK(progpack_allocator_new(&cfg, &alloc));

    progpack_program *programs[N];
    jit_fn fns[N];
    for (int i = 0; i < N; i++) programs[i] = compile(alloc, exprs[i], &fns[i]);

    int checked = 0;
    for (int i = 0; i < N; i++)
        for (int64_t x = -50; x <= 50; x++) {
            int64_t got = fns[i](x), want = interpret(exprs[i], x);
            if (got != want) DIE("%s at x=%ld: jit %ld, interpreter %ld", exprs[i], x, got, want);
            checked++;
        }

    progpack_stats s;
    OK(progpack_allocator_stats(alloc, &s));
    printf("%d functions in %zu pack(s), backend %s; %d results equal to the interpreter's\n", N,
           s.packs, s.backend, checked);
    printf("f(x) = %s: f(7) = %ld\n", exprs[7], fns[7](7));
    if (s.programs != N) DIE("stats say %zu programs, expected %d", s.programs, N);

    for (int i = 0; i < N; i++) OK(progpack_program_free(programs[i]));
    OK(progpack_allocator_stats(alloc, &s));
    if (s.programs != 0 || s.allocations != 0) DIE("programs left after free");
    OK(progpack_allocator_free(alloc));
    puts("rpn_jit: ok");
    return 0;
}
