/* pcap_kernel.c - see pcap_kernel.h
 *
 * How: the net_dev_queue programs' sections get a libbpf handler of our own (the same program
 * type, attach type and attach as libbpf's). Its prepare-load callback runs once libbpf has
 * relocated the program and appended its subprograms: there it replaces the bodies of the two
 * stubs (found by their BTF func_info records) with the translations, moves the subprograms
 * after them, and fixes the calls, func_info and line_info to match (bpf_program__set_insns).
 * freplace (BPF_PROG_TYPE_EXT) would do the same without rewriting, but kernels may refuse it
 * (this project's CI VM answers EPERM to any EXT program).
 *
 * The same handler then leaves out what the load's configuration cannot reach (prune.c), on
 * every net_dev_queue program loaded between ndq_load_begin and ndq_load_end. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/filter.h>

#include "cbpf_ebpf.h"
#include "core.h"
#include "pcap_filter.h"
#include "pcap_kernel.h"
#include "prune.h"

/* The stubs, and the link each one's body is translated for (LINK_ETH or LINK_RAW, the index of
 * its body in struct layout). A link has two: one called with the packet itself, one with a
 * per-CPU copy, since the verifier lets a load instruction see only one kind of pointer. */
enum { LINK_ETH, LINK_RAW };
static const struct stub {
	const char *name;
	int link;
} STUBS[] = {
	{ "netdevq_pcap_eth", LINK_ETH },
	{ "netdevq_pcap_eth_copy", LINK_ETH },
	{ "netdevq_pcap_raw", LINK_RAW },
	{ "netdevq_pcap_raw_copy", LINK_RAW },
};
#define N_STUBS (sizeof(STUBS) / sizeof(STUBS[0]))

/* The splice asked for the next load (one at a time: libbpf's load is synchronous). */
static struct request {
	struct bpf_object *obj;
	struct bpf_program *prog;
	const struct ndq_pcap *pcap;
	int done;
	char err[256];
	/* what the load reads after the callback: kept until ndq_pcap_kernel_finish */
	void *func_info, *line_info;
	size_t ebpf_len[2];
} req;

/* an index map old -> new over the instructions, and the translation for each link */
struct layout {
	size_t *newpos; /* n_old + 1 entries */
	int *body_of;	/* per subprogram: the body (a link) replacing it, or -1 */
	uint64_t *body[2];
	size_t body_len[2];
};

static int stub_of(const struct btf *btf, __u32 type_id)
{
	const struct btf_type *t = btf__type_by_id(btf, type_id);
	const char *name = t ? btf__name_by_offset(btf, t->name_off) : NULL;

	for (size_t i = 0; name && i < N_STUBS; i++)
		if (strcmp(name, STUBS[i].name) == 0)
			return (int)i;
	return -1;
}

static int translate(const struct ndq_pcap *p, struct layout *lay)
{
	static const struct sock_filter never = { BPF_RET | BPF_K, 0, 0, 0 };

	for (int i = 0; i < 2; i++) {
		size_t len = 1;
		const struct sock_filter *cbpf = ndq_pcap_insns(p, i == LINK_ETH, &len);

		if (!cbpf) { /* no meaning on this link type: nothing matches */
			cbpf = &never;
			len = 1;
		}
		if (ndq_cbpf_to_ebpf(cbpf, len, &lay->body[i], &lay->body_len[i], req.err,
				     sizeof(req.err)))
			return -1;
		req.ebpf_len[i] = lay->body_len[i];
	}
	return 0;
}

#define REC(base, i, size) ((struct bpf_func_info *)((char *)(base) + (size_t)(i) * (size)))

