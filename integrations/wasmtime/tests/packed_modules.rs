//! N precompiled modules run out of shared packs: each computes its own function, a trap is
//! caught by wasmtime, and the mappings this takes are counted against wasmtime's own
//! one-mapping-per-module loading of the same artifacts.

use progpack::{Allocator, Config as PackConfig};
use progpack_wasmtime::{vma_count, vmas_holding, Loader, PackedModule};
use wasmtime::{Config, Engine, Instance, Module, Store, Trap};

const MODULES: usize = 200;

/// Module `i`: f(x) = x * (i + 3) + i, and a function that executes `unreachable`.
fn wat(i: usize) -> String {
    format!(
        r#"(module
             (func (export "f") (param i32) (result i32)
               local.get 0 i32.const {m} i32.mul i32.const {i} i32.add)
             (func (export "boom") (result i32) unreachable))"#,
        m = i + 3
    )
}

fn f(i: usize, x: i32) -> i32 {
    x.wrapping_mul(i as i32 + 3).wrapping_add(i as i32)
}

fn precompile(config: &Config) -> Vec<Vec<u8>> {
    let engine = Engine::new(config).expect("compile engine");
    (0..MODULES)
        .map(|i| {
            engine
                .precompile_module(wat(i).as_bytes())
                .expect("precompile")
        })
        .collect()
}

/// Calls `f` of every module and checks it; returns the number of calls.
fn run_all(engine: &Engine, modules: &[&Module]) -> usize {
    let mut calls = 0;
    for (i, module) in modules.iter().enumerate() {
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, module, &[]).expect("instantiate");
        let fun = instance
            .get_typed_func::<i32, i32>(&mut store, "f")
            .expect("export f");
        for x in [-7, 0, 1, 41, 1 << 20] {
            assert_eq!(
                fun.call(&mut store, x).expect("call"),
                f(i, x),
                "module {i}"
            );
            calls += 1;
        }
    }
    calls
}

#[test]
fn precompiled_modules_run_from_shared_packs() {
    let config = Config::new();
    let artifacts = precompile(&config);
    let alloc = Allocator::new(PackConfig::default()).expect("allocator");
    let loader = Loader::new(config.clone(), alloc.clone()).expect("loader");

    let before = vma_count().unwrap();
    // SAFETY: the artifacts come from precompile_module with the same configuration; stores
    // are dropped inside run_all, before the PackedModules.
    let packed: Vec<PackedModule> = artifacts
        .iter()
        .map(|a| unsafe { loader.load(a) }.expect("load"))
        .collect();
    let packed_vmas = vma_count().unwrap() as isize - before as isize;
    let texts: Vec<usize> = packed
        .iter()
        .map(|p| p.module().text().as_ptr() as usize)
        .collect();
    let packed_text_vmas = vmas_holding(&texts).unwrap();
    let stats = alloc.stats();
    assert_eq!(stats.programs, MODULES);
    let bytes: usize = artifacts.iter().map(Vec::len).sum();

    let modules: Vec<&Module> = packed.iter().map(|p| p.module()).collect();
    let calls = run_all(loader.engine(), &modules);

    // A trap inside code that lives in a pack: wasmtime's signal handler finds the faulting
    // address in the module's text, and the call returns a Trap.
    let mut store = Store::new(loader.engine(), ());
    let instance = Instance::new(&mut store, packed[MODULES / 2].module(), &[]).unwrap();
    let boom = instance
        .get_typed_func::<(), i32>(&mut store, "boom")
        .unwrap();
    let err = boom.call(&mut store, ()).expect_err("unreachable traps");
    assert_eq!(
        err.downcast_ref::<Trap>(),
        Some(&Trap::UnreachableCodeReached)
    );
    drop(err); // its backtrace holds the module
    drop(store);
    // The module still works after the trap.
    assert_eq!(run_all(loader.engine(), &modules[..1]), 5);

    // The same artifacts loaded by wasmtime itself: one mapping per module.
    let engine = Engine::new(&config).unwrap();
    let before_own = vma_count().unwrap();
    let own: Vec<Module> = artifacts
        .iter()
        // SAFETY: wasmtime's own output for this configuration.
        .map(|a| unsafe { Module::deserialize(&engine, a) }.expect("deserialize"))
        .collect();
    let own_vmas = vma_count().unwrap() as isize - before_own as isize;
    let texts: Vec<usize> = own.iter().map(|m| m.text().as_ptr() as usize).collect();
    let own_text_vmas = vmas_holding(&texts).unwrap();
    run_all(&engine, &own.iter().collect::<Vec<_>>());

    println!(
        "{MODULES} modules ({} KiB of artifacts), {calls} calls checked, 1 trap caught\n\
         progpack: {} pack(s) ({} bytes mapped); the code is in {} VMA(s); {:+} VMAs in the process\n\
         wasmtime's own loading: the code is in {} VMAs; {:+} VMAs in the process",
        bytes / 1024,
        stats.packs,
        stats.bytes_mapped,
        packed_text_vmas,
        packed_vmas,
        own_text_vmas,
        own_vmas
    );
    // Adjacent packs with the same protection may merge into one VMA.
    assert!(
        (1..=stats.packs).contains(&packed_text_vmas),
        "the code of all {MODULES} modules is in the packs"
    );
    assert_eq!(
        own_text_vmas, MODULES,
        "wasmtime maps each module's text on its own"
    );

    drop(modules);
    drop(own);
    drop(packed);
    assert_eq!(loader.leaked(), 0);
    let after = alloc.stats();
    assert_eq!(
        (after.programs, after.allocations),
        (0, 0),
        "every module's code freed"
    );
}
