//! Freeing single functions and data objects, which `cranelift-jit` cannot do.
//!
//! Freed code is trap-filled before its chunks are reused (progpack's `Program` drop), so a
//! stale call traps instead of running other code. The item goes back to `Declared`: the same
//! `FuncId` or `DataId` can be defined again.
//!
//! What finalized code reaches through a relocation (a `call rel32`, a `movabs` of an address,
//! a function pointer in a data object) is counted on the target (`Live::incoming`); freeing a
//! target with references left is refused with [`Error::StillReferenced`]. Pointers the host
//! keeps, or addresses JIT code computed at run time, are not counted: that is the caller's
//! promise in the `# Safety` sections.
#![allow(unsafe_code)] // the free functions are `unsafe fn`: the module cannot see every caller

use crate::error::Error;
use crate::module::ProgpackModule;
use crate::state::{Item, Live, LivePlace};
use cranelift_module::{DataId, FuncId, FuncOrDataId, ModuleResult};
use std::collections::HashMap;

/// How many referrer names a [`Error::StillReferenced`] message lists.
const NAMED_REFERRERS: usize = 4;

impl ProgpackModule {
    /// Frees a finalized function: its code is trap-filled and its chunks are reused. The
    /// `FuncId` stays declared and may be defined again.
    ///
    /// Refused ([`Error::StillReferenced`]) while other finalized code or data refers to it
    /// through a relocation; free those first, or together with [`free_functions`]. Refused
    /// ([`Error::NotFinalized`], [`Error::NotDefined`]) for a function that is pending or not
    /// defined.
    ///
    /// # Safety
    /// No thread may be running the function, and no pointer to it obtained from this module
    /// (or stored anywhere by the host or by JIT code at run time) may be called afterwards:
    /// such a call traps, or runs whatever is defined there later.
    ///
    /// [`free_functions`]: Self::free_functions
    pub unsafe fn free_function(&mut self, id: FuncId) -> ModuleResult<()> {
        // SAFETY: the caller's promise is the one `free_functions` asks for.
        unsafe { self.free_functions(&[id]) }
    }

    /// Frees several finalized functions at once; references among them do not count, so a
    /// group of functions calling each other can go together. Adjacent code is trap-filled
    /// with one write. All or nothing: if any is refused, none is freed.
    ///
    /// # Safety
    /// As [`free_function`](Self::free_function), for every function in `ids`.
    pub unsafe fn free_functions(&mut self, ids: &[FuncId]) -> ModuleResult<()> {
        let items: Vec<FuncOrDataId> = ids.iter().map(|&f| FuncOrDataId::Func(f)).collect();
        let items = self.check_free(&items)?;
        let programs = self.take_live(&items);
        self.alloc.free_all(programs);
        Ok(())
    }

    /// Frees a finalized data object: on the heap its memory is released, in a pack it is
    /// trap-filled. The `DataId` stays declared and may be defined again. Refused while
    /// finalized code or data refers to it, as for functions.
    ///
    /// # Safety
    /// No thread may be using the data object, and no pointer to it may be used afterwards.
    pub unsafe fn free_data(&mut self, id: DataId) -> ModuleResult<()> {
        let items = [FuncOrDataId::Data(id)];
        let items = self.check_free(&items)?;
        let programs = self.take_live(&items);
        self.alloc.free_all(programs);
        Ok(())
    }

    /// Checks that every item is live, and referenced only from inside the set. Returns the
    /// set without repeats.
    fn check_free(&self, items: &[FuncOrDataId]) -> Result<Vec<FuncOrDataId>, Error> {
        let mut inside: HashMap<FuncOrDataId, u32> = HashMap::new();
        let mut unique = Vec::with_capacity(items.len());
        for &id in items {
            match self.item(id) {
                Some(Item::Live(_)) => {}
                Some(Item::Pending(_)) => return Err(Error::NotFinalized(self.item_name(id))),
                Some(Item::Declared) => return Err(Error::NotDefined(self.item_name(id))),
                None => return Err(Error::NotDefined(format!("{id:?} (never declared)"))),
            }
            if inside.insert(id, 0).is_none() {
                unique.push(id);
            }
        }
        for &id in &unique {
            if let Some(Item::Live(l)) = self.item(id) {
                for r in &l.refs {
                    if let Some(n) = inside.get_mut(r) {
                        *n += 1;
                    }
                }
            }
        }
        for &id in &unique {
            let Some(Item::Live(l)) = self.item(id) else {
                unreachable!("checked above")
            };
            let outside = l.incoming - inside[&id];
            if outside > 0 {
                return Err(Error::StillReferenced {
                    name: self.item_name(id),
                    count: outside,
                    by: self.referrers(id, &inside),
                });
            }
        }
        Ok(unique)
    }

    /// Names of (up to [`NAMED_REFERRERS`]) live items outside `skip` that reference `id`.
    fn referrers(&self, id: FuncOrDataId, skip: &HashMap<FuncOrDataId, u32>) -> String {
        let funcs = self
            .functions
            .iter()
            .map(|(i, item)| (FuncOrDataId::Func(FuncId::from_u32(i as u32)), item));
        let data = self
            .data
            .iter()
            .map(|(i, item)| (FuncOrDataId::Data(DataId::from_u32(i as u32)), item));
        let names: Vec<String> = funcs
            .chain(data)
            .filter(|(from, _)| !skip.contains_key(from))
            .filter_map(|(from, item)| match item {
                Item::Live(l) if l.refs.contains(&id) => Some(self.item_name(from)),
                _ => None,
            })
            .take(NAMED_REFERRERS + 1)
            .collect();
        let mut text = names[..names.len().min(NAMED_REFERRERS)].join(", ");
        if names.len() > NAMED_REFERRERS {
            text.push_str(", ...");
        }
        text
    }

    /// Takes the (checked) live items out of their tables, releases their references, and
    /// returns the programs to free; heap blocks are freed as they drop.
    fn take_live(&mut self, items: &[FuncOrDataId]) -> Vec<progpack::Program> {
        let mut programs = Vec::new();
        for &id in items {
            let Item::Live(Live { place, refs, .. }) = std::mem::take(self.item_mut(id)) else {
                unreachable!("checked live")
            };
            for r in refs {
                if let Item::Live(t) = self.item_mut(r) {
                    t.incoming -= 1;
                }
            }
            match place {
                LivePlace::Pack(p) => programs.push(p),
                LivePlace::Heap(block) => drop(block),
            }
        }
        programs
    }

    fn item(&self, id: FuncOrDataId) -> Option<&Item> {
        match id {
            FuncOrDataId::Func(f) => self.functions.get(f),
            FuncOrDataId::Data(d) => self.data.get(d),
        }
    }
}
