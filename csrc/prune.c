/* prune.c - see prune.h
 *
 * A forward data-flow analysis over basic blocks. A value is a constant, a pointer into a frozen
 * map or into this frame's stack at a known offset, or unknown; an unknown value also remembers
 * whether it may point into this frame's stack, so that a store through it forgets the stack.
 * Each block's entry state is the join of what reaches it (two different values join to unknown),
 * so states only lose facts and the iteration ends. The stack is modelled as 64 eight-byte slots:
 * clang spills configuration words there and reloads them far away. A helper or kfunc may write
 * its stack arguments from the pointer up; a bpf-to-bpf call given a stack pointer may write
 * anywhere in this frame. Subprograms are analysed once each, from unknown arguments.
 *
 * Then the rewrite: unreachable instructions go, a conditional jump decided one way becomes a
 * `ja` (taken) or goes (never taken), a load of a frozen map's word becomes a move of its value
 * (the verifier knows that value too, but leaves the load), what nothing reads any more goes (a
 * register written and not read on, a spill to a stack slot no instruction may read: an event
 * costs about a cycle per instruction it runs), and every jump, call, func_info and line_info record is
 * re-aimed through one old -> new position map. A line_info record whose instruction went moves
 * to the next instruction kept; of the records landing on one instruction the last stays, which
 * is the line that instruction had. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prune.h"

#define NREG 11
#define NSLOT (512 / 8)
#define NV (NREG + NSLOT)

enum kind { K_UNK, K_CONST, K_RO, K_STK };

struct val {
	uint64_t v;  /* the constant; the offset into the map or below the frame pointer */
	uint8_t k;   /* enum kind */
	uint8_t stk; /* K_UNK: may point into this frame's stack */
	uint8_t m;   /* K_RO: which map */
};

enum { F_LEADER = 1, F_SECOND = 2, F_ROOT = 4, F_REACH = 8, F_KEEP = 16 };
enum { D_BOTH, D_TAKEN, D_FALL };

struct pass {
	const struct bpf_insn *x;
	size_t n;
	const struct ndq_prune_ro *ro;
	size_t n_ro;
	bool callbacks; /* a helper may call back into the program (BPF_PSEUDO_FUNC) */
	uint8_t *flags;
	uint8_t *decision;
	struct val *loaded; /* what each reachable load from a frozen map gives (K_CONST: its word) */
	struct val *addr;   /* each reachable store's address register */
	uint64_t *reads; /* the stack slots each reachable instruction may read (bit k: slot k) */
	int32_t *block;	 /* leader -> block index, else -1 */
	size_t nblocks;
	/* entry states of the blocks reached so far (most blocks never are: allocated as reached) */
	int32_t *state_of; /* block -> index into state, or -1 */
	struct val *state; /* cap_states * NV */
	size_t n_states, cap_states;
	bool oom;
	uint8_t *queued;
	int32_t *work;
	size_t nwork;
	char *why;
	size_t whylen;
};

static struct val unk(bool stk)
{
	return (struct val){ .k = K_UNK, .stk = stk };
}

static struct val cst(uint64_t v)
{
	return (struct val){ .v = v, .k = K_CONST };
}

static bool may_stack(struct val v)
{
	return v.k == K_STK || (v.k == K_UNK && v.stk);
}

static bool same(struct val a, struct val b)
{
	if (a.k != b.k)
		return false;
	switch (a.k) {
	case K_UNK: return a.stk == b.stk;
	case K_RO: return a.m == b.m && a.v == b.v;
	default: return a.v == b.v;
	}
}

static size_t size_bytes(uint8_t code)
{
	switch (BPF_SIZE(code)) {
	case BPF_B: return 1;
	case BPF_H: return 2;
	case BPF_W: return 4;
	default: return 8;
	}
}

static int fail(struct pass *p, size_t i, const char *what)
{
	snprintf(p->why, p->whylen, "%s at instruction %zu (code 0x%02x)", what, i, p->x[i].code);
	return 1;
}

/* --- what the instructions are: leaders, roots, anything not modelled ----------------------- */

static int mark_target(struct pass *p, size_t i, long rel, uint8_t flag)
{
	long t = (long)i + 1 + rel;

	if (t < 0 || (size_t)t >= p->n)
		return fail(p, i, "a jump out of the program");
	p->flags[t] |= (uint8_t)(F_LEADER | flag);
	return 0;
}

/* The atomic operations st() models: add, or, and, xor (fetching the old value or not), xchg
 * and cmpxchg. Others (a load-acquire writes its dst_reg) would be misread. */
static bool atomic_known(int32_t imm)
{
	switch (imm & ~BPF_FETCH) {
	case BPF_ADD:
	case BPF_OR:
	case BPF_AND:
	case BPF_XOR: return true;
	default: return imm == BPF_XCHG || imm == BPF_CMPXCHG;
	}
}

