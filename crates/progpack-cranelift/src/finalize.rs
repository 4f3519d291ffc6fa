//! `finalize_definitions`: resolve every pending relocation, patch the writable images, place
//! everything with one batched write, and count who references whom.
//!
//! In three steps, so that a failure changes nothing it should not:
//! 1. resolve: every relocation of every pending item is turned into the bytes of its field
//!    (symbols looked up, ranges checked). Nothing is written; an unresolved symbol or a target
//!    out of range returns an error and leaves every item pending, so the caller can define
//!    what was missing and finalize again;
//! 2. patch: the fields are written into the batch's images (never executable) and the heap
//!    blocks;
//! 3. place: [`Batch::finalize`](progpack::Batch::finalize) copies the whole batch into the
//!    packs, one backend write per contiguous run (usually one per pack), and the draft of the
//!    first item defined is finalized with one more write. If a write fails, the pending
//!    items are lost (their chunks are trap-filled and freed) and are `Declared` again.
//!
//! Then each item's references to other module items are counted on the target, so that a
//! function still called by finalized code cannot be freed.

use crate::error::Error;
use crate::module::ProgpackModule;
use crate::reloc::{self, Field, Refusal};
use crate::state::{Item, Live, LivePlace, Pending, PendingPlace};
use cranelift_module::{DataId, FuncId, FuncOrDataId, Linkage, ModuleRelocTarget, ModuleResult};

/// A relocation target's address, and which module item it is (if it is one).
struct Resolved {
    addr: usize,
    item: Option<FuncOrDataId>,
}

/// What placing the pending pack items produced.
struct Placed {
    /// The draft item's program.
    draft: Option<progpack::Program>,
    /// The batch items' programs, in slot order.
    batch: Vec<progpack::Program>,
}

/// The resolved relocations of one pending item.
struct Patches {
    fields: Vec<(usize, Field)>,
    refs: Vec<FuncOrDataId>,
}

impl ProgpackModule {
    /// Finalizes every function and data object defined since the last call: applies their
    /// relocations against the addresses they will run at, places them with one batched write,
    /// and makes them callable (as `JITModule::finalize_definitions`).
    ///
    /// Errors (nothing changes; the items stay pending): a symbol that does not resolve, a
    /// target out of a relocation's reach. Error after which the pending items are discarded:
    /// the allocator's backend failing to write.
    pub fn finalize_definitions(&mut self) -> ModuleResult<()> {
        let pending = std::mem::take(&mut self.pending);
        let resolved = pending.iter().map(|&id| self.resolve_item(id)).collect();
        let patches: Vec<Patches> = match resolved {
            Ok(p) => p,
            Err(e) => {
                self.pending = pending;
                return Err(Error::into(e));
            }
        };
        self.patch(&pending, &patches);
        let placed = match self.place() {
            Ok(placed) => placed,
            Err(e) => {
                self.pending = pending;
                self.discard_pending();
                return Err(e.into());
            }
        };
        let targets = self.go_live(&pending, patches, placed);
        for target in targets {
            if let Item::Live(t) = self.item_mut(target) {
                t.incoming += 1;
            }
        }
        Ok(())
    }

    /// Places the draft and the batch (one write each per contiguous run). All or nothing: if
    /// either write fails, whatever was placed is freed again.
    fn place(&mut self) -> Result<Placed, Error> {
        let draft = self.take_draft();
        let batch = match self.batch.take().map(progpack::Batch::finalize) {
            None => Vec::new(),
            Some(Ok(programs)) => programs,
            Some(Err(e)) => return Err(e.into()), // `draft` drops: its chunks are freed
        };
        let draft = match draft.map(progpack::Draft::finalize) {
            None => None,
            Some(Ok(program)) => Some(program),
            Some(Err(e)) => {
                self.alloc.free_all(batch);
                return Err(e.into());
            }
        };
        Ok(Placed { draft, batch })
    }

