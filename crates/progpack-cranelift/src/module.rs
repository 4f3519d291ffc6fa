//! [`ProgpackModule`]: the module's state, its construction, the finalized addresses, and what
//! happens to its code when it goes away.
//!
//! Defining ([`crate::define`]), finalizing ([`crate::finalize`]) and freeing
//! ([`crate::free`]) live in their own files; this one holds the state they share. Invariants
//! are those of [`crate::state`], plus: `draft_item` names the pending item that holds a draft;
//! every pending item with a batch slot has its slot in `batch`; and `pending` lists exactly
//! the pending items, in definition order.

use crate::builder::{LibcallNames, Placement, ProgpackBuilder};
use crate::error::Error;
use crate::state::{Item, LivePlace, Table};
use crate::symbols::Symbols;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_module::{DataId, FuncId, FuncOrDataId, ModuleDeclarations, ModuleResult};
use progpack::{Allocator, Batch};
use std::borrow::Cow;

/// A Cranelift [`Module`](cranelift_module::Module) that places code with progpack: functions
/// packed into 2 MiB read+execute packs, written with one batched write per finalize, never
/// mapped writable and executable, and freed one function at a time.
///
/// Made from a [`ProgpackBuilder`], used like `cranelift_jit::JITModule`: declare, define,
/// [`finalize_definitions`](Self::finalize_definitions), then
/// [`get_finalized_function`](Self::get_finalized_function).
///
/// Dropping the module frees all its code (trap-filled) and data. `JITModule` leaks its memory
/// on drop instead; [`leak`](Self::leak) keeps that behaviour where code must outlive the
/// module.
pub struct ProgpackModule {
    pub(crate) isa: OwnedTargetIsa,
    pub(crate) symbols: Symbols,
    pub(crate) libcall_names: LibcallNames,
    pub(crate) alloc: Allocator,
    pub(crate) rodata_in_packs: bool,
    pub(crate) colocate_host_symbols: bool,
    pub(crate) declarations: ModuleDeclarations,
    pub(crate) functions: Table<FuncId>,
    pub(crate) data: Table<DataId>,
    /// The pending item that holds a draft, if any.
    pub(crate) draft_item: Option<FuncOrDataId>,
    /// Slots of the other pending items that go into packs.
    pub(crate) batch: Option<Batch>,
    /// Pending items in definition order.
    pub(crate) pending: Vec<FuncOrDataId>,
}

// A module is moved between threads like JITModule; keep that true at compile time.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<ProgpackModule>();
};

/// A finalized function: where it is, how long, and its linkage name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalizedFunction<'a> {
    /// Address of its first byte.
    pub addr: *const u8,
    /// Length of its code in bytes.
    pub len: usize,
    /// Its linkage name, as declared (`.Lfn<id>` for anonymous functions): for perf maps,
    /// symbolizers, listings.
    pub name: Cow<'a, str>,
}

impl ProgpackModule {
    /// Creates a module from a builder. Unlike `JITModule::new` it returns an error: when the
    /// ISA was built with `is_pic = true`, or the allocator cannot be created (for example the
    /// code range cannot be reserved near this binary).
    pub fn new(builder: ProgpackBuilder) -> ModuleResult<Self> {
        if builder.isa.flags().is_pic() {
            return Err(Error::PicNotSupported.into());
        }
        let alloc = match builder.placement {
            Placement::Config(config) => Allocator::new(config).map_err(Error::from)?,
            Placement::Shared(alloc) => alloc,
        };
        Ok(ProgpackModule {
            isa: builder.isa,
            symbols: builder.symbols,
            libcall_names: builder.libcall_names,
            alloc,
            rodata_in_packs: builder.rodata_in_packs,
            colocate_host_symbols: builder.colocate_host_symbols,
            declarations: ModuleDeclarations::default(),
            functions: Table::new(),
            data: Table::new(),
            draft_item: None,
            batch: None,
            pending: Vec::new(),
        })
    }

    /// The address of a finalized function (as `JITModule::get_finalized_function`). Valid
    /// until the function is freed or the module dropped.
    ///
    /// # Panics
    /// If the function is not finalized, as `JITModule` does; [`finalized_function`]
    /// returns `None` instead.
    ///
    /// [`finalized_function`]: Self::finalized_function
    pub fn get_finalized_function(&self, id: FuncId) -> *const u8 {
        match self.functions.live(id) {
            Some(l) => l.addr as *const u8,
            None => panic!("function {id} is not finalized"),
        }
    }

