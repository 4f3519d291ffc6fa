//! # progpack-wasmtime: precompiled wasmtime modules in shared packs
//!
//! wasmtime gives every module a mapping of its own and `mprotect`s its text executable at
//! publish. Here, a module precompiled with [`wasmtime::Engine::precompile_module`] is copied
//! into a progpack draft and finalized: the whole artifact lands in a read+execute pack shared
//! with other modules, with one copy and no page ever writable and executable. wasmtime then
//! runs it in place ([`wasmtime::Module::deserialize_raw`]) through a
//! [`wasmtime::CustomCodeMemory`] whose publish and unpublish do nothing, because the pages
//! are executable already.
//!
//! Invariants:
//! - a [`PackedModule`] owns its wasmtime module and its progpack program, and drops the
//!   module first: the code is trap-filled only after wasmtime let go of it;
//! - if wasmtime still holds the code when a `PackedModule` drops (a clone of the module or
//!   a store outlived it, against [`Loader::load`]'s contract), the program is leaked, never
//!   freed under running code; [`Loader::leaked`] counts those.

#![deny(missing_docs)]

use anyhow::{Context, Result};
use progpack::{Allocator, Program};
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::{Config, CustomCodeMemory, Engine, Module};

/// Alignment of an artifact's first byte in its pack. wasmtime asserts that the text section
/// is aligned to [`CustomCodeMemory::required_alignment`]; the text's offset inside the
/// artifact is a multiple of this, so aligning the artifact is enough.
pub const ARTIFACT_ALIGN: usize = 64;

/// wasmtime's view of progpack memory: already read+execute, so publishing changes nothing.
/// It remembers which text ranges wasmtime holds, so that [`PackedModule`] never frees code
/// wasmtime still uses.
#[derive(Debug, Default)]
pub struct PackCode {
    published: Mutex<HashSet<usize>>,
}

impl PackCode {
    fn holds(&self, text: usize) -> bool {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&text)
    }
}

impl CustomCodeMemory for PackCode {
    fn required_alignment(&self) -> usize {
        ARTIFACT_ALIGN
    }

    fn publish_executable(&self, ptr: *const u8, _len: usize) -> anyhow::Result<()> {
        // Nothing to change: progpack placed the bytes with one write into a read+execute pack
        // and synced the instruction cache at finalize.
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ptr as usize);
        Ok(())
    }

    fn unpublish_executable(&self, ptr: *const u8, _len: usize) -> anyhow::Result<()> {
        // Nothing to change either: the pages stay read+execute; the chunks are trap-filled
        // when the PackedModule frees its program.
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ptr as usize));
        Ok(())
    }
}

/// Loads precompiled modules into progpack packs.
#[derive(Debug)]
pub struct Loader {
    engine: Engine,
    code: Arc<PackCode>,
    alloc: Allocator,
    leaked: Arc<AtomicUsize>,
}

impl Loader {
    /// A loader whose engine uses `config` (it must be the configuration the artifacts were
    /// precompiled with) plus progpack's code memory, placing code with `alloc`.
    pub fn new(mut config: Config, alloc: Allocator) -> Result<Loader> {
        let code = Arc::new(PackCode::default());
        config.with_custom_code_memory(Some(code.clone() as Arc<dyn CustomCodeMemory>));
        Ok(Loader {
            engine: Engine::new(&config)?,
            code,
            alloc,
            leaked: Arc::default(),
        })
    }

    /// The engine modules run on: make stores with it.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator that holds the code.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Programs never freed because wasmtime still held their code when their
    /// `PackedModule` was dropped.
    pub fn leaked(&self) -> usize {
        self.leaked.load(Ordering::Relaxed)
    }

    /// Places `artifact` in a pack (one draft, one copy at finalize) and lets wasmtime use it
    /// in place.
    ///
    /// # Safety
    /// `artifact` is the unmodified output of `Engine::precompile_module` (or
    /// `Module::serialize`) from an engine with the same configuration (wasmtime runs its
    /// machine code as is). Every clone of [`PackedModule::module`], and every `Store` that
    /// instantiated it, is dropped before the `PackedModule`.
    pub unsafe fn load(&self, artifact: &[u8]) -> Result<PackedModule> {
        let mut draft = self
            .alloc
            .draft(artifact.len(), ARTIFACT_ALIGN)
            .context("progpack draft for the artifact")?;
        draft.image_mut().copy_from_slice(artifact);
        let program = draft.finalize().context("progpack finalize")?;
        let memory = NonNull::from(program.bytes());
        // SAFETY: the caller promises the artifact is wasmtime's own output for this engine's
        // configuration; `memory` is the program's bytes, read+execute, never modified while
        // the program lives, and the program outlives the module (the field order in
        // PackedModule, and the leak in its Drop if wasmtime still holds the code).
        let module = unsafe { Module::deserialize_raw(&self.engine, memory) }
            .context("wasmtime deserialize_raw")?;
        Ok(PackedModule {
            module: Some(module),
            program: Some(program),
            code: self.code.clone(),
            leaked: self.leaked.clone(),
        })
    }
}

/// A wasmtime module whose code lives in a progpack pack.
#[derive(Debug)]
pub struct PackedModule {
    module: Option<Module>,
    program: Option<Program>,
    code: Arc<PackCode>,
    leaked: Arc<AtomicUsize>,
}

impl PackedModule {
    /// The module: instantiate it with a store of [`Loader::engine`].
    pub fn module(&self) -> &Module {
        self.module.as_ref().expect("present until drop")
    }

    /// The progpack program holding the artifact.
    pub fn program(&self) -> &Program {
        self.program.as_ref().expect("present until drop")
    }
}

impl Drop for PackedModule {
    fn drop(&mut self) {
        let text_ranges = self
            .module
            .as_ref()
            .map(|m| m.text().as_ptr() as usize)
            .into_iter()
            .collect::<Vec<_>>();
        drop(self.module.take());
        if text_ranges.iter().any(|t| self.code.holds(*t)) {
            // wasmtime still uses the code: never trap-fill it under a running module.
            std::mem::forget(self.program.take());
            self.leaked.fetch_add(1, Ordering::Relaxed);
        }
        // Otherwise the program drops here: trap-filled, then freed.
    }
}

/// How many mappings (lines of `/proc/self/maps`) this process has.
pub fn vma_count() -> std::io::Result<usize> {
    Ok(std::fs::read_to_string("/proc/self/maps")?.lines().count())
}

/// How many distinct mappings contain at least one of `addrs`.
pub fn vmas_holding(addrs: &[usize]) -> std::io::Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let ranges: Vec<(usize, usize)> = maps
        .lines()
        .filter_map(|l| {
            let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect();
    Ok(ranges
        .iter()
        .filter(|(lo, hi)| addrs.iter().any(|a| (lo..hi).contains(&a)))
        .count())
}
