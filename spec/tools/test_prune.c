/* test_prune.c - csrc/prune.c on hand-written programs, each with the exact program it must
 * become (registered in ctest as prune_unit; no kernel needed). What the kernel makes of the real
 * object, pruned and whole, is spec/prune_live_spec.lua's part.
 *
 * Each case is built from a frozen map (fd 100) whose bytes the case sets, so that a branch on a
 * configuration word goes one way or the other; the cases where the pass must NOT decide (the
 * value could have changed: a helper wrote over the spilled word, a store went through a pointer
 * that may point into the stack, a loop joined different values) matter as much as the others. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prune.h"

#define I(c, d, s, o, i) \
	((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define RO_FD 100
#define LDRO(dst, off) \
	I(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_VALUE, 0, RO_FD), I(0, 0, 0, 0, off)
#define LD64(dst, lo, hi) I(BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, lo), I(0, 0, 0, 0, hi)
#define FUNC(dst, rel) I(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_FUNC, 0, rel), I(0, 0, 0, 0, 0)
#define MOV(d, imm) I(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, imm)
#define MOVR(d, s) I(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOV32R(d, s) I(BPF_ALU | BPF_MOV | BPF_X, d, s, 0, 0)
#define ADD(d, imm) I(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, imm)
#define ADDR(d, s) I(BPF_ALU64 | BPF_ADD | BPF_X, d, s, 0, 0)
#define AND(d, imm) I(BPF_ALU64 | BPF_AND | BPF_K, d, 0, 0, imm)
#define LSH(d, imm) I(BPF_ALU64 | BPF_LSH | BPF_K, d, 0, 0, imm)
#define LDX(sz, d, s, off) I(BPF_LDX | BPF_MEM | (sz), d, s, off, 0)
#define STX(sz, d, s, off) I(BPF_STX | BPF_MEM | (sz), d, s, off, 0)
#define ST(sz, d, off, imm) I(BPF_ST | BPF_MEM | (sz), d, 0, off, imm)
#define JI(op, d, imm, off) I(BPF_JMP | (op) | BPF_K, d, 0, off, imm)
#define J32I(op, d, imm, off) I(BPF_JMP32 | (op) | BPF_K, d, 0, off, imm)
#define JR(op, d, s, off) I(BPF_JMP | (op) | BPF_X, d, s, off, 0)
#define JA(off) I(BPF_JMP | BPF_JA, 0, 0, off, 0)
#define CALL(id) I(BPF_JMP | BPF_CALL, 0, 0, 0, id)
#define PCALL(rel) I(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_CALL, 0, rel)
#define EXIT I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
#define N(a) (sizeof(a) / sizeof((a)[0]))

static int failed, checked;
static uint8_t rodata[64];
static const struct ndq_prune_ro RO = { RO_FD, rodata, sizeof(rodata) };

static void set_u32(size_t at, uint32_t v)
{
	memcpy(rodata + at, &v, sizeof(v));
}

static void dump(const char *what, const struct bpf_insn *x, size_t n)
{
	fprintf(stderr, "  %s (%zu):\n", what, n);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, "    %3zu: code 0x%02x dst r%u src r%u off %d imm %d\n", i,
			x[i].code, x[i].dst_reg, x[i].src_reg, x[i].off, x[i].imm);
}

/* in must become want (want == NULL: pruning must refuse it, and say why_has) */
static void expect(const char *name, const struct bpf_insn *in, size_t n,
		   const struct bpf_insn *want, size_t n_want, const char *why_has)
{
	struct ndq_prune_prog pin = { .insns = (struct bpf_insn *)in, .n = n }, out;
	char why[200];
	int rc = ndq_prune(&pin, &RO, 1, &out, why, sizeof(why));

	checked++;
	if (!want) {
		if (rc != 1 || !strstr(why, why_has)) {
			failed++;
			fprintf(stderr,
				"FAIL %s: want a refusal mentioning \"%s\", got rc %d (%s)\n", name,
				why_has, rc, why);
		}
		ndq_prune_free(&out);
		return;
	}
	if (rc != 0 || out.n != n_want || memcmp(out.insns, want, n_want * sizeof(*want)) != 0) {
		failed++;
		fprintf(stderr, "FAIL %s: rc %d (%s)\n", name, rc, why);
		dump("want", want, n_want);
		if (rc == 0)
			dump("got", out.insns, out.n);
	}
	ndq_prune_free(&out);
}