static int scan(struct pass *p)
{
	p->flags[0] |= F_LEADER | F_ROOT;
	for (size_t i = 0; i < p->n; i++) {
		const struct bpf_insn *x = &p->x[i];
		uint8_t cls = BPF_CLASS(x->code), op = BPF_OP(x->code), mode = BPF_MODE(x->code);
		int rc = 0;

		if (p->flags[i] & F_SECOND)
			continue;
		switch (cls) {
		case BPF_LD:
			if (x->code != (BPF_LD | BPF_IMM | BPF_DW) || i + 1 >= p->n)
				return fail(p, i, "a packet load or a cut ld_imm64");
			p->flags[i + 1] |= F_SECOND;
			if (x->src_reg == BPF_PSEUDO_FUNC) {
				p->callbacks = true;
				rc = mark_target(p, i, x->imm, F_ROOT);
			}
			break;
		case BPF_LDX:
			if (mode != BPF_MEM && mode != BPF_MEMSX)
				return fail(p, i, "a load mode not modelled");
			break;
		case BPF_ST:
		case BPF_STX:
			if (mode != BPF_MEM && !(cls == BPF_STX && mode == BPF_ATOMIC))
				return fail(p, i, "a store mode not modelled");
			if (mode == BPF_ATOMIC && !atomic_known(x->imm))
				return fail(p, i, "an atomic operation not modelled");
			break;
		case BPF_ALU:
		case BPF_ALU64:
			if (op > BPF_END)
				return fail(p, i, "an ALU operation not modelled");
			break;
		case BPF_JMP:
		case BPF_JMP32:
			if (op == BPF_CALL) {
				if (cls == BPF_JMP32 || x->src_reg > BPF_PSEUDO_KFUNC_CALL)
					return fail(p, i, "a call not modelled");
				if (x->src_reg == BPF_PSEUDO_CALL)
					rc = mark_target(p, i, x->imm, F_ROOT);
			} else if (op == BPF_EXIT) {
				if (cls == BPF_JMP32)
					return fail(p, i, "a jump not modelled");
				if (i + 1 < p->n)
					p->flags[i + 1] |= F_LEADER;
			} else if (op == BPF_JA) {
				rc = mark_target(p, i, cls == BPF_JMP32 ? x->imm : x->off, 0);
				if (i + 1 < p->n)
					p->flags[i + 1] |= F_LEADER;
			} else if (op <= BPF_JSLE && op != 0xe0) { /* 0xe0: may_goto */
				rc = mark_target(p, i, x->off, 0);
				if (i + 1 < p->n)
					p->flags[i + 1] |= F_LEADER;
			} else {
				return fail(p, i, "a jump not modelled");
			}
			break;
		default: return fail(p, i, "an instruction class not modelled");
		}
		if (rc)
			return rc;
	}
	for (size_t i = 0; i < p->n; i++)
		if ((p->flags[i] & F_LEADER) && (p->flags[i] & F_SECOND))
			return fail(p, i, "a jump into an ld_imm64");
	return 0;
}

/* --- the abstract machine ------------------------------------------------------------------- */

static void forget_stack_from(struct val *s, int64_t addr)
{
	int64_t k = addr < -512 ? 0 : (addr + 512) / 8;

	for (; k < NSLOT; k++)
		s[NREG + k] = unk(true);
}

/* a store of `size` bytes at frame offset a (negative) */
static void store_stack(struct val *s, int64_t a, size_t size, struct val v, bool plain)
{
	int64_t k, last;

	if (a < -512 || a + (int64_t)size > 0) { /* the verifier refuses it; forget all */
		forget_stack_from(s, -512);
		return;
	}
	k = (a + 512) / 8;
	last = (a + 512 + (int64_t)size - 1) / 8;
	if (plain && size == 8 && (a & 7) == 0) {
		s[NREG + k] = v;
		return;
	}
	if (plain && k == last && v.k == K_CONST && s[NREG + k].k == K_CONST) {
		unsigned shift = (unsigned)((a + 512) & 7) * 8;
		uint64_t mask = (size == 8 ? ~0ull : ((1ull << (size * 8)) - 1)) << shift;

		s[NREG + k].v = (s[NREG + k].v & ~mask) | ((v.v << shift) & mask);
		return;
	}
	for (; k <= last; k++)
		s[NREG + k] = unk(true);
}

static struct val load_stack(const struct val *s, int64_t a, size_t size, bool plain)
{
	int64_t k, last;
	bool stk = false;

	if (a < -512 || a + (int64_t)size > 0)
		return unk(true);
	k = (a + 512) / 8;
	last = (a + 512 + (int64_t)size - 1) / 8;
	if (plain && size == 8 && (a & 7) == 0)
		return s[NREG + k];
	if (plain && k == last && s[NREG + k].k == K_CONST) {
		unsigned shift = (unsigned)((a + 512) & 7) * 8;
		uint64_t v = s[NREG + k].v >> shift;

		return cst(size == 8 ? v : v & ((1ull << (size * 8)) - 1));
	}
	for (; k <= last; k++)
		stk = stk || may_stack(s[NREG + k]);
	return unk(stk);
}

