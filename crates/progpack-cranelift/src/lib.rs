//! # progpack-cranelift: a Cranelift `Module` that packs functions and frees them one by one
//!
//! [`ProgpackModule`] implements [`cranelift_module::Module`] like `cranelift-jit`'s
//! `JITModule`, but places code with [progpack]: functions share 2 MiB huge-page
//! packs instead of getting page-rounded mappings of their own, each finalize is one write per
//! pack, no page is ever writable and executable (with progpack's default backend there is not
//! even a writable alias), and a single function can be freed and defined again.
//!
//! ## Switching from `JITModule`
//! ```
//! use cranelift_module::{default_libcall_names, Linkage, Module};
//! use progpack_cranelift::{ProgpackBuilder, ProgpackModule};
//!
//! // was: let mut builder = JITBuilder::new(default_libcall_names())?;
//! let mut builder = ProgpackBuilder::new(default_libcall_names())?;
//! builder.symbol("host_answer", host_answer as extern "C" fn() -> i64 as *const u8);
//! // was: let mut module = JITModule::new(builder);
//! let mut module = ProgpackModule::new(builder)?;
//!
//! // Everything else is the Module API, unchanged.
//! let mut sig = module.make_signature();
//! sig.returns.push(cranelift_codegen::ir::AbiParam::new(cranelift_codegen::ir::types::I64));
//! let id = module.declare_function("answer", Linkage::Export, &sig)?;
//! module.define_function_bytes(id, 1, &ANSWER, &[])?;
//! module.finalize_definitions()?;
//! let code = module.get_finalized_function(id);
//! // SAFETY: ANSWER is a complete function returning an i64 in rax.
//! let answer = unsafe { std::mem::transmute::<*const u8, extern "C" fn() -> i64>(code) };
//! assert_eq!(answer(), 42);
//!
//! // What JITModule cannot do: free one function (its code becomes traps) and define it again.
//! // SAFETY: `answer` is not running and is not called again.
//! unsafe { module.free_function(id)? };
//! module.define_function_bytes(id, 1, &ANSWER, &[])?;
//! module.finalize_definitions()?;
//! # extern "C" fn host_answer() -> i64 { 42 }
//! # #[cfg(target_arch = "x86_64")]
//! # const ANSWER: [u8; 6] = [0xb8, 42, 0, 0, 0, 0xc3]; // mov eax, 42; ret
//! # #[cfg(not(target_arch = "x86_64"))]
//! # const ANSWER: [u8; 8] = [0x40, 0x05, 0x80, 0xd2, 0xc0, 0x03, 0x5f, 0xd6]; // mov x0, #42; ret
//! # Ok::<(), cranelift_module::ModuleError>(())
//! ```
//!
//! ## What differs from `JITModule`
//! | | `JITModule` | [`ProgpackModule`] |
//! |---|---|---|
//! | code memory | page-rounded `mmap`s, `mprotect`ed read+execute at finalize | 64-byte chunks in shared 2 MiB packs; one write per pack per finalize |
//! | writable and executable | never at once, but the same pages are written, then executed | never; the executable address is never writable (procmem backend) |
//! | finalize after each function | one or two VMAs and a page per function; fails at `vm.max_map_count` | chunks in the same packs; VMAs do not grow |
//! | freeing one function | not possible | [`free_function`](ProgpackModule::free_function): trap-filled, chunks reused, id definable again |
//! | drop | leaks all code and data | frees all code and data; [`leak`](ProgpackModule::leak) keeps it |
//! | where code is | wherever `mmap` puts it | within ±2 GiB of this binary by default (a progpack code range) |
//! | calls to imported host functions | `movabs` + `call reg` | `call rel32` when the function is within reach of the code range (this binary's functions), else as `JITModule` |
//! | read-only data | mapped read-only | in packs next to the code (read+execute), or on the heap ([`ProgpackBuilder::read_only_data_in_packs`]) |
//! | writable data | `mmap`ed, referenced rip-relative when colocated | on the heap, always referenced through an absolute address (`Abs8`) |
//! | unresolved symbol, target out of `rel32` reach, TLS, GOT/PLT relocation | panics | a [`ModuleError`](cranelift_module::ModuleError) carrying an [`Error`] |
//! | `new` | returns the module | returns a `Result` (the allocator or the code range may fail) |
//! | names for profilers and debuggers | none | with [`ProgpackBuilder::perf_map`] / [`ProgpackBuilder::observe`] (or `PROGPACK_PERF_MAP=1`, `PROGPACK_JITDUMP=DIR`, `PROGPACK_GDB_JIT=1`): each function named after its symbol in the perf map, the jitdump, gdb and `program_at` |
//!
//! ## When relocations are applied
//! `define_function` compiles, reserves the function's place in a pack (a progpack draft for the
//! first function after a finalize, a batch slot for the rest; the address is known from then
//! on), and copies the code into a writable buffer, which is never executable.
//! `finalize_definitions` resolves every pending relocation against the addresses the code
//! will run at, patches the buffers, and places everything with one backend write per pack
//! (plus one for the draft). If a symbol does not resolve, nothing changes and the functions
//! stay pending.
//!
//! ## Symbols and library calls
//! As in `JITModule`, a name the module does not define is looked up in the builder's table,
//! then through the lookup functions (last added first), then with `dlsym`. Library calls that
//! Cranelift inserts (`ceilf` and `fma` without SSE4.1/FMA, `memset`, ...) are looked up the
//! same way under the names `libcall_names` gives; `dlsym` finds libm's functions only if the
//! process loaded libm (a Rust program that never calls one may not).
//!
//! ## Freeing, and who still calls whom
//! The module counts, for every finalized function and data object, the relocations in other
//! finalized items that point at it (calls, addresses, function pointers in data). Freeing an
//! item that is still referenced that way is refused with [`Error::StillReferenced`]; free the
//! callers first, or the whole group with [`ProgpackModule::free_functions`].
#![deny(unsafe_code)]
#![deny(missing_docs)]
// The Module API returns Cranelift's `ModuleError` (136 bytes); the inherent methods return it
// too, so that they read like `JITModule`'s.
#![allow(clippy::result_large_err)]

mod builder;
mod define;
mod error;
mod finalize;
mod free;
mod heap;
mod module;
mod reloc;
mod state;
mod symbols;

pub use builder::{LibcallNames, ProgpackBuilder, DEFAULT_CHUNK};
pub use error::Error;
pub use module::{FinalizedFunction, ProgpackModule};
pub use symbols::{lookup_with_dlsym, LookupFn};