/* The new program: each stub's body replaced; calls re-aimed; func_info and line_info moved. */
static int rewrite(struct bpf_program *prog, struct bpf_prog_load_opts *opts, struct layout *lay)
{
	const struct btf *btf = bpf_object__btf(req.obj);
	const struct bpf_insn *old = bpf_program__insns(prog);
	size_t n = bpf_program__insn_cnt(prog), nf = opts->func_info_cnt, at = 0, out_n = 0;
	__u32 fsz = opts->func_info_rec_size;
	struct bpf_insn *out = NULL;
	size_t found = 0;

	lay->newpos = calloc(n + 1, sizeof(size_t));
	lay->body_of = calloc(nf ? nf : 1, sizeof(int));
	if (!lay->newpos || !lay->body_of || !btf || !opts->func_info || !nf)
		return snprintf(req.err, sizeof(req.err), "the program has no BTF func_info"), -1;
	/* positions: walk the subprograms (func_info is sorted by insn_off) */
	for (size_t f = 0; f < nf; f++) {
		size_t s = REC(opts->func_info, f, fsz)->insn_off;
		size_t e = f + 1 < nf ? REC(opts->func_info, f + 1, fsz)->insn_off : n;
		int st = stub_of(btf, REC(opts->func_info, f, fsz)->type_id);

		lay->body_of[f] = st >= 0 ? STUBS[st].link : -1;
		for (size_t j = s; j < e; j++)
			lay->newpos[j] = at + (st >= 0 ? 0 : j - s);
		found += st >= 0;
		at += st >= 0 ? lay->body_len[lay->body_of[f]] : e - s;
	}
	lay->newpos[n] = at;
	if (!found) /* (a program holds the stubs it calls: the copy ones alone where no load
		     * may reach the packet itself) */
		return snprintf(req.err, sizeof(req.err), "the program calls no pcap stub"), -1;
	out = calloc(at, sizeof(*out));
	if (!out)
		return snprintf(req.err, sizeof(req.err), "out of memory"), -1;
	for (size_t f = 0; f < nf; f++) {
		size_t s = REC(opts->func_info, f, fsz)->insn_off;
		size_t e = f + 1 < nf ? REC(opts->func_info, f + 1, fsz)->insn_off : n;
		int st = lay->body_of[f];

		if (st >= 0) {
			memcpy(out + out_n, lay->body[st], lay->body_len[st] * sizeof(*out));
			out_n += lay->body_len[st];
			continue;
		}
		for (size_t j = s; j < e; j++) {
			struct bpf_insn x = old[j];
			bool call = x.code == (BPF_JMP | BPF_CALL) && x.src_reg == BPF_PSEUDO_CALL;
			bool func = x.code == (BPF_LD | BPF_IMM | BPF_DW) &&
				    x.src_reg == BPF_PSEUDO_FUNC;

			if (call || func) {
				size_t to = (size_t)((long)j + 1 + x.imm);

				if (to > n) {
					free(out);
					return snprintf(req.err, sizeof(req.err), "bad call"), -1;
				}
				x.imm = (__s32)((long)lay->newpos[to] - (long)lay->newpos[j] - 1);
			}
			out[out_n++] = x;
		}
	}
	/* func_info: the same records at their new places */
	req.func_info = malloc((size_t)nf * fsz);
	if (!req.func_info) {
		free(out);
		return snprintf(req.err, sizeof(req.err), "out of memory"), -1;
	}
	memcpy(req.func_info, opts->func_info, (size_t)nf * fsz);
	for (size_t f = 0; f < nf; f++)
		REC(req.func_info, f, fsz)->insn_off =
			(__u32)lay->newpos[REC(req.func_info, f, fsz)->insn_off];
	opts->func_info = req.func_info;
	int rc = bpf_program__set_insns(prog, out, out_n);
	free(out);
	if (rc)
		return snprintf(req.err, sizeof(req.err), "bpf_program__set_insns failed (%d)", rc),
		       -1;
	return 0;
}

/* line_info: a stub keeps its first record (the kernel wants one at every subprogram start),
 * the records inside it go, the others move */