/* the slots bytes [a, a + size) of the frame overlap; all of them when that is out of the frame */
static uint64_t slots(int64_t a, size_t size)
{
	int64_t k, last;
	uint64_t m = 0;

	if (a < -512 || a + (int64_t)size > 0)
		return ~0ull;
	k = (a + 512) / 8;
	last = (a + 512 + (int64_t)size - 1) / 8;
	for (; k <= last; k++)
		m |= 1ull << k;
	return m;
}

/* the slots from frame offset a up to the frame's top */
static uint64_t from_slot(int64_t a)
{
	if (a < -512)
		return ~0ull;
	if (a >= 0)
		return 0;
	return ~0ull << ((a + 512) / 8);
}

/* The stack slots instruction x may read in state s: a load or an atomic operation through a
 * pointer into the stack, or a call handed one. A helper reads from the pointer up (a key, a
 * buffer and its size); a subprogram, or a callback a helper may call, can reach the whole frame. */
static uint64_t stack_reads(const struct pass *p, const struct val *s, const struct bpf_insn *x)
{
	uint8_t cls = BPF_CLASS(x->code);
	uint64_t m = 0;

	if (cls == BPF_LDX || (cls == BPF_STX && BPF_MODE(x->code) == BPF_ATOMIC)) {
		struct val b = s[cls == BPF_LDX ? x->src_reg : x->dst_reg];

		if (b.k == K_STK)
			return slots((int64_t)b.v + x->off, size_bytes(x->code));
		return may_stack(b) ? ~0ull : 0;
	}
	if ((cls != BPF_JMP && cls != BPF_JMP32) || BPF_OP(x->code) != BPF_CALL)
		return 0;
	for (int r = BPF_REG_1; r <= BPF_REG_5; r++) {
		if (s[r].k == K_STK && x->src_reg != BPF_PSEUDO_CALL && !p->callbacks)
			m |= from_slot((int64_t)s[r].v);
		else if (may_stack(s[r]))
			m = ~0ull;
	}
	return m;
}

static struct val load_ro(const struct pass *p, struct val b, int16_t off, size_t size)
{
	const struct ndq_prune_ro *ro = &p->ro[b.m];
	uint64_t at = b.v + (uint64_t)(int64_t)off, v = 0;

	if (at > ro->size || size > ro->size - at)
		return unk(false);
	for (size_t j = size; j-- > 0;) /* little endian: the hosts the kernel shares a map with */
		v = (v << 8) | ro->data[at + j];
	return cst(v);
}

static bool compute(uint8_t op, bool is64, uint64_t a, uint64_t b, uint64_t *r)
{
	unsigned width = is64 ? 64 : 32;

	if (!is64) {
		a = (uint32_t)a;
		b = (uint32_t)b;
	}
	switch (op) {
	case BPF_ADD: *r = a + b; break;
	case BPF_SUB: *r = a - b; break;
	case BPF_MUL: *r = a * b; break;
	case BPF_DIV: *r = b ? a / b : 0; break;
	case BPF_MOD: *r = b ? a % b : a; break;
	case BPF_OR: *r = a | b; break;
	case BPF_AND: *r = a & b; break;
	case BPF_XOR: *r = a ^ b; break;
	case BPF_NEG: *r = -a; break;
	case BPF_LSH:
		if (b >= width)
			return false;
		*r = a << b;
		break;
	case BPF_RSH:
		if (b >= width)
			return false;
		*r = a >> b;
		break;
	case BPF_ARSH:
		if (b >= width)
			return false;
		*r = is64 ? (uint64_t)((int64_t)a >> b) : (uint64_t)(uint32_t)((int32_t)a >> b);
		break;
	default: return false;
	}
	if (!is64)
		*r = (uint32_t)*r;
	return true;
}

static void alu(struct val *s, const struct bpf_insn *x)
{
	bool is64 = BPF_CLASS(x->code) == BPF_ALU64, isx = BPF_SRC(x->code) == BPF_X;
	uint8_t op = BPF_OP(x->code);
	struct val *d = &s[x->dst_reg];
	struct val src = isx ? s[x->src_reg] :
			       cst(is64 ? (uint64_t)(int64_t)x->imm : (uint64_t)(uint32_t)x->imm);
	uint64_t r;

	if (x->off != 0 || op == BPF_END) { /* signed div/mod, sign-extending moves, swaps */
		*d = unk(may_stack(*d) || (isx && may_stack(src)));
		return;
	}
	if (op == BPF_MOV) {
		if (is64)
			*d = src;
		else
			*d = src.k == K_CONST ? cst((uint32_t)src.v) : unk(may_stack(src));
		return;
	}
	if (is64 && (op == BPF_ADD || op == BPF_SUB) && (d->k == K_RO || d->k == K_STK) &&
	    src.k == K_CONST) {
		d->v = op == BPF_ADD ? d->v + src.v : d->v - src.v;
		return;
	}
	if (is64 && op == BPF_ADD && d->k == K_CONST && (src.k == K_RO || src.k == K_STK)) {
		uint64_t add = d->v;

		*d = src;
		d->v += add;
		return;
	}
	if (d->k == K_CONST && (op == BPF_NEG || src.k == K_CONST) &&
	    compute(op, is64, d->v, src.v, &r)) {
		*d = cst(r);
		return;
	}
	*d = unk(may_stack(*d) || (op != BPF_NEG && may_stack(src)));
}

