/* A tail-call dispatcher: jumps to the handler indexed by the first packet byte; falls back
 * to returning 0xfa11 when the slot is empty. Handlers return distinct values. */
#include "bpf_helpers.h"

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} handlers SEC(".maps");

SEC("socket/dispatch")
__u64 dispatch(__u8 *pkt, __u64 len)
{
	if (len < 1)
		return 0;
	bpf_tail_call(pkt, &handlers, pkt[0]);
	return 0xfa11;
}

SEC("socket/handler0")
__u64 handler0(__u8 *pkt, __u64 len)
{
	return 100 + len;
}

SEC("socket/handler1")
__u64 handler1(__u8 *pkt, __u64 len)
{
	/* Tail-calls again, to handler 0, after the first byte is rewritten. */
	pkt[0] = 0;
	bpf_tail_call(pkt, &handlers, 0);
	return 0xdead;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