#define EXPECT(name, in, want) expect(name, in, N(in), want, N(want), NULL)
#define REFUSE(name, in, why) expect(name, in, N(in), NULL, 0, why)

/* if cfg word at 4 == 7: r0 = 2, else r0 = 1 */
static void branch_on_config(void)
{
	const struct bpf_insn in[] = {
		LDRO(1, 0), LDX(BPF_W, 2, 1, 4), JI(BPF_JEQ, 2, 7, 2), MOV(0, 1), EXIT, MOV(0, 2),
		EXIT,
	};
	const struct bpf_insn taken[] = { LDRO(1, 0), LDX(BPF_W, 2, 1, 4), JA(0), MOV(0, 2), EXIT };
	const struct bpf_insn fall[] = { LDRO(1, 0), LDX(BPF_W, 2, 1, 4), MOV(0, 1), EXIT };

	set_u32(4, 7);
	EXPECT("a branch on a config word that holds the value goes to its target", in, taken);
	set_u32(4, 8);
	EXPECT("a branch on a config word that does not hold it falls through", in, fall);
	/* the map's fd differs: not a frozen map, nothing is known */
	{
		struct bpf_insn other[N(in)];

		memcpy(other, in, sizeof(in));
		other[0].imm = RO_FD + 1;
		expect("a load from another map decides nothing", other, N(other), other, N(other),
		       NULL);
	}
}

/* The word spilled to r10-16, a helper called with a buffer at r10-4 (writes upward: the spill
 * is safe) or at r10-16 (may overwrite it), then the word reloaded and tested. */
static void spill_and_helper(void)
{
	const struct bpf_insn safe[] = {
		LDRO(1, 0),
		LDX(BPF_W, 2, 1, 0),
		STX(BPF_DW, 10, 2, -16),
		ST(BPF_W, 10, -4, 0),
		MOVR(2, 10),
		ADD(2, -4),
		MOV(1, 0),
		CALL(1),
		LDX(BPF_DW, 3, 10, -16),
		JI(BPF_JNE, 3, 0, 2),
		MOV(0, 0),
		EXIT,
		MOV(0, 1),
		EXIT,
	};
	const struct bpf_insn safe_out[] = {
		LDRO(1, 0),
		LDX(BPF_W, 2, 1, 0),
		STX(BPF_DW, 10, 2, -16),
		ST(BPF_W, 10, -4, 0),
		MOVR(2, 10),
		ADD(2, -4),
		MOV(1, 0),
		CALL(1),
		LDX(BPF_DW, 3, 10, -16),
		JA(0),
		MOV(0, 1),
		EXIT,
	};
	struct bpf_insn over[N(safe)];

	set_u32(0, 1);
	EXPECT("a spilled config word survives a helper writing above it", safe, safe_out);
	memcpy(over, safe, sizeof(safe));
	over[6].imm = -16; /* r2 = r10 - 16: the helper may write the spill */
	expect("a spilled word a helper may overwrite is unknown", over, N(over), over, N(over),
	       NULL);
}

/* stores through pointers: one that may point into the stack forgets it, one that cannot does not */
static void stores_through_pointers(void)
{
	const struct bpf_insn maybe[] = {
		MOVR(6, 1),
		LDRO(1, 0),
		LDX(BPF_W, 2, 1, 0),
		STX(BPF_DW, 10, 2, -8),
		LDX(BPF_DW, 4, 6, 0), /* an unknown number */
		MOVR(3, 10),
		ADDR(3, 4),
		ST(BPF_DW, 3, 0, 0),
		LDX(BPF_DW, 2, 10, -8),
		JI(BPF_JEQ, 2, 0, 1),
		EXIT,
		EXIT,
	};
	const struct bpf_insn ctx[] = {
		MOVR(6, 1),
		LDRO(1, 0),
		LDX(BPF_W, 2, 1, 0),
		STX(BPF_DW, 10, 2, -8),
		LDX(BPF_DW, 3, 6, 0), /* a pointer read from the context */
		ST(BPF_DW, 3, 0, 0),
		LDX(BPF_DW, 2, 10, -8),
		JI(BPF_JEQ, 2, 0, 1),
		EXIT,
		EXIT,
	};
	const struct bpf_insn ctx_out[] = {
		MOVR(6, 1),
		LDRO(1, 0),
		LDX(BPF_W, 2, 1, 0),
		STX(BPF_DW, 10, 2, -8),
		LDX(BPF_DW, 3, 6, 0),
		ST(BPF_DW, 3, 0, 0),
		LDX(BPF_DW, 2, 10, -8),
		EXIT,
	};

	set_u32(0, 5);
	EXPECT("a store through r10 plus an unknown number forgets the stack", maybe, maybe);
	EXPECT("a store through a pointer read from memory keeps the stack", ctx, ctx_out);
}

