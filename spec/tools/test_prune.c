/* test_prune.c - csrc/prune.c on hand-written programs, each with the exact program it must
 * become (registered in ctest as prune_unit; no kernel needed). What the kernel makes of the real
 * object, pruned and whole, is spec/prune_live_spec.lua's part.
 *
 * Each case is built from a frozen map (fd 100) whose bytes the case sets, so that a branch on a
 * configuration word goes one way or the other; the cases where the pass must NOT decide (the
 * value could have changed: a helper wrote over the spilled word, a store went through a pointer
 * that may point into the stack, a loop joined different values) matter as much as the others.
 * The pass also drops what nothing reads any more (a computation or load whose register no
 * store, call, jump or exit uses; a store to a stack slot nothing may read): the cases keep the
 * values they check observable (returned, stored through the context, handed to a helper). */
#include <stdbool.h>
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
#define MOV32(d, imm) I(BPF_ALU | BPF_MOV | BPF_K, d, 0, 0, imm)
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

/* What a plain load of v from the frozen map must become: a move that gives the register the
 * same 64 bits, in one instruction (a 32-bit move zero-extends its immediate, as a load of 4
 * bytes or fewer does; a 64-bit one sign-extends it); where neither can, the load stays. */
static struct bpf_insn ro_load(uint8_t size, uint8_t dst, uint8_t src, int16_t off, uint64_t v)
{
	if (v >> 32 == 0)
		return MOV32(dst, (int32_t)(uint32_t)v);
	if (v >> 31 == 0x1ffffffffull) /* bits 31..63 all set */
		return MOV(dst, (int32_t)(uint32_t)v);
	return LDX(size, dst, src, off);
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
	/* the word and the map's address, read by the branch alone, go with it */
	const struct bpf_insn taken[] = { JA(0), MOV(0, 2), EXIT };
	const struct bpf_insn fall[] = { MOV(0, 1), EXIT };

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
	/* decided; then the spill and its reload have no reader left */
	const struct bpf_insn safe_out[] = {
		ST(BPF_W, 10, -4, 0),
		MOVR(2, 10),
		ADD(2, -4),
		MOV(1, 0),
		CALL(1),
		JA(0),
		MOV(0, 1),
		EXIT,
	};
	struct bpf_insn over[N(safe)], over_out[N(safe)];

	set_u32(0, 1);
	EXPECT("a spilled config word survives a helper writing above it", safe, safe_out);
	memcpy(over, safe, sizeof(safe));
	over[6].imm = -16; /* r2 = r10 - 16: the helper may write the spill */
	/* the load from the map still folds, and its spill stays: the helper reads from r10 - 16 */
	memcpy(over_out, over + 2, sizeof(over) - 2 * sizeof(over[0]));
	over_out[0] = MOV32(2, 1);
	expect("a spilled word a helper may overwrite is unknown", over, N(over), over_out,
	       N(over) - 2, NULL);
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
	const struct bpf_insn maybe_out[] = {
		MOVR(6, 1),
		MOV32(2, 5),
		STX(BPF_DW, 10, 2, -8),
		LDX(BPF_DW, 4, 6, 0),
		MOVR(3, 10),
		ADDR(3, 4),
		ST(BPF_DW, 3, 0, 0),
		LDX(BPF_DW, 2, 10, -8),
		JI(BPF_JEQ, 2, 0, 1),
		EXIT,
		EXIT,
	};
	/* decided (both ways end alike), so the spill and the reload go too */
	const struct bpf_insn ctx_out[] = {
		MOVR(6, 1),
		LDX(BPF_DW, 3, 6, 0),
		ST(BPF_DW, 3, 0, 0),
		EXIT,
	};

	set_u32(0, 5);
	EXPECT("a store through r10 plus an unknown number forgets the stack", maybe, maybe_out);
	EXPECT("a store through a pointer read from memory keeps the stack", ctx, ctx_out);
}

