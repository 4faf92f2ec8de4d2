/* cbpf_ebpf.c - see cbpf_ebpf.h */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/bpf.h>
#include <linux/filter.h>

#include "cbpf_ebpf.h"

/* Registers: the frame, A, X and caplen live in callee-saved registers (r1..r5 are clobbered by
 * the helper call of a load past caplen). */
enum { R_FRAME = BPF_REG_6, R_A = BPF_REG_7, R_X = BPF_REG_8, R_CAP = BPF_REG_9 };
/* Stack slots (8 bytes each, below r10): wirelen, data, linear, a load's bytes, M[0..15]. */
enum { S_WIRELEN = -8, S_DATA = -16, S_LINEAR = -24, S_TMP = -32, S_LOOPS = -40, S_MEM0 = -48 };
#define S_MEM(i) (S_MEM0 - 8 * (int)(i))
#define TARGET_RET0 (-1) /* a jump to the shared `return 0` at the end */
/* Backward jumps (libpcap's `protochain` loops over IPv6 extension headers) taken at most this
 * often: the verifier must see the loop end; one more ends the program with 0 (no match). */
#define BACKWARD_JUMPS_MAX 8

struct fixup {
	size_t at;   /* the eBPF jump */
	long target; /* a cBPF instruction, or TARGET_RET0 */
};

struct gen {
	struct bpf_insn *ins;
	size_t n, cap;
	struct fixup *fix;
	size_t nfix, fixcap;
	int oom;
};

static struct bpf_insn insn(__u8 code, __u8 dst, __u8 src, __s16 off, __s32 imm)
{
	struct bpf_insn i;

	memset(&i, 0, sizeof(i));
	i.code = code;
	i.dst_reg = dst;
	i.src_reg = src;
	i.off = off;
	i.imm = imm;
	return i;
}

static size_t emit(struct gen *g, struct bpf_insn i)
{
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 256;
		struct bpf_insn *p = realloc(g->ins, cap * sizeof(*p));

		if (!p) {
			g->oom = 1;
			return g->n;
		}
		g->ins = p;
		g->cap = cap;
	}
	g->ins[g->n] = i;
	return g->n++;
}

/* A jump whose offset is filled in once the target's position is known. */
static void emit_jump_to(struct gen *g, struct bpf_insn i, long target)
{
	size_t at = emit(g, i);

	if (g->nfix == g->fixcap) {
		size_t cap = g->fixcap ? g->fixcap * 2 : 64;
		struct fixup *p = realloc(g->fix, cap * sizeof(*p));

		if (!p) {
			g->oom = 1;
			return;
		}
		g->fix = p;
		g->fixcap = cap;
	}
	g->fix[g->nfix++] = (struct fixup){ .at = at, .target = target };
}

/* A forward jump inside one instruction's code: patched by land(). */
static size_t jump_here_later(struct gen *g, struct bpf_insn i)
{
	return emit(g, i);
}

static void land(struct gen *g, size_t at)
{
	if (!g->oom)
		g->ins[at].off = (__s16)(g->n - at - 1);
}

static __u8 size_code(int sz)
{
	return sz == 4 ? BPF_W : sz == 2 ? BPF_H : BPF_B;
}

/* dst = the sz bytes loaded into dst's low bits, in network order. */
static void emit_to_host(struct gen *g, int dst, int sz)
{
	if (sz > 1)
		emit(g, insn(BPF_ALU | BPF_END | BPF_TO_BE, dst, 0, 0, sz * 8));
}

/* The byte offset is in r2 (64 bits: X + k does not wrap) and at or past caplen: read the bytes
 * from the packet's linear data, or return 0 when they lie past it. */