/* 32-bit views: a mov32 keeps the low half, jmp32 compares the low half, shifts by constants */
static void widths(void)
{
	const struct bpf_insn in[] = {
		LDRO(1, 0),   LDX(BPF_DW, 2, 1, 8),    /* 0x0000000100000005 */
		MOV32R(3, 2), J32I(BPF_JGT, 2, 4, 1),  /* low half 5 > 4: taken */
		EXIT,	      JI(BPF_JGT, 3, 5, 2),    /* 5 > 5: falls */
		LSH(2, 4),    JI(BPF_JEQ, 2, 0x50, 1), /* 0x1000000050 != 0x50: falls */
		EXIT,	      MOV(0, 1),
		EXIT,
	};
	const struct bpf_insn out[] = {
		LDRO(1, 0), LDX(BPF_DW, 2, 1, 8), MOV32R(3, 2), JA(0), LSH(2, 4), EXIT,
	};

	set_u32(8, 5);
	set_u32(12, 1);
	EXPECT("32-bit moves and jumps see the low half; 64-bit ones the whole word", in, out);
}

/* a loop joins different values: its condition stays */
static void loop(void)
{
	const struct bpf_insn in[] = {
		MOV(2, 0), ADD(2, 1), JI(BPF_JLT, 2, 3, -2), MOV(0, 0), EXIT,
	};

	EXPECT("a counter a loop changes is not a constant", in, in);
}

/* subprograms: one called (with a stack pointer: it may write the caller's frame), one not;
 * func_info and line_info follow */
static void subprograms(void)
{
	const struct bpf_insn in[] = {
		/* 0 */ LDRO(6, 0),
		/* 2 */ LDX(BPF_W, 7, 6, 0),
		/* 3 */ STX(BPF_DW, 10, 7, -8),
		/* 4 */ MOVR(1, 10),
		/* 5 */ ADD(1, -16),
		/* 6 */ PCALL(6),	      /* -> 13 */
		/* 7 */ JI(BPF_JEQ, 7, 0, 2), /* r7 survives calls: decided (falls) */
		/* 8 */ LDX(BPF_DW, 2, 10, -8),
		/* 9 */ JI(BPF_JEQ, 2, 0, 1), /* the spill may have been written: kept */
		/* 10 */ EXIT,
		/* 11 */ MOV(0, 9),
		/* 12 */ EXIT,
		/* 13: called */ ST(BPF_DW, 1, 8, 0),
		/* 14 */ MOV(0, 0),
		/* 15 */ EXIT,
		/* 16: never called */ MOV(0, 3),
		/* 17 */ EXIT,
	};
	const struct bpf_insn out[] = {
		LDRO(6, 0),
		LDX(BPF_W, 7, 6, 0),
		STX(BPF_DW, 10, 7, -8),
		MOVR(1, 10),
		ADD(1, -16),
		PCALL(5),
		LDX(BPF_DW, 2, 10, -8),
		JI(BPF_JEQ, 2, 0, 1),
		EXIT,
		MOV(0, 9),
		EXIT,
		ST(BPF_DW, 1, 8, 0),
		MOV(0, 0),
		EXIT,
	};
	struct bpf_func_info fi[] = { { 0, 1 }, { 13, 2 }, { 16, 3 } };
	struct bpf_line_info li[] = {
		{ 0, 0, 10, 1 },  { 7, 0, 11, 1 },  { 8, 0, 12, 1 },
		{ 11, 0, 13, 1 }, { 13, 0, 20, 1 }, { 16, 0, 30, 1 },
	};
	/* 7 went: its record moves to 8's place, where 8's own (the later) stays; 16 is gone */
	const uint32_t want_line_at[] = { 0, 7, 10, 12 }, want_line[] = { 10, 12, 13, 20 };
	struct ndq_prune_prog pin = { .insns = (struct bpf_insn *)in,
				      .n = N(in),
				      .func_info = fi,
				      .func_cnt = N(fi),
				      .func_rec = sizeof(fi[0]),
				      .line_info = li,
				      .line_cnt = N(li),
				      .line_rec = sizeof(li[0]) },
			      got;
	char why[200];
	int bad = 0;

	set_u32(0, 1);
	checked++;
	if (ndq_prune(&pin, &RO, 1, &got, why, sizeof(why)) != 0) {
		fprintf(stderr, "FAIL subprograms: %s\n", why);
		failed++;
		return;
	}
	bad |= got.n != N(out) || memcmp(got.insns, out, sizeof(out)) != 0;
	bad |= got.func_cnt != 2 || ((struct bpf_func_info *)got.func_info)[0].insn_off != 0 ||
	       ((struct bpf_func_info *)got.func_info)[1].insn_off != 12 ||
	       ((struct bpf_func_info *)got.func_info)[1].type_id != 2;
	bad |= got.line_cnt != N(want_line);
	for (uint32_t i = 0; !bad && i < got.line_cnt; i++) {
		struct bpf_line_info *l = &((struct bpf_line_info *)got.line_info)[i];

		bad |= l->insn_off != want_line_at[i] || l->line_off != want_line[i];
	}
	if (bad) {
		failed++;
		fprintf(stderr, "FAIL subprograms: func_info %u records, line_info %u records\n",
			got.func_cnt, got.line_cnt);
		dump("want", out, N(out));
		dump("got", got.insns, got.n);
		for (uint32_t i = 0; i < got.line_cnt; i++)
			fprintf(stderr, "    line %u at %u\n",
				((struct bpf_line_info *)got.line_info)[i].line_off,
				((struct bpf_line_info *)got.line_info)[i].insn_off);
	}
	ndq_prune_free(&got);
}

