//! A module that outlives its `PackedModule` (a clone kept against `Loader::load`'s contract)
//! keeps its code: the program is leaked, never trap-filled under wasmtime. Its own file:
//! the other test counts the process's mappings.

use progpack::{Allocator, Config as PackConfig};
use progpack_wasmtime::Loader;
use wasmtime::{Config, Engine, Instance, Store};

#[test]
fn a_module_outliving_its_packed_module_keeps_its_code() {
    let config = Config::new();
    let artifact = Engine::new(&config)
        .unwrap()
        .precompile_module(r#"(module (func (export "f") (param i32) (result i32) local.get 0 i32.const 4 i32.mul i32.const 1 i32.add))"#.as_bytes())
        .unwrap();
    let alloc = Allocator::new(PackConfig::default()).unwrap();
    let loader = Loader::new(config, alloc.clone()).unwrap();
    // SAFETY: wasmtime's own output for this configuration. The contract is broken on
    // purpose below (a clone outlives the PackedModule): the loader must leak, not free.
    let packed = unsafe { loader.load(&artifact) }.unwrap();
    let clone = packed.module().clone();
    drop(packed);
    assert_eq!(loader.leaked(), 1);
    assert_eq!(
        alloc.stats().programs,
        1,
        "the code stays while wasmtime holds it"
    );
    let mut store = Store::new(loader.engine(), ());
    let instance = Instance::new(&mut store, &clone, &[]).unwrap();
    let fun = instance
        .get_typed_func::<i32, i32>(&mut store, "f")
        .unwrap();
    assert_eq!(fun.call(&mut store, 10).unwrap(), 41);
}