static void emit_slow_load(struct gen *g, int dst, int sz)
{
	emit(g, insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_2, 0, 0));
	emit(g, insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, sz));
	emit(g, insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_4, BPF_REG_10, S_LINEAR, 0));
	emit_jump_to(g, insn(BPF_JMP | BPF_JGT | BPF_X, BPF_REG_3, BPF_REG_4, 0, 0), TARGET_RET0);
	emit(g, insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_3, BPF_REG_10, S_DATA, 0));
	emit(g, insn(BPF_ALU64 | BPF_ADD | BPF_X, BPF_REG_3, BPF_REG_2, 0, 0));
	emit(g, insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_10, 0, 0));
	emit(g, insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_1, 0, 0, S_TMP));
	emit(g, insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, sz));
	emit(g, insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_probe_read_kernel));
	emit_jump_to(g, insn(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 0, 0), TARGET_RET0);
	emit(g, insn(BPF_LDX | BPF_MEM | size_code(sz), dst, BPF_REG_10, S_TMP, 0));
	emit_to_host(g, dst, sz);
}

/* dst = the sz bytes at offset k (BPF_ABS) or X + k (BPF_IND) of the packet. */
static void emit_load(struct gen *g, int dst, int sz, int ind, __u32 k)
{
	size_t to_slow, to_slow2 = 0, to_done;

	if (!ind && (__u64)k + sz > NDQ_PCAP_FRAME) {
		emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, (__s32)k));
		emit_slow_load(g, dst, sz);
		return;
	}
	if (!ind) {
		to_slow = jump_here_later(g, insn(BPF_JMP | BPF_JLT | BPF_K, R_CAP, 0, 0,
						  (__s32)(k + sz)));
		emit(g, insn(BPF_LDX | BPF_MEM | size_code(sz), dst, R_FRAME, (__s16)k, 0));
	} else {
		emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, BPF_REG_2, R_X, 0, 0));
		emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_3, 0, 0, (__s32)k));
		emit(g, insn(BPF_ALU64 | BPF_ADD | BPF_X, BPF_REG_2, BPF_REG_3, 0, 0));
		/* a constant bound for the verifier, then the real one */
		to_slow = jump_here_later(g, insn(BPF_JMP | BPF_JGT | BPF_K, BPF_REG_2, 0, 0,
						  NDQ_PCAP_FRAME - sz));
		emit(g, insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_2, 0, 0));
		emit(g, insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, sz));
		to_slow2 =
			jump_here_later(g, insn(BPF_JMP | BPF_JGT | BPF_X, BPF_REG_3, R_CAP, 0, 0));
		emit(g, insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, R_FRAME, 0, 0));
		emit(g, insn(BPF_ALU64 | BPF_ADD | BPF_X, BPF_REG_1, BPF_REG_2, 0, 0));
		emit(g, insn(BPF_LDX | BPF_MEM | size_code(sz), dst, BPF_REG_1, 0, 0));
	}
	emit_to_host(g, dst, sz);
	to_done = jump_here_later(g, insn(BPF_JMP | BPF_JA, 0, 0, 0, 0));
	land(g, to_slow);
	if (ind)
		land(g, to_slow2);
	else
		emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, (__s32)k));
	emit_slow_load(g, dst, sz);
	land(g, to_done);
}

static int load_size(__u16 code)
{
	switch (BPF_SIZE(code)) {
	case BPF_W: return 4;
	case BPF_H: return 2;
	case BPF_B: return 1;
	default: return 0;
	}
}

