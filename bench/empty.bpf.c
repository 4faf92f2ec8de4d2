/* empty.bpf.c - the floor for bench/run: a raw_tp/net_dev_queue program that does nothing.
 *
 * Its run_time_ns / run_cnt is what the kernel charges for entering any BPF program on this
 * tracepoint; every other row of the table is read against it. Loaded and attached by
 * bench/empty_loader.lua (LuaJIT FFI to libbpf).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("raw_tp/net_dev_queue")
int bench_empty(void *ctx)
{
	return 0;
}
