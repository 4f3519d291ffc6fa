/* threads.c: many threads load, call and free programs on one allocator while racing each
   other to free published handles. Every program runs the code it was given, every
   published handle is freed exactly once (the other attempts get STALE_HANDLE), and nothing
   is left at the end. */
#include <pthread.h>
#include "check.h"

enum { THREADS = 8, ROUNDS = 1500, KEEP = 16 };

static progpack_allocator *alloc;
static progpack_program *published[THREADS]; /* accessed with __atomic builtins */
static unsigned long published_total, freed_ok;

static progpack_program *load(uint32_t value, size_t len) {
    progpack_draft *d;
    progpack_program *p;
    uint8_t *image;
    OK(progpack_draft_new(alloc, len, 1, &d, &image, NULL));
    emit_ret_imm(image, value);
    OK(progpack_draft_finalize(d, &p));
    return p;
}

static void call_expect(progpack_program *p, uint32_t value) {
    uintptr_t addr;
    OK(progpack_program_info(p, &addr, NULL));
    CHECK(as_fn(addr)() == value);
}

/* Frees a handle other threads may free too: OK once, STALE_HANDLE for everyone else. */
static void racy_free(progpack_program *p) {
    progpack_status st = progpack_program_free(p);
    CHECK(st == PROGPACK_STATUS_OK || st == PROGPACK_STATUS_STALE_HANDLE);
    if (st == PROGPACK_STATUS_OK) __atomic_add_fetch(&freed_ok, 1, __ATOMIC_RELAXED);
}

static void *worker(void *arg) {
    uint32_t tid = (uint32_t)(uintptr_t)arg;
    progpack_program *kept[KEEP] = {0};
    uint32_t kept_value[KEEP] = {0};
    for (uint32_t i = 0; i < ROUNDS; i++) {
        uint32_t value = tid * 1000000u + i;
        progpack_program *p;
        if (i % 7 == 0) { /* a batch of two */
            progpack_batch *b;
            progpack_program *two[2];
            uint8_t *image;
            OK(progpack_batch_new(alloc, &b));
            OK(progpack_batch_push(b, 6, 1, &image, NULL, NULL));
            emit_ret_imm(image, value);
            OK(progpack_batch_push(b, 6, 1, &image, NULL, NULL));
            emit_ret_imm(image, value + 1);
            OK(progpack_batch_finalize(b, two, 2));
            call_expect(two[1], value + 1);
            OK(progpack_program_free(two[1]));
            p = two[0];
        } else {
            p = load(value, 6 + (i % 200));
        }
        call_expect(p, value);
        size_t k = i % KEEP; /* programs kept across rounds are checked again later */
        if (kept[k]) {
            call_expect(kept[k], kept_value[k]);
            OK(progpack_program_free(kept[k]));
        }
        kept[k] = p;
        kept_value[k] = value;

        if (i % 3 == 0) { /* publish a program, then race the others to free theirs */
            progpack_program *mine = load(value, 6);
            __atomic_add_fetch(&published_total, 1, __ATOMIC_RELAXED);
            progpack_program *old = __atomic_exchange_n(&published[tid], mine, __ATOMIC_ACQ_REL);
            if (old) racy_free(old);
            progpack_program *theirs =
                __atomic_load_n(&published[(tid + 1 + i) % THREADS], __ATOMIC_ACQUIRE);
            if (theirs) racy_free(theirs);
        }
    }
    for (size_t k = 0; k < KEEP; k++)
        if (kept[k]) OK(progpack_program_free(kept[k]));
    return NULL;
}

int main(void) {
    OK(progpack_allocator_new(NULL, &alloc));
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        if (published[i]) racy_free(published[i]);
    CHECK(freed_ok == published_total); /* each published handle freed exactly once */
    progpack_stats s;
    OK(progpack_allocator_stats(alloc, &s));
    CHECK(s.programs == 0 && s.allocations == 0 && s.chunks_used == 0);
    OK(progpack_allocator_free(alloc));
    return report("threads");
}