/* a callback handed to a helper (bpf_loop) stays, and re-aimed; a helper given a stack pointer
 * may then write anywhere in the frame */
static void callbacks(void)
{
	const struct bpf_insn in[] = {
		/* 0 */ LDRO(6, 0),
		/* 2 */ LDX(BPF_W, 7, 6, 0),
		/* 3 */ STX(BPF_DW, 10, 7, -16),
		/* 4 */ JI(BPF_JEQ, 7, 0, 1),
		/* 5 */ MOV(0, 5),
		/* 6 */ MOV(1, 4),
		/* 7 */ FUNC(2, 9), /* -> 17 */
		/* 9 */ MOVR(3, 10),
		/* 10 */ ADD(3, -8),
		/* 11 */ MOV(4, 0),
		/* 12 */ CALL(181),
		/* 13 */ LDX(BPF_DW, 2, 10, -16),
		/* 14 */ JI(BPF_JEQ, 2, 0, 1),
		/* 15 */ EXIT,
		/* 16 */ EXIT,
		/* 17 */ MOV(0, 0),
		/* 18 */ EXIT,
	};
	const struct bpf_insn out[] = {
		LDRO(6, 0),
		LDX(BPF_W, 7, 6, 0),
		STX(BPF_DW, 10, 7, -16),
		MOV(0, 5),
		MOV(1, 4),
		FUNC(2, 9),
		MOVR(3, 10),
		ADD(3, -8),
		MOV(4, 0),
		CALL(181),
		LDX(BPF_DW, 2, 10, -16),
		JI(BPF_JEQ, 2, 0, 1),
		EXIT,
		EXIT,
		MOV(0, 0),
		EXIT,
	};

	set_u32(0, 1);
	EXPECT("a callback stays and the stack is forgotten at a helper that may call it", in, out);
}

/* Every conditional jump, 64- and 32-bit, on constants: the pass must take the branch the CPU
 * would (the oracle: C on the same values). */
