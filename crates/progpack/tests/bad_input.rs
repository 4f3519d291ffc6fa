//! Bad input gets a typed error: no panic, no leak, no other program touched.
#![cfg(target_arch = "x86_64")]

mod support;

use progpack::backend::{NotSupported, ProcMem};
use progpack::{Allocator, Backend, BackendChoice, CodeRange, Config, Error, Mapping, Placement};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::ret_imm32 as ret_imm;

type Fn0 = extern "C" fn() -> u32;

fn one(alloc: &Allocator, v: u32) -> progpack::Program {
    let mut d = alloc.draft(6, 1).unwrap();
    d.image_mut().copy_from_slice(&ret_imm(v));
    d.finalize().unwrap()
}

fn assert_untouched(alloc: &Allocator, p: &progpack::Program, v: u32) {
    assert_eq!(p.bytes(), &ret_imm(v));
    // SAFETY: `mov eax, v; ret`.
    assert_eq!(unsafe { p.as_fn::<Fn0>() }(), v);
    let st = alloc.stats();
    assert_eq!(
        (st.programs, st.allocations),
        (1, 1),
        "nothing leaked: {st:?}"
    );
    alloc.check_invariants().unwrap();
}

#[test]
fn bad_lengths_and_alignments() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let p = one(&alloc, 5);
    assert!(matches!(alloc.draft(0, 1), Err(Error::ZeroLength)));
    assert!(matches!(
        alloc.draft(usize::MAX, 1),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        alloc.draft((1 << 30) + 1, 1),
        Err(Error::TooLarge { .. })
    ));
    let page = rustix::param::page_size();
    for align in [0, 3, 48, 2 * page, 1 << 40] {
        assert!(
            matches!(alloc.draft(8, align), Err(Error::BadAlign { align: a, max }) if a == align && max == page),
            "align {align}"
        );
    }
    // Alignment up to the page size is allowed: the image starts on such a boundary.
    for align in [128, 1024, page] {
        let d = alloc.draft(100, align).expect("page-sized alignment");
        assert_eq!(d.exec_addr() % align, 0, "align {align}");
    }
    assert!(matches!(alloc.batch().push(0, 1), Err(Error::ZeroLength)));
    assert!(matches!(
        alloc.batch().push(8, 7),
        Err(Error::BadAlign { .. })
    ));
    // A length beyond the address space, with the length limit lifted: the kernel says no.
    let unlimited = Allocator::new(Config::default().max_len(usize::MAX)).unwrap();
    let e = unlimited.draft(1 << 50, 1).unwrap_err();
    assert!(e.is_out_of_memory(), "{e}");
    assert!(matches!(
        unlimited.draft(usize::MAX - 3, 1),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(unlimited.stats().allocations, 0);
    assert_untouched(&alloc, &p, 5);
}

#[test]
fn bad_configurations() {
    let bad = [
        Config::default().chunk_size(0),
        Config::default().chunk_size(100),
        Config::default().pack_size(3 << 20),
        Config::default().pack_size(1 << 12).chunk_size(1 << 13),
        Config::default().shards(0),
        Config::default().code_range(CodeRange::near(0x1000).size(1)),
    ];
    for c in bad {
        assert!(
            matches!(Allocator::new(c.clone()), Err(Error::BadConfig(_))),
            "{c:?}"
        );
    }
}

#[test]
fn a_backend_that_supports_nothing_says_so() {
    let alloc =
        Allocator::new(Config::default().backend(BackendChoice::Custom(Arc::new(NotSupported))))
            .unwrap();
    match alloc.draft(16, 1) {
        Err(Error::Unsupported {
            backend: "unsupported",
            op,
        }) => assert_eq!(op, "map executable memory"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(alloc.stats().allocations, 0);
    assert_eq!(alloc.stats().packs, 0);
}

/// Maps real packs through procmem but refuses writes while `refuse` is set.
#[derive(Debug)]
struct Refusing {
    real: ProcMem,
    refuse: Arc<AtomicBool>,
}

#[derive(Debug)]
struct RefusingMapping {
    real: Box<dyn Mapping>,
    refuse: Arc<AtomicBool>,
}

// SAFETY: delegates to procmem; refusing a write changes nothing.
unsafe impl Backend for Refusing {
    fn name(&self) -> &'static str {
        "refusing"
    }
    fn map(&self, len: usize, placement: Placement) -> progpack::Result<Box<dyn Mapping>> {
        Ok(Box::new(RefusingMapping {
            real: self.real.map(len, placement)?,
            refuse: self.refuse.clone(),
        }))
    }
}

// SAFETY: delegates to the procmem mapping.
unsafe impl Mapping for RefusingMapping {
    fn base(&self) -> usize {
        self.real.base()
    }
    fn len(&self) -> usize {
        self.real.len()
    }
    fn write(&self, offset: usize, bytes: &[u8]) -> progpack::Result<()> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(Error::Unsupported {
                backend: "refusing",
                op: "text copy",
            });
        }
        self.real.write(offset, bytes)
    }
    fn fill_traps(&self, offset: usize, len: usize) -> progpack::Result<()> {
        self.real.fill_traps(offset, len)
    }
}

