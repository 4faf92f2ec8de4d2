/* counter.bpf.c - the second floor for bench/run: a raw_tp/net_dev_queue program that only adds
 * one to its CPU's counter.
 *
 * netdevq's program does this first with every event (bpf/netdevq.bpf.c, struct counters: an
 * entry per CPU of a plain array, a cache line each), so its row is the least a program that
 * accounts for every event costs on this machine: the counter's cache line is cold again by the
 * next packet. Loaded and attached by bench/empty_loader.lua.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct slot {
	__u64 n;
	__u64 pad[7]; /* a cache line per CPU, as netdevq's */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 128); /* CPUs counted; a CPU above this one is not (16 KiB: kmalloc) */
	__type(key, __u32);
	__type(value, struct slot);
} counts SEC(".maps");

SEC("raw_tp/net_dev_queue")
int bench_counter(void *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct slot *s = bpf_map_lookup_elem(&counts, &cpu);

	if (s)
		s->n++;
	return 0;
}
