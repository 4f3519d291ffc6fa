//! The [`Module`] trait: declaring, and defining into a pending draft or batch.
//!
//! Defining compiles (the size is known only then), reserves room for the bytes in a pack (so
//! the item's final address is known at once), copies the bytes into a writable image that is
//! never executable, and records the relocations after checking their kind and that their
//! field lies inside the item. The first item defined after a finalize gets a progpack
//! [`Draft`](progpack::Draft) of its own, the following ones slots in a
//! [`Batch`](progpack::Batch): a finalize of one function costs a draft (about 550
//! instructions in progpack, against 5,400 for a batch of one), a finalize of many one write
//! per pack plus one. Nothing is executable or relocated until
//! [`finalize_definitions`](crate::ProgpackModule::finalize_definitions).
//!
//! Two differences from the trait's defaults, both about which references are colocated
//! (`call rel32` or rip-relative, instead of an absolute address):
//! - [`Module::declare_data_in_func`] marks data objects that live on the heap (writable ones,
//!   and read-only ones when packing them is off) non-colocated, so code reaches them through
//!   an absolute address (`Abs8`) however far they are from the code. Read-only data in packs
//!   stays colocated;
//! - imported functions and data whose host symbol is within `rel32` reach of the whole code
//!   range (a function of this binary, with the default code range) are colocated, so calls
//!   into the host are `call rel32` instead of `movabs` + `call reg`. Imports elsewhere (shared
//!   libraries such as libc) stay absolute.

use crate::error::Error;
use crate::heap::HeapBlock;
use crate::module::ProgpackModule;
use crate::reloc;
use crate::state::{Item, Pending, PendingPlace};
use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{self, ExternalName};
use cranelift_codegen::isa::TargetIsa;
use cranelift_codegen::{Context, FinalizedMachReloc, FinalizedRelocTarget};
use cranelift_module::{
    DataDeclaration, DataDescription, DataId, FuncId, FuncOrDataId, Init, Linkage, Module,
    ModuleDeclarations, ModuleError, ModuleReloc, ModuleRelocTarget, ModuleResult,
};

/// How far a colocated reference reaches: x86-64 `call rel32` and rip-relative addressing
/// ±2 GiB; aarch64 `bl` ±128 MiB (its `adrp` reaches further, the call is the limit).
pub(crate) const COLOCATED_REACH: usize = if cfg!(target_arch = "aarch64") {
    128 << 20
} else {
    1 << 31
};

/// Alignment of writable data objects that ask for none (as `cranelift-jit`).
const WRITABLE_DATA_ALIGNMENT: u64 = 8;
/// Alignment of read-only data objects that ask for none (as `cranelift-jit`).
const READONLY_DATA_ALIGNMENT: u64 = 1;

impl Module for ProgpackModule {
    fn isa(&self) -> &dyn TargetIsa {
        &*self.isa
    }

    fn declarations(&self) -> &ModuleDeclarations {
        &self.declarations
    }

    fn declare_function(
        &mut self,
        name: &str,
        linkage: Linkage,
        signature: &ir::Signature,
    ) -> ModuleResult<FuncId> {
        let (id, _) = self
            .declarations
            .declare_function(name, linkage, signature)?;
        self.functions.declare(id);
        Ok(id)
    }

    fn declare_anonymous_function(&mut self, signature: &ir::Signature) -> ModuleResult<FuncId> {
        let id = self.declarations.declare_anonymous_function(signature)?;
        self.functions.declare(id);
        Ok(id)
    }

    fn declare_data(
        &mut self,
        name: &str,
        linkage: Linkage,
        writable: bool,
        tls: bool,
    ) -> ModuleResult<DataId> {
        if tls {
            return Err(Error::ThreadLocal(name.to_owned()).into());
        }
        let (id, _) = self
            .declarations
            .declare_data(name, linkage, writable, tls)?;
        self.data.declare(id);
        Ok(id)
    }

    fn declare_anonymous_data(&mut self, writable: bool, tls: bool) -> ModuleResult<DataId> {
        if tls {
            return Err(Error::ThreadLocal("(anonymous)".to_owned()).into());
        }
        let id = self.declarations.declare_anonymous_data(writable, tls)?;
        self.data.declare(id);
        Ok(id)
    }