/* BPF_LD and BPF_LDX: 0, or -1 for an opcode outside classic BPF */
static int emit_ld(struct gen *g, const struct sock_filter *f)
{
	int dst = BPF_CLASS(f->code) == BPF_LD ? R_A : R_X;
	int sz = load_size(f->code);

	switch (BPF_MODE(f->code)) {
	case BPF_IMM: emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, dst, 0, 0, (__s32)f->k)); return 0;
	case BPF_MEM:
		if (f->k >= BPF_MEMWORDS)
			return -1;
		emit(g, insn(BPF_LDX | BPF_MEM | BPF_W, dst, BPF_REG_10, S_MEM(f->k), 0));
		return 0;
	case BPF_LEN:
		emit(g, insn(BPF_LDX | BPF_MEM | BPF_W, dst, BPF_REG_10, S_WIRELEN, 0));
		return 0;
	case BPF_ABS:
	case BPF_IND:
		if (dst != R_A || !sz)
			return -1;
		emit_load(g, R_A, sz, BPF_MODE(f->code) == BPF_IND, f->k);
		return 0;
	case BPF_MSH: /* X = 4 * (P[k] & 0xf): the IPv4 header length */
		if (dst != R_X || BPF_SIZE(f->code) != BPF_B)
			return -1;
		emit_load(g, R_X, 1, 0, f->k);
		emit(g, insn(BPF_ALU | BPF_AND | BPF_K, R_X, 0, 0, 0xf));
		emit(g, insn(BPF_ALU | BPF_LSH | BPF_K, R_X, 0, 0, 2));
		return 0;
	default: return -1;
	}
}

/* BPF_ALU: as libpcap's bpf_filter(): u32 arithmetic, a division by zero returns 0, a shift by
 * X of 32 or more gives 0 and one by a constant k shifts by k & 31 (libpcap refuses to compile
 * a constant shift by more than 31 bits; bpf_filter() then shifts as the CPU does) */
static int emit_alu(struct gen *g, const struct sock_filter *f)
{
	__u8 op = BPF_OP(f->code);
	int x = BPF_SRC(f->code) == BPF_X;
	size_t to_zero, to_done;

	switch (op) {
	case BPF_ADD:
	case BPF_SUB:
	case BPF_MUL:
	case BPF_AND:
	case BPF_OR:
	case BPF_XOR: break;
	case BPF_DIV:
	case BPF_MOD:
		if (x)
			emit_jump_to(g, insn(BPF_JMP32 | BPF_JEQ | BPF_K, R_X, 0, 0, 0),
				     TARGET_RET0);
		else if (f->k == 0) {
			emit_jump_to(g, insn(BPF_JMP | BPF_JA, 0, 0, 0, 0), TARGET_RET0);
			return 0;
		}
		break;
	case BPF_LSH:
	case BPF_RSH:
		if (!x) {
			emit(g, insn(BPF_ALU | op | BPF_K, R_A, 0, 0, (__s32)(f->k & 31)));
			return 0;
		}
		to_zero = jump_here_later(g, insn(BPF_JMP32 | BPF_JGT | BPF_K, R_X, 0, 0, 31));
		emit(g, insn(BPF_ALU | op | BPF_X, R_A, R_X, 0, 0));
		to_done = jump_here_later(g, insn(BPF_JMP | BPF_JA, 0, 0, 0, 0));
		land(g, to_zero);
		emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, R_A, 0, 0, 0));
		land(g, to_done);
		return 0;
	case BPF_NEG: emit(g, insn(BPF_ALU | BPF_NEG, R_A, 0, 0, 0)); return 0;
	default: return -1;
	}
	emit(g, insn(BPF_ALU | op | (x ? BPF_X : BPF_K), R_A, x ? R_X : 0, 0, x ? 0 : (__s32)f->k));
	return 0;
}

