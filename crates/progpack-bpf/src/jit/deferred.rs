//! Deferred placement: programs a [`Vm`](crate::Vm) loads one at a time are compiled at once,
//! but written to executable memory together.
//!
//! Where every write to executable memory costs a system call (progpack's default `procmem`
//! backend: a `pwrite` of `/proc/self/mem`, about 1 µs on the machine of BENCHMARKS.md, more
//! than the whole compile), a VM that loads programs one by one keeps an open progpack
//! [`Batch`]: each load compiles its program into a slot of that batch (its address is known,
//! so the code is linked for it) and returns. The batch is finalized, with one write per run
//! of chunks, when
//! - [`FLUSH_AT`] programs are waiting (inside the load that makes them that many),
//! - any waiting program is about to run, or its code is asked for
//!   ([`BpfProgram::jit`](crate::BpfProgram::jit)), or
//! - the VM is asked to ([`Vm::flush`](crate::Vm::flush)).
//!
//! Nothing runs before it is written: a program's code is reached only through
//! [`JitCell::get`], which writes the open batch first if the program waits in it. Until then
//! the slot's chunks hold traps, like any reserved chunk.
//!
//! Invariant (under the combiner's lock): a waiting cell ([`State::Later`]) whose `generation`
//! equals the combiner's waits in the open batch; every other such cell's `placed` is set (to
//! the program, or to `None` if writing failed, and the program then runs in the
//! interpreter). A cell for code placed at once ([`State::Now`]) holds its program.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use progpack::{Allocator, Batch};

use super::emit::RunNeeds;
use super::program::entry_memory;
use super::{fault_to_run_error, EntryFn, EnvShape, JitProgram};
use crate::error::RunError;

/// Programs that wait at most: the load that makes this many wait writes them all.
pub(crate) const FLUSH_AT: usize = 256;

/// A VM's open batch of programs waiting to be written (shared by the VM and its waiting
/// programs).
#[derive(Debug)]
pub(crate) struct Combiner {
    alloc: Allocator,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    batch: Option<Batch>,
    /// The cell of each slot of `batch`, in order (`Weak::new()` for a slot whose load failed
    /// after the slot was made).
    members: Vec<Weak<JitCell>>,
    /// Batches written so far: the open batch's number.
    generation: u64,
}

/// How a program's code was placed: now, or in a combiner's batch.
#[derive(Debug)]
pub(crate) struct JitCell {
    /// What [`runs_directly`](Self::runs_directly) compares with: the code's direct floor
    /// (see [`JitProgram::direct_floor`]) once it is written (stored after `placed`, with release
    /// ordering), `u64::MAX` (never direct) until then.
    direct_floor: AtomicU64,
    /// The code's entry point, known before the code is written (where its slot lies); called
    /// only once `direct_floor` (or `placed`) says the code is there.
    entry: EntryFn,
    state: State,
}

/// Where a cell's program is.
#[derive(Debug)]
enum State {
    /// Placed when the cell was made (no lock, no once-cell: nothing to wait for).
    Now(JitProgram),
    /// In a combiner's batch.
    Later {
        /// Set once the code is written: `Some` (runnable), or `None` if writing failed.
        placed: OnceLock<Option<JitProgram>>,
        waiting: Waiting,
    },
}

/// What a waiting program needs to become a [`JitProgram`] when its batch is written.
#[derive(Debug)]
struct Waiting {
    combiner: Arc<Combiner>,
    generation: u64,
    needs: RunNeeds,
    counted: bool,
    extra: EnvShape,
}

impl Combiner {
    /// A combiner placing into `alloc`.
    pub(crate) fn new(alloc: Allocator) -> Arc<Combiner> {
        Arc::new(Combiner {
            alloc,
            open: Mutex::new(Open::default()),
        })
    }

    /// The allocator programs are placed with.
    pub(crate) fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // Every step below keeps `Open` consistent, so a poisoned lock is still usable.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `stage` with the open batch (made if there is none): it pushes the program's slot,
    /// writes and links its code there, and returns what the program needs to run. Registers
    /// the program, and writes the batch if it is full.
    pub(crate) fn add<E>(
        self: &Arc<Self>,
        stage: impl FnOnce(&mut Batch) -> Result<(RunNeeds, EnvShape, EntryFn), E>,
        counted: bool,
    ) -> Result<Arc<JitCell>, E> {
        let mut open = self.lock();
        let batch = open.batch.get_or_insert_with(|| self.alloc.batch());
        let before = batch.len();
        let staged = stage(batch);
        let pushed = batch.len() > before;
        let (needs, extra, entry) = match staged {
            Ok(r) => r,
            Err(e) => {
                if pushed {
                    // The slot exists (its load failed after): nobody will run it.
                    open.members.push(Weak::new());
                }
                return Err(e);
            }
        };
        let cell = Arc::new(JitCell {
            direct_floor: AtomicU64::new(u64::MAX),
            entry,
            state: State::Later {
                placed: OnceLock::new(),
                waiting: Waiting {
                    combiner: Arc::clone(self),
                    generation: open.generation,
                    needs,
                    counted,
                    extra,
                },
            },
        });
        open.members.push(Arc::downgrade(&cell));
        if open.members.len() >= FLUSH_AT {
            Self::write(&mut open);
        }
        Ok(cell)
    }