/* 32-bit views: a mov32 keeps the low half, jmp32 compares the low half, shifts by constants */
static void widths(void)
{
	const struct bpf_insn in[] = {
		LDRO(1, 0),   LDX(BPF_DW, 2, 1, 8),    /* 0x0000000100000005 */
		MOV32R(3, 2), J32I(BPF_JGT, 2, 4, 1),  /* low half 5 > 4: taken */
		EXIT,	      JI(BPF_JGT, 3, 5, 3),    /* 5 > 5: falls */
		LSH(2, 4),    JI(BPF_JEQ, 2, 0x50, 2), /* 0x1000000050 != 0x50: falls */
		MOVR(0, 2),   EXIT,
		MOV(0, 1),    EXIT,
	};
	/* the word needs two instructions: its load stays; r3 went with the branch that read it */
	const struct bpf_insn out[] = {
		LDRO(1, 0), LDX(BPF_DW, 2, 1, 8), JA(0), LSH(2, 4), MOVR(0, 2), EXIT,
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
		MOV32(7, 1),
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
	/* 0 (the map's address) went: its record moves to 2's place; 7 went: its record moves to 8's
	 * place, where 8's own (the later) stays; 16 is gone */
	const uint32_t want_line_at[] = { 0, 5, 8, 10 }, want_line[] = { 10, 12, 13, 20 };
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
	       ((struct bpf_func_info *)got.func_info)[1].insn_off != 10 ||
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
	/* r0 = 5 goes: the call overwrites it unread */
	const struct bpf_insn out[] = {
		MOV32(7, 1),
		STX(BPF_DW, 10, 7, -16),
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

/* The start of both oracle cases: the words at 16 and 24 of the map into r2 and r3, and out
 * through the context (so that they stay, as loads or moves) */
#define WORDS                                                                           \
	LDRO(6, 0), LDX(BPF_DW, 2, 6, 16), LDX(BPF_DW, 3, 6, 24), STX(BPF_DW, 1, 2, 0), \
		STX(BPF_DW, 1, 3, 8)

/* What WORDS must become: the map's address while a load from it stays, the two
 * words at 16 and 24 (into r2 and r3, ro_load's way), and their stores through the context. */
static size_t words(struct bpf_insn *w, uint64_t a, uint64_t b)
{
	const struct bpf_insn la = ro_load(BPF_DW, 2, 6, 16, a), lb = ro_load(BPF_DW, 3, 6, 24, b);
	const struct bpf_insn ro[] = { LDRO(6, 0) };
	size_t n = 0;

	if (BPF_CLASS(la.code) == BPF_LDX || BPF_CLASS(lb.code) == BPF_LDX) {
		w[n++] = ro[0];
		w[n++] = ro[1];
	}
	w[n++] = la;
	w[n++] = lb;
	w[n++] = STX(BPF_DW, 1, 2, 0);
	w[n++] = STX(BPF_DW, 1, 3, 8);
	return n;
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
						WORDS,	   I(cls | ops[o] | BPF_X, 2, 3, 2, 0),
						MOV(0, 0), EXIT,
						MOV(0, 1), EXIT,
					};
					struct bpf_insn want[12];
					size_t n = words(want, vals[i], vals[j]);
					char name[96];

					if (oracle_jump(ops[o], is32, vals[i], vals[j])) {
						want[n++] = JA(0);
						want[n++] = MOV(0, 1);
					} else {
						want[n++] = MOV(0, 0);
					}
					want[n++] = EXIT;
					memcpy(rodata + 16, &vals[i], 8);
					memcpy(rodata + 24, &vals[j], 8);
					snprintf(name, sizeof(name),
						 "jump op 0x%02x%s %#llx, %#llx", ops[o],
						 is32 ? " (32)" : "", (unsigned long long)vals[i],
						 (unsigned long long)vals[j]);
					expect(name, in, N(in), want, n, NULL);
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
					/* the result goes out through the context too */
					const struct bpf_insn in[] = {
						WORDS,
						I(cls | ops[o] | BPF_X, 2, 3, 0, 0),
						STX(BPF_DW, 1, 2, 16),
						LD64(4, (int32_t)(uint32_t)r,
						     (int32_t)(uint32_t)(r >> 32)),
						JR(BPF_JEQ, 2, 4, 2),
						MOV(0, 0),
						EXIT,
						MOV(0, 1),
						EXIT,
					};
					struct bpf_insn want[20];
					size_t n = words(want, vals[i], vals[j]);
					char name[96];

					want[n++] = in[6]; /* the operation, its store */
					want[n++] = in[7];
					if (known) { /* decided: r4, read by the branch alone, goes */
						want[n++] = JA(0);
					} else {
						want[n++] = in[8];
						want[n++] = in[9];
						want[n++] = in[10];
						want[n++] = MOV(0, 0);
						want[n++] = EXIT;
					}
					want[n++] = MOV(0, 1);
					want[n++] = EXIT;
					memcpy(rodata + 16, &vals[i], 8);
					memcpy(rodata + 24, &vals[j], 8);
					snprintf(name, sizeof(name), "alu op 0x%02x%s %#llx, %#llx",
						 ops[o], is64 ? "" : " (32)",
						 (unsigned long long)vals[i],
						 (unsigned long long)vals[j]);
					expect(name, in, N(in), want, n, NULL);
				}
}

/* What nothing reads goes: a value overwritten unread, a counter that only feeds itself around a
 * loop, a store to a stack slot no instruction may read. A slot stays when a load reads it, a
 * helper reads from a pointer below it, a subprogram is handed a pointer into the frame (it may
 * reach any slot), or a load goes through a pointer that may be anywhere in the stack. */
static void dead_code(void)
{
	const struct bpf_insn regs[] = {
		MOV(2, 5),  MOV(2, 7), MOV(4, 0), ADD(4, 1), ADD(2, -1), JI(BPF_JNE, 2, 0, -3),
		MOVR(0, 2), EXIT,
	};
	const struct bpf_insn regs_out[] = {
		MOV(2, 7), ADD(2, -1), JI(BPF_JNE, 2, 0, -2), MOVR(0, 2), EXIT,
	};
	const struct bpf_insn slots_in[] = {
		ST(BPF_DW, 10, -8, 1),	/* the helper reads it */
		ST(BPF_DW, 10, -24, 2), /* nothing does */
		ST(BPF_DW, 10, -32, 3), /* reloaded */
		LDX(BPF_DW, 6, 10, -32),
		MOVR(2, 10),
		ADD(2, -16),
		MOV(1, 0),
		CALL(1),
		MOVR(0, 6),
		EXIT,
	};
	const struct bpf_insn anywhere[] = {
		ST(BPF_DW, 10, -24, 2),
		LDX(BPF_DW, 3, 1, 0),
		MOVR(4, 10),
		ADDR(4, 3),
		LDX(BPF_DW, 0, 4, 0),
		EXIT,
	};
	const struct bpf_insn subprog[] = {
		ST(BPF_DW, 10, -24, 2), MOVR(1, 10), ADD(1, -8), PCALL(1), EXIT,
		LDX(BPF_DW, 0, 1, -16), EXIT,
	};
	const struct bpf_insn helper[] = {
		ST(BPF_DW, 10, -24, 2), MOVR(1, 10), ADD(1, -8), CALL(1), EXIT,
	};
	const struct bpf_insn helper_out[] = { MOVR(1, 10), ADD(1, -8), CALL(1), EXIT };

	EXPECT("a value overwritten unread and a counter that only feeds itself go", regs,
	       regs_out);
	struct bpf_insn slots_out[N(slots_in) - 1];

	slots_out[0] = slots_in[0]; /* all but the store to r10 - 24 */
	memcpy(slots_out + 1, slots_in + 2, sizeof(slots_out) - sizeof(slots_out[0]));
	EXPECT("a store to a slot nothing may read goes; read ones stay", slots_in, slots_out);
	EXPECT("a store stays under a load through a pointer anywhere in the stack", anywhere,
	       anywhere);
	EXPECT("a store stays when a subprogram gets a pointer into the frame", subprog, subprog);
	EXPECT("a store below the pointer a helper reads from goes", helper, helper_out);
}

/* Loads from the frozen map become moves of what they load, whatever their width; what they
 * cannot (a sign-extending load, a word no single move gives, an address that is the map's on one
 * path only) stays a load. The values go to a helper (r1-r5) and through the context (r9). */
static void folds(void)
{
	const struct bpf_insn in[] = {
		MOVR(9, 1),
		LDRO(6, 0),
		LDX(BPF_B, 1, 6, 33),  /* 0xfe */
		LDX(BPF_H, 2, 6, 34),  /* 0xfffe */
		LDX(BPF_W, 3, 6, 36),  /* 0xfffffffe: zero-extended */
		LDX(BPF_DW, 4, 6, 40), /* -2: sign-extended */
		I(BPF_LDX | BPF_MEMSX | BPF_B, 5, 6, 33, 0),
		CALL(1),
		LDX(BPF_DW, 7, 6, 48), /* 0x100000000: no single move */
		STX(BPF_DW, 9, 7, 0),
		ADD(6, 32),
		LDX(BPF_W, 6, 6, 4), /* through the moved pointer, into its own register */
		STX(BPF_DW, 9, 6, 8),
		MOV(0, 0),
		EXIT,
	};
	const struct bpf_insn out[] = {
		MOVR(9, 1),
		LDRO(6, 0),
		MOV32(1, 0xfe),
		MOV32(2, 0xfffe),
		MOV32(3, -2),
		MOV(4, -2),
		I(BPF_LDX | BPF_MEMSX | BPF_B, 5, 6, 33, 0),
		CALL(1),
		LDX(BPF_DW, 7, 6, 48),
		STX(BPF_DW, 9, 7, 0),
		MOV32(6, 0xfffffffe),
		STX(BPF_DW, 9, 6, 8),
		MOV(0, 0),
		EXIT,
	};
	/* r3 is the map on one path, the context on the other */
	const struct bpf_insn join[] = {
		LDX(BPF_DW, 2, 1, 0), LDRO(3, 0),	    JI(BPF_JEQ, 2, 0, 1),
		MOVR(3, 1),	      LDX(BPF_W, 0, 3, 32), EXIT,
	};
	const uint64_t dw[2] = { (uint64_t)-2, 1ull << 32 };

	memset(rodata + 32, 0xff, 8);
	rodata[33] = 0xfe;
	rodata[34] = 0xfe;
	rodata[36] = 0xfe;
	memcpy(rodata + 40, dw, sizeof(dw));
	EXPECT("loads from the frozen map become moves where one move gives the same bits", in,
	       out);
	EXPECT("a load through a register that is the map on one path only stays", join, join);
}

static void refusals(void)
{
	const struct bpf_insn ldabs[] = { I(BPF_LD | BPF_ABS | BPF_W, 0, 0, 0, 12), EXIT };
	const struct bpf_insn out_of[] = { JA(5), EXIT };
	const struct bpf_insn runs_off[] = { MOV(0, 0) };
	const struct bpf_insn into_imm[] = { JA(1), LD64(1, 1, 2), EXIT };
	/* BPF_LOAD_ACQ (Linux 6.15 uapi): r0 = *(u64 *)(r10 - 8), acquire */
	const struct bpf_insn acquire[] = {
		ST(BPF_DW, 10, -8, 1),
		I(BPF_STX | BPF_ATOMIC | BPF_DW, 0, 10, -8, 0x100),
		EXIT,
	};
	const struct bpf_insn fetch_add[] = {
		ST(BPF_DW, 10, -8, 1),
		MOV(0, 1),
		I(BPF_STX | BPF_ATOMIC | BPF_DW, 10, 0, -8, BPF_ADD | BPF_FETCH),
		EXIT,
	};

	REFUSE("a packet load is not modelled", ldabs, "packet load");
	REFUSE("a jump out of the program", out_of, "out of the program");
	REFUSE("a program that runs off its end", runs_off, "off the program's end");
	REFUSE("a jump into an ld_imm64", into_imm, "into an ld_imm64");
	REFUSE("a load-acquire (an atomic that writes its dst_reg) is not modelled", acquire,
	       "atomic operation not modelled");
	EXPECT("a fetching add is modelled", fetch_add, fetch_add);
}

/* --- the oracle for rewritten programs: an interpreter ------------------------------------------
 * Runs a program as the kernel would, for programs the verifier would accept: a register read
 * before it is written, a stack byte read before it is written, a pointer used as a number, an
 * access out of its region, a loop past MAX_STEPS: the run is invalid. Each helper or kfunc
 * call reads its arguments (8 bytes from each pointer up) into the trace and writes 4 bytes
 * from each stack pointer up; a callback handed to one runs once. A rewritten program must run
 * valid wherever its input did, to the same r0, context bytes and trace. */
#define MAX_STEPS 20000
#define MAX_DEPTH 8
#define CTX_SIZE 64

enum { T_NONE, T_NUM, T_STACK, T_CTX, T_RO, T_FUNC };

struct reg {
	uint64_t v; /* the number; the offset into the region (stack: from its frame's top) */
	uint8_t t;
	uint8_t frame;
};

struct vm {
	const struct bpf_insn *x;
	size_t n;
	uint8_t stack[MAX_DEPTH][512], init[MAX_DEPTH][512];
	struct reg spill[MAX_DEPTH][64]; /* a pointer stored whole into slot k (t T_NONE: none) */
	uint8_t ctx[CTX_SIZE];
	uint64_t trace;
	long steps;
};

static void mix(struct vm *m, uint64_t v)
{
	m->trace = (m->trace ^ v) * 0x100000001b3ull;
}

static size_t width(uint8_t code)
{
	switch (BPF_SIZE(code)) {
	case BPF_B: return 1;
	case BPF_H: return 2;
	case BPF_W: return 4;
	default: return 8;
	}
}

static struct reg num(uint64_t v)
{
	return (struct reg){ .v = v, .t = T_NUM };
}

/* the bytes [off, off + size) of the region p points into, or NULL */
static uint8_t *at(struct vm *m, struct reg p, int64_t off, size_t size, bool write)
{
	int64_t a = (int64_t)p.v + off;

	switch (p.t) {
	case T_STACK:
		if (a < -512 || a + (int64_t)size > 0)
			return NULL;
		return &m->stack[p.frame][512 + a];
	case T_CTX: return a < 0 || a + (int64_t)size > CTX_SIZE ? NULL : &m->ctx[a];
	case T_RO:
		return write || a < 0 || a + (int64_t)size > (int64_t)sizeof(rodata) ? NULL :
										       &rodata[a];
	default: return NULL;
	}
}

static int load(struct vm *m, struct reg p, int64_t off, size_t size, bool sx, struct reg *out)
{
	uint8_t *b = at(m, p, off, size, false);
	uint64_t v = 0;

	if (!b)
		return -1;
	if (p.t == T_STACK) {
		int64_t a = (int64_t)p.v + off + 512;
		struct reg *sp = &m->spill[p.frame][a / 8];

		for (size_t i = 0; i < size; i++)
			if (!m->init[p.frame][a + (int64_t)i])
				return -1;
		if (size == 8 && a % 8 == 0 && sp->t != T_NONE) {
			*out = *sp;
			return 0;
		}
		for (int64_t k = a / 8; k <= (a + (int64_t)size - 1) / 8; k++)
			if (m->spill[p.frame][k].t != T_NONE)
				return -1; /* part of a pointer */
	}
	memcpy(&v, b, size);
	if (sx && size < 8 && (v >> (size * 8 - 1)) & 1)
		v |= ~0ull << (size * 8);
	*out = num(v);
	return 0;
}

static int store(struct vm *m, struct reg p, int64_t off, size_t size, struct reg v)
{
	uint8_t *b = at(m, p, off, size, true);

	if (!b || v.t == T_NONE)
		return -1;
	if (p.t == T_STACK) {
		int64_t a = (int64_t)p.v + off + 512;

		for (int64_t k = a / 8; k <= (a + (int64_t)size - 1) / 8; k++)
			m->spill[p.frame][k].t = T_NONE;
		memset(&m->init[p.frame][a], 1, size);
		if (v.t != T_NUM) {
			if (size != 8 || a % 8)
				return -1;
			m->spill[p.frame][a / 8] = v;
			memset(b, 0, 8);
			return 0;
		}
	} else if (v.t != T_NUM) {
		return -1;
	}
	memcpy(b, &v.v, size);
	return 0;
}

static int run(struct vm *m, size_t pc, struct reg *r, int depth);

/* a helper or kfunc: its arguments into the trace, 4 bytes written from each stack pointer up,
 * the callback among them run once; r0 a number made from all that */
static int helper(struct vm *m, const struct bpf_insn *x, struct reg *r, int depth)
{
	struct reg cb = { .t = T_NONE }, data = num(0);

	mix(m, (uint64_t)x->imm * 7 + x->src_reg);
	for (int i = 1; i <= 5; i++) {
		struct reg a = r[i];

		mix(m, a.t);
		if (a.t == T_NUM) {
			mix(m, a.v);
		} else if (a.t == T_FUNC) {
			cb = a;
		} else if (a.t != T_NONE) {
			size_t len = 8;

			if (a.t == T_STACK && (int64_t)a.v < 0 && (int64_t)a.v > -8)
				len = (size_t) - (int64_t)a.v;
			for (size_t k = 0; k < len; k++) {
				struct reg byte;

				if (load(m, a, (int64_t)k, 1, false, &byte) == 0)
					mix(m, byte.v);
			}
			data = a;
		}
	}
	for (int i = 1; i <= 5; i++)
		if (r[i].t == T_STACK && at(m, r[i], 0, 4, true)) {
			uint32_t w = (uint32_t)(m->trace >> 7);

			memcpy(at(m, r[i], 0, 4, true), &w, 4);
			memset(&m->init[r[i].frame][512 + (int64_t)r[i].v], 1, 4);
			for (int64_t k = (512 + (int64_t)r[i].v) / 8;
			     k <= (512 + (int64_t)r[i].v + 3) / 8; k++)
				m->spill[r[i].frame][k].t = T_NONE;
		}
	if (cb.t == T_FUNC) {
		struct reg cr[11] = { [1] = num(0), [2] = data };

		if (depth + 1 >= MAX_DEPTH || run(m, (size_t)cb.v, cr, depth + 1))
			return -1;
		mix(m, cr[0].v);
	}
	r[0] = num(m->trace);
	for (int i = 1; i <= 5; i++)
		r[i].t = T_NONE;
	return 0;
}

static int alu_op(const struct bpf_insn *x, struct reg *d, struct reg s)
{
	bool is64 = BPF_CLASS(x->code) == BPF_ALU64;
	uint8_t op = BPF_OP(x->code);
	uint64_t a = d->v, b = s.v, res;
	unsigned w = is64 ? 64 : 32;

	if (op == BPF_MOV) {
		if (s.t == T_NONE || (s.t != T_NUM && (!is64 || x->off)))
			return -1;
		if (x->off && x->off != 8 && x->off != 16 && x->off != 32)
			return -1;
		*d = s;
		if (s.t != T_NUM)
			return 0;
		if (x->off) {
			unsigned k = (unsigned)x->off;

			d->v = (b >> (k - 1)) & 1 ? b | (~0ull << k) : b & ((1ull << k) - 1);
		}
		if (!is64)
			d->v = (uint32_t)d->v;
		return 0;
	}
	if (d->t == T_NONE || s.t == T_NONE || x->off)
		return -1;
	if (d->t != T_NUM || s.t != T_NUM) { /* pointer arithmetic: a number added or taken */
		if (is64 && op == BPF_ADD && d->t == T_NUM) {
			*d = s;
			d->v += a;
			return 0;
		}
		if (!is64 || s.t != T_NUM || (op != BPF_ADD && op != BPF_SUB))
			return -1;
		d->v = op == BPF_ADD ? a + b : a - b;
		return 0;
	}
	if (!is64)
		a = (uint32_t)a, b = (uint32_t)b;
	switch (op) {
	case BPF_ADD: res = a + b; break;
	case BPF_SUB: res = a - b; break;
	case BPF_MUL: res = a * b; break;
	case BPF_DIV: res = b ? a / b : 0; break;
	case BPF_MOD: res = b ? a % b : a; break;
	case BPF_OR: res = a | b; break;
	case BPF_AND: res = a & b; break;
	case BPF_XOR: res = a ^ b; break;
	case BPF_NEG: res = -a; break;
	case BPF_LSH: res = a << (b & (w - 1)); break;
	case BPF_RSH: res = a >> (b & (w - 1)); break;
	case BPF_ARSH:
		res = is64 ? (uint64_t)((int64_t)a >> (b & 63)) :
			     (uint64_t)(uint32_t)((int32_t)a >> (b & 31));
		break;
	case BPF_END:
		if (x->imm != 16 && x->imm != 32 && x->imm != 64)
			return -1;
		res = d->v;
		if (BPF_SRC(x->code) == BPF_TO_BE)
			res = x->imm == 16 ? __builtin_bswap16((uint16_t)res) :
			      x->imm == 32 ? __builtin_bswap32((uint32_t)res) :
					     __builtin_bswap64(res);
		else
			res = x->imm == 64 ? res : res & ((1ull << x->imm) - 1);
		d->v = res;
		return 0;
	default: return -1;
	}
	d->v = is64 ? res : (uint32_t)res;
	return 0;
}

static int cond(const struct bpf_insn *x, struct reg a, struct reg b, bool *taken)
{
	bool is32 = BPF_CLASS(x->code) == BPF_JMP32;
	uint64_t ua, ub;
	int64_t sa, sb;

	if (a.t == T_NONE || b.t == T_NONE)
		return -1;
	if (a.t != T_NUM || b.t != T_NUM) { /* a pointer is never NULL */
		uint8_t op = BPF_OP(x->code);

		if (is32 || b.t != T_NUM || b.v != 0 || (op != BPF_JEQ && op != BPF_JNE))
			return -1;
		*taken = op == BPF_JNE;
		return 0;
	}
	ua = is32 ? (uint32_t)a.v : a.v, ub = is32 ? (uint32_t)b.v : b.v;
	sa = is32 ? (int32_t)a.v : (int64_t)a.v, sb = is32 ? (int32_t)b.v : (int64_t)b.v;
	switch (BPF_OP(x->code)) {
	case BPF_JEQ: *taken = ua == ub; break;
	case BPF_JNE: *taken = ua != ub; break;
	case BPF_JGT: *taken = ua > ub; break;
	case BPF_JGE: *taken = ua >= ub; break;
	case BPF_JLT: *taken = ua < ub; break;
	case BPF_JLE: *taken = ua <= ub; break;
	case BPF_JSGT: *taken = sa > sb; break;
	case BPF_JSGE: *taken = sa >= sb; break;
	case BPF_JSLT: *taken = sa < sb; break;
	case BPF_JSLE: *taken = sa <= sb; break;
	case BPF_JSET: *taken = (ua & ub) != 0; break;
	default: return -1;
	}
	return 0;
}

/* runs from pc in frame `depth` until its exit: 0 with r[0] set, or -1 (invalid) */
static int run(struct vm *m, size_t pc, struct reg *r, int depth)
{
	memset(m->init[depth], 0, sizeof(m->init[depth]));
	for (int k = 0; k < 64; k++)
		m->spill[depth][k].t = T_NONE;
	r[10] = (struct reg){ .t = T_STACK, .frame = (uint8_t)depth };
	for (;;) {
		const struct bpf_insn *x;
		uint8_t cls, op, mode;

		if (pc >= m->n || ++m->steps > MAX_STEPS)
			return -1;
		x = &m->x[pc];
		cls = BPF_CLASS(x->code), op = BPF_OP(x->code), mode = BPF_MODE(x->code);
		if (x->dst_reg > 10 || x->src_reg > 10)
			return -1;
		switch (cls) {
		case BPF_LD:
			if (x->code != (BPF_LD | BPF_IMM | BPF_DW) || pc + 1 >= m->n ||
			    x->dst_reg == 10)
				return -1;
			if (x->src_reg == 0)
				r[x->dst_reg] =
					num((uint32_t)x->imm | (uint64_t)(uint32_t)x[1].imm << 32);
			else if (x->src_reg == BPF_PSEUDO_MAP_VALUE && x->imm == RO_FD)
				r[x->dst_reg] = (struct reg){ .v = (uint32_t)x[1].imm, .t = T_RO };
			else if (x->src_reg == BPF_PSEUDO_FUNC)
				r[x->dst_reg] =
					(struct reg){ .v = pc + 1 + (uint64_t)(int64_t)x->imm,
						      .t = T_FUNC };
			else
				return -1;
			pc += 2;
			continue;
		case BPF_LDX:
			if ((mode != BPF_MEM && mode != BPF_MEMSX) || x->dst_reg == 10 ||
			    load(m, r[x->src_reg], x->off, width(x->code), mode == BPF_MEMSX,
				 &r[x->dst_reg]))
				return -1;
			break;
		case BPF_ST:
		case BPF_STX: {
			size_t size = width(x->code);
			struct reg v = cls == BPF_ST ? num((uint64_t)(int64_t)x->imm) :
						       r[x->src_reg];

			if (mode == BPF_ATOMIC && cls == BPF_STX) {
				struct reg old;
				uint64_t nv;

				if ((size != 4 && size != 8) || v.t != T_NUM ||
				    load(m, r[x->dst_reg], x->off, size, false, &old))
					return -1;
				switch (x->imm & ~BPF_FETCH) {
				case BPF_ADD: nv = old.v + v.v; break;
				case BPF_OR: nv = old.v | v.v; break;
				case BPF_AND: nv = old.v & v.v; break;
				case BPF_XOR: nv = old.v ^ v.v; break;
				default:
					if (x->imm == BPF_XCHG) {
						nv = v.v;
					} else if (x->imm == BPF_CMPXCHG) {
						if (r[0].t != T_NUM)
							return -1;
						nv = (size == 4 ?
							      (uint32_t)r[0].v == (uint32_t)old.v :
							      r[0].v == old.v) ?
							     v.v :
							     old.v;
						r[0] = old;
					} else {
						return -1;
					}
				}
				if (store(m, r[x->dst_reg], x->off, size, num(nv)))
					return -1;
				if ((x->imm & BPF_FETCH) && x->imm != BPF_CMPXCHG)
					r[x->src_reg] = old;
			} else if (mode != BPF_MEM || store(m, r[x->dst_reg], x->off, size, v)) {
				return -1;
			}
			break;
		}
		case BPF_ALU:
		case BPF_ALU64: {
			struct reg s = BPF_SRC(x->code) == BPF_X && op != BPF_END && op != BPF_NEG ?
					       r[x->src_reg] :
					       num(cls == BPF_ALU64 ? (uint64_t)(int64_t)x->imm :
								      (uint32_t)x->imm);

			if (x->dst_reg == 10 || alu_op(x, &r[x->dst_reg], s))
				return -1;
			break;
		}
		default:
			if (op == BPF_EXIT) {
				if (cls != BPF_JMP || r[0].t != T_NUM)
					return -1;
				return 0;
			}
			if (op == BPF_CALL) {
				if (cls != BPF_JMP)
					return -1;
				if (x->src_reg == BPF_PSEUDO_CALL) {
					struct reg cr[11] = { 0 };

					if (depth + 1 >= MAX_DEPTH)
						return -1;
					memcpy(&cr[1], &r[1], 5 * sizeof(*r));
					if (run(m, pc + 1 + (size_t)(int64_t)x->imm, cr, depth + 1))
						return -1;
					r[0] = cr[0];
					for (int i = 1; i <= 5; i++)
						r[i].t = T_NONE;
				} else if (x->src_reg > BPF_PSEUDO_KFUNC_CALL ||
					   helper(m, x, r, depth)) {
					return -1;
				}
				break;
			}
			if (op == BPF_JA) {
				pc = pc + 1 + (size_t)(int64_t)(cls == BPF_JMP32 ? x->imm : x->off);
				continue;
			} else {
				bool t;
				struct reg b = BPF_SRC(x->code) == BPF_X ?
						       r[x->src_reg] :
						       num((uint64_t)(int64_t)x->imm);

				if (op > BPF_JSLE || op == 0xe0 || cond(x, r[x->dst_reg], b, &t))
					return -1;
				if (t) {
					pc = pc + 1 + (size_t)(int64_t)x->off;
					continue;
				}
			}
		}
		pc++;
	}
}

/* -1: the input does not run valid; 0: the rewrite runs the same; 1: it does not */
static int differs(const struct bpf_insn *in, size_t n, const struct bpf_insn *out, size_t n_out,
		   uint64_t seed)
{
	static struct vm a, b;
	struct reg ra[11] = { [1] = { .t = T_CTX } }, rb[11] = { [1] = { .t = T_CTX } };

	memset(&a, 0, sizeof(a));
	for (size_t i = 0; i < CTX_SIZE; i++)
		a.ctx[i] = (uint8_t)((seed >> (i % 8) * 8) + i * 37);
	b = a;
	a.x = in, a.n = n;
	b.x = out, b.n = n_out;
	if (run(&a, 0, ra, 0))
		return -1;
	if (run(&b, 0, rb, 0))
		return 1;
	return ra[0].v != rb[0].v || a.trace != b.trace || memcmp(a.ctx, b.ctx, CTX_SIZE) != 0;
}

/* Program k and its rewrite, run on two contexts: counts the runs that compared (the input ran
 * valid) and the rewrites that ran differently (with both programs on stderr) */
static void compare_runs(const char *what, long k, const struct bpf_insn *in, size_t n,
			 const struct ndq_prune_prog *out, long *ran, long *bad)
{
	for (uint64_t seed = 1; seed <= 2; seed++) {
		int d = differs(in, n, out->insns, out->n,
				seed * 0x9e3779b97f4a7c15ull + (uint64_t)k);

		*ran += d == 0;
		if (d > 0) {
			++*bad;
			fprintf(stderr, "FAIL %s program %ld: the rewrite runs differently\n", what,
				k);
			dump("in", in, n);
			dump("out", out->insns, out->n);
			return;
		}
	}
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
	long rewritten = 0, refused = 0, bad = 0, ran = 0;
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
			compare_runs("fuzz", k, in, n, &out, &ran, &bad);
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
		fprintf(stderr,
			"FAIL fuzz: %ld bad, %ld rewritten, %ld refused, %ld runs compared\n", bad,
			rewritten, refused, ran);
	}
	printf("prune fuzz: %ld programs, %ld rewritten, %ld refused, %ld bad; %ld runs of a "
	       "rewrite matched the input's\n",
	       programs, rewritten, refused, bad, ran);
}

