/* Counts packets by IP protocol (byte 23 of an Ethernet + IPv4 frame) in a hash map;
 * returns the protocol's count so far. Safe when many threads run it at once: the first
 * insertion of a protocol may race, and the loser adds to the winner's entry. */
#include "bpf_helpers.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
} proto_count SEC(".maps");

SEC("socket")
__u64 count_by_proto(__u8 *pkt, __u64 len)
{
	if (len < 24)
		return 0;
	__u32 proto = pkt[23];
	__u64 *n = bpf_map_lookup_elem(&proto_count, &proto);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return *n;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(&proto_count, &proto, &one, BPF_NOEXIST) == 0)
		return 1;
	n = bpf_map_lookup_elem(&proto_count, &proto);
	if (!n)
		return 0;
	__sync_fetch_and_add(n, 1);
	return *n;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