    /// Writes every waiting program now.
    pub(crate) fn flush(&self) {
        Self::write(&mut self.lock());
    }

    /// Finalizes the open batch (if any: one write per run of chunks) and hands each waiting
    /// program its code.
    fn write(open: &mut Open) {
        let Some(batch) = open.batch.take() else {
            return;
        };
        let members = std::mem::take(&mut open.members);
        open.generation += 1;
        match batch.finalize() {
            Ok(programs) => {
                for (member, prog) in members.iter().zip(programs) {
                    // A program dropped while waiting: its code is freed right away.
                    let Some(cell) = member.upgrade() else {
                        continue;
                    };
                    if let State::Later { placed, waiting: w } = &cell.state {
                        let jit = JitProgram::from_program(prog, w.needs, w.counted, w.extra);
                        debug_assert_eq!(jit.entry() as usize, cell.entry as usize);
                        let floor = jit.direct_floor();
                        let _ = placed.set(Some(jit));
                        cell.direct_floor.store(floor, Ordering::Release);
                    }
                }
            }
            Err(_) => {
                // Nothing of the batch was made executable (its chunks are trap-filled and
                // freed): its programs run in the interpreter.
                for cell in members.iter().filter_map(Weak::upgrade) {
                    if let State::Later { placed, .. } = &cell.state {
                        let _ = placed.set(None);
                    }
                }
            }
        }
    }
}

impl JitCell {
    /// A cell for code placed already.
    pub(crate) fn placed(jit: JitProgram) -> JitCell {
        JitCell {
            direct_floor: AtomicU64::new(jit.direct_floor()),
            entry: jit.entry(),
            state: State::Now(jit),
        }
    }

    /// Whether a run with `limit` is one call of the code: written, no environment needed,
    /// and a limit the code can honour. One load and one compare, as `limit + 1 > floor`
    /// (never for `u64::MAX`; a limit of `u64::MAX` wraps to 0 and takes the other path, which
    /// is as exact, only not direct): a program that still waits takes the other path, which writes it.
    #[inline(always)]
    pub(crate) fn runs_directly(&self, limit: u64) -> bool {
        limit.wrapping_add(1) > self.direct_floor.load(Ordering::Acquire)
    }

    /// One call of the code, for runs where [`runs_directly`](Self::runs_directly) held.
    #[inline(always)]
    pub(crate) fn run_direct(&self, mem: &mut [u8], limit: u64) -> Result<u64, RunError> {
        debug_assert!(self.runs_directly(limit));
        let (r1, len) = entry_memory(mem);
        // The acquire load in `runs_directly` saw the floor stored after the code was written
        // (or at the cell's making, for code placed at once), so the code is there.
        match (self.entry)(r1, len, limit, 0, std::ptr::null_mut()).result() {
            Ok(v) => Ok(v),
            Err(f) => Err(fault_to_run_error(f, limit)),
        }
    }

    /// The program's code, written first if it is still waiting; `None` if writing it failed
    /// (the program then runs in the interpreter).
    #[inline(always)]
    pub(crate) fn get(&self) -> Option<&JitProgram> {
        match &self.state {
            State::Now(jit) => Some(jit),
            State::Later { placed, .. } => match placed.get() {
                Some(p) => p.as_ref(),
                None => self.write_now(),
            },
        }
    }

    /// Writes the batch this program waits in.
    #[cold]
    #[inline(never)]
    fn write_now(&self) -> Option<&JitProgram> {
        let State::Later { placed, waiting: w } = &self.state else {
            return None;
        };
        let mut open = w.combiner.lock();
        if open.generation == w.generation {
            Combiner::write(&mut open);
        }
        drop(open);
        // Set by the write above or an earlier one (module invariants).
        placed.get().and_then(Option::as_ref)
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Combiner>();
    assert_send_sync::<JitCell>();
};