static void ldx(const struct pass *p, struct val *s, const struct bpf_insn *x)
{
	struct val b = s[x->src_reg];
	size_t size = size_bytes(x->code);
	bool plain = BPF_MODE(x->code) == BPF_MEM;

	if (b.k == K_RO)
		s[x->dst_reg] = plain ? load_ro(p, b, x->off, size) : unk(false);
	else if (b.k == K_STK)
		s[x->dst_reg] = load_stack(s, (int64_t)b.v + x->off, size, plain);
	else
		s[x->dst_reg] = unk(may_stack(b));
}

static void st(struct val *s, const struct bpf_insn *x)
{
	struct val b = s[x->dst_reg];
	size_t size = size_bytes(x->code);
	bool atomic = BPF_MODE(x->code) == BPF_ATOMIC;
	struct val v = BPF_CLASS(x->code) == BPF_ST ? cst((uint64_t)(int64_t)x->imm) :
						      s[x->src_reg];

	if (b.k == K_STK)
		store_stack(s, (int64_t)b.v + x->off, size, atomic ? unk(true) : v, !atomic);
	else if (may_stack(b))
		forget_stack_from(s, -512);
	if (atomic && (x->imm & BPF_FETCH))
		s[x->src_reg] = unk(true);
	if (atomic && x->imm == BPF_CMPXCHG)
		s[BPF_REG_0] = unk(true);
}

static void call(const struct pass *p, struct val *s, const struct bpf_insn *x)
{
	bool subprog = x->src_reg == BPF_PSEUDO_CALL;

	for (int r = BPF_REG_1; r <= BPF_REG_5; r++) {
		if (s[r].k == K_STK && !subprog && !p->callbacks)
			forget_stack_from(s, (int64_t)s[r].v);
		else if (may_stack(s[r]))
			forget_stack_from(s, -512);
	}
	s[BPF_REG_0] = unk(subprog);
	for (int r = BPF_REG_1; r <= BPF_REG_5; r++)
		s[r] = unk(false);
}

/* D_TAKEN, D_FALL or D_BOTH */
static int decide(const struct val *s, const struct bpf_insn *x)
{
	bool is32 = BPF_CLASS(x->code) == BPF_JMP32;
	struct val a = s[x->dst_reg];
	struct val b = BPF_SRC(x->code) == BPF_X ? s[x->src_reg] : cst((uint64_t)(int64_t)x->imm);
	uint64_t ua, ub;
	int64_t sa, sb;
	bool t;

	if (a.k != K_CONST || b.k != K_CONST)
		return D_BOTH;
	ua = is32 ? (uint32_t)a.v : a.v;
	ub = is32 ? (uint32_t)b.v : b.v;
	sa = is32 ? (int32_t)a.v : (int64_t)a.v;
	sb = is32 ? (int32_t)b.v : (int64_t)b.v;
	switch (BPF_OP(x->code)) {
	case BPF_JEQ: t = ua == ub; break;
	case BPF_JNE: t = ua != ub; break;
	case BPF_JGT: t = ua > ub; break;
	case BPF_JGE: t = ua >= ub; break;
	case BPF_JLT: t = ua < ub; break;
	case BPF_JLE: t = ua <= ub; break;
	case BPF_JSGT: t = sa > sb; break;
	case BPF_JSGE: t = sa >= sb; break;
	case BPF_JSLT: t = sa < sb; break;
	case BPF_JSLE: t = sa <= sb; break;
	case BPF_JSET: t = (ua & ub) != 0; break;
	default: return D_BOTH;
	}
	return t ? D_TAKEN : D_FALL;
}

static void entry_state(struct val *s)
{
	for (int i = 0; i < NV; i++)
		s[i] = unk(false);
	s[BPF_REG_10] = (struct val){ .k = K_STK };
}

static struct val *state_of(struct pass *p, int32_t b)
{
	return p->state_of[b] < 0 ? NULL : &p->state[(size_t)p->state_of[b] * NV];
}

/* what reaches block b: joined into its state; queued again when that changed it */
static void flow(struct pass *p, size_t to, const struct val *s)
{
	int32_t b = p->block[to];
	struct val *into = state_of(p, b);
	bool changed = false;

	if (!into) {
		if (p->n_states == p->cap_states) {
			size_t cap = p->cap_states ? p->cap_states * 2 : 64;
			struct val *more = realloc(p->state, cap * NV * sizeof(*more));

			if (!more) {
				p->oom = true;
				return;
			}
			p->state = more;
			p->cap_states = cap;
		}
		p->state_of[b] = (int32_t)p->n_states++;
		into = state_of(p, b);
		memcpy(into, s, NV * sizeof(*s));
		changed = true;
	} else {
		for (int i = 0; i < NV; i++)
			if (!same(into[i], s[i])) {
				struct val j = unk(may_stack(into[i]) || may_stack(s[i]));

				if (!same(into[i], j)) {
					into[i] = j;
					changed = true;
				}
			}
	}
	if (changed && !p->queued[b]) {
		p->queued[b] = 1;
		p->work[p->nwork++] = b;
	}
}