static int oracle_jump(uint8_t op, int is32, uint64_t a, uint64_t b)
{
	uint64_t ua = is32 ? (uint32_t)a : a, ub = is32 ? (uint32_t)b : b;
	int64_t sa = is32 ? (int32_t)a : (int64_t)a, sb = is32 ? (int32_t)b : (int64_t)b;

	switch (op) {
	case BPF_JEQ: return ua == ub;
	case BPF_JNE: return ua != ub;
	case BPF_JGT: return ua > ub;
	case BPF_JGE: return ua >= ub;
	case BPF_JLT: return ua < ub;
	case BPF_JLE: return ua <= ub;
	case BPF_JSGT: return sa > sb;
	case BPF_JSGE: return sa >= sb;
	case BPF_JSLT: return sa < sb;
	case BPF_JSLE: return sa <= sb;
	default: return (ua & ub) != 0; /* BPF_JSET */
	}
}

static void jumps(void)
{
	static const uint8_t ops[] = { BPF_JEQ,	 BPF_JNE,  BPF_JGT,  BPF_JGE,  BPF_JLT, BPF_JLE,
				       BPF_JSGT, BPF_JSGE, BPF_JSLT, BPF_JSLE, BPF_JSET };
	static const uint64_t vals[] = { 0,	     1,		 5,	      0x7fffffff,
					 0x80000000, 0xffffffff, 0x100000005, 0xffffffff00000000ull,
					 ~0ull };

	for (size_t o = 0; o < N(ops); o++)
		for (int is32 = 0; is32 < 2; is32++)
			for (size_t i = 0; i < N(vals); i++)
				for (size_t j = 0; j < N(vals); j++) {
					uint8_t cls = is32 ? BPF_JMP32 : BPF_JMP;
					const struct bpf_insn in[] = {
						LDRO(1, 0),
						LDX(BPF_DW, 2, 1, 16),
						LDX(BPF_DW, 3, 1, 24),
						I(cls | ops[o] | BPF_X, 2, 3, 2, 0),
						MOV(0, 0),
						EXIT,
						MOV(0, 1),
						EXIT,
					};
					const struct bpf_insn taken[] = {
						LDRO(1, 0),
						LDX(BPF_DW, 2, 1, 16),
						LDX(BPF_DW, 3, 1, 24),
						JA(0),
						MOV(0, 1),
						EXIT,
					};
					const struct bpf_insn fall[] = {
						LDRO(1, 0),
						LDX(BPF_DW, 2, 1, 16),
						LDX(BPF_DW, 3, 1, 24),
						MOV(0, 0),
						EXIT,
					};
					char name[96];
					int t = oracle_jump(ops[o], is32, vals[i], vals[j]);

					memcpy(rodata + 16, &vals[i], 8);
					memcpy(rodata + 24, &vals[j], 8);
					snprintf(name, sizeof(name),
						 "jump op 0x%02x%s %#llx, %#llx", ops[o],
						 is32 ? " (32)" : "", (unsigned long long)vals[i],
						 (unsigned long long)vals[j]);
					if (t)
						expect(name, in, N(in), taken, N(taken), NULL);
					else
						expect(name, in, N(in), fall, N(fall), NULL);
				}
}

/* Every ALU operation, 64- and 32-bit, on constants: the result, tested for equality with what
 * C computes, must send the branch the right way; shifts by the width or more, and the
 * operations this pass does not compute (byte swaps), must decide nothing. */
static int oracle_alu(uint8_t op, int is64, uint64_t a, uint64_t b, uint64_t *r)
{
	unsigned w = is64 ? 64 : 32;

	if (!is64)
		a = (uint32_t)a, b = (uint32_t)b;
	switch (op) {
	case BPF_ADD: *r = a + b; break;
	case BPF_SUB: *r = a - b; break;
	case BPF_MUL: *r = a * b; break;
	case BPF_DIV: *r = b ? a / b : 0; break;
	case BPF_MOD: *r = b ? a % b : a; break;
	case BPF_OR: *r = a | b; break;
	case BPF_AND: *r = a & b; break;
	case BPF_XOR: *r = a ^ b; break;
	case BPF_LSH:
		if (b >= w)
			return 0;
		*r = a << b;
		break;
	case BPF_RSH:
		if (b >= w)
			return 0;
		*r = a >> b;
		break;
	case BPF_ARSH:
		if (b >= w)
			return 0;
		*r = is64 ? (uint64_t)((int64_t)a >> b) : (uint32_t)((int32_t)a >> b);
		break;
	default: return 0;
	}
	if (!is64)
		*r = (uint32_t)*r;
	return 1;
}