    fn declare_func_in_func(&mut self, func_id: FuncId, func: &mut ir::Function) -> ir::FuncRef {
        let decl = self.declarations.get_function_decl(func_id);
        let colocated =
            decl.linkage.is_final() || self.host_within_reach(decl.linkage, decl.name.as_deref());
        let signature = func.import_signature(decl.signature.clone());
        let user_name_ref = func.declare_imported_user_function(ir::UserExternalName {
            namespace: 0,
            index: func_id.as_u32(),
        });
        func.import_function(ir::ExtFuncData {
            name: ExternalName::user(user_name_ref),
            signature,
            colocated,
        })
    }

    fn declare_data_in_func(&self, data: DataId, func: &mut ir::Function) -> ir::GlobalValue {
        let decl = self.declarations.get_data_decl(data);
        let colocated = (decl.linkage.is_final() && self.data_in_packs(decl))
            || self.host_within_reach(decl.linkage, decl.name.as_deref());
        let user_name_ref = func.declare_imported_user_function(ir::UserExternalName {
            namespace: 1,
            index: data.as_u32(),
        });
        func.create_global_value(ir::GlobalValueData::Symbol {
            name: ExternalName::user(user_name_ref),
            offset: ir::immediates::Imm64::new(0),
            colocated,
            tls: decl.tls,
        })
    }

    fn define_function_with_control_plane(
        &mut self,
        id: FuncId,
        ctx: &mut Context,
        ctrl_plane: &mut ControlPlane,
    ) -> ModuleResult<()> {
        let item = FuncOrDataId::Func(id);
        self.definable(item)?;
        let buffer_alignment = ctx.compile(&*self.isa, ctrl_plane)?.buffer.alignment;
        let compiled = ctx
            .compiled_code()
            .expect("Context::compile succeeded, so the code is there");
        let relocs = compiled
            .buffer
            .relocs()
            .iter()
            .map(|r| module_reloc(r, &ctx.func, id, &|| self.item_name(item)))
            .collect::<Result<Vec<_>, _>>()?;
        let align = self.code_alignment(u64::from(buffer_alignment), item)?;
        let code = compiled.code_buffer();
        self.define_pending(item, code, align, relocs, true)
    }

    fn define_function_bytes(
        &mut self,
        id: FuncId,
        alignment: u64,
        bytes: &[u8],
        relocs: &[ModuleReloc],
    ) -> ModuleResult<()> {
        let item = FuncOrDataId::Func(id);
        self.definable(item)?;
        let align = self.code_alignment(alignment, item)?;
        self.define_pending(item, bytes, align, relocs.to_vec(), true)
    }

    fn define_data(&mut self, id: DataId, data: &DataDescription) -> ModuleResult<()> {
        let item = FuncOrDataId::Data(id);
        self.definable(item)?;
        let decl = self.declarations.get_data_decl(id);
        let in_packs = self.data_in_packs(decl);
        let default_align = if decl.writable {
            WRITABLE_DATA_ALIGNMENT
        } else {
            READONLY_DATA_ALIGNMENT
        };
        let align = data.align.unwrap_or(default_align);
        let align = checked_align(align, &|| self.item_name(item))?;
        let zeros;
        let contents: &[u8] = match &data.init {
            Init::Uninitialized => return Err(Error::Uninitialized(self.item_name(item)).into()),
            Init::Zeros { size } => {
                zeros = vec![0; *size];
                &zeros
            }
            Init::Bytes { contents } => contents,
        };
        let pointer_reloc = match self.isa.pointer_bytes() {
            4 => Reloc::Abs4,
            _ => Reloc::Abs8,
        };
        let relocs = data.all_relocs(pointer_reloc).collect();
        self.define_pending(item, contents, align, relocs, in_packs)
    }
}

impl ProgpackModule {
    /// True if the data object goes into packs (read-only, packing on), else it goes on the
    /// heap.
    pub(crate) fn data_in_packs(&self, decl: &DataDeclaration) -> bool {
        !decl.writable && !decl.tls && self.rodata_in_packs
    }

