/* handles.c: every misuse of a handle is a status code and a message, never a crash. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include <stddef.h>
#include <stdint.h>

static int mentions(const char *needle) { return strstr(progpack_last_error(), needle) != NULL; }

static progpack_program *make_program(progpack_allocator *a, uint32_t value) {
    progpack_draft *d;
    uint8_t *image;
    uintptr_t exec;
    progpack_program *p;
    OK(progpack_draft_new(a, 6, 1, &d, &image, &exec));
    emit_ret_imm(image, value);
    OK(progpack_draft_finalize(d, &p));
    return p;
}

static void null_handles_and_outputs(progpack_allocator *a) {
    progpack_program *p = (progpack_program *)1;
    progpack_stats s;
    CHECK(progpack_program_free(NULL) == PROGPACK_STATUS_NULL);
    CHECK(mentions("NULL program handle"));
    CHECK(progpack_draft_finalize(NULL, &p) == PROGPACK_STATUS_NULL);
    CHECK(p == NULL); /* handle outputs are cleared first */
    CHECK(progpack_draft_abandon(NULL) == PROGPACK_STATUS_NULL);
    CHECK(progpack_batch_abandon(NULL) == PROGPACK_STATUS_NULL);
    CHECK(progpack_allocator_free(NULL) == PROGPACK_STATUS_NULL);
    CHECK(progpack_allocator_stats(NULL, &s) == PROGPACK_STATUS_NULL);
    CHECK(progpack_allocator_stats(a, NULL) == PROGPACK_STATUS_NULL);
    CHECK(mentions("NULL output pointer"));
    CHECK(progpack_allocator_new(NULL, NULL) == PROGPACK_STATUS_NULL);
    CHECK(progpack_draft_new(a, 6, 1, NULL, NULL, NULL) == PROGPACK_STATUS_NULL);
}

static void foreign_handles(progpack_allocator *a) {
    int local = 0;
    void *heap = malloc(64);
    progpack_draft *d;
    progpack_stats s;
    CHECK(progpack_program_free((progpack_program *)&local) == PROGPACK_STATUS_BAD_HANDLE);
    CHECK(mentions("not a handle made by progpack"));
    CHECK(progpack_program_free((progpack_program *)heap) == PROGPACK_STATUS_BAD_HANDLE);
    CHECK(progpack_draft_abandon((progpack_draft *)(uintptr_t)0x1234) == PROGPACK_STATUS_BAD_HANDLE);
    CHECK(progpack_allocator_stats((progpack_allocator *)heap, &s) == PROGPACK_STATUS_BAD_HANDLE);
    CHECK(progpack_draft_new((progpack_allocator *)&local, 6, 1, &d, NULL, NULL) ==
          PROGPACK_STATUS_BAD_HANDLE);
    CHECK(d == NULL);
    /* A handle of another kind. */
    progpack_program *p = make_program(a, 1);
    CHECK(progpack_draft_abandon((progpack_draft *)p) == PROGPACK_STATUS_BAD_HANDLE);
    CHECK(mentions("is a program handle, not a draft handle"));
    CHECK(progpack_allocator_free((progpack_allocator *)p) == PROGPACK_STATUS_BAD_HANDLE);
    OK(progpack_program_free(p)); /* still live after the misuse */
    free(heap);
}

