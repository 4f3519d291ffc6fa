/* Produces events into a ring buffer: one reserved and filled in place (length and the first
 * four bytes of the packet), one copied with ringbuf_output; a packet starting with 0xff
 * has its reservation discarded. Returns the number of events submitted. */
#include "bpf_helpers.h"

struct event {
	__u32 len;
	__u8 head[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

SEC("socket")
__u64 produce(__u8 *pkt, __u64 len)
{
	__u64 sent = 0;
	if (len < 4)
		return 0;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->len = len;
	for (int i = 0; i < 4; i++)
		e->head[i] = pkt[i];
	if (pkt[0] == 0xff) {
		bpf_ringbuf_discard(e, 0);
	} else {
		bpf_ringbuf_submit(e, 0);
		sent++;
	}
	__u64 marker = 0x6d61726b6572ULL; /* "marker" */
	if (bpf_ringbuf_output(&events, &marker, sizeof(marker), 0) == 0)
		sent++;
	return sent;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
