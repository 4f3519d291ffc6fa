/* A per-CPU counter defined the legacy way (section "maps"): each run adds the packet length
 * to this CPU's (host thread's) slot and returns the new total. */
#include "bpf_helpers.h"

struct bpf_map_def SEC("maps") bytes_per_cpu = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 1,
};

SEC("socket")
__u64 count_bytes(__u8 *pkt, __u64 len)
{
	__u32 key = 0;
	__u64 *total = bpf_map_lookup_elem(&bytes_per_cpu, &key);
	if (!total)
		return 0;
	*total += len;
	return *total;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
