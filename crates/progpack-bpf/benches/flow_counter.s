# The flow counter of the `ebpf-maps` workload (progpack-bpf's `maps` bench and the CLI's
# `progpack bench`): read the TCP source port, look it up in map 0 (`map_lookup_elem`), and
# write count + 1 back (`map_update_elem`). Returns the new count (0 for a packet too short
# to hold the port).
mov %r6, %r1
mov %r0, 0
jlt %r2, 38, +20
ldxh %r2, [%r6+34]
stxw [%r10-4], %r2
mov %r7, 0
lddw %r1, 0
mov %r2, %r10
add %r2, -4
call 1
jeq %r0, 0, +1
ldxdw %r7, [%r0]
add %r7, 1
stxdw [%r10-16], %r7
lddw %r1, 0
mov %r2, %r10
add %r2, -4
mov %r3, %r10
add %r3, -16
mov %r4, 0
call 2
mov %r0, %r7
exit