    /// Takes the draft out of the pending item that holds it.
    fn take_draft(&mut self) -> Option<progpack::Draft> {
        let id = self.draft_item.take()?;
        match self.item_mut(id) {
            Item::Pending(Pending {
                place: PendingPlace::Draft { draft, .. },
                ..
            }) => draft.take(),
            _ => None,
        }
    }

    /// Turns the placed pending items into live ones; returns the targets of their references
    /// (once per relocation), to be counted once every item is live.
    fn go_live(
        &mut self,
        pending: &[FuncOrDataId],
        patches: Vec<Patches>,
        placed: Placed,
    ) -> Vec<FuncOrDataId> {
        // Batch items were pushed in definition order, which is `pending`'s order: their slot
        // indices count up from 0, as the programs come out.
        let mut programs = placed.batch.into_iter().enumerate();
        let mut draft = placed.draft;
        let mut targets = Vec::new();
        for (&id, p) in pending.iter().zip(patches) {
            let Item::Pending(item) = std::mem::take(self.item_mut(id)) else {
                unreachable!("listed items are pending")
            };
            let place = match item.place {
                PendingPlace::Batch { index, .. } => {
                    let (slot, program) = programs.next().expect("one program per batch slot");
                    debug_assert_eq!(slot, index, "slots in definition order");
                    LivePlace::Pack(program)
                }
                PendingPlace::Draft { .. } => {
                    LivePlace::Pack(draft.take().expect("the draft item's program"))
                }
                PendingPlace::Heap(block) => LivePlace::Heap(block),
            };
            targets.extend_from_slice(&p.refs);
            *self.item_mut(id) = Item::Live(Live {
                place,
                addr: item.addr,
                len: item.len,
                refs: p.refs.into_boxed_slice(),
                incoming: 0,
            });
        }
        targets
    }

    /// Resolves every relocation of the pending item `id` into field bytes.
    fn resolve_item(&mut self, id: FuncOrDataId) -> Result<Patches, Error> {
        let (relocs, addr) = match self.item_mut(id) {
            Item::Pending(p) => (std::mem::take(&mut p.relocs), p.addr),
            _ => unreachable!("listed items are pending"),
        };
        let result = self.resolve_relocs(id, addr, &relocs);
        if let Item::Pending(p) = self.item_mut(id) {
            p.relocs = relocs;
        }
        result
    }

    fn resolve_relocs(
        &mut self,
        id: FuncOrDataId,
        addr: usize,
        relocs: &[cranelift_module::ModuleReloc],
    ) -> Result<Patches, Error> {
        let mut patches = Patches {
            fields: Vec::with_capacity(relocs.len()),
            refs: Vec::new(),
        };
        for r in relocs {
            let target = self.resolve(&r.name, id)?;
            let at = addr + r.offset as usize;
            let field = reloc::encode(r.kind, at, target.addr, r.addend).map_err(|why| {
                let item = self.item_name(id);
                match why {
                    Refusal::OutOfRange => Error::OutOfRange {
                        item,
                        kind: r.kind,
                        offset: r.offset,
                        at,
                        target: (target.addr as i64).wrapping_add(r.addend) as usize,
                    },
                    Refusal::Unsupported => Error::UnsupportedReloc {
                        item,
                        kind: r.kind,
                        offset: r.offset,
                    },
                }
            })?;
            patches.fields.push((r.offset as usize, field));
            if let Some(t) = target.item.filter(|&t| t != id) {
                patches.refs.push(t);
            }
        }
        Ok(patches)
    }

