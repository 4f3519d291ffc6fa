//! Real code runs: thousands of generated x86-64 functions return the right values, functions
//! call each other with `call rel32` computed against `exec_addr()`, the bytes read back
//! intact, large programs get their own mapping, and a code range lets JIT code call the host.
#![cfg(target_arch = "x86_64")]

mod support;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use progpack::{Allocator, CodeRange, Config};
use support::ret_imm;

type Fn0 = extern "C" fn() -> u32;

/// `call rel32 target; add eax, k; ret`, assembled for address `at`.
fn call_then_add(at: usize, target: usize, k: u32) -> Vec<u8> {
    let rel = target as i64 - (at as i64 + 5);
    let rel = i32::try_from(rel).expect("target within rel32 reach");
    let mut code = vec![0xe8];
    code.extend_from_slice(&rel.to_le_bytes());
    code.push(0x05);
    code.extend_from_slice(&k.to_le_bytes());
    code.push(0xc3);
    code
}

/// The first `call` in `bytes` (decoded at `ip`) and its target.
fn first_call_target(bytes: &[u8], ip: usize) -> Option<u64> {
    let mut d = Decoder::with_ip(64, bytes, ip as u64, DecoderOptions::NONE);
    d.iter()
        .find(|i| i.mnemonic() == Mnemonic::Call)
        .map(|i| i.near_branch_target())
}

#[test]
fn thousands_of_functions_return_their_values() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let n = 20_000u32;
    let mut progs = Vec::with_capacity(n as usize);
    for i in 0..n / 2 {
        let mut d = alloc.draft(6, 1).unwrap();
        d.image_mut()
            .copy_from_slice(&ret_imm(i.wrapping_mul(2_654_435_761)));
        progs.push(d.finalize().unwrap());
    }
    let mut b = alloc.batch();
    for i in n / 2..n {
        b.push(6, 1)
            .unwrap()
            .image
            .copy_from_slice(&ret_imm(i.wrapping_mul(2_654_435_761)));
    }
    progs.extend(b.finalize().unwrap());
    for (i, p) in progs.iter().enumerate() {
        let want = (i as u32).wrapping_mul(2_654_435_761);
        assert_eq!(p.bytes(), &ret_imm(want), "bytes of program {i}");
        // SAFETY: `p` holds `mov eax, want; ret`.
        assert_eq!(unsafe { p.as_fn::<Fn0>() }(), want, "program {i}");
    }
    let st = alloc.stats();
    assert_eq!(st.programs, n as usize);
    // 20k programs of 6 bytes (+16 slack) in 64-byte chunks: 1.25 MiB, one pack per shard used.
    assert!(st.packs <= 2, "{st:?}");
    // No two programs overlap.
    let mut ranges: Vec<_> = progs
        .iter()
        .map(|p| (p.addr(), p.addr() + p.len()))
        .collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
}

#[test]
fn functions_call_each_other_with_rel32() {
    let alloc = Allocator::new(Config::default()).unwrap();
    // Backward chain, one draft at a time: f0 returns 1; f_k calls f_{k-1} and adds k.
    let mut d = alloc.draft(6, 16).unwrap();
    d.image_mut().copy_from_slice(&ret_imm(1));
    let mut chain = vec![d.finalize().unwrap()];
    for k in 1..2000u32 {
        let mut d = alloc.draft(11, 16).unwrap();
        assert_eq!(d.exec_addr() % 16, 0, "alignment honoured");
        let code = call_then_add(d.exec_addr(), chain[k as usize - 1].addr(), k);
        d.image_mut().copy_from_slice(&code);
        chain.push(d.finalize().unwrap());
    }
    for k in [1usize, 10, 500, 1999] {
        let target = first_call_target(chain[k].bytes(), chain[k].addr()).unwrap();
        assert_eq!(target as usize, chain[k - 1].addr());
    }
    // SAFETY: every function of the chain is complete and calls only earlier ones.
    let top = unsafe { chain[1999].as_fn::<Fn0>() };
    assert_eq!(top(), 1 + (1..2000u32).sum::<u32>());

    // Forward chain inside one batch: every slot's address is known before any is written.
    let mut b = alloc.batch();
    let n = 1000;
    for _ in 0..n {
        b.push(11, 1).unwrap();
    }
    for i in 0..n {
        let at = b.exec_addr(i).unwrap();
        let code = if i + 1 < n {
            call_then_add(at, b.exec_addr(i + 1).unwrap(), i as u32)
        } else {
            ret_imm(7).to_vec()
        };
        b.image_mut(i).unwrap()[..code.len()].copy_from_slice(&code);
    }
    assert!(
        b.exec_addr(n).is_none() && b.image_mut(n).is_none(),
        "out-of-range slot"
    );
    let fwd = b.finalize().unwrap();
    // SAFETY: as above, forward.
    let head = unsafe { fwd[0].as_fn::<Fn0>() };
    assert_eq!(head(), 7 + (0..n as u32 - 1).sum::<u32>());
}