    /// True if `name` is an import that resolves now to a host address every byte of the code
    /// range reaches with a 32-bit displacement, so that it can be called or addressed
    /// colocated (`call rel32`, rip-relative). The range is fixed for the allocator's life, and
    /// host symbols do not move, so what is checked here holds for code placed later.
    fn host_within_reach(&self, linkage: Linkage, name: Option<&str>) -> bool {
        /// Kept free below the limit for addends (offsets into a symbol).
        const SLACK: usize = 1 << 20;
        const REACH: usize = COLOCATED_REACH - SLACK;
        let (Some(name), Some((base, size))) = (name, self.alloc.code_range()) else {
            return false;
        };
        if linkage != Linkage::Import || !self.colocate_host_symbols {
            return false;
        }
        self.symbols
            .find(name)
            .is_some_and(|addr| addr.abs_diff(base) < REACH && addr.abs_diff(base + size) < REACH)
    }

    /// Checks that `id` may be defined now.
    fn definable(&self, id: FuncOrDataId) -> ModuleResult<()> {
        let (linkage, item) = match id {
            FuncOrDataId::Func(f) => (
                self.declarations.get_function_decl(f).linkage,
                self.functions.get(f),
            ),
            FuncOrDataId::Data(d) => (self.declarations.get_data_decl(d).linkage, self.data.get(d)),
        };
        if !linkage.is_definable() {
            return Err(ModuleError::InvalidImportDefinition(self.item_name(id)));
        }
        match item {
            Some(Item::Declared) => Ok(()),
            Some(_) => Err(ModuleError::DuplicateDefinition(self.item_name(id))),
            None => Err(ModuleError::Undeclared(self.item_name(id))),
        }
    }

    /// The alignment code is placed at: what the code asks for (0 or a power of two), at least
    /// the ISA's minimum function alignment and symbol alignment (as `cranelift-jit`).
    fn code_alignment(&self, asked: u64, id: FuncOrDataId) -> Result<usize, Error> {
        let name = || self.item_name(id);
        if asked > 1 {
            checked_align(asked, &name)?;
        }
        let align = asked
            .max(u64::from(self.isa.function_alignment().minimum))
            .max(self.isa.symbol_alignment());
        checked_align(align, &name)
    }

    /// Records a defined item: checks its relocations, copies its bytes into a batch slot (or a
    /// heap block when `in_packs` is false), and lists it as pending.
    fn define_pending(
        &mut self,
        id: FuncOrDataId,
        bytes: &[u8],
        align: usize,
        relocs: Vec<ModuleReloc>,
        in_packs: bool,
    ) -> ModuleResult<()> {
        check_relocs(&relocs, bytes.len(), &|| self.item_name(id))?;
        let (place, addr) = if in_packs {
            self.reserve_in_pack(bytes, align)?
        } else {
            let mut block = HeapBlock::zeroed(bytes.len(), align)
                .ok_or_else(|| Error::Progpack(progpack::Error::OutOfMemory(bytes.len().max(1))))?;
            block.bytes_mut().copy_from_slice(bytes);
            let addr = block.addr();
            (PendingPlace::Heap(block), addr)
        };
        let mut place = place;
        if in_packs && self.alloc.announces() {
            self.name_in_pack(id, &mut place)?;
        }
        if let PendingPlace::Draft { .. } = place {
            self.draft_item = Some(id);
        }
        *self.item_mut(id) = Item::Pending(Pending {
            place,
            addr,
            len: bytes.len(),
            relocs,
        });
        self.pending.push(id);
        Ok(())
    }

    /// Gives progpack the item's symbol name (its linkage name; anonymous items get
    /// Cranelift's `.L` names), for the perf map, the jitdump, gdb and `program_at`.
    fn name_in_pack(&mut self, id: FuncOrDataId, place: &mut PendingPlace) -> Result<(), Error> {
        let name = self.item_name(id);
        match place {
            PendingPlace::Draft {
                draft: Some(draft), ..
            } => draft.set_name(&name)?,
            PendingPlace::Batch { index, .. } => self
                .batch
                .as_mut()
                .expect("pack items have a batch slot")
                .set_name(*index, &name)?,
            PendingPlace::Draft { draft: None, .. } | PendingPlace::Heap(_) => {}
        }
        Ok(())
    }

