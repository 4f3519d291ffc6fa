//! The helper ABI on both engines: context helpers check and translate pointers, reach host
//! data, end the program; extra regions are memory like the input; r1 = r2 = 0 without memory.

use std::sync::Arc;

use progpack_bpf::jit::shared_allocator;
use progpack_bpf::memory::Region;
use progpack_bpf::{BpfProgram, Error, HelperContext, Helpers, JitOptions, RunError, Vm};

/// Sums the `r2` bytes at `r1` through the context; `u64::MAX` if the program could not read
/// them.
extern "C" fn sum_bytes(p: u64, n: u64, _: u64, _: u64, _: u64, cx: &mut HelperContext) -> u64 {
    let mut buf = vec![0u8; n as usize];
    if !cx.read(p, &mut buf) {
        return u64::MAX;
    }
    buf.iter().map(|&b| b as u64).sum()
}

/// Writes `r2` at `r1` (8 bytes) through the context; 1 if allowed.
extern "C" fn poke(p: u64, v: u64, _: u64, _: u64, _: u64, cx: &mut HelperContext) -> u64 {
    cx.write(p, &v.to_le_bytes()) as u64
}

/// Ends the program.
extern "C" fn halt(_: u64, _: u64, _: u64, _: u64, _: u64, cx: &mut HelperContext) -> u64 {
    cx.stop();
    99
}

/// The host data (a `u64`) plus r1.
extern "C" fn host_plus(a: u64, _: u64, _: u64, _: u64, _: u64, cx: &mut HelperContext) -> u64 {
    cx.host::<u64>().copied().unwrap_or(0) + a
}

fn helpers() -> Helpers {
    let mut h = Helpers::new();
    h.register_context(1, sum_bytes)
        .register_context(2, poke)
        .register_context(3, halt)
        .register_context(4, host_plus)
        .set_name(1, "sum_bytes");
    h
}

fn vm(h: Helpers) -> Vm {
    let mut vm = Vm::new(h);
    vm.enable_jit(shared_allocator().unwrap(), JitOptions::default());
    vm
}

/// Runs on both engines over copies of `mem`; asserts they agree (result and memory).
fn both(p: &BpfProgram, mem: &[u8]) -> Result<u64, RunError> {
    let (mut a, mut b) = (mem.to_vec(), mem.to_vec());
    let i = p.run_interp(&mut a);
    let j = p.run_jit(&mut b).map_err(|e| match e {
        Error::Run(r) => r,
        e => panic!("{e}"),
    });
    assert_eq!(i, j, "engines disagree");
    assert_eq!(a, b, "memory differs");
    i
}

#[test]
fn helpers_read_and_write_program_memory_through_the_context() {
    let vm = vm(helpers());
    // Sum of the first 4 input bytes, then of 8 stack bytes holding 0x0101..01, then of a
    // range running past the input (refused).
    let p = vm
        .load_asm(
            "mov %r6, %r1
             mov %r2, 4
             call 1
             mov %r7, %r0
             lddw %r1, 0x0101010101010101
             stxdw [%r10-8], %r1
             mov %r1, %r10
             add %r1, -8
             mov %r2, 8
             call 1
             add %r7, %r0
             mov %r1, %r6
             mov %r2, 5
             call 1
             add %r7, %r0
             mov %r0, %r7
             exit",
        )
        .unwrap();
    assert_eq!(
        both(&p, &[1, 2, 3, 4]),
        Ok((1 + 2 + 3 + 4 + 8u64).wrapping_add(u64::MAX))
    );
    // A helper writes the input (seen by the program) but not below the live frame.
    let p = vm
        .load_asm(
            "mov %r6, %r1
             mov %r2, 0x55
             call 2
             mov %r7, %r0
             mov %r1, %r10
             add %r1, -520
             call 2
             lsh %r7, 4
             or %r7, %r0
             ldxb %r0, [%r6]
             lsh %r0, 8
             or %r0, %r7
             exit",
        )
        .unwrap();
    assert_eq!(both(&p, &[0; 8]), Ok(0x5510));
}

#[test]
fn a_context_helper_can_end_the_program() {
    let vm = vm(helpers());
    let p = vm.load_asm("mov %r0, 7\ncall 3\nmov %r0, 8\nexit").unwrap();
    assert_eq!(both(&p, &[]), Ok(0));
}

#[test]
fn helpers_reach_host_data() {
    let mut vm = vm(helpers());
    vm.env_mut().set_host_data(Arc::new(40u64));
    let p = vm.load_asm("mov %r1, 2\ncall 4\nexit").unwrap();
    assert_eq!(both(&p, &[]), Ok(42));
    assert_eq!(vm.helpers().id_of("sum_bytes"), Some(1));
    assert_eq!(vm.helpers().id_of("nope"), None);
}

#[test]
fn without_memory_r1_and_r2_are_zero() {
    let vm = vm(Helpers::new());
    let p = vm.load_asm("mov %r0, %r1\nor %r0, %r2\nexit").unwrap();
    assert_eq!(both(&p, &[]), Ok(0));
    let p = vm.load_asm("mov %r0, %r2\nexit").unwrap();
    assert_eq!(both(&p, &[9; 3]), Ok(3));
}

#[test]
fn extra_regions_are_memory_on_both_engines() {
    // Two regions: 16 writable bytes and 8 read-only ones, alive for the whole test.
    let rw: &'static mut [u8; 16] = Box::leak(Box::new([0u8; 16]));
    let ro: &'static [u8; 8] = Box::leak(Box::new(*b"readonly"));
    let (rw_addr, ro_addr) = (rw.as_mut_ptr() as u64, ro.as_ptr() as u64);
    let mut vm = vm(Helpers::new());
    // SAFETY: both buffers are leaked (live forever) and initialised; the test only touches
    // them through programs.
    unsafe {
        vm.env_mut().add_region(Region {
            start: rw_addr,
            len: 16,
            writable: true,
        });
        vm.env_mut().add_region(Region {
            start: ro_addr,
            len: 8,
            writable: false,
        });
    }
    // Store then load back, an atomic add, and a load from the read-only region.
    let p = vm
        .load_asm(&format!(
            "lddw %r1, {rw_addr:#x}
             mov %r2, 5
             stxdw [%r1+8], %r2
             lock add [%r1+8], %r2
             ldxdw %r0, [%r1+8]
             lddw %r3, {ro_addr:#x}
             ldxb %r3, [%r3+1]
             lsh %r0, 8
             or %r0, %r3
             exit"
        ))
        .unwrap();
    assert_eq!(both(&p, &[]), Ok((10 << 8) | b'e' as u64));
    // One byte past the end, and a store to the read-only region: the same typed error.
    for (text, addr, len) in [
        (
            format!("lddw %r1, {rw_addr:#x}\nldxdw %r0, [%r1+9]\nexit"),
            rw_addr + 9,
            8,
        ),
        (
            format!("lddw %r1, {ro_addr:#x}\nstb [%r1], 1\nmov %r0, 0\nexit"),
            ro_addr,
            1,
        ),
    ] {
        let p = vm.load_asm(&text).unwrap();
        assert_eq!(
            both(&p, &[]),
            Err(RunError::OutOfBounds { addr, len, pc: 2 })
        );
    }
}