/* where a jump, a bpf-to-bpf call or a callback's ld_imm64 leads */
static long target(const struct bpf_insn *x, size_t i)
{
	uint8_t cls = BPF_CLASS(x->code), op = BPF_OP(x->code);
	bool imm = cls == BPF_LD || op == BPF_CALL || (cls == BPF_JMP32 && op == BPF_JA);

	return (long)i + 1 + (imm ? x->imm : x->off);
}

/* An edge of the flow graph. While iterating, what leaves a block flows into the next one;
 * once the states are final (s == NULL), the edge only marks the block it reaches. */
static void edge(struct pass *p, size_t to, const struct val *s)
{
	int32_t b = p->block[to];

	if (s) {
		flow(p, to, s);
	} else if (!p->queued[b]) {
		p->queued[b] = 1;
		p->work[p->nwork++] = b;
	}
}

/* Runs one block from state s. final: record each decision and the instructions run, and mark
 * the blocks the decisions lead to (calls and callbacks included). 1 when the block runs off the
 * program's end. */
static int run_block(struct pass *p, size_t i, struct val *s, bool final)
{
	const struct val *out = final ? NULL : s;

	for (;;) {
		const struct bpf_insn *x = &p->x[i];
		uint8_t cls = BPF_CLASS(x->code), op = BPF_OP(x->code);
		size_t next = i + 1;

		if (final) {
			p->flags[i] |= F_REACH;
			p->reads[i] = stack_reads(p, s, x);
			if (cls == BPF_ST || cls == BPF_STX)
				p->addr[i] = s[x->dst_reg];
		}
		switch (cls) {
		case BPF_LD: /* ld_imm64 */
			if (final)
				p->flags[i + 1] |= F_REACH;
			next = i + 2;
			s[x->dst_reg] = unk(false);
			if (x->src_reg == 0) {
				s[x->dst_reg] = cst((uint64_t)(uint32_t)x->imm |
						    ((uint64_t)(uint32_t)x[1].imm << 32));
			} else if (x->src_reg == BPF_PSEUDO_MAP_VALUE) {
				for (size_t m = 0; m < p->n_ro; m++)
					if (p->ro[m].fd == x->imm)
						s[x->dst_reg] = (struct val){
							.k = K_RO,
							.m = (uint8_t)m,
							.v = (uint64_t)(uint32_t)x[1].imm
						};
			} else if (x->src_reg == BPF_PSEUDO_FUNC && final) {
				edge(p, (size_t)target(x, i), NULL);
			}
			break;
		case BPF_LDX: {
			bool ro = s[x->src_reg].k == K_RO;

			ldx(p, s, x);
			if (final && ro)
				p->loaded[i] = s[x->dst_reg];
			break;
		}
		case BPF_ST:
		case BPF_STX: st(s, x); break;
		case BPF_ALU:
		case BPF_ALU64: alu(s, x); break;
		default: /* BPF_JMP, BPF_JMP32 (scan let nothing else through) */
			if (op == BPF_CALL) {
				/* a subprogram's state flows from its own root, not from here */
				if (x->src_reg == BPF_PSEUDO_CALL && final)
					edge(p, (size_t)target(x, i), NULL);
				call(p, s, x);
				break;
			}
			if (op == BPF_EXIT)
				return 0;
			if (op == BPF_JA) {
				edge(p, (size_t)target(x, i), out);
				return 0;
			}
			{
				int d = decide(s, x);

				if (final)
					p->decision[i] = (uint8_t)d;
				if (d != D_FALL)
					edge(p, (size_t)target(x, i), out);
				if (d != D_TAKEN)
					edge(p, next, out);
				return 0;
			}
		}
		if (next >= p->n)
			return 1;
		if (p->flags[next] & F_LEADER) {
			edge(p, next, out);
			return 0;
		}
		i = next;
	}
}

/* The blocks the final decisions reach from the program's entry: -1 if one of them was never
 * reached while iterating (it cannot be: the decisions only ever lose facts). */
static int mark_reach(struct pass *p, const size_t *starts)
{
	memset(p->queued, 0, p->nblocks);
	p->nwork = 0;
	edge(p, 0, NULL);
	while (p->nwork) {
		size_t b = (size_t)p->work[--p->nwork];
		struct val s[NV];

		if (!state_of(p, (int32_t)b))
			return -1;
		memcpy(s, state_of(p, (int32_t)b), sizeof(s));
		run_block(p, starts[b], s, true);
	}
	return 0;
}

/* --- the rewrite ---------------------------------------------------------------------------- */

/* Load i, or the move that gives its register the same value: a plain load whose address is a
 * frozen map's (ldx() made it a constant). A value a 32-bit move zero-extends to, or a 64-bit
 * move sign-extends to, fits in one instruction; a wider one keeps its load. */