    /// Reserves room for `bytes` at `align` in a pack and copies them in: a draft for the first
    /// such item since the last finalize, a batch slot for the others (see [`PendingPlace`]).
    /// progpack aligns up to the page size (at least 4 KiB everywhere); a larger alignment is
    /// met by reserving `align - chunk` more bytes and starting the item that far in. Empty
    /// items still take one byte, so that every item has an address of its own.
    fn reserve_in_pack(
        &mut self,
        bytes: &[u8],
        align: usize,
    ) -> Result<(PendingPlace, usize), Error> {
        /// An alignment every progpack allocator accepts (its limit is the page size).
        const ALWAYS_ACCEPTED: usize = 4096;
        let chunk = self.alloc.config().get_chunk_size();
        let len = bytes.len().max(1);
        let (slot_len, slot_align) = if align <= ALWAYS_ACCEPTED.max(chunk) {
            (len, align)
        } else {
            let extra = align - chunk;
            let slot_len = len
                .checked_add(extra)
                .ok_or(progpack::Error::OutOfMemory(usize::MAX))?;
            (slot_len, chunk)
        };
        if self.draft_item.is_none() {
            let mut draft = self.alloc.draft(slot_len, slot_align)?;
            let at = draft.exec_addr();
            let pad = at.next_multiple_of(align) - at;
            draft.image_mut()[pad..pad + bytes.len()].copy_from_slice(bytes);
            let place = PendingPlace::Draft {
                draft: Some(draft),
                pad,
            };
            return Ok((place, at + pad));
        }
        let batch = self.batch.get_or_insert_with(|| self.alloc.batch());
        let slot = batch.push(slot_len, slot_align)?;
        let pad = slot.exec_addr.next_multiple_of(align) - slot.exec_addr;
        slot.image[pad..pad + bytes.len()].copy_from_slice(bytes);
        let place = PendingPlace::Batch {
            index: slot.index,
            pad,
        };
        Ok((place, slot.exec_addr + pad))
    }
}

/// `align` as a `usize` power of two, or [`Error::BadAlignment`].
fn checked_align(align: u64, name: &dyn Fn() -> String) -> Result<usize, Error> {
    usize::try_from(align)
        .ok()
        .filter(|a| a.is_power_of_two())
        .ok_or_else(|| Error::BadAlignment {
            item: name(),
            align,
        })
}

/// Checks that every relocation is of a kind this module applies and that its field lies
/// inside the item's `len` bytes.
fn check_relocs(
    relocs: &[ModuleReloc],
    len: usize,
    name: &dyn Fn() -> String,
) -> Result<(), Error> {
    for r in relocs {
        let width = reloc::width(r.kind).ok_or_else(|| Error::UnsupportedReloc {
            item: name(),
            kind: r.kind,
            offset: r.offset,
        })?;
        if (r.offset as usize).saturating_add(width) > len {
            return Err(Error::RelocOutOfBounds {
                item: name(),
                kind: r.kind,
                offset: r.offset,
                len,
            });
        }
        if let ModuleRelocTarget::KnownSymbol(_) = r.name {
            return Err(Error::UnsupportedTarget {
                item: name(),
                target: r.name.to_string(),
            });
        }
    }
    Ok(())
}

/// `ModuleReloc::from_mach_reloc`, with an error instead of a panic for test-case names (which
/// only `.clif` test files produce).
fn module_reloc(
    r: &FinalizedMachReloc,
    func: &ir::Function,
    id: FuncId,
    name: &dyn Fn() -> String,
) -> Result<ModuleReloc, Error> {
    if let FinalizedRelocTarget::ExternalName(ExternalName::TestCase(tc)) = &r.target {
        return Err(Error::UnsupportedTarget {
            item: name(),
            target: format!("%{tc}"),
        });
    }
    Ok(ModuleReloc::from_mach_reloc(r, func, id))
}
