//! What the module holds for each declared function and data object, from declaration to free.
//!
//! An item is `Declared` (nothing placed: never defined, or freed), `Pending` (defined: its
//! bytes wait in the module's batch or in a heap block, its relocations are recorded and not
//! applied) or `Live` (finalized: placed, relocated, callable).
//!
//! Invariants:
//! - a `Pending` item is listed in the module's pending list; at most one pending item holds
//!   a draft, and it was defined before every pending item with a batch slot; a `Live` item owns its [`Program`] or heap block;
//! - names are not copied here: an id's linkage name is in the module's declarations, which
//!   never change for that id (a freed and redefined function keeps its name);
//! - `Live::refs` lists, once per relocation, every other module item that the item's placed
//!   bytes point at; `Live::incoming` is the number of entries naming this item across all
//!   live items. An item with `incoming > 0` is never freed.

use crate::heap::HeapBlock;
use cranelift_module::{DataId, FuncId, FuncOrDataId, ModuleReloc};
use progpack::{Draft, Program};
use std::marker::PhantomData;

/// One function or data object.
#[derive(Default)]
pub(crate) enum Item {
    /// Declared only, or freed.
    #[default]
    Declared,
    /// Defined, waiting for `finalize_definitions`.
    Pending(Pending),
    /// Placed and relocated.
    Live(Live),
}

/// A defined item waiting to be finalized.
pub(crate) struct Pending {
    /// Where its bytes wait.
    pub(crate) place: PendingPlace,
    /// Its address once finalized (known now: code is emitted for this address).
    pub(crate) addr: usize,
    /// Its length in bytes.
    pub(crate) len: usize,
    /// Relocations, checked for kind and bounds, not applied.
    pub(crate) relocs: Vec<ModuleReloc>,
}

/// Where a pending item's bytes are.
pub(crate) enum PendingPlace {
    /// In a draft of its own, the item `pad` bytes into the draft's image: the first item
    /// defined for packs since the last finalize (a finalize of one function, the common
    /// case in REPL-style JITs, is then one draft, which is ten times cheaper than a batch of
    /// one and stays next to the previous function). `None` only while finalizing.
    Draft { draft: Option<Draft>, pad: usize },
    /// In the module's batch: slot `index`, the item `pad` bytes into the slot's image (every
    /// further item defined for packs before the next finalize).
    Batch { index: usize, pad: usize },
    /// In its own heap block (data only).
    Heap(HeapBlock),
}

/// A finalized item.
pub(crate) struct Live {
    /// What holds its bytes.
    pub(crate) place: LivePlace,
    /// Its address.
    pub(crate) addr: usize,
    /// Its length in bytes.
    pub(crate) len: usize,
    /// Other module items its bytes point at, once per relocation.
    pub(crate) refs: Box<[FuncOrDataId]>,
    /// Number of relocations in live items that point at this one.
    pub(crate) incoming: u32,
}

/// What holds a live item's bytes.
pub(crate) enum LivePlace {
    /// Code (or read-only data) in a pack: dropping the program trap-fills it.
    Pack(Program),
    /// Data on the heap.
    Heap(HeapBlock),
}

/// Items indexed by a dense Cranelift id (`FuncId`, `DataId`). Grows as ids are declared.
pub(crate) struct Table<K> {
    items: Vec<Item>,
    _key: PhantomData<K>,
}

/// The ids a [`Table`] is indexed by.
pub(crate) trait Key: Copy {
    /// The dense index.
    fn index(self) -> usize;
}

impl Key for FuncId {
    fn index(self) -> usize {
        self.as_u32() as usize
    }
}

impl Key for DataId {
    fn index(self) -> usize {
        self.as_u32() as usize
    }
}

impl<K: Key> Table<K> {
    pub(crate) fn new() -> Self {
        Table {
            items: Vec::new(),
            _key: PhantomData,
        }
    }

    /// Makes room for `id` (called when it is declared).
    pub(crate) fn declare(&mut self, id: K) {
        if id.index() >= self.items.len() {
            self.items.resize_with(id.index() + 1, Item::default);
        }
    }

    /// True if `id` was declared.
    pub(crate) fn contains(&self, id: K) -> bool {
        id.index() < self.items.len()
    }

    /// The item, or `None` if `id` was never declared.
    pub(crate) fn get(&self, id: K) -> Option<&Item> {
        self.items.get(id.index())
    }

    /// The item, or `None` if `id` was never declared.
    pub(crate) fn get_mut(&mut self, id: K) -> Option<&mut Item> {
        self.items.get_mut(id.index())
    }

    /// The live item, if `id` is finalized.
    pub(crate) fn live(&self, id: K) -> Option<&Live> {
        match self.get(id)? {
            Item::Live(l) => Some(l),
            _ => None,
        }
    }

    /// Every item with its index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Item)> {
        self.items.iter().enumerate()
    }

    /// Every item, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Item> {
        self.items.iter_mut()
    }
}

impl Item {
    /// Where the item is or will be, if it is defined.
    pub(crate) fn addr(&self) -> Option<usize> {
        match self {
            Item::Declared => None,
            Item::Pending(p) => Some(p.addr),
            Item::Live(l) => Some(l.addr),
        }
    }
}
