/* A bpf-to-bpf call chain across .text functions, with a helper called by name (an
 * undefined symbol the loader resolves). */
#include "bpf_helpers.h"

extern __u64 bpf_get_smp_processor_id(void);

static __noinline __u64 square(__u64 x)
{
	return x * x;
}

static __noinline __u64 sum_squares(__u8 *pkt, __u64 len)
{
	__u64 s = 0;
	for (__u64 i = 0; i < len && i < 8; i++)
		s += square(pkt[i]);
	return s;
}

__noinline __u64 weigh(__u8 *pkt, __u64 len)
{
	return 2 * sum_squares(pkt, len) + 1;
}

SEC("socket")
__u64 chain(__u8 *pkt, __u64 len)
{
	__u64 cpu = bpf_get_smp_processor_id();
	/* cpu < 2^20 always: only here to exercise the call by name. */
	return weigh(pkt, len) + (cpu >> 20);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
