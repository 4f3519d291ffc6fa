use progpack_bpf::{Helpers, JitOptions, Vm};
fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = op;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}
fn main() {
    let prog = [
        insn(0x69, 2, 1, 12, 0),
        insn(0x55, 2, 0, 6, 0x0008),
        insn(0x71, 3, 1, 23, 0),
        insn(0x55, 3, 0, 4, 6),
        insn(0x69, 4, 1, 36, 0),
        insn(0x55, 4, 0, 2, 80u16.swap_bytes() as i32),
        insn(0xb7, 0, 0, 0, 1),
        insn(0x95, 0, 0, 0, 0),
        insn(0xb7, 0, 0, 0, 0),
        insn(0x95, 0, 0, 0, 0),
    ]
    .concat();
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args[2].parse().unwrap();
    let mut pkt = [0u8; 64];
    pkt[12] = 0x08;
    pkt[14] = 0x45;
    pkt[23] = 6;
    pkt[37] = 80;
    let mut acc = 0;
    match args[1].as_str() {
        "ours" | "ours-nocount" => {
            let mut vm = Vm::new(Helpers::new());
            let alloc = progpack_bpf::jit::shared_allocator().unwrap();
            vm.enable_jit(
                alloc,
                JitOptions {
                    count_instructions: args[1] == "ours",
                },
            );
            let p = vm.load(&prog).unwrap();
            for _ in 0..n {
                acc += p.run_jit(&mut pkt).unwrap();
            }
        }
        _ => {
            let mut vm = rbpf::EbpfVmRaw::new(Some(&prog)).unwrap();
            vm.jit_compile().unwrap();
            for _ in 0..n {
                acc += unsafe { vm.execute_program_jit(&mut pkt) }.unwrap();
            }
        }
    }
    assert_eq!(acc, n);
}