/* Random programs a verifier would mostly take: registers set first, stack slots written before
 * they are read, loads at offsets inside the map, the context and the frame, jumps forward,
 * helpers handed numbers or pointers into the frame. Each rewrite must run as its input does
 * (differs()); most inputs must run valid, or the comparison proves little. */
static size_t gen_valid(struct bpf_insn *in, size_t cap)
{
	static const uint8_t alus[] = { BPF_ADD, BPF_SUB, BPF_MUL, BPF_OR,  BPF_AND, BPF_XOR,
					BPF_LSH, BPF_RSH, BPF_MOV, BPF_DIV, BPF_MOD, BPF_ARSH };
	static const uint8_t jmps[] = { BPF_JEQ, BPF_JNE, BPF_JGT, BPF_JSGT, BPF_JSET, BPF_JLE };
	static const uint8_t sizes[] = { BPF_B, BPF_H, BPF_W, BPF_DW };
	static const uint8_t work[] = { 0, 2, 3, 4, 5, 8, 9 }; /* r6: context, r7: the map */
	size_t n = 0, body = 8 + rnd((uint32_t)cap - 24);

	in[n++] = MOVR(6, 1);
	in[n++] = (struct bpf_insn)LDRO(7, 0);
	in[n] = (struct bpf_insn){ .code = 0 }; /* LDRO's second half */
	n++;
	for (size_t i = 0; i < N(work); i++)
		in[n++] = MOV(work[i], (int32_t)rnd(9) - 2);
	for (int k = 1; k <= 4; k++)
		in[n++] = ST(BPF_DW, 10, -8 * k, (int32_t)rnd(5));
	while (n < body) {
		uint8_t d = work[rnd(N(work))], s = work[rnd(N(work))], sz = sizes[rnd(4)];
		int16_t align = (int16_t)(1 << (sz == BPF_B ? 0 :
						sz == BPF_H ? 1 :
						sz == BPF_W ? 2 :
							      3));

		switch (rnd(10)) {
		case 0:
		case 1:
			in[n++] = I((rnd(2) ? BPF_ALU64 : BPF_ALU) | alus[rnd(N(alus))] |
					    (rnd(2) ? BPF_X : BPF_K),
				    d, s, 0, (int32_t)rnd(9) - 2);
			break;
		case 2: /* a word of the map */
			in[n++] = LDX(sz, d, 7, (int16_t)(rnd(56 / align) * align));
			break;
		case 3: in[n++] = LDX(sz, d, 6, (int16_t)(rnd(56 / align) * align)); break;
		case 4: /* a slot written at the start */
			in[n++] = LDX(sz, d, 10, (int16_t)(-32 + rnd(32 / align) * align));
			break;
		case 5:
			in[n++] = rnd(2) ?
					  STX(sz, 10, s, (int16_t)(-64 + rnd(64 / align) * align)) :
					  STX(sz, 6, s, (int16_t)(rnd(56 / align) * align));
			break;
		case 6:
			in[n++] = I(BPF_JMP | jmps[rnd(N(jmps))] | (rnd(2) ? BPF_X : BPF_K), d, s,
				    (int16_t)rnd(6), (int32_t)rnd(5));
			break;
		case 7: /* a helper: numbers, or a pointer into the frame */
			in[n++] = MOV(1, (int32_t)rnd(4));
			if (rnd(2)) {
				in[n++] = MOVR(2, 10);
				in[n++] = ADD(2, -8 * (int32_t)(1 + rnd(4)));
			} else {
				in[n++] = MOVR(2, s);
			}
			in[n++] = CALL(1 + rnd(3));
			for (int r = 2; r <= 5; r++)
				in[n++] = MOV(r, (int32_t)rnd(3));
			break;
		case 8:
			in[n++] = STX(BPF_DW, 10, d, -8 * (int16_t)(1 + rnd(8)));
			in[n++] = LDX(BPF_DW, s, 10, -8 * (int16_t)(1 + rnd(4)));
			break;
		default:
			in[n++] = ST(sz, 10, (int16_t)(-64 + rnd(64 / align) * align),
				     (int32_t)rnd(3));
		}
	}
	in[n++] = MOVR(0, work[rnd(N(work))]);
	in[n++] = EXIT;
	/* a jump must land inside, before the end */
	for (size_t i = 0; i < n; i++)
		if (BPF_CLASS(in[i].code) == BPF_JMP && BPF_OP(in[i].code) != BPF_CALL &&
		    BPF_OP(in[i].code) != BPF_EXIT && i + 1 + (size_t)in[i].off >= n)
			in[i].off = (int16_t)(n - 2 - i);
	return n;
}