    /// The address and size of a finalized data object (as `JITModule::get_finalized_data`).
    /// Valid until the object is freed or the module dropped.
    ///
    /// # Panics
    /// If the data object is not finalized; [`finalized_data`](Self::finalized_data) returns
    /// `None` instead.
    pub fn get_finalized_data(&self, id: DataId) -> (*const u8, usize) {
        match self.finalized_data(id) {
            Some(d) => d,
            None => panic!("data object {id} is not finalized"),
        }
    }

    /// The finalized function `id`, or `None` if it is not finalized (never defined, pending,
    /// or freed).
    pub fn finalized_function(&self, id: FuncId) -> Option<FinalizedFunction<'_>> {
        self.functions.live(id).map(|l| FinalizedFunction {
            addr: l.addr as *const u8,
            len: l.len,
            name: self.declarations.get_function_decl(id).linkage_name(id),
        })
    }

    /// Address and size of the finalized data object `id`, or `None` if it is not finalized.
    pub fn finalized_data(&self, id: DataId) -> Option<(*const u8, usize)> {
        self.data.live(id).map(|l| (l.addr as *const u8, l.len))
    }

    /// Every finalized function, in id order: for symbolizers, perf maps and listings.
    pub fn finalized_functions(&self) -> impl Iterator<Item = (FuncId, FinalizedFunction<'_>)> {
        self.functions.iter().filter_map(|(i, item)| match item {
            Item::Live(l) => {
                let id = FuncId::from_u32(i as u32);
                Some((
                    id,
                    FinalizedFunction {
                        addr: l.addr as *const u8,
                        len: l.len,
                        name: self.declarations.get_function_decl(id).linkage_name(id),
                    },
                ))
            }
            _ => None,
        })
    }

    /// The allocator the code lives in: [`stats`](Allocator::stats),
    /// [`snapshot`](Allocator::snapshot), the backend in use.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Frees every function and data object (as `JITModule::free_memory`). Dropping the module
    /// does the same.
    ///
    /// # Safety
    /// No code of this module may be running, and no pointer obtained from it may be used
    /// afterwards (calling freed code traps; freed data is gone).
    #[allow(unsafe_code)] // an unsafe fn for JITModule's signature; it only drops
    pub unsafe fn free_memory(self) {
        drop(self);
    }

    /// Gives up the module but keeps its code and data where they are, forever (what dropping a
    /// `JITModule` does). Every pointer obtained from the module stays valid. Items defined but
    /// not finalized are discarded.
    pub fn leak(mut self) {
        for item in self.functions.iter_mut().chain(self.data.iter_mut()) {
            if let Item::Live(l) = std::mem::take(item) {
                match l.place {
                    LivePlace::Pack(program) => std::mem::forget(program),
                    LivePlace::Heap(block) => block.leak(),
                }
            }
        }
        // What is left (pending items, the batch) is dropped normally.
    }

    /// The name an item is known by in messages.
    pub(crate) fn item_name(&self, id: FuncOrDataId) -> String {
        match id {
            FuncOrDataId::Func(f) => self.declarations.get_function_decl(f).linkage_name(f),
            FuncOrDataId::Data(d) => self.declarations.get_data_decl(d).linkage_name(d),
        }
        .into_owned()
    }

    /// The table entry of an item. Ids come from this module's declarations, so the entry
    /// exists.
    pub(crate) fn item_mut(&mut self, id: FuncOrDataId) -> &mut Item {
        match id {
            FuncOrDataId::Func(f) => self.functions.get_mut(f),
            FuncOrDataId::Data(d) => self.data.get_mut(d),
        }
        .expect("module items are declared in their table")
    }

    /// Throws away every pending item (after the batch was lost).
    pub(crate) fn discard_pending(&mut self) {
        self.batch = None;
        self.draft_item = None;
        for id in std::mem::take(&mut self.pending) {
            *self.item_mut(id) = Item::Declared;
        }
    }
}

impl Drop for ProgpackModule {
    fn drop(&mut self) {
        // Code goes back with one trap-fill write per run of adjacent programs, not one per
        // function; heap blocks are freed as they drop.
        let mut programs = Vec::new();
        for item in self.functions.iter_mut().chain(self.data.iter_mut()) {
            if let Item::Live(l) = std::mem::take(item) {
                if let LivePlace::Pack(p) = l.place {
                    programs.push(p);
                }
            }
        }
        self.alloc.free_all(programs);
    }
}

impl std::fmt::Debug for ProgpackModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgpackModule")
            .field("isa", &self.isa.name())
            .field("live_functions", &self.finalized_functions().count())
            .field("pending", &self.pending.len())
            .field("backend", &self.alloc.backend_name())
            .finish()
    }
}