static struct bpf_insn folded(const struct pass *p, size_t i)
{
	const struct bpf_insn *x = &p->x[i];
	struct val v = p->loaded[i];

	if (BPF_MODE(x->code) != BPF_MEM || v.k != K_CONST)
		return *x;
	if (v.v <= UINT32_MAX)
		return (struct bpf_insn){ .code = BPF_ALU | BPF_MOV | BPF_K,
					  .dst_reg = x->dst_reg,
					  .imm = (int32_t)(uint32_t)v.v };
	if ((int64_t)v.v == (int64_t)(int32_t)v.v)
		return (struct bpf_insn){ .code = BPF_ALU64 | BPF_MOV | BPF_K,
					  .dst_reg = x->dst_reg,
					  .imm = (int32_t)v.v };
	return *x;
}

#define REC(base, i, size) ((char *)(base) + (size_t)(i) * (size))

/* --- dead code: what no store, call, jump or exit ever reads ---------------------------------- */

#define R(r) ((uint16_t)(1u << (r)))
#define R1_R5 (R(1) | R(2) | R(3) | R(4) | R(5))

static bool is_cond_jump(const struct bpf_insn *x)
{
	uint8_t cls = BPF_CLASS(x->code), op = BPF_OP(x->code);

	return (cls == BPF_JMP || cls == BPF_JMP32) && op != BPF_JA && op != BPF_CALL &&
	       op != BPF_EXIT;
}

/* The registers instruction i (as the rewrite will emit it) reads and writes, and whether it does
 * nothing else: a computation, a load or an ld_imm64 that is not a callback's address. */
static bool effects(const struct pass *p, size_t i, uint16_t *use, uint16_t *def)
{
	struct bpf_insn x = BPF_CLASS(p->x[i].code) == BPF_LDX ? folded(p, i) : p->x[i];
	uint8_t cls = BPF_CLASS(x.code), op = BPF_OP(x.code), mode = BPF_MODE(x.code);
	uint16_t d = R(x.dst_reg), s = R(x.src_reg);

	*use = *def = 0;
	switch (cls) {
	case BPF_LD: *def = d; return x.src_reg != BPF_PSEUDO_FUNC;
	case BPF_LDX:
		*use = s;
		*def = d;
		return true;
	case BPF_ST: *use = d; return false;
	case BPF_STX:
		*use = d | s;
		if (mode == BPF_ATOMIC && x.imm == BPF_CMPXCHG) {
			*use |= R(0);
			*def = R(0);
		} else if (mode == BPF_ATOMIC && (x.imm & BPF_FETCH)) {
			*def = s;
		}
		return false;
	case BPF_ALU:
	case BPF_ALU64:
		*def = d;
		if (op == BPF_MOV)
			*use = BPF_SRC(x.code) == BPF_X ? s : 0;
		else
			*use = d |
			       (BPF_SRC(x.code) == BPF_X && op != BPF_NEG && op != BPF_END ? s : 0);
		return true;
	default: /* jumps: scan let nothing else through */
		if (op == BPF_CALL) {
			*use = R1_R5;
			*def = R(0) | R1_R5;
		} else if (op == BPF_EXIT) {
			*use = R(0);
		} else if (op != BPF_JA && p->decision[i] == D_BOTH) {
			*use = d | (BPF_SRC(x.code) == BPF_X ? s : 0);
		}
		return false;
	}
}

/* The instructions that may run after reachable instruction i: at most two */
static size_t successors(const struct pass *p, size_t i, size_t next[2])
{
	const struct bpf_insn *x = &p->x[i];
	uint8_t cls = BPF_CLASS(x->code), op = BPF_OP(x->code);

	if (cls == BPF_LD) {
		next[0] = i + 2;
		return 1;
	}
	if ((cls != BPF_JMP && cls != BPF_JMP32) || op == BPF_CALL) {
		next[0] = i + 1;
		return 1;
	}
	if (op == BPF_EXIT)
		return 0;
	if (op == BPF_JA || p->decision[i] == D_TAKEN) {
		next[0] = (size_t)target(x, i);
		return 1;
	}
	next[0] = i + 1;
	if (p->decision[i] == D_FALL)
		return 1;
	next[1] = (size_t)target(x, i);
	return 2;
}

/* what is live out of reachable instruction i: live into its successors */
static uint16_t live_out(const struct pass *p, const uint16_t *live, size_t i)
{
	size_t next[2], k = successors(p, i, next);
	uint16_t out = 0;

	for (size_t j = 0; j < k; j++)
		out |= next[j] < p->n ? live[next[j]] : 0;
	return out;
}

/* Strong liveness, to its least fixed point: a register is live where a store, a call, a jump or
 * an exit will read it, or an instruction that is itself needed will. A side-effect-free
 * instruction whose results are not live is dead and goes (its F_KEEP is cleared); that only
 * ever removes reads, which the verifier cannot object to. -1: out of memory. */