/* BPF_JMP at cBPF instruction i: 0, or -1 for a bad opcode or a target out of the program */
static int emit_jmp(struct gen *g, const struct sock_filter *f, size_t i, size_t len)
{
	__u8 op = BPF_OP(f->code);
	int x = BPF_SRC(f->code) == BPF_X;
	long t = (long)i + 1 + f->jt, e = (long)i + 1 + f->jf;
	struct bpf_insn cond;

	if (op == BPF_JA) {
		/* the offset is unsigned, wrapping as in bpf_filter(): it may lead backwards */
		__u32 to = (__u32)i + 1 + f->k;

		if (to >= len)
			return -1;
		if (to <= i) {
			emit(g,
			     insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_1, BPF_REG_10, S_LOOPS, 0));
			emit(g, insn(BPF_ALU64 | BPF_SUB | BPF_K, BPF_REG_1, 0, 0, 1));
			emit(g,
			     insn(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_1, S_LOOPS, 0));
			emit_jump_to(g, insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_1, 0, 0, 0),
				     TARGET_RET0);
		}
		emit_jump_to(g, insn(BPF_JMP | BPF_JA, 0, 0, 0, 0), (long)to);
		return 0;
	}
	if (op != BPF_JEQ && op != BPF_JGT && op != BPF_JGE && op != BPF_JSET)
		return -1;
	if ((size_t)t >= len || (size_t)e >= len)
		return -1;
	cond = insn(BPF_JMP32 | op | (x ? BPF_X : BPF_K), R_A, x ? R_X : 0, 0, x ? 0 : (__s32)f->k);
	if (f->jt == 0 && f->jf == 0)
		return 0;
	if (f->jt == 0) { /* true: fall through; false: jump */
		cond.off = 1;
		emit(g, cond);
		emit_jump_to(g, insn(BPF_JMP | BPF_JA, 0, 0, 0, 0), e);
		return 0;
	}
	emit_jump_to(g, cond, t);
	if (f->jf != 0)
		emit_jump_to(g, insn(BPF_JMP | BPF_JA, 0, 0, 0, 0), e);
	return 0;
}

static int emit_one(struct gen *g, const struct sock_filter *f, size_t i, size_t len)
{
	switch (BPF_CLASS(f->code)) {
	case BPF_LD:
	case BPF_LDX: return emit_ld(g, f);
	case BPF_ST:
	case BPF_STX:
		if (f->k >= BPF_MEMWORDS)
			return -1;
		emit(g, insn(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10,
			     BPF_CLASS(f->code) == BPF_ST ? R_A : R_X, S_MEM(f->k), 0));
		return 0;
	case BPF_ALU: return emit_alu(g, f);
	case BPF_JMP: return emit_jmp(g, f, i, len);
	case BPF_RET:
		if (BPF_RVAL(f->code) == BPF_A)
			emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, BPF_REG_0, R_A, 0, 0));
		else if (BPF_RVAL(f->code) == BPF_K)
			emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, (__s32)f->k));
		else
			return -1;
		emit(g, insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
		return 0;
	case BPF_MISC:
		if (BPF_MISCOP(f->code) == BPF_TAX)
			emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, R_X, R_A, 0, 0));
		else if (BPF_MISCOP(f->code) == BPF_TXA)
			emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, R_A, R_X, 0, 0));
		else
			return -1;
		return 0;
	default: return -1;
	}
}

/* The arguments into their registers and slots; A, X and the scratch words M[] read anywhere
 * start at 0 (the verifier reads no uninitialised stack). */
static void emit_prologue(struct gen *g, const struct sock_filter *prog, size_t len)
{
	unsigned used = 0;

	for (size_t i = 0; i < len; i++)
		if ((BPF_CLASS(prog[i].code) == BPF_LD || BPF_CLASS(prog[i].code) == BPF_LDX) &&
		    BPF_MODE(prog[i].code) == BPF_MEM && prog[i].k < BPF_MEMWORDS)
			used |= 1u << prog[i].k;
	emit_jump_to(g, insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_1, 0, 0, 0), TARGET_RET0);
	emit(g, insn(BPF_ALU64 | BPF_MOV | BPF_X, R_FRAME, BPF_REG_1, 0, 0));
	emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, R_CAP, BPF_REG_2, 0, 0));
	emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_3, 0, 0));
	emit(g, insn(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_3, S_WIRELEN, 0));
	emit(g, insn(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_4, S_DATA, 0));
	emit(g, insn(BPF_ALU | BPF_MOV | BPF_X, BPF_REG_5, BPF_REG_5, 0, 0));
	emit(g, insn(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_5, S_LINEAR, 0));
	emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, R_A, 0, 0, 0));
	emit(g, insn(BPF_ALU | BPF_MOV | BPF_K, R_X, 0, 0, 0));
	emit(g, insn(BPF_ST | BPF_MEM | BPF_DW, BPF_REG_10, 0, S_LOOPS, BACKWARD_JUMPS_MAX));
	for (int m = 0; m < BPF_MEMWORDS; m++)
		if (used & (1u << m))
			emit(g, insn(BPF_ST | BPF_MEM | BPF_DW, BPF_REG_10, 0, S_MEM(m), 0));
}