#[test]
fn finalize_all_coalesces_and_keeps_order() {
    let alloc = Allocator::new(Config::default().shards(1)).unwrap();
    let mut drafts: Vec<_> = (0..500u32)
        .map(|i| {
            let mut d = alloc.draft(6, 1).unwrap();
            d.image_mut().copy_from_slice(&ret_imm(i));
            d
        })
        .collect();
    drafts.reverse();
    let progs = alloc.finalize_all(drafts).unwrap();
    for (i, p) in progs.iter().enumerate() {
        // SAFETY: `mov eax, 499 - i; ret`.
        assert_eq!(unsafe { p.as_fn::<Fn0>() }(), 499 - i as u32);
    }
}

#[test]
fn programs_larger_than_a_pack_get_their_own_mapping() {
    let alloc = Allocator::new(Config::default()).unwrap();
    let len = (2 << 20) + 12345;
    let mut d = alloc.draft(len, 64).unwrap();
    let img = d.image_mut();
    img.fill(0x90); // nop sled ...
    img[len - 6..].copy_from_slice(&ret_imm(99)); // ... into mov eax, 99; ret
    let p = d.finalize().unwrap();
    assert!(p.is_dedicated());
    // SAFETY: 2 MiB of nops followed by `mov eax, 99; ret`.
    assert_eq!(unsafe { p.as_fn::<Fn0>() }(), 99);
    let st = alloc.stats();
    assert_eq!((st.dedicated_mappings, st.packs), (1, 0));
    assert!(st.dedicated_bytes >= len && st.dedicated_bytes < len + 4096 + 64);
    drop(p);
    assert_eq!(alloc.stats().dedicated_mappings, 0);
}

extern "C" fn host_triple(x: u32) -> u32 {
    x * 3
}

#[test]
fn code_range_lets_jit_code_call_the_host_with_rel32() {
    let host = host_triple as extern "C" fn(u32) -> u32 as usize;
    let alloc =
        Allocator::new(Config::default().code_range(CodeRange::near(host).size(64 << 20))).unwrap();
    let (base, size) = alloc.code_range().unwrap();
    assert!(base.abs_diff(host) < 1 << 31 && (base + size).abs_diff(host) < 1 << 31);
    let mut progs = Vec::new();
    for v in 0..100u32 {
        let mut d = alloc.draft(20, 16).unwrap();
        let at = d.exec_addr();
        // sub rsp, 8; mov edi, v; call rel32 host; add rsp, 8; ret
        let mut code = vec![0x48, 0x83, 0xec, 0x08, 0xbf];
        code.extend_from_slice(&v.to_le_bytes());
        let rel = i32::try_from(host as i64 - (at as i64 + 14)).expect("host within reach");
        code.push(0xe8);
        code.extend_from_slice(&rel.to_le_bytes());
        code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08, 0xc3]);
        d.image_mut()[..code.len()].copy_from_slice(&code);
        let p = d.finalize().unwrap();
        assert_eq!(first_call_target(p.bytes(), p.addr()), Some(host as u64));
        progs.push((v, p));
    }
    for (v, p) in &progs {
        // SAFETY: the code above calls host_triple(v) with an aligned stack and returns it.
        assert_eq!(unsafe { p.as_fn::<Fn0>() }(), v * 3);
        assert!(p.addr() >= base && p.addr() < base + size);
    }
}