    /// The address a relocation in item `from` points at.
    fn resolve(
        &mut self,
        target: &ModuleRelocTarget,
        from: FuncOrDataId,
    ) -> Result<Resolved, Error> {
        match *target {
            ModuleRelocTarget::User {
                namespace: 0,
                index,
            } => self.resolve_item_addr(FuncOrDataId::Func(FuncId::from_u32(index)), from, target),
            ModuleRelocTarget::User {
                namespace: 1,
                index,
            } => self.resolve_item_addr(FuncOrDataId::Data(DataId::from_u32(index)), from, target),
            ModuleRelocTarget::LibCall(libcall) => {
                let symbol = (self.libcall_names)(libcall);
                let addr =
                    self.symbols
                        .lookup(&symbol)
                        .ok_or_else(|| Error::UnresolvedLibcall {
                            libcall: libcall.to_string(),
                            symbol,
                        })?;
                Ok(Resolved { addr, item: None })
            }
            ModuleRelocTarget::FunctionOffset(f, offset) => {
                let func = FuncOrDataId::Func(f);
                let base = self
                    .functions
                    .get(f)
                    .and_then(Item::addr)
                    .ok_or_else(|| self.unsupported(target, from))?;
                Ok(Resolved {
                    addr: base + offset as usize,
                    item: Some(func),
                })
            }
            ModuleRelocTarget::User { .. } | ModuleRelocTarget::KnownSymbol(_) => {
                Err(self.unsupported(target, from))
            }
        }
    }

    /// The address of module item `id`: where it is defined, else the host symbol of its name.
    fn resolve_item_addr(
        &mut self,
        id: FuncOrDataId,
        from: FuncOrDataId,
        target: &ModuleRelocTarget,
    ) -> Result<Resolved, Error> {
        let (item, linkage, name) = match id {
            FuncOrDataId::Func(f) if self.functions.contains(f) => {
                let d = self.declarations.get_function_decl(f);
                (self.functions.get(f), d.linkage, d.name.clone())
            }
            FuncOrDataId::Data(d) if self.data.contains(d) => {
                let decl = self.declarations.get_data_decl(d);
                (self.data.get(d), decl.linkage, decl.name.clone())
            }
            _ => return Err(self.unsupported(target, from)),
        };
        if let Some(addr) = item.and_then(Item::addr) {
            return Ok(Resolved {
                addr,
                item: Some(id),
            });
        }
        let Some(name) = name else {
            // An anonymous item can only be defined here.
            return Err(Error::NotDefined(self.item_name(id)));
        };
        match self.symbols.lookup(&name) {
            Some(addr) => Ok(Resolved { addr, item: None }),
            // As cranelift-jit: an undefined preemptible symbol is null.
            None if linkage == Linkage::Preemptible => Ok(Resolved {
                addr: 0,
                item: None,
            }),
            None => Err(Error::UnresolvedSymbol(name)),
        }
    }

    fn unsupported(&self, target: &ModuleRelocTarget, from: FuncOrDataId) -> Error {
        Error::UnsupportedTarget {
            item: self.item_name(from),
            target: target.to_string(),
        }
    }

    /// Writes every resolved field into its item's image (batch slot or heap block).
    fn patch(&mut self, pending: &[FuncOrDataId], patches: &[Patches]) {
        for (&id, p) in pending.iter().zip(patches) {
            if p.fields.is_empty() {
                continue;
            }
            let item = match id {
                FuncOrDataId::Func(f) => self.functions.get_mut(f),
                FuncOrDataId::Data(d) => self.data.get_mut(d),
            };
            let Some(Item::Pending(Pending { place, len, .. })) = item else {
                unreachable!("listed items are pending")
            };
            let image: &mut [u8] = match place {
                PendingPlace::Draft { draft, pad } => {
                    let image = draft.as_mut().expect("not placed yet").image_mut();
                    &mut image[*pad..*pad + *len]
                }
                PendingPlace::Batch { index, pad } => {
                    let slot = self
                        .batch
                        .as_mut()
                        .and_then(|b| b.image_mut(*index))
                        .expect("pack items have a batch slot");
                    &mut slot[*pad..*pad + *len]
                }
                PendingPlace::Heap(block) => block.bytes_mut(),
            };
            for &(offset, field) in &p.fields {
                reloc::apply(image, offset, field);
            }
        }
    }
}
