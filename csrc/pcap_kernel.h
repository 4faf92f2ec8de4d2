/* pcap_kernel.h - pcap expressions decided in the kernel (issue 16): libpcap's program for each
 * link type (pcap_filter.c), translated into eBPF (cbpf_ebpf.c), spliced into the net_dev_queue
 * program at load in place of its stubs netdevq_pcap_eth[_copy] and netdevq_pcap_raw[_copy]
 * (bpf/netdevq.bpf.c). */
#ifndef NETDEVQ_PCAP_KERNEL_H
#define NETDEVQ_PCAP_KERNEL_H

#include <stdbool.h>
#include <stddef.h>

struct bpf_object;
struct bpf_program;
struct ndq_pcap;

/* Once per process, before the object is opened: libbpf then hands the net_dev_queue programs
 * to this file before loading them. 0, or -1. */
int ndq_pcap_kernel_register(void);
/* p's programs go into prog at the next bpf_object__load(obj) ... */
void ndq_pcap_kernel_request(struct bpf_object *obj, struct bpf_program *prog,
			     const struct ndq_pcap *p);
/* ... called after it (loaded: it succeeded; -v then says so): 0 when they went in, else -1
 * with err set (and the load failed). */
int ndq_pcap_kernel_finish(int loaded, char *err, size_t errlen);

/* Around each bpf_object__load(obj): its net_dev_queue program is pruned in between (prune.h);
 * ndq_load_end frees what the load read and, with -v, says what pruning did. */
void ndq_load_begin(struct bpf_object *obj);
void ndq_load_end(void);
/* core.prune(on): whether loads prune (on by default); returns the previous setting. For specs
 * that compare the pruned program with the one the verifier prunes by itself. */
bool ndq_load_prune(bool on);

#endif