static void double_free_and_use_after_free(progpack_allocator *a) {
    progpack_program *p = make_program(a, 2), *q;
    uintptr_t addr;
    OK(progpack_program_info(p, &addr, NULL));
    CHECK(as_fn(addr)() == 2);
    OK(progpack_program_free(p));
    CHECK(progpack_program_free(p) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(mentions("already freed"));
    CHECK(progpack_program_info(p, &addr, NULL) == PROGPACK_STATUS_STALE_HANDLE);

    /* finalize after abandon, finalize twice, abandon after finalize */
    progpack_draft *d;
    OK(progpack_draft_new(a, 6, 1, &d, NULL, NULL));
    OK(progpack_draft_abandon(d));
    CHECK(progpack_draft_finalize(d, &q) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(mentions("already finalized or abandoned"));
    CHECK(q == NULL);
    CHECK(progpack_draft_abandon(d) == PROGPACK_STATUS_STALE_HANDLE);
    uint8_t *image;
    OK(progpack_draft_new(a, 6, 1, &d, &image, NULL));
    emit_ret_imm(image, 3);
    OK(progpack_draft_finalize(d, &q));
    CHECK(progpack_draft_finalize(d, &p) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(progpack_draft_abandon(d) == PROGPACK_STATUS_STALE_HANDLE);
    OK(progpack_program_free(q));

    /* A freed handle never names a newer object: ids are not reused. */
    progpack_program *r = make_program(a, 4);
    CHECK(r != p && r != q);
    CHECK(progpack_program_free(q) == PROGPACK_STATUS_STALE_HANDLE);
    OK(progpack_program_free(r));
}

static void allocator_lifetime(void) {
    progpack_allocator *a, *shared, *shared2;
    progpack_draft *d;
    progpack_stats s;
    OK(progpack_allocator_new(NULL, &a));
    progpack_program *p = make_program(a, 5);
    OK(progpack_allocator_free(a));
    CHECK(progpack_allocator_free(a) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(progpack_draft_new(a, 6, 1, &d, NULL, NULL) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(progpack_allocator_stats(a, &s) == PROGPACK_STATUS_STALE_HANDLE);
    uintptr_t addr;
    OK(progpack_program_info(p, &addr, NULL));
    CHECK(as_fn(addr)() == 5); /* programs outlive the allocator handle */
    OK(progpack_program_free(p));

    OK(progpack_allocator_shared(&shared));
    OK(progpack_allocator_shared(&shared2));
    CHECK(shared == shared2);
    CHECK(progpack_allocator_free(shared) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(mentions("shared allocator cannot be freed"));
    OK(progpack_allocator_stats(shared, &s));
}

static void bad_arguments(progpack_allocator *a) {
    progpack_draft *d;
    progpack_allocator *b;
    CHECK(progpack_draft_new(a, 0, 1, &d, NULL, NULL) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(mentions("at least 1 byte"));
    CHECK(progpack_draft_new(a, 6, 3, &d, NULL, NULL) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(progpack_draft_new(a, 6, 1 << 20, &d, NULL, NULL) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(progpack_draft_new(a, (size_t)-1, 1, &d, NULL, NULL) == PROGPACK_STATUS_INVALID_ARGUMENT);
    progpack_config cfg = {0};
    cfg.backend = 99;
    CHECK(progpack_allocator_new(&cfg, &b) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(mentions("unknown backend 99"));
    CHECK(b == NULL);
    cfg.backend = PROGPACK_BACKEND_DETECT;
    cfg.chunk_size = 48;
    CHECK(progpack_allocator_new(&cfg, &b) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(strcmp(progpack_status_name(PROGPACK_STATUS_STALE_HANDLE), "stale handle") == 0);
    CHECK(strcmp(progpack_status_name(999), "unknown status") == 0);
    /* A success leaves the last message alone. */
    const char *before = progpack_last_error();
    char copy[256];
    snprintf(copy, sizeof copy, "%s", before);
    progpack_stats s;
    OK(progpack_allocator_stats(a, &s));
    CHECK(strcmp(progpack_last_error(), copy) == 0);
}

static void batch_misuse(progpack_allocator *a) {
    progpack_batch *b;
    progpack_program *programs[4];
    uint8_t *image;
    uintptr_t exec[3];
    size_t index, len;
    OK(progpack_batch_new(a, &b));
    for (uint32_t i = 0; i < 3; i++) {
        OK(progpack_batch_push(b, 6, 1, &image, &exec[i], &index));
        CHECK(index == i);
        emit_ret_imm(image, 100 + i);
    }
    OK(progpack_batch_len(b, &len));
    CHECK(len == 3);
    CHECK(progpack_batch_finalize(b, programs, 2) == PROGPACK_STATUS_BUFFER_TOO_SMALL);
    CHECK(progpack_batch_image(b, 3, &image, NULL) == PROGPACK_STATUS_INVALID_ARGUMENT);
    OK(progpack_batch_image(b, 1, &image, &len)); /* still live */
    CHECK(len == 6 && image[0] == 0xb8 && image[1] == 101);
    OK(progpack_batch_finalize(b, programs, 4));
    CHECK(progpack_batch_finalize(b, programs, 4) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(progpack_batch_push(b, 6, 1, NULL, NULL, NULL) == PROGPACK_STATUS_STALE_HANDLE);
    for (uint32_t i = 0; i < 3; i++) {
        uintptr_t addr;
        OK(progpack_program_info(programs[i], &addr, NULL));
        CHECK(addr == exec[i]);
        CHECK(as_fn(addr)() == 100 + i);
        OK(progpack_program_free(programs[i]));
    }
    OK(progpack_batch_new(a, &b));
    OK(progpack_batch_push(b, 6, 1, NULL, NULL, NULL));
    OK(progpack_batch_abandon(b));
    CHECK(progpack_batch_abandon(b) == PROGPACK_STATUS_STALE_HANDLE);
}

static void lookups_and_report(progpack_allocator *a) {
    progpack_draft *d, *found;
    progpack_program *p, *pf;
    uint8_t *image;
    uintptr_t exec;
    OK(progpack_draft_new(a, 6, 1, &d, &image, &exec));
    OK(progpack_draft_find((uintptr_t)image, &found));
    CHECK(found == d);
    OK(progpack_draft_find(exec, &found));
    CHECK(found == d);
    CHECK(progpack_program_find(exec, &pf) == PROGPACK_STATUS_NOT_FOUND);
    emit_ret_imm(image, 7);
    OK(progpack_draft_finalize(d, &p));
    CHECK(progpack_draft_find(exec, &found) == PROGPACK_STATUS_NOT_FOUND);
    CHECK(found == NULL);
    OK(progpack_program_find(exec, &pf));
    CHECK(pf == p);
    OK(progpack_program_free(p));
    CHECK(progpack_program_find(exec, &pf) == PROGPACK_STATUS_NOT_FOUND);

    size_t need = 0;
    char tiny[4];
    CHECK(progpack_backend_report(a, tiny, sizeof tiny, &need) == PROGPACK_STATUS_BUFFER_TOO_SMALL);
    CHECK(need > 4);
    char *buf = malloc(need + 1);
    OK(progpack_backend_report(a, buf, need + 1, &need));
    CHECK(strlen(buf) == need);
    progpack_stats s;
    OK(progpack_allocator_stats(a, &s));
    CHECK(strstr(buf, s.backend) != NULL); /* the report names the backend in use */
    free(buf);
}

/* Reserve an upper bound, emit, shrink to what was emitted. */
static void shrink(progpack_allocator *a) {
    progpack_draft *d;
    progpack_program *p;
    uint8_t *image, *image_after;
    uintptr_t exec, exec_after, addr;
    size_t len;
    progpack_stats before, after;
    OK(progpack_draft_new(a, 4096, 16, &d, &image, &exec));
    OK(progpack_allocator_stats(a, &before));
    emit_ret_imm(image, 9);
    CHECK(progpack_draft_shrink(d, 0) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(progpack_draft_shrink(d, 4097) == PROGPACK_STATUS_INVALID_ARGUMENT);
    OK(progpack_draft_shrink(d, 6));
    OK(progpack_draft_info(d, &image_after, &exec_after, &len));
    CHECK(image_after == image && exec_after == exec && len == 6);
    CHECK(progpack_draft_shrink(d, 7) == PROGPACK_STATUS_INVALID_ARGUMENT); /* only shorter */
    OK(progpack_allocator_stats(a, &after));
    CHECK(after.chunks_used < before.chunks_used); /* the tail's chunks went back */
    OK(progpack_draft_finalize(d, &p));
    OK(progpack_program_info(p, &addr, &len));
    CHECK(addr == exec && len == 6 && as_fn(addr)() == 9);
    CHECK(progpack_draft_shrink(d, 3) == PROGPACK_STATUS_STALE_HANDLE);
    CHECK(progpack_draft_shrink((progpack_draft *)p, 3) == PROGPACK_STATUS_BAD_HANDLE);
    OK(progpack_program_free(p));
}

/* Page-aligned drafts (up to the page size). */
static void page_alignment(progpack_allocator *a) {
    progpack_draft *d;
    uintptr_t exec;
    OK(progpack_draft_new(a, 100, 4096, &d, NULL, &exec));
    CHECK(exec % 4096 == 0);
    OK(progpack_draft_abandon(d));
}

/* Freed code is trap instructions: calling it in a child dies of SIGTRAP. */
static void freed_code_traps(progpack_allocator *a) {
    progpack_program *p = make_program(a, 8);
    uintptr_t addr;
    OK(progpack_program_info(p, &addr, NULL));
    OK(progpack_program_free(p));
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        as_fn(addr)();
        _exit(0);
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTRAP);
}

static int by_address(const void *x, const void *y) {
    uintptr_t a = *(const uintptr_t *)x, b = *(const uintptr_t *)y;
    return (a > b) - (a < b);
}

/* Loads `n` programs of 64 bytes one by one into a fresh allocator made with `cfg`; returns
 * the chunks they use and how many breaks their addresses have, sorted (a break: the next
 * program does not start in the chunk right after the previous one's). */
static void layout(const progpack_config *cfg, size_t n, size_t *chunks, size_t *breaks) {
    progpack_allocator *a;
    OK(progpack_allocator_new(cfg, &a));
    progpack_program *programs[1000];
    uintptr_t addrs[1000];
    for (size_t i = 0; i < n; i++) {
        progpack_draft *d;
        uint8_t *image;
        OK(progpack_draft_new(a, 64, 1, &d, &image, &addrs[i]));
        memset(image, 0xcc, 64);
        emit_ret_imm(image, (uint32_t)i);
        OK(progpack_draft_finalize(d, &programs[i]));
    }
    progpack_stats s;
    OK(progpack_allocator_stats(a, &s));
    *chunks = s.chunks_used;
    qsort(addrs, n, sizeof addrs[0], by_address);
    *breaks = 0;
    for (size_t i = 1; i < n; i++)
        *breaks += addrs[i] / 64 != addrs[i - 1] / 64 + 1;
    for (size_t i = 0; i < n; i++)
        OK(progpack_program_free(programs[i]));
    OK(progpack_allocator_free(a));
}

static void layout_settings(void) {
    progpack_config cfg = {0};
    size_t chunks, breaks;
    /* The default adds no slack: a 64-byte program takes one 64-byte chunk. */
    layout(&cfg, 10, &chunks, &breaks);
    CHECK(chunks == 10);
    /* The kernel's 16 bytes: two chunks each. */
    cfg.min_slack = 16;
    layout(&cfg, 10, &chunks, &breaks);
    CHECK(chunks == 20);
    /* Runs that follow each other: 1,000 chunks taken one thread's run (64 chunks) at a time
     * lie back to back (at most one break: the first run starts at a random word, and the
     * runs wrap around to the pack's start at its end), where scattered runs start at a
     * random word each (about one break per run). */
    cfg.min_slack = 0;
    cfg.no_scatter_runs = 1;
    layout(&cfg, 1000, &chunks, &breaks);
    CHECK(chunks == 1000);
    CHECK(breaks <= 1);
    cfg.no_scatter_runs = 0;
    layout(&cfg, 1000, &chunks, &breaks);
    CHECK(breaks > 1);
    /* More slack than a chunk is refused. */
    progpack_allocator *b;
    cfg.min_slack = 65;
    CHECK(progpack_allocator_new(&cfg, &b) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(b == NULL);
}

/* progpack_allocator_new_sized: a caller built against an older header passes a shorter
 * struct (the fields it lacks keep their defaults), one built against a newer header a longer
 * one (accepted only if the settings this library does not know are zero). */
static void sized_configs(void) {
    progpack_allocator *a;
    progpack_config cfg = {0};
    /* An older struct ends before no_scatter_runs: what follows it is never read. */
    cfg.min_slack = 65; /* refused if it were read */
    OK(progpack_allocator_new_sized(&cfg, offsetof(progpack_config, no_scatter_runs), &a));
    OK(progpack_allocator_free(a));
    /* The same memory at today's size is read whole, and refused. */
    CHECK(progpack_allocator_new_sized(&cfg, sizeof cfg, &a) == PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(a == NULL);
    /* A newer struct: zero settings past ours are accepted, a set one is refused. */
    struct {
        progpack_config known;
        uint64_t newer;
    } big = {0};
    OK(progpack_allocator_new_sized(&big.known, sizeof big, &a));
    OK(progpack_allocator_free(a));
    big.newer = 1;
    CHECK(progpack_allocator_new_sized(&big.known, sizeof big, &a) ==
          PROGPACK_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(progpack_last_error(), "newer header") != NULL);
    /* Smaller than any version of the struct. */
    CHECK(progpack_allocator_new_sized(&cfg, 4, &a) == PROGPACK_STATUS_INVALID_ARGUMENT);
    /* NULL: the defaults, whatever the size. */
    OK(progpack_allocator_new_sized(NULL, 0, &a));
    OK(progpack_allocator_free(a));
}

int main(void) {
    progpack_allocator *a;
    OK(progpack_allocator_new(NULL, &a));
    null_handles_and_outputs(a);
    foreign_handles(a);
    double_free_and_use_after_free(a);
    allocator_lifetime();
    bad_arguments(a);
    batch_misuse(a);
    lookups_and_report(a);
    shrink(a);
    page_alignment(a);
    freed_code_traps(a);
    layout_settings();
    sized_configs();
    progpack_stats s;
    OK(progpack_allocator_stats(a, &s));
    CHECK(s.programs == 0 && s.allocations == 0);
    OK(progpack_allocator_free(a));
    return report("handles");
}