static int drop_dead(struct pass *p)
{
	uint16_t *live = calloc(p->n + 2, sizeof(*live)); /* live into each instruction */
	bool changed = true;
	int removed = 0;

	if (!live)
		return -1;
	while (changed) {
		changed = false;
		for (size_t i = p->n; i-- > 0;) {
			uint16_t out, use, def, in;
			bool pure;

			if (!(p->flags[i] & F_REACH) || (p->flags[i] & F_SECOND))
				continue;
			out = live_out(p, live, i);
			pure = effects(p, i, &use, &def);
			if (!(p->flags[i] & F_KEEP)) /* gone already: a store no one reads */
				in = out;
			else
				in = pure && !(def & out) ? out : (uint16_t)(use | (out & ~def));
			if (in != live[i]) {
				live[i] = in;
				changed = true;
			}
		}
	}
	for (size_t i = 0; i < p->n; i++) {
		uint16_t use, def;

		if (!(p->flags[i] & F_KEEP) || (p->flags[i] & F_SECOND))
			continue;
		if (effects(p, i, &use, &def) && !(def & live_out(p, live, i))) {
			p->flags[i] &= (uint8_t)~F_KEEP;
			if (BPF_CLASS(p->x[i].code) == BPF_LD)
				p->flags[i + 1] &= (uint8_t)~F_KEEP;
			removed++;
		}
	}
	free(live);
	return removed;
}

/* Stores to stack slots no instruction left may read: whatever a store writes there, nothing
 * reads it back (clang spills configuration words that the rewrite made constants). The number
 * removed. */
static int drop_unread_stores(struct pass *p)
{
	uint64_t read = 0;
	int removed = 0;

	for (size_t i = 0; i < p->n; i++)
		if ((p->flags[i] & F_KEEP) && !(p->flags[i] & F_SECOND))
			read |= p->reads[i];
	for (size_t i = 0; i < p->n; i++) {
		const struct bpf_insn *x = &p->x[i];
		uint8_t cls = BPF_CLASS(x->code);

		if (!(p->flags[i] & F_KEEP) || (p->flags[i] & F_SECOND) ||
		    (cls != BPF_ST && cls != BPF_STX) || BPF_MODE(x->code) != BPF_MEM ||
		    p->addr[i].k != K_STK)
			continue;
		if (!(slots((int64_t)p->addr[i].v + x->off, size_bytes(x->code)) & read)) {
			p->flags[i] &= (uint8_t)~F_KEEP;
			removed++;
		}
	}
	return removed;
}

static int rewrite(struct pass *p, const struct ndq_prune_prog *in, struct ndq_prune_prog *out)
{
	uint32_t *newpos = calloc(p->n + 1, sizeof(*newpos));
	size_t at = 0;

	if (!newpos)
		return -1;
	for (size_t i = 0; i < p->n; i++) {
		bool keep = (p->flags[i] & F_REACH) != 0;

		if (keep && !(p->flags[i] & F_SECOND) && is_cond_jump(&p->x[i]) &&
		    p->decision[i] == D_FALL)
			keep = false;
		if (keep && (p->flags[i] & F_SECOND) && !(p->flags[i - 1] & F_KEEP))
			keep = false;
		if (keep)
			p->flags[i] |= F_KEEP;
	}
	/* each removal may leave the other more to remove */
	for (int stores = 1, regs = 1; stores + regs > 0;) {
		stores = drop_unread_stores(p);
		regs = drop_dead(p);
		if (regs < 0) {
			free(newpos);
			return -1;
		}
	}
	for (size_t i = 0; i < p->n; i++) {
		newpos[i] = (uint32_t)at;
		if (p->flags[i] & F_KEEP)
			at++;
	}
	newpos[p->n] = (uint32_t)at;
	out->insns = calloc(at ? at : 1, sizeof(*out->insns));
	if (!out->insns) {
		free(newpos);
		return -1;
	}
	out->n = at;
	for (size_t i = 0, o = 0; i < p->n; i++) {
		struct bpf_insn x = p->x[i];
		uint8_t cls = BPF_CLASS(x.code), op = BPF_OP(x.code);
		bool jmp = (cls == BPF_JMP || cls == BPF_JMP32) && !(p->flags[i] & F_SECOND);

		if (!(p->flags[i] & F_KEEP))
			continue;
		if (jmp && op != BPF_EXIT && !(op == BPF_CALL && x.src_reg != BPF_PSEUDO_CALL)) {
			long rel = (long)newpos[target(&p->x[i], i)] - (long)o - 1;

			if (op == BPF_CALL || (op == BPF_JA && cls == BPF_JMP32)) {
				x.imm = (int32_t)rel;
			} else {
				if (op != BPF_JA && p->decision[i] == D_TAKEN)
					x = (struct bpf_insn){ .code = BPF_JMP | BPF_JA };
				x.off = (int16_t)rel;
			}
		} else if (cls == BPF_LD && !(p->flags[i] & F_SECOND) &&
			   x.src_reg == BPF_PSEUDO_FUNC) {
			x.imm = (int32_t)((long)newpos[target(&p->x[i], i)] - (long)o - 1);
		} else if (cls == BPF_LDX) {
			x = folded(p, i);
		}
		out->insns[o++] = x;
	}
	/* func_info: the subprograms still called */
	out->func_rec = in->func_rec;
	out->line_rec = in->line_rec;
	if (in->func_info && in->func_cnt) {
		out->func_info = malloc((size_t)in->func_cnt * in->func_rec);
		if (!out->func_info)
			goto oom;
		for (uint32_t f = 0; f < in->func_cnt; f++) {
			const struct bpf_func_info *r =
				(const void *)REC(in->func_info, f, in->func_rec);
			struct bpf_func_info *w;

			if (r->insn_off >= p->n || !(p->flags[r->insn_off] & F_REACH))
				continue;
			w = (void *)REC(out->func_info, out->func_cnt++, in->func_rec);
			memcpy(w, r, in->func_rec);
			w->insn_off = (uint32_t)newpos[r->insn_off];
		}
	}
	if (in->line_info && in->line_cnt) {
		out->line_info = malloc((size_t)in->line_cnt * in->line_rec);
		if (!out->line_info)
			goto oom;
		for (uint32_t l = 0; l < in->line_cnt; l++) {
			const struct bpf_line_info *r =
				(const void *)REC(in->line_info, l, in->line_rec);
			size_t np = r->insn_off < p->n ? newpos[r->insn_off] : at;
			struct bpf_line_info *w;

			if (np >= at)
				continue;
			w = out->line_cnt ?
				    (void *)REC(out->line_info, out->line_cnt - 1, in->line_rec) :
				    NULL;
			if (!w || w->insn_off != np)
				w = (void *)REC(out->line_info, out->line_cnt++, in->line_rec);
			memcpy(w, r, in->line_rec);
			w->insn_off = (uint32_t)np;
		}
	}
	free(newpos);
	return 0;
oom:
	free(newpos);
	ndq_prune_free(out);
	return -1;
}

