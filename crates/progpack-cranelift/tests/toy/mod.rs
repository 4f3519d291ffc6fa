//! The toy language of cranelift-jit-demo, on `ProgpackModule` (see each file for its origin).
#![allow(dead_code)] // not every test file uses every item
#![allow(clippy::upper_case_acronyms)] // the demo's `JIT`, kept as upstream named it

pub mod frontend;
pub mod jit;
