//! criterion micro-benchmarks of progpack's primitives: draft, finalize, batch finalize,
//! free, and the chunk-bitmap search (through the public API: the bitmap is private).
//!
//! Run: `cargo bench -p progpack --bench primitives`. The side-by-side comparison with other
//! allocators is `progpack bench` (see BENCHMARKS.md); these isolate one operation each.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use progpack::{Allocator, BackendChoice, Config, Draft, Program};
use std::hint::black_box;

/// x86-64 `mov eax, 42; ret`, padded with int3 to `len`.
fn code(len: usize) -> Vec<u8> {
    let mut v = vec![0xCC; len];
    v[..6].copy_from_slice(&[0xB8, 42, 0, 0, 0, 0xC3]);
    v
}

fn alloc(backend: BackendChoice) -> Allocator {
    Allocator::new(Config::default().backend(backend)).expect("allocator")
}

fn backends() -> [(&'static str, BackendChoice); 4] {
    [
        ("procmem", BackendChoice::ProcMem),
        // No /proc/self/mem descriptor kept between writes: what that costs per write.
        ("procmem-per-write", BackendChoice::ProcMemPerWrite),
        ("dualmap", BackendChoice::DualMap),
        // No writable view kept: a `pwrite` on the memfd per write.
        ("dualmap-per-write", BackendChoice::DualMapPerWrite),
    ]
}

/// A draft of `image.len()` bytes with `image` written into it.
fn written(a: &Allocator, image: &[u8]) -> Draft {
    let mut d = a.draft(image.len(), 16).expect("draft");
    d.image_mut().copy_from_slice(image);
    d
}

/// `draft` + dropping the unfinalized draft (the chunks go back untouched by the backend).
fn draft(c: &mut Criterion) {
    let a = alloc(BackendChoice::ProcMem);
    // Keep one live program so the pack stays mapped between iterations.
    let _keep = a.draft(64, 16).and_then(|d| d.finalize()).expect("keep");
    let mut g = c.benchmark_group("draft");
    for len in [64usize, 512, 4096] {
        g.bench_function(format!("{len}B"), |b| {
            b.iter(|| drop(black_box(a.draft(len, 16).expect("draft"))))
        });
    }
    g.finish();
}

/// `finalize` of a written draft: the text copy into the pack.
fn finalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("finalize");
    for (name, backend) in backends() {
        let a = alloc(backend);
        let _keep = a.draft(64, 16).and_then(|d| d.finalize()).expect("keep");
        for len in [64usize, 512, 4096] {
            let image = code(len);
            g.bench_function(format!("{name}/{len}B"), |b| {
                b.iter_batched(
                    || written(&a, &image),
                    |d| d.finalize().expect("finalize"),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// `Batch`: push 256 programs of 64 B and finalize them (one write per contiguous run).
fn batch_finalize(c: &mut Criterion) {
    const N: usize = 256;
    let image = code(64);
    let mut g = c.benchmark_group("batch_finalize");
    g.throughput(Throughput::Elements(N as u64));
    for (name, backend) in backends() {
        let a = alloc(backend);
        let _keep = a.draft(64, 16).and_then(|d| d.finalize()).expect("keep");
        g.bench_function(format!("{name}/{N}x64B"), |b| {
            b.iter_batched(
                || {
                    let mut batch = a.batch();
                    for _ in 0..N {
                        batch
                            .push(64, 16)
                            .expect("push")
                            .image
                            .copy_from_slice(&image);
                    }
                    batch
                },
                |batch| batch.finalize().expect("finalize"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// `finalize_all` of 64 drafts of 64 B made one after the other (neighbours in one run): one
/// write of their images and the trap gaps between them.
fn finalize_all(c: &mut Criterion) {
    const N: usize = 64;
    let image = code(64);
    let mut g = c.benchmark_group("finalize_all");
    g.throughput(Throughput::Elements(N as u64));
    for (name, backend) in backends() {
        let a = alloc(backend);
        let _keep = a.draft(64, 16).and_then(|d| d.finalize()).expect("keep");
        g.bench_function(format!("{name}/{N}x64B"), |b| {
            b.iter_batched(
                || (0..N).map(|_| written(&a, &image)).collect::<Vec<_>>(),
                |drafts| a.finalize_all(drafts).expect("finalize_all"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Dropping a finalized program: trap fill of its range, then its bits cleared.
fn free(c: &mut Criterion) {
    let mut g = c.benchmark_group("free");
    for (name, backend) in backends() {
        let a = alloc(backend);
        let _keep = a.draft(64, 16).and_then(|d| d.finalize()).expect("keep");
        for len in [64usize, 4096] {
            let image = code(len);
            g.bench_function(format!("{name}/{len}B"), |b| {
                b.iter_batched(
                    || written(&a, &image).finalize().expect("finalize"),
                    drop::<Program>,
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// The bitmap search, through `draft`: one pack is filled with one-chunk programs and every
/// other one is freed (16k one-chunk holes), so a two-chunk request finds no room there and
/// must look past the whole fragmented pack before it is placed in the next one.
fn bitmap_search(c: &mut Criterion) {
    let a = Allocator::new(
        Config::default()
            .backend(BackendChoice::ProcMem)
            .randomize(false)
            .shards(1),
    )
    .expect("allocator");
    let chunks = a.stats().pack_size / a.stats().chunk_size;
    let image = code(64);
    let mut progs: Vec<Option<Program>> = Vec::with_capacity(chunks);
    let mut batch = a.batch();
    for _ in 0..chunks {
        batch
            .push(64, 64)
            .expect("push")
            .image
            .copy_from_slice(&image);
    }
    progs.extend(batch.finalize().expect("fill").into_iter().map(Some));
    for p in progs.iter_mut().step_by(2) {
        *p = None;
    }
    let mut g = c.benchmark_group("bitmap_search");
    g.bench_function("fragmented_pack/draft_2_chunks", |b| {
        b.iter(|| drop(black_box(a.draft(128, 64).expect("draft"))))
    });
    g.bench_function("fragmented_pack/draft_1_chunk", |b| {
        b.iter(|| drop(black_box(a.draft(64, 64).expect("draft"))))
    });
    g.finish();
    drop(progs);
}

criterion_group!(
    benches,
    draft,
    finalize,
    batch_finalize,
    finalize_all,
    free,
    bitmap_search
);
criterion_main!(benches);
