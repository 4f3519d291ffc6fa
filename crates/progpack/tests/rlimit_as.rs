//! Address space exhausted (`RLIMIT_AS`), in a child: a new pack cannot be mapped; the error is
//! typed (`ENOMEM`), nothing panics, and the programs already loaded still run.
#![cfg(target_arch = "x86_64")]

mod support;

use progpack::{Allocator, Config};
use support::{in_child, ret_imm, ChildEnd};

#[test]
fn exhausted_address_space_is_a_typed_error() {
    let alloc = Allocator::new(Config::default().reserve_packs(0).shards(1)).unwrap();
    let mut d = alloc.draft(6, 1).unwrap();
    d.image_mut().copy_from_slice(&ret_imm(41));
    let p = d.finalize().unwrap();
    let end = in_child(|| {
        // Limit the address space to what is mapped now plus a little: no new 2 MiB pack fits.
        let vm_kb: u64 = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let lim = libc::rlimit {
            rlim_cur: (vm_kb + 1024) * 1024,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
            return 10;
        }
        let mut held = Vec::new();
        let err = loop {
            // Fill the current pack, then ask for more: a new pack needs 2 MiB + alignment.
            match alloc.draft(60_000, 1) {
                Ok(d) => held.push(d),
                Err(e) => break e,
            }
            if held.len() > 1000 {
                return 11; // the limit did not bite
            }
        };
        if !err.is_out_of_memory() {
            return 12;
        }
        // The program loaded before still runs and is intact.
        // SAFETY: `mov eax, 41; ret`.
        let v = unsafe { p.as_fn::<extern "C" fn() -> u32>() }();
        if v != 41 || p.bytes() != ret_imm(41) {
            return 13;
        }
        drop(held);
        if alloc.stats().allocations != 1 || alloc.check_invariants().is_err() {
            return 14;
        }
        0
    });
    assert_eq!(end, ChildEnd::Exited(0));
}