void ndq_prune_free(struct ndq_prune_prog *p)
{
	if (!p)
		return;
	free(p->insns);
	free(p->func_info);
	free(p->line_info);
	memset(p, 0, sizeof(*p));
}

int ndq_prune(const struct ndq_prune_prog *in, const struct ndq_prune_ro *ro, size_t n_ro,
	      struct ndq_prune_prog *out, char *why, size_t whylen)
{
	struct pass p = {
		.x = in->insns, .n = in->n, .ro = ro, .n_ro = n_ro, .why = why, .whylen = whylen
	};
	size_t *starts = NULL;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (why && whylen)
		why[0] = '\0';
	if (!in->n || n_ro > 255) {
		snprintf(why, whylen, "no instructions, or too many frozen maps");
		return 1;
	}
	p.flags = calloc(in->n, 1);
	p.decision = calloc(in->n, 1);
	p.loaded = calloc(in->n, sizeof(*p.loaded));
	p.addr = calloc(in->n, sizeof(*p.addr));
	p.reads = calloc(in->n, sizeof(*p.reads));
	p.block = malloc(in->n * sizeof(*p.block));
	if (!p.flags || !p.decision || !p.loaded || !p.addr || !p.reads || !p.block)
		goto done;
	rc = scan(&p);
	if (rc)
		goto done;
	rc = -1;
	for (size_t i = 0; i < in->n; i++)
		p.block[i] = (p.flags[i] & F_LEADER) ? (int32_t)p.nblocks++ : -1;
	starts = malloc(p.nblocks * sizeof(*starts));
	p.state_of = malloc(p.nblocks * sizeof(*p.state_of));
	p.queued = calloc(p.nblocks, 1);
	p.work = malloc(p.nblocks * sizeof(*p.work));
	if (!starts || !p.state_of || !p.queued || !p.work)
		goto done;
	memset(p.state_of, 0xff, p.nblocks * sizeof(*p.state_of));
	for (size_t i = 0; i < in->n; i++)
		if (p.block[i] >= 0)
			starts[p.block[i]] = i;
	/* every root (the program, each subprogram, each callback) from the same entry state: a
	 * root never called is never reached in mark_reach, and goes */
	for (size_t i = 0; i < in->n; i++)
		if (p.flags[i] & F_ROOT) {
			struct val s[NV];

			entry_state(s);
			flow(&p, i, s);
		}
	while (p.nwork) {
		int32_t b = p.work[--p.nwork];
		struct val s[NV];

		p.queued[b] = 0;
		memcpy(s, state_of(&p, b), sizeof(s));
		if (run_block(&p, starts[b], s, false)) {
			rc = fail(&p, starts[b], "a block that runs off the program's end");
			goto done;
		}
	}
	if (p.oom)
		goto done;
	if (mark_reach(&p, starts)) {
		rc = fail(&p, 0, "an inconsistent analysis");
		goto done;
	}
	rc = rewrite(&p, in, out);
done:
	free(p.flags);
	free(p.decision);
	free(p.loaded);
	free(p.addr);
	free(p.reads);
	free(p.block);
	free(p.state);
	free(p.state_of);
	free(p.queued);
	free(p.work);
	free(starts);
	return rc;
}