static int move_line_info(struct bpf_prog_load_opts *opts, const struct layout *lay, size_t n)
{
	__u32 lsz = opts->line_info_rec_size, kept = 0;
	size_t prev_new = (size_t)-1;

	if (!opts->line_info || !opts->line_info_cnt)
		return 0;
	req.line_info = malloc((size_t)opts->line_info_cnt * lsz);
	if (!req.line_info)
		return snprintf(req.err, sizeof(req.err), "out of memory"), -1;
	for (__u32 i = 0; i < opts->line_info_cnt; i++) {
		const struct bpf_line_info *li =
			(const void *)((const char *)opts->line_info + (size_t)i * lsz);
		size_t np = li->insn_off <= n ? lay->newpos[li->insn_off] : (size_t)-1;
		struct bpf_line_info *dst;

		if (np == (size_t)-1 || np == prev_new)
			continue; /* inside a replaced stub: its start has a record already */
		dst = (void *)((char *)req.line_info + (size_t)kept * lsz);
		memcpy(dst, li, lsz);
		dst->insn_off = (__u32)np;
		prev_new = np;
		kept++;
	}
	opts->line_info = req.line_info;
	opts->line_info_cnt = kept;
	return 0;
}

static int splice(struct bpf_program *prog, struct bpf_prog_load_opts *opts)
{
	struct layout lay;
	size_t n = bpf_program__insn_cnt(prog);
	int rc = -1;

	memset(&lay, 0, sizeof(lay));
	if (translate(req.pcap, &lay) == 0 && rewrite(prog, opts, &lay) == 0 &&
	    move_line_info(opts, &lay, n) == 0) {
		req.done = 1;
		rc = 0;
	}
	free(lay.newpos);
	free(lay.body_of);
	free(lay.body[0]);
	free(lay.body[1]);
	return rc;
}

/* The object being loaded, and what pruning made of its net_dev_queue program (the func_info
 * and line_info the load reads after the callback: kept until ndq_load_end). */
static struct {
	struct bpf_object *obj;
	bool off; /* core.prune(false) */
	struct ndq_prune_prog out;
	char prog[32];
	size_t before, after;
	char why[160];
} load;

static void prune(struct bpf_program *prog, struct bpf_prog_load_opts *opts)
{
	struct ndq_prune_ro ro[8];
	size_t n_ro = 0;
	struct bpf_map *m;
	struct ndq_prune_prog in = {
		.insns = (struct bpf_insn *)bpf_program__insns(prog),
		.n = bpf_program__insn_cnt(prog),
		.func_info = (void *)opts->func_info,
		.func_cnt = opts->func_info_cnt,
		.func_rec = opts->func_info_rec_size,
		.line_info = (void *)opts->line_info,
		.line_cnt = opts->line_info_cnt,
		.line_rec = opts->line_info_rec_size,
	};

	/* libbpf freezes the read-only maps it makes of .rodata and .kconfig before any program
	 * loads: what the verifier, too, reads as constants */
	bpf_object__for_each_map(m, load.obj) {
		size_t size = 0;
		const void *data;

		if (!bpf_map__is_internal(m) || !(bpf_map__map_flags(m) & BPF_F_RDONLY_PROG) ||
		    n_ro == sizeof(ro) / sizeof(ro[0]))
			continue;
		data = bpf_map__initial_value(m, &size);
		if (data)
			ro[n_ro++] = (struct ndq_prune_ro){ bpf_map__fd(m), data, size };
	}
	ndq_prune_free(&load.out);
	snprintf(load.prog, sizeof(load.prog), "%s", bpf_program__name(prog));
	load.before = in.n;
	load.after = in.n;
	if (ndq_prune(&in, ro, n_ro, &load.out, load.why, sizeof(load.why))) {
		if (!load.why[0])
			snprintf(load.why, sizeof(load.why), "out of memory");
		return;
	}
	if (bpf_program__set_insns(prog, load.out.insns, load.out.n)) {
		snprintf(load.why, sizeof(load.why), "libbpf took no new instructions");
		return;
	}
	load.after = load.out.n;
	if (opts->func_info) {
		opts->func_info = load.out.func_info;
		opts->func_info_cnt = load.out.func_cnt;
	}
	if (opts->line_info) {
		opts->line_info = load.out.line_info;
		opts->line_info_cnt = load.out.line_cnt;
	}
}