/* Which instructions a run can reach (the kernel refuses unreachable code): 0, or -1 when a
 * jump leads out of the program. */
static int mark_reachable(const struct sock_filter *prog, size_t len, unsigned char *reach)
{
	reach[0] = 1;
	for (int changed = 1; changed;) { /* backward jumps: again until nothing changes */
		changed = 0;
		for (size_t i = 0; i < len; i++) {
			const struct sock_filter *f = &prog[i];
			size_t to[2] = { i + 1, i + 1 };
			int nto = 1;

			if (!reach[i] || BPF_CLASS(f->code) == BPF_RET)
				continue;
			if (BPF_CLASS(f->code) == BPF_JMP && BPF_OP(f->code) == BPF_JA) {
				to[0] = (__u32)((__u32)i + 1 + f->k);
			} else if (BPF_CLASS(f->code) == BPF_JMP) {
				to[0] += f->jt;
				to[1] += f->jf;
				nto = 2;
			}
			for (int t = 0; t < nto; t++) {
				if (to[t] >= len)
					return -1;
				if (!reach[to[t]])
					changed = reach[to[t]] = 1;
			}
		}
	}
	return 0;
}

int ndq_cbpf_to_ebpf(const struct sock_filter *prog, size_t len, uint64_t **out, size_t *n,
		     char *err, size_t errlen)
{
	struct gen g;
	size_t *start = NULL, ret0, uses_ret0 = 0;
	unsigned char *reach = NULL;
	int rc = -1;

	memset(&g, 0, sizeof(g));
	*out = NULL;
	*n = 0;
	if (len == 0 || len > BPF_MAXINSNS || BPF_CLASS(prog[len - 1].code) != BPF_RET) {
		snprintf(err, errlen, "cBPF program of %zu instructions does not end in a return",
			 len);
		return -1;
	}
	start = calloc(len, sizeof(*start));
	reach = calloc(len, 1);
	if (!start || !reach)
		goto oom;
	if (mark_reachable(prog, len, reach)) {
		snprintf(err, errlen, "cBPF program jumps out of its %zu instructions", len);
		goto cleanup;
	}
	emit_prologue(&g, prog, len);
	for (size_t i = 0; i < len; i++) {
		start[i] = g.n;
		if (!reach[i])
			continue;
		if (emit_one(&g, &prog[i], i, len)) {
			snprintf(
				err, errlen,
				"cBPF instruction %zu (code 0x%04x, k %u) is not valid classic BPF",
				i, prog[i].code, prog[i].k);
			goto cleanup;
		}
	}
	ret0 = g.n;
	for (size_t f = 0; f < g.nfix; f++)
		uses_ret0 |= g.fix[f].target == TARGET_RET0;
	if (uses_ret0) { /* only when reachable: the kernel refuses dead code */
		emit(&g, insn(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0));
		emit(&g, insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
	}
	if (g.oom)
		goto oom;
	for (size_t f = 0; f < g.nfix; f++) {
		size_t to = g.fix[f].target == TARGET_RET0 ? ret0 : start[g.fix[f].target];
		long off = (long)to - (long)g.fix[f].at - 1;

		if (off > 32767 || off < -32768) {
			snprintf(err, errlen,
				 "cBPF program too long to translate (%zu eBPF "
				 "instructions)",
				 g.n);
			goto cleanup;
		}
		g.ins[g.fix[f].at].off = (__s16)off;
	}
	*out = (uint64_t *)g.ins;
	*n = g.n;
	g.ins = NULL;
	rc = 0;
	goto cleanup;
oom:
	snprintf(err, errlen, "out of memory translating the cBPF program");
cleanup:
	free(start);
	free(reach);
	free(g.fix);
	free(g.ins);
	return rc;
}
