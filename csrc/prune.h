/* prune.h - the instructions a configuration cannot reach, left out before the verifier sees the
 * program.
 *
 * The net_dev_queue program holds every field, filter, aggregation and read path; the loader's
 * configuration (the frozen .rodata) picks a few hundred of its ~25,000 instructions. The verifier
 * finds the rest dead and removes it one range at a time, each removal moving the whole program
 * and its per-instruction data: ~15 ms of every start. This pass makes the same decisions first,
 * from the same facts: loads from a frozen read-only map are constants, and so is what is computed
 * from them, kept in registers or spilled to the stack. A conditional jump on constants goes one
 * way; what no path reaches goes. Then what the verifier leaves in place goes too: a load of a
 * configuration word becomes a move of its value, and what nothing reads any more (a register
 * written and never read on, a spill to a stack slot nothing may read) is dropped. On this VM kind
 * an event's cost follows the instructions it runs (about one per cycle): for `-f 'dport == 1'`
 * the kernel keeps 952 instructions instead of 1,198, and the latency program 249 of 428.
 * spec/prune_live_spec.lua runs both programs side by side on real traffic; test_prune.c also
 * runs each rewrite of 100,000 random programs against the program it came from.
 *
 * No libbpf here (spec/tools/test_prune.c runs it on crafted programs); pcap_kernel.c's load
 * handler calls it with what libbpf hands that handler. */
#ifndef NETDEVQ_PRUNE_H
#define NETDEVQ_PRUNE_H

#include <stddef.h>
#include <stdint.h>

#include <linux/bpf.h>

#ifndef BPF_MEMSX /* Linux 6.6 uapi; the build's headers may be older */
#define BPF_MEMSX 0x80
#endif

/* a frozen read-only map the program reads through BPF_PSEUDO_MAP_VALUE ld_imm64 (imm = fd) */
struct ndq_prune_ro {
	int fd;
	const uint8_t *data;
	size_t size;
};

struct ndq_prune_prog {
	struct bpf_insn *insns;
	size_t n;
	void *func_info; /* struct bpf_func_info records, sorted; may be NULL */
	uint32_t func_cnt, func_rec;
	void *line_info; /* struct bpf_line_info records, sorted; may be NULL */
	uint32_t line_cnt, line_rec;
};

/* in -> out: out's three arrays are new (free them with ndq_prune_free). 0: pruned (out->n may
 * equal in->n when nothing was dead); 1: left as it is, `why` says why (an instruction this pass
 * does not model, a jump out of the program); -1: out of memory. */
int ndq_prune(const struct ndq_prune_prog *in, const struct ndq_prune_ro *ro, size_t n_ro,
	      struct ndq_prune_prog *out, char *why, size_t whylen);
void ndq_prune_free(struct ndq_prune_prog *p);

#endif