static void alus(void)
{
	static const uint8_t ops[] = { BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_MOD, BPF_OR,
				       BPF_AND, BPF_XOR, BPF_LSH, BPF_RSH, BPF_ARSH };
	static const uint64_t vals[] = {
		0, 1, 3, 31, 32, 63, 64, 0x80000001, 0xfffffffffffffff0ull
	};

	for (size_t o = 0; o < N(ops); o++)
		for (int is64 = 0; is64 < 2; is64++)
			for (size_t i = 0; i < N(vals); i++)
				for (size_t j = 0; j < N(vals); j++) {
					uint8_t cls = is64 ? BPF_ALU64 : BPF_ALU;
					uint64_t r = 0;
					int known = oracle_alu(ops[o], is64, vals[i], vals[j], &r);
					struct bpf_insn in[] = {
						LDRO(1, 0),
						LDX(BPF_DW, 2, 1, 16),
						LDX(BPF_DW, 3, 1, 24),
						I(cls | ops[o] | BPF_X, 2, 3, 0, 0),
						LD64(4, (int32_t)(uint32_t)r,
						     (int32_t)(uint32_t)(r >> 32)),
						JR(BPF_JEQ, 2, 4, 2),
						MOV(0, 0),
						EXIT,
						MOV(0, 1),
						EXIT,
					};
					const struct bpf_insn taken[] = {
						in[0], in[1], in[2], in[3],	in[4],
						in[5], in[6], JA(0), MOV(0, 1), EXIT,
					};
					char name[96];

					memcpy(rodata + 16, &vals[i], 8);
					memcpy(rodata + 24, &vals[j], 8);
					snprintf(name, sizeof(name), "alu op 0x%02x%s %#llx, %#llx",
						 ops[o], is64 ? "" : " (32)",
						 (unsigned long long)vals[i],
						 (unsigned long long)vals[j]);
					if (known)
						expect(name, in, N(in), taken, N(taken), NULL);
					else
						expect(name, in, N(in), in, N(in), NULL);
				}
}

static void refusals(void)
{
	const struct bpf_insn ldabs[] = { I(BPF_LD | BPF_ABS | BPF_W, 0, 0, 0, 12), EXIT };
	const struct bpf_insn out_of[] = { JA(5), EXIT };
	const struct bpf_insn runs_off[] = { MOV(0, 0) };
	const struct bpf_insn into_imm[] = { JA(1), LD64(1, 1, 2), EXIT };

	REFUSE("a packet load is not modelled", ldabs, "packet load");
	REFUSE("a jump out of the program", out_of, "out of the program");
	REFUSE("a program that runs off its end", runs_off, "off the program's end");
	REFUSE("a jump into an ld_imm64", into_imm, "into an ld_imm64");
}

/* Random programs (a fixed seed; NDQ_FUZZ_SEED picks another): whatever the input, the pass must
 * return (under ASan and UBSan here), and a program it rewrites must stay well formed: every
 * jump, call and callback inside it, never into the second half of an ld_imm64, no longer than
 * the input. */
static uint64_t rng;

static uint32_t rnd(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng % n);
}

static int well_formed(const struct ndq_prune_prog *p)
{
	uint8_t *second = calloc(p->n + 1, 1);
	int ok = second != NULL;

	for (size_t i = 0; ok && i < p->n; i++)
		if (p->insns[i].code == (BPF_LD | BPF_IMM | BPF_DW))
			second[++i] = 1;
	for (size_t i = 0; ok && i < p->n; i++) {
		const struct bpf_insn *x = &p->insns[i];
		uint8_t cls = BPF_CLASS(x->code), op = BPF_OP(x->code);
		long t;

		if (second[i])
			continue;
		if (cls == BPF_LD && x->src_reg == BPF_PSEUDO_FUNC)
			t = (long)i + 1 + x->imm;
		else if ((cls == BPF_JMP || cls == BPF_JMP32) && op == BPF_CALL &&
			 x->src_reg == BPF_PSEUDO_CALL)
			t = (long)i + 1 + x->imm;
		else if ((cls == BPF_JMP || cls == BPF_JMP32) && op != BPF_CALL && op != BPF_EXIT)
			t = (long)i + 1 + (cls == BPF_JMP32 && op == BPF_JA ? x->imm : x->off);
		else
			continue;
		ok = t >= 0 && (size_t)t < p->n && !second[t];
	}
	free(second);
	return ok;
}