static void semantic_fuzz(long programs)
{
	long ran = 0, bad = 0, rewritten = 0;

	rng = 20261203;
	for (long k = 0; k < programs; k++) {
		struct bpf_insn in[96];
		size_t n = gen_valid(in, N(in) - 8);
		struct ndq_prune_prog pin = { .insns = in, .n = n }, out;
		char why[200];

		for (size_t i = 0; i < sizeof(rodata); i++)
			rodata[i] = (uint8_t)rnd(4);
		if (ndq_prune(&pin, &RO, 1, &out, why, sizeof(why)) != 0) {
			bad++;
			fprintf(stderr, "FAIL semantic fuzz program %ld: not rewritten (%s)\n", k,
				why);
			ndq_prune_free(&out);
			continue;
		}
		rewritten++;
		compare_runs("semantic fuzz", k, in, n, &out, &ran, &bad);
		ndq_prune_free(&out);
	}
	checked++;
	if (bad || ran < programs) { /* two runs each: at least half of them valid */
		failed++;
		fprintf(stderr, "FAIL semantic fuzz: %ld bad, %ld runs compared\n", bad, ran);
	}
	printf("prune semantic fuzz: %ld programs rewritten, %ld runs compared (same r0, context, "
	       "helper calls), %ld bad\n",
	       rewritten, ran, bad);
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
	folds();
	dead_code();
	refusals();
	fuzz(200000);
	semantic_fuzz(100000);
	printf("prune: %d of %d cases as expected\n", checked - failed, checked);
	return failed ? 1 : 0;
}