static int prepare(struct bpf_program *prog, struct bpf_prog_load_opts *opts, long cookie)
{
	if (cookie && !opts->attach_btf_id) { /* tp_btf: what libbpf's own handler does */
		int id = libbpf_find_vmlinux_btf_id(NDQ_TRACEPOINT, BPF_TRACE_RAW_TP);

		if (id < 0)
			return id;
		opts->attach_btf_id = (__u32)id;
	}
	if (req.obj && prog == req.prog && splice(prog, opts))
		return -EINVAL;
	if (load.obj && !load.off)
		prune(prog, opts);
	return 0;
}

void ndq_load_begin(struct bpf_object *obj)
{
	ndq_prune_free(&load.out);
	load.obj = obj;
	load.prog[0] = '\0';
	load.why[0] = '\0';
}

void ndq_load_end(void)
{
	if (ndq_verbose && load.prog[0] && load.why[0])
		fprintf(stderr, "netdevq: %s went to the verifier whole (pruning: %s)\n", load.prog,
			load.why);
	else if (ndq_verbose && load.prog[0])
		fprintf(stderr,
			"netdevq: %s: %zu of its %zu instructions kept for this configuration "
			"(the rest is unreachable here, or computes what nothing reads)\n",
			load.prog, load.after, load.before);
	ndq_prune_free(&load.out);
	load.obj = NULL;
	load.prog[0] = '\0';
}

bool ndq_load_prune(bool on)
{
	bool was = !load.off;

	load.off = !on;
	return was;
}

static int attach(const struct bpf_program *prog, long cookie, struct bpf_link **link)
{
	*link = cookie ? bpf_program__attach_trace(prog) :
			 bpf_program__attach_raw_tracepoint(prog, NDQ_TRACEPOINT);
	return *link ? 0 : -errno;
}

int ndq_pcap_kernel_register(void)
{
	static int registered;
	const struct libbpf_prog_handler_opts raw = { .sz = sizeof(raw),
						      .cookie = 0,
						      .prog_prepare_load_fn = prepare,
						      .prog_attach_fn = attach };
	const struct libbpf_prog_handler_opts btf = { .sz = sizeof(btf),
						      .cookie = 1,
						      .prog_prepare_load_fn = prepare,
						      .prog_attach_fn = attach };

	if (registered)
		return 0;
	if (libbpf_register_prog_handler("raw_tp/net_dev_queue", BPF_PROG_TYPE_RAW_TRACEPOINT, 0,
					 &raw) < 0 ||
	    libbpf_register_prog_handler("tp_btf/net_dev_queue", BPF_PROG_TYPE_TRACING,
					 BPF_TRACE_RAW_TP, &btf) < 0)
		return -1;
	registered = 1;
	return 0;
}

void ndq_pcap_kernel_request(struct bpf_object *obj, struct bpf_program *prog,
			     const struct ndq_pcap *p)
{
	memset(&req, 0, sizeof(req));
	req.obj = obj;
	req.prog = prog;
	req.pcap = p;
}

int ndq_pcap_kernel_finish(int loaded, char *err, size_t errlen)
{
	int rc = req.done ? 0 : -1;

	if (rc)
		snprintf(err, errlen, "%s", req.err[0] ? req.err : "the program was not loaded");
	else if (ndq_verbose && loaded)
		fprintf(stderr,
			"netdevq: pcap filter decided in the kernel (%zu eBPF instructions for "
			"Ethernet, %zu for raw IP)\n",
			req.ebpf_len[0], req.ebpf_len[1]);
	free(req.func_info);
	free(req.line_info);
	memset(&req, 0, sizeof(req));
	return rc;
}
