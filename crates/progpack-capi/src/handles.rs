//! The table of live handles: what C holds is an id, never a pointer to Rust memory.
//!
//! A handle's value is `TAG | serial << 3 | kind`. Serials count up from 1 and are never
//! reused, so a handle that was freed can never name a newer object: a double free or a use
//! after free finds no entry and is reported as [`Status::StaleHandle`]; a value without the
//! tag, with another kind, or with a serial never issued is [`Status::BadHandle`]. Nothing a
//! C caller passes is ever dereferenced as a handle.
//!
//! Invariants:
//! - `objects` holds exactly the live handles; `by_addr` maps the image address and the
//!   execution address of every live draft, and the address of every live program, to its
//!   handle, and nothing else;
//! - the table lock is held only for map operations, never across a system call: objects
//!   whose operations may call the system (drafts, batches) sit behind their own lock, and a
//!   consuming operation (finalize, free, abandon) removes its entry before it runs.

use crate::status::{CResult, Failure, Status};
use progpack::{Allocator, Batch, Draft, Program};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// What a handle names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Allocator = 1,
    Draft = 2,
    Program = 3,
    Batch = 4,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Allocator => "allocator",
            Kind::Draft => "draft",
            Kind::Program => "program",
            Kind::Batch => "batch",
        }
    }

    fn from_bits(bits: u64) -> Option<Kind> {
        [Kind::Allocator, Kind::Draft, Kind::Program, Kind::Batch]
            .into_iter()
            .find(|k| *k as u64 == bits)
    }
}

/// High bits every handle carries ("pp"); user-space addresses never have them.
const TAG: u64 = 0x7070 << 48;
const TAG_MASK: u64 = 0xffff << 48;
const KIND_MASK: u64 = 0b111;
const SERIAL_LIMIT: u64 = 1 << 45;

/// An object some operations take out for a while: consuming it leaves `None` behind for
/// anyone who looked it up just before.
pub(crate) type Shared<T> = Arc<Mutex<Option<T>>>;

/// Locks a shared object, ignoring poisoning (a panic was already reported as a status).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live object and what the table needs to know about it.
pub(crate) enum Object {
    /// An allocator; `shared` is the process-wide one, which cannot be freed.
    Allocator { alloc: Allocator, shared: bool },
    /// A draft and its two addresses (its image on the heap, where it will run).
    Draft {
        draft: Shared<Draft>,
        image: usize,
        exec: usize,
    },
    /// A finalized program.
    Program(Program),
    /// A batch being filled.
    Batch(Shared<Batch>),
}

impl Object {
    fn kind(&self) -> Kind {
        match self {
            Object::Allocator { .. } => Kind::Allocator,
            Object::Draft { .. } => Kind::Draft,
            Object::Program(_) => Kind::Program,
            Object::Batch(_) => Kind::Batch,
        }
    }

    /// Addresses under which the object can be found.
    fn addrs(&self) -> [Option<usize>; 2] {
        match self {
            Object::Draft { image, exec, .. } => [Some(*image), Some(*exec)],
            Object::Program(p) => [Some(p.addr()), None],
            _ => [None, None],
        }
    }
}

/// The live handles.
#[derive(Default)]
pub(crate) struct Table {
    objects: HashMap<u64, Object>,
    by_addr: HashMap<usize, u64>,
    next_serial: u64,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        next_serial: 1,
        ..Table::default()
    })
});

/// The table, locked. Keep the guard only for map operations.
pub(crate) fn table() -> MutexGuard<'static, Table> {
    lock(&TABLE)
}

impl Table {
    /// Registers an object and returns its new handle.
    pub(crate) fn insert(&mut self, object: Object) -> CResult<u64> {
        if self.next_serial >= SERIAL_LIMIT {
            return Err(Failure::new(Status::Internal, "handle serials exhausted"));
        }
        let id = TAG | self.next_serial << 3 | object.kind() as u64;
        self.next_serial += 1;
        for addr in object.addrs().into_iter().flatten() {
            self.by_addr.insert(addr, id);
        }
        self.objects.insert(id, object);
        Ok(id)
    }

    /// Checks that `id` names a live object of `kind`, saying precisely what is wrong if not.
    fn check(&self, id: u64, kind: Kind) -> CResult<()> {
        let what = kind.name();
        if id == 0 {
            return Err(Failure::new(Status::Null, format!("NULL {what} handle")));
        }
        let serial = (id & !TAG_MASK) >> 3;
        if id & TAG_MASK != TAG || serial == 0 || serial >= self.next_serial {
            return Err(Failure::new(
                Status::BadHandle,
                format!("{id:#x} is not a handle made by progpack (expected a {what} handle)"),
            ));
        }
        match Kind::from_bits(id & KIND_MASK) {
            Some(k) if k == kind => {}
            Some(k) => {
                return Err(Failure::new(
                    Status::BadHandle,
                    format!("{id:#x} is a {} handle, not a {what} handle", k.name()),
                ))
            }
            None => {
                return Err(Failure::new(
                    Status::BadHandle,
                    format!("{id:#x} is not a handle made by progpack"),
                ))
            }
        }
        if !self.objects.contains_key(&id) {
            let gone = match kind {
                Kind::Allocator => "already freed",
                Kind::Draft => "already finalized or abandoned",
                Kind::Program => "already freed",
                Kind::Batch => "already finalized or abandoned",
            };
            return Err(Failure::new(
                Status::StaleHandle,
                format!("{what} handle {id:#x} is {gone}"),
            ));
        }
        Ok(())
    }

