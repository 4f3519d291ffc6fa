/* Global variables: a counter in .bss, a scale in .rodata, an initialised total in .data.
 * Each run adds scale * (packet length) to the total and counts the run; returns
 * total + runs. */
#include "bpf_helpers.h"

__u64 runs;                       /* .bss */
__u64 total = 1000;               /* .data */
const volatile __u64 scale = 3;   /* .rodata */

SEC("socket")
__u64 accumulate(__u8 *pkt, __u64 len)
{
	runs++;
	total += scale * len;
	return total + runs;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