static void fuzz(long programs)
{
	static const uint8_t codes[] = {
		BPF_ALU64 | BPF_MOV | BPF_K,  BPF_ALU64 | BPF_MOV | BPF_X,
		BPF_ALU | BPF_MOV | BPF_X,    BPF_ALU64 | BPF_ADD | BPF_K,
		BPF_ALU64 | BPF_AND | BPF_K,  BPF_ALU | BPF_LSH | BPF_X,
		BPF_ALU64 | BPF_ARSH | BPF_X, BPF_ALU | BPF_END | BPF_TO_BE,
		BPF_ALU64 | BPF_NEG,	      BPF_LDX | BPF_MEM | BPF_W,
		BPF_LDX | BPF_MEM | BPF_DW,   BPF_LDX | BPF_MEMSX | BPF_B,
		BPF_STX | BPF_MEM | BPF_DW,   BPF_STX | BPF_MEM | BPF_H,
		BPF_ST | BPF_MEM | BPF_W,     BPF_STX | BPF_ATOMIC | BPF_DW,
		BPF_JMP | BPF_JEQ | BPF_K,    BPF_JMP | BPF_JSET | BPF_X,
		BPF_JMP32 | BPF_JGT | BPF_K,  BPF_JMP | BPF_JA,
		BPF_JMP32 | BPF_JA,	      BPF_JMP | BPF_CALL,
		BPF_JMP | BPF_EXIT,	      BPF_LD | BPF_IMM | BPF_DW,
		BPF_LD | BPF_ABS | BPF_W,     0xff,
	};
	long rewritten = 0, refused = 0, bad = 0;
	const char *seed = getenv("NDQ_FUZZ_SEED");

	rng = seed ? strtoull(seed, NULL, 10) | 1 : 20261202;
	for (long k = 0; k < programs; k++) {
		struct bpf_insn in[48];
		size_t n = 1 + rnd(N(in));
		struct ndq_prune_prog pin = { .insns = in, .n = n }, out;
		char why[200];
		int rc;

		for (size_t i = 0; i < n; i++) {
			struct bpf_insn *x = &in[i];

			*x = I(codes[rnd(N(codes))], rnd(11), rnd(11), (int16_t)(rnd(13) - 6),
			       (int32_t)(rnd(9) - 4));
			if (x->code == (BPF_LD | BPF_IMM | BPF_DW)) {
				x->src_reg = rnd(3) ? BPF_PSEUDO_MAP_VALUE : (uint8_t)rnd(7);
				x->imm = rnd(2) ? RO_FD : x->imm;
			}
			if ((x->code & 0xf0) == BPF_CALL)
				x->src_reg = (uint8_t)rnd(3);
			if (BPF_CLASS(x->code) == BPF_STX || BPF_CLASS(x->code) == BPF_ST ||
			    BPF_CLASS(x->code) == BPF_LDX)
				x->off = (int16_t)(rnd(2) ? -8 * (int)rnd(65) : x->off);
		}
		in[n - 1] = EXIT;
		for (size_t i = 0; i < sizeof(rodata); i++)
			rodata[i] = (uint8_t)rnd(3);
		rc = ndq_prune(&pin, &RO, 1, &out, why, sizeof(why));
		if (rc == 0) {
			rewritten++;
			if (out.n > n || !well_formed(&out)) {
				bad++;
				fprintf(stderr,
					"FAIL fuzz program %ld: a rewrite that is not well formed\n",
					k);
				dump("in", in, n);
				dump("out", out.insns, out.n);
			}
		} else if (rc == 1) {
			refused++;
		} else {
			bad++;
		}
		ndq_prune_free(&out);
	}
	checked++;
	if (bad || !rewritten || !refused) {
		failed++;
		fprintf(stderr, "FAIL fuzz: %ld bad, %ld rewritten, %ld refused\n", bad, rewritten,
			refused);
	}
	printf("prune fuzz: %ld programs, %ld rewritten, %ld refused, %ld bad\n", programs,
	       rewritten, refused, bad);
}

int main(void)
{
	branch_on_config();
	spill_and_helper();
	stores_through_pointers();
	widths();
	loop();
	subprograms();
	callbacks();
	jumps();
	alus();
	refusals();
	fuzz(200000);
	printf("prune: %d of %d cases as expected\n", checked - failed, checked);
	return failed ? 1 : 0;
}