    /// The live object `id` names, if it is of `kind`.
    pub(crate) fn get(&self, id: u64, kind: Kind) -> CResult<&Object> {
        self.check(id, kind)?;
        Ok(&self.objects[&id])
    }

    /// Takes the live object `id` names out of the table (it is consumed).
    pub(crate) fn remove(&mut self, id: u64, kind: Kind) -> CResult<Object> {
        self.check(id, kind)?;
        let object = self
            .objects
            .remove(&id)
            .ok_or_else(|| Failure::new(Status::Internal, "checked handle vanished"))?;
        for addr in object.addrs().into_iter().flatten() {
            if self.by_addr.get(&addr) == Some(&id) {
                self.by_addr.remove(&addr);
            }
        }
        Ok(object)
    }

    /// The live handle of `kind` found at `addr` (see [`Object::addrs`]).
    pub(crate) fn find(&self, addr: usize, kind: Kind) -> CResult<u64> {
        match self.by_addr.get(&addr) {
            Some(&id) if id & KIND_MASK == kind as u64 => Ok(id),
            _ => Err(Failure::new(
                Status::NotFound,
                format!("no live {} at {addr:#x}", kind.name()),
            )),
        }
    }

    /// The allocator handle `id`, cloned out of the table.
    pub(crate) fn allocator(&self, id: u64) -> CResult<Allocator> {
        match self.get(id, Kind::Allocator)? {
            Object::Allocator { alloc, .. } => Ok(alloc.clone()),
            _ => Err(Failure::new(Status::Internal, "kind mismatch")),
        }
    }

    /// The batch handle `id`, shared out of the table.
    pub(crate) fn batch(&self, id: u64) -> CResult<Shared<Batch>> {
        match self.get(id, Kind::Batch)? {
            Object::Batch(b) => Ok(b.clone()),
            _ => Err(Failure::new(Status::Internal, "kind mismatch")),
        }
    }

    /// The program handle `id`.
    pub(crate) fn program(&self, id: u64) -> CResult<&Program> {
        match self.get(id, Kind::Program)? {
            Object::Program(p) => Ok(p),
            _ => Err(Failure::new(Status::Internal, "kind mismatch")),
        }
    }
}

/// Takes a shared object out of its lock: `StaleHandle` if someone consumed it first.
pub(crate) fn take<T>(shared: &Shared<T>, what: &str) -> CResult<T> {
    lock(shared)
        .take()
        .ok_or_else(|| Failure::new(Status::StaleHandle, format!("{what} was consumed")))
}

/// Converts a C handle pointer into its id.
pub(crate) fn id<T>(handle: *mut T) -> u64 {
    handle as usize as u64
}

/// Converts an id into the C handle pointer that carries it (never dereferenced).
pub(crate) fn handle<T>(id: u64) -> *mut T {
    std::ptr::without_provenance_mut(id as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_checks_name_the_problem() {
        let alloc = Allocator::new(progpack::Config::default()).unwrap();
        let mut t = Table {
            next_serial: 1,
            ..Table::default()
        };
        let a = t
            .insert(Object::Allocator {
                alloc,
                shared: false,
            })
            .unwrap();
        assert!(t.get(a, Kind::Allocator).is_ok());
        assert_eq!(
            t.get(0, Kind::Allocator).err().unwrap().status,
            Status::Null
        );
        let wrong = t.get(a, Kind::Draft).err().unwrap();
        assert_eq!(wrong.status, Status::BadHandle);
        assert!(wrong.message.contains("allocator handle, not a draft"));
        let foreign = 0x7fff_1234_5678;
        assert_eq!(
            t.get(foreign, Kind::Allocator).err().unwrap().status,
            Status::BadHandle
        );
        let unissued = TAG | 99 << 3 | Kind::Allocator as u64;
        assert_eq!(
            t.get(unissued, Kind::Allocator).err().unwrap().status,
            Status::BadHandle
        );
        t.remove(a, Kind::Allocator).unwrap();
        assert_eq!(
            t.remove(a, Kind::Allocator).err().unwrap().status,
            Status::StaleHandle
        );
        let b = t
            .insert(Object::Allocator {
                alloc: Allocator::new(progpack::Config::default()).unwrap(),
                shared: false,
            })
            .unwrap();
        assert_ne!(a, b, "serials are never reused");
    }
}
