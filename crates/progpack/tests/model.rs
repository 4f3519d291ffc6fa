//! Model-based property test: random sequences of draft (aligned up to a page) / shrink /
//! finalize / batch finalize / finalize_all / drop / trim / live patch (a program's first
//! instruction there and back), and short-lived threads that load
//! programs and hand them over, on a tiny configuration (small packs, so packs come and go).
//! After
//! every step: no two live ranges overlap, every program's bytes are intact and it returns its
//! value, the counters equal the model's, and every free chunk holds only traps. At the end,
//! the process's code mappings are exactly as before.
#![cfg(target_arch = "x86_64")]

mod support;

use progpack::{Allocator, BackendChoice, Config, Draft, Program};
use proptest::prelude::*;
use support::{code_mappings, ret_imm32 as ret_imm};

#[derive(Clone, Debug)]
enum Op {
    Draft { len: usize, align_log2: u8 },
    Shrink { i: usize, keep: u8 },
    Finalize(usize),
    DropDraft(usize),
    DropProgram(usize),
    Batch { n: usize, len: usize },
    FinalizeAll,
    FreeAll(u8),
    Thread { n: usize, len: usize },
    Trim,
    Patch { i: usize, w: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (6usize..3000, 0u8..7).prop_map(|(len, align_log2)| Op::Draft { len, align_log2 }),
        1 => (6usize..3000, 7u8..13).prop_map(|(len, align_log2)| Op::Draft { len, align_log2 }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, keep)| Op::Shrink { i, keep }),
        3 => any::<usize>().prop_map(Op::Finalize),
        1 => any::<usize>().prop_map(Op::DropDraft),
        3 => any::<usize>().prop_map(Op::DropProgram),
        1 => (1usize..40, 6usize..200).prop_map(|(n, len)| Op::Batch { n, len }),
        1 => Just(Op::FinalizeAll),
        1 => (0u8..3).prop_map(Op::FreeAll),
        1 => (1usize..30, 6usize..300).prop_map(|(n, len)| Op::Thread { n, len }),
        1 => Just(Op::Trim),
        1 => (any::<usize>(), any::<u32>()).prop_map(|(i, w)| Op::Patch { i, w }),
    ]
}

/// The image of value `v`: `mov eax, v; ret`, then bytes derived from `v` (not traps).
fn image(v: u32, len: usize) -> Vec<u8> {
    let mut img = ret_imm(v).to_vec();
    img.extend((0..len - 6).map(|i| (v as usize + i) as u8 | 1));
    img.truncate(len);
    img
}

struct Model {
    drafts: Vec<(u32, Draft)>,
    programs: Vec<(u32, Program)>,
    next: u32,
}

impl Model {
    fn check(&self, alloc: &Allocator) {
        let st = alloc.stats();
        assert_eq!(st.programs, self.programs.len());
        assert_eq!(st.allocations, self.programs.len() + self.drafts.len());
        let requested: usize = self
            .programs
            .iter()
            .map(|(_, p)| p.len())
            .chain(self.drafts.iter().map(|(_, d)| d.len()))
            .sum();
        assert_eq!(st.bytes_requested, requested);
        let mut ranges: Vec<(usize, usize)> = self
            .programs
            .iter()
            .map(|(_, p)| (p.addr(), p.addr() + p.len()))
            .chain(
                self.drafts
                    .iter()
                    .map(|(_, d)| (d.exec_addr(), d.exec_addr() + d.len())),
            )
            .collect();
        ranges.sort();
        assert!(
            ranges.windows(2).all(|w| w[0].1 <= w[1].0),
            "overlap: {ranges:x?}"
        );
        for (v, p) in &self.programs {
            assert_eq!(p.bytes(), image(*v, p.len()).as_slice());
            // SAFETY: the image starts with `mov eax, v; ret`.
            assert_eq!(unsafe { p.as_fn::<extern "C" fn() -> u32>() }(), *v);
        }
        alloc.check_invariants().unwrap();
    }
}