#[test]
fn a_backend_that_refuses_writes_leaks_nothing() {
    let refuse = Arc::new(AtomicBool::new(false));
    let backend = Refusing {
        real: ProcMem::new().unwrap(),
        refuse: refuse.clone(),
    };
    let alloc = Allocator::new(Config::default().backend(BackendChoice::Custom(Arc::new(backend))))
        .unwrap();
    let p = one(&alloc, 77);
    refuse.store(true, Ordering::Relaxed);
    let mut d = alloc.draft(6, 1).unwrap();
    d.image_mut().copy_from_slice(&ret_imm(1));
    assert!(matches!(
        d.finalize(),
        Err(Error::Unsupported {
            backend: "refusing",
            ..
        })
    ));
    let mut b = alloc.batch();
    for _ in 0..10 {
        b.push(40, 1).unwrap();
    }
    assert!(b.finalize().is_err());
    let drafts: Vec<_> = (0..5).map(|_| alloc.draft(6, 1).unwrap()).collect();
    assert!(alloc.finalize_all(drafts).is_err());
    assert_untouched(&alloc, &p, 77);
    // And it works again once the backend does.
    refuse.store(false, Ordering::Relaxed);
    let q = one(&alloc, 78);
    // SAFETY: `mov eax, 78; ret`.
    assert_eq!(unsafe { q.as_fn::<Fn0>() }(), 78);
}

#[test]
fn unfinalized_drafts_and_batches_free_their_chunks() {
    // The kernel's CVE-2022-50168: freeing a program that was never finalized leaked its pack.
    let alloc = Allocator::new(Config::default().reserve_packs(0)).unwrap();
    for _ in 0..3 {
        let drafts: Vec<_> = (0..7000)
            .map(|i| alloc.draft(10 + i % 700, 1).unwrap())
            .collect();
        let mut b = alloc.batch();
        for _ in 0..1000 {
            b.push(100, 1).unwrap();
        }
        assert!(alloc.stats().packs >= 2);
        drop(drafts);
        drop(b);
        let st = alloc.stats();
        assert_eq!(
            (st.allocations, st.chunks_used, st.bytes_requested),
            (0, 0, 0),
            "{st:?}"
        );
        // All that is left is this thread's run (at most one word of chunks, in one pack);
        // trimming gives it back and the pack goes.
        assert!(st.packs <= 1 && st.chunks_cached <= 64, "{st:?}");
        alloc.trim();
        let st = alloc.stats();
        assert_eq!((st.packs, st.chunks_cached), (0, 0), "{st:?}");
    }
    assert!(alloc.stats().packs_released_total >= 6);
}