fn run(ops: Vec<Op>, backend: BackendChoice) {
    let before = code_mappings();
    {
        let alloc = Allocator::new(
            Config::default()
                .backend(backend)
                .pack_size(64 << 10)
                .shards(1)
                .reserve_packs(1),
        )
        .unwrap();
        let mut m = Model {
            drafts: Vec::new(),
            programs: Vec::new(),
            next: 0,
        };
        for op in ops {
            match op {
                Op::Draft { len, align_log2 } => {
                    let mut d = alloc.draft(len, 1 << align_log2).unwrap();
                    assert_eq!(d.exec_addr() % (1 << align_log2), 0);
                    assert!(progpack::arch::is_all_traps(d.image()));
                    m.next += 1;
                    d.image_mut().copy_from_slice(&image(m.next, len));
                    m.drafts.push((m.next, d));
                }
                Op::Shrink { i, keep } if !m.drafts.is_empty() => {
                    let at = i % m.drafts.len();
                    let (_, d) = &mut m.drafts[at];
                    let before = d.exec_addr();
                    let new_len = (d.len() * (usize::from(keep) + 1) / 256).max(6);
                    d.shrink(new_len).unwrap();
                    assert_eq!((d.exec_addr(), d.len()), (before, new_len));
                    assert!(d.shrink(new_len + 1).is_err() && d.shrink(0).is_err());
                }
                Op::Finalize(i) if !m.drafts.is_empty() => {
                    let (v, d) = m.drafts.swap_remove(i % m.drafts.len());
                    let addr = d.exec_addr();
                    let p = d.finalize().unwrap();
                    assert_eq!(p.addr(), addr);
                    assert_eq!(p.bytes(), image(v, p.len()).as_slice());
                    m.programs.push((v, p));
                }
                Op::DropDraft(i) if !m.drafts.is_empty() => {
                    drop(m.drafts.swap_remove(i % m.drafts.len()))
                }
                Op::DropProgram(i) if !m.programs.is_empty() => {
                    drop(m.programs.swap_remove(i % m.programs.len()))
                }
                Op::Batch { n, len } => {
                    let mut b = alloc.batch();
                    let mut vals = Vec::new();
                    for _ in 0..n {
                        m.next += 1;
                        b.push(len, 1)
                            .unwrap()
                            .image
                            .copy_from_slice(&image(m.next, len));
                        vals.push(m.next);
                    }
                    m.programs
                        .extend(vals.into_iter().zip(b.finalize().unwrap()));
                }
                Op::FinalizeAll => {
                    let (vals, drafts): (Vec<u32>, Vec<Draft>) =
                        std::mem::take(&mut m.drafts).into_iter().unzip();
                    m.programs
                        .extend(vals.into_iter().zip(alloc.finalize_all(drafts).unwrap()));
                }
                Op::FreeAll(k) => {
                    // Free every third program (by position) in one call.
                    let (mut keep, mut free) = (Vec::new(), Vec::new());
                    for (i, vp) in std::mem::take(&mut m.programs).into_iter().enumerate() {
                        if i % 3 == k as usize {
                            free.push(vp.1)
                        } else {
                            keep.push(vp)
                        }
                    }
                    m.programs = keep;
                    alloc.free_all(free);
                }
                Op::Thread { n, len } => {
                    // A thread that loads, frees half, hands the rest over and exits: its run
                    // must come back, and its programs stay valid here.
                    let first = m.next + 1;
                    m.next += n as u32;
                    let a = alloc.clone();
                    let progs = std::thread::spawn(move || {
                        let mut kept = Vec::new();
                        for k in 0..n as u32 {
                            let mut d = a.draft(len, 1).unwrap();
                            d.image_mut().copy_from_slice(&image(first + k, len));
                            let p = d.finalize().unwrap();
                            if k % 2 == 0 {
                                kept.push((first + k, p));
                            }
                        }
                        kept
                    })
                    .join()
                    .unwrap();
                    m.programs.extend(progs);
                }
                Op::Trim => alloc.trim(),
                Op::Patch { i, w } if !m.programs.is_empty() => {
                    // `mov eax, v` -> `mov eax, w` -> `mov eax, v`: the program must return w in
                    // between, and be intact after (its frees then take the patched path).
                    let at = i % m.programs.len();
                    let (v, p) = &mut m.programs[at];
                    p.patch(0, &ret_imm(w)[..5]).unwrap();
                    // SAFETY: the image starts with `mov eax, w; ret`.
                    assert_eq!(unsafe { p.as_fn::<extern "C" fn() -> u32>() }(), w);
                    p.patch(0, &ret_imm(*v)[..5]).unwrap();
                }
                _ => {}
            }
            m.check(&alloc);
        }
        let st = alloc.stats();
        assert!(st.reserve_packs <= 1);
        drop(m);
        alloc.trim();
        let st = alloc.stats();
        assert_eq!(st.chunks_cached, 0, "{st:?}");
        assert_eq!(
            (
                st.programs,
                st.allocations,
                st.chunks_used,
                st.bytes_requested
            ),
            (0, 0, 0, 0)
        );
        assert!(st.packs <= 1, "only the reserve pack may stay: {st:?}");
    }
    assert_eq!(code_mappings(), before, "mappings left behind");
}

proptest! {
    // One test function, so no other test in this binary maps code while it compares maps.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model(ops in proptest::collection::vec(op(), 1..150), dual in any::<bool>()) {
        run(ops, if dual { BackendChoice::DualMap } else { BackendChoice::ProcMem });
    }
}
