// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* netdevq.bpf.c - the kernel side of netdevq: read, filter, count, emit.
 *
 * Two entry points share one inline handler:
 *   raw_tp/net_dev_queue  the raw tracepoint hands over the bare sk_buff pointer; nothing about
 *                         it is verified, so every byte is fetched with bpf_probe_read_kernel.
 *                         The sk_buff is copied once into per-CPU scratch and its members are
 *                         then read from that copy at CO-RE-relocated offsets.
 *   tp_btf/net_dev_queue  the verifier knows the argument is a struct sk_buff (kernel BTF), so
 *                         members are loaded directly.
 * Both fill a struct netdevq_event (netdevq.h) in per-CPU scratch, apply the kernel filter set
 * in .rodata (cfg) and hand the event to the ring buffer and/or fold it into the aggregation map.
 */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "kernel.h"
#include "netdevq.h"
#include "decode.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* --read direct (the loader's choice for --read auto where the kernel has the kfunc, 6.2+): the
 * same raw tracepoint, its sk_buff pointer cast with bpf_rdonly_cast into a read-only BTF pointer,
 * so members are plain loads (the JIT turns them into faulting loads) instead of a probe-read copy
 * of the sk_buff. Weak: a kernel without the kfunc still opens the object; the loader then never
 * loads this program. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

#define SKB_COPY_MAX 512
#define DEV_SPAN_MAX 320

/* Set by the loader between open and load; frozen afterwards, so the verifier treats every
 * member as a constant and prunes the checks left at zero. */
const volatile struct netdevq_config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* the loader sets the size */
} events SEC(".maps");

/* A CPU's counters and scratch space: entry smp_processor_id() of a plain array (the loader
 * sizes it to the possible CPUs). A per-CPU array would do the same, but its lookup first loads
 * the CPU's pointer from the map (a cache line the network stack has evicted by the next
 * packet: ~10-15 ns on each, measured); a plain array's entry is computed. Padded so that no two
 * CPUs' entries share a cache line. */
struct counters {
	__u64 c[NDQ_CNT_MAX];
	__u64 pad[NDQ_CNT_STRIDE - NDQ_CNT_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

struct scratch {
	struct netdevq_event ev;
	struct netdevq_agg_key key;
	struct netdevq_agg_value zero; /* never written: the initial value of a new aggregation key */
	__u64 pending;		       /* bytes emitted on this CPU since its last wakeup */
	__u8 hdr[NDQ_SNAP_MAX]; /* header bytes decoded but not carried (snaplen < NDQ_SNAP_MAX) */
	__u8 skb[SKB_COPY_MAX];
	__u8 devspan[DEV_SPAN_MAX];
	__u8 pad[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* This CPU's id into cpu (read once: its entries, an event's cpu, its count table's slots), and
 * its counters and scratch space (see struct counters) into cnt and s */
#define THIS_CPU(cpu, cnt, s)                               \
	do {                                                \
		cpu = bpf_get_smp_processor_id();           \
		cnt = bpf_map_lookup_elem(&counters, &cpu); \
		s = bpf_map_lookup_elem(&scratch, &cpu);    \
	} while (0)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); /* the loader sets size, key and value size */
	/* sizes, not BTF types: the kernel refuses a map whose sizes differ from its BTF types,
	 * and libbpf then creates it a second time (a prealloc of max_entries elements each time) */
	__uint(key_size, sizeof(struct netdevq_agg_key));
	__uint(value_size, sizeof(struct netdevq_agg_value));
} aggs SEC(".maps");

/* A count's table in front of aggs (NDQ_DERIVED_AGG_TABLE; struct netdevq_agg_slot): a plain
 * array, so a slot's address is computed from the CPU and the key's hash, one memory touch where
 * the hash walks bucket, element and per-CPU value (an event costs ~15 ns less here, measured).
 * The loader sizes it (NDQ_AGG_TABLE_SLOTS per possible CPU, the value cut after the key slots
 * in use). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32)); /* sizes: the loader sets the value's (see aggs) */
	__uint(value_size, sizeof(struct netdevq_agg_slot));
} aggtab SEC(".maps");

/* A CPU's batch of events written in place (cfg.batch > 1). Appends go to buffer cur; a flush
 * (netdevq_flush, run on this CPU by the consumer) switches cur before it hands the other one
 * over, so an append that interrupts it lands in the new buffer. An append marks itself busy:
 * a flush that interrupts one leaves the batch alone (the consumer tries again). */
struct batch {
	volatile __u32 n[2];
	volatile __u32 cur;
	volatile __u8 busy;	/* an append is under way */
	volatile __u8 flushing; /* a flush is under way: an append leaves the hand-over to it */
	__u8 pad[2];
	__u8 buf[2][NDQ_BATCH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct batch);
} batches SEC(".maps");

/* tgids of the live processes of the tree followed with -c (cfg.follow_pid): added by
 * netdevq_fork, moved to `exited` by netdevq_exit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} tracked SEC(".maps");

/* tgids of tree processes whose last thread has exited: what the kernel still sends for them
 * on their way out (the FIN of a socket left open is sent after sched_process_exit) belongs to
 * the tree. Bounded (least recently used go first); a recycled pid leaves at its fork. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} exited SEC(".maps");

static __always_inline bool in_tree(__u32 tgid)
{
	return bpf_map_lookup_elem(&tracked, &tgid) || bpf_map_lookup_elem(&exited, &tgid);
}

#include "skbpath.h" /* sk_buff member paths: reads cfg */

/* Bytes of an event's ring record (csrc/derive.c): up to the last member the run fills. The
 * fate members (sojourn_ns .. drop_reason) end the head: left out unless latency fields are
 * asked for or snap bytes follow; then the snap bytes carried, then the member paths. A
 * constant to the verifier, which checks every use against the record and the scratch event. */
static __always_inline __u64 emit_size(void)
{
	return cfg.event_size;
}

/* Sets of more than NDQ_SET_MAX values (netdevq.h): their values are keys of this map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* the loader sets the size: every value of every such set */
	__type(key, struct netdevq_set_key);
	__type(value, __u8);
} sets SEC(".maps");

/* Large sets whose values all lie below 65536, as bitmaps (netdevq.h NDQ_SET_IN_BITS): an array
 * lookup is inlined, a hash lookup is a call (~55 ns here) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* the loader sets the size: NDQ_SET_BITS_WORDS per such set */
	__type(key, __u32);
	__type(value, __u64);
} set_bits SEC(".maps");

/* v is in cfg's set at offset off (IN_SET: the member by name) */
static __always_inline int in_set_at(const volatile struct netdevq_u32_set *s, __u32 off, __u32 v)
{
	if (s->n == NDQ_SET_IN_BITS) {
		__u32 word = s->v[0] * NDQ_SET_BITS_WORDS + (v >> 6);
		__u64 *bits;

		if (v > 0xffff)
			return 0;
		bits = bpf_map_lookup_elem(&set_bits, &word); /* bounds-checked */
		return bits && ((*bits >> (v & 63)) & 1);
	}
	if (s->n == NDQ_SET_IN_MAP) {
		struct netdevq_set_key k = { .set = off, .v = v };
		return bpf_map_lookup_elem(&sets, &k) != NULL;
	}
#pragma unroll
	for (int i = 0; i < NDQ_SET_MAX; i++)
		if (i < s->n && s->v[i] == v)
			return 1;
	return 0;
}
#define IN_SET(member, v) \
	in_set_at(&cfg.member, __builtin_offsetof(struct netdevq_config, member), v)

static __always_inline int in_u32_set(const volatile struct netdevq_u32_set *s, __u32 v)
{
#pragma unroll
	for (int i = 0; i < NDQ_SET_MAX; i++)
		if (i < s->n && s->v[i] == v)
			return 1;
	return 0;
}

static __always_inline int name_eq(const volatile char *want, const char *have)
{
	/* both are NUL-padded 16-byte names */
	const volatile __u64 *w = (const volatile __u64 *)want;
	const __u64 *h = (const __u64 *)have;
	return w[0] == h[0] && w[1] == h[1];
}

static __always_inline int in_name_set(const volatile char (*set)[16], __u32 n, const char *have)
{
#pragma unroll
	for (int i = 0; i < NDQ_SET_MAX; i++)
		if (i < n && name_eq(set[i], have))
			return 1;
	return 0;
}

static __always_inline int prefix_match(const volatile struct netdevq_prefix *p, __u16 l3,
					const __u8 *addr)
{
	if (p->family != l3)
		return 0;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		int bits = p->bits - i * 8;
		if (bits <= 0)
			break;
		__u8 mask = bits >= 8 ? 0xff : (__u8)(0xff00 >> bits);
		if ((addr[i] & mask) != p->addr[i])
			return 0;
	}
	return 1;
}

static __always_inline int in_prefix_set(const volatile struct netdevq_prefix_set *s, __u16 l3,
					 const __u8 *addr)
{
#pragma unroll
	for (int i = 0; i < NDQ_PREFIX_MAX; i++)
		if (i < s->n && prefix_match(&s->p[i], l3, addr))
			return 1;
	return 0;
}

/* The aggregation reads keys and the value through locations the loader wrote into cfg (struct
 * netdevq_field_loc): cfg is read-only, so the verifier sees constant offsets and sizes. */
static __always_inline __u64 loc_number(const struct netdevq_event *ev,
					const volatile struct netdevq_field_loc *l)
{
	const __u8 *base = (const __u8 *)ev;
	__u32 off = l->off;

	if (off > sizeof(*ev) - 8)
		return 0;
	switch (l->size) {
	case 1: return *(const __u8 *)(base + off);
	case 2: return *(const __u16 *)(base + off);
	case 4: return *(const __u32 *)(base + off);
	default: return *(const __u64 *)(base + off);
	}
}

/* Whether the event carries the field (the Lua getters return nil exactly when this is 0). */
static __always_inline int loc_present(const struct netdevq_event *ev,
				       const volatile struct netdevq_field_loc *l)
{
	if ((ev->flags & l->when_flags) != l->when_flags)
		return 0;
	if (l->when_l3 && !ev->l3)
		return 0;
	if (l->when_nonzero && !loc_number(ev, l))
		return 0;
	if (l->when_path && !((ev->path_present >> ((l->when_path - 1) & 7)) & 1))
		return 0;
	return 1;
}

/* Key slots are written a word at a time: a memset or memcpy on a byte pointer becomes a store per
 * byte (clang cannot see the slot's alignment through the index), 24 or more instructions run
 * per slot. Event members need no alignment for these loads (map values, unaligned access is
 * allowed where the JIT runs). */
static __always_inline void copy_words(__u8 *dst, const __u8 *src, const int words)
{
#pragma unroll
	for (int i = 0; i < words; i++)
		((__u64 *)dst)[i] = *(const __u64 *)(src + 8 * i);
}

static __always_inline void put_key(__u8 *slot, const struct netdevq_event *ev,
				    const volatile struct netdevq_field_loc *l)
{
	const __u8 *src = (const __u8 *)ev + (l->off & 0x3ff);
	__u64 *w = (__u64 *)slot;

	if (!loc_present(ev, l)) { /* absent: all 0xff, told apart from zero */
		w[0] = w[1] = w[2] = ~0ULL;
		return;
	}
	w[0] = w[1] = w[2] = 0;
	if (l->kind == NDQ_LOC_NUMBER) {
		w[0] = loc_number(ev, l);
		return;
	}
	if (l->off > sizeof(*ev) - 16)
		return;
	if (l->kind == NDQ_LOC_ADDRESS || l->kind == NDQ_LOC_IPV4) {
		__u8 family = l->kind == NDQ_LOC_IPV4 ? 4 : ev->l3;

		if (family == 4)
			*(__u32 *)slot = *(const __u32 *)src;
		else
			copy_words(slot, src, 2);
		slot[16] = family;
	} else if (l->size == 6) {
		*(__u32 *)slot = *(const __u32 *)src;
		*(__u16 *)(slot + 4) = *(const __u16 *)(src + 4);
	} else {
		copy_words(slot, src, 2);
	}
}

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0, shift;

	if (!v)
		return 0;
	shift = (v > 0xFFFFFFFFULL) << 5;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r + 1; /* slot i holds [2^(i-1), 2^i) */
}

static __always_inline __u32 linear_slot(__u64 v)
{
	__s64 sv = (__s64)v;

	if (sv < cfg.lhist_min)
		return 0;
	if (sv >= cfg.lhist_max)
		return (__u32)((__u64)(cfg.lhist_max - cfg.lhist_min) / (__u64)cfg.lhist_step) + 1;
	return (__u32)((__u64)(sv - cfg.lhist_min) / (__u64)cfg.lhist_step) + 1;
}

/* Counts the key in s->key in this CPU's (cpu's) table: false when its slot holds another key
 * (the hash takes it then). The key's words are hashed by xor and multiply; a slot is free
 * while its count is 0, so the key goes in before the count (user space reads a slot whose
 * count is set). */
static __always_inline bool count_in_table(struct scratch *s, __u32 cpu)
{
	const __u32 words = cfg.agg_key_size / 8;
	const __u64 *k = (const __u64 *)s->key.k;
	struct netdevq_agg_slot *e;
	__u64 h = 0;
	__u32 idx;

#pragma unroll
	for (int i = 0; i < NDQ_AGG_KEYS_MAX * NDQ_AGG_KEY_SLOT / 8; i++)
		if (i < words)
			h = (h ^ k[i]) * 0x9E3779B97F4A7C15ULL;
	idx = cpu * NDQ_AGG_TABLE_SLOTS + (__u32)((h >> 32) & (NDQ_AGG_TABLE_SLOTS - 1));
	e = bpf_map_lookup_elem(&aggtab, &idx);
	if (!e)
		return false; /* a CPU beyond the possible ones: never, but the verifier asks */
	if (!e->count) {
		copy_words(e->key, s->key.k, words);
		barrier();
		e->count = 1;
		return true;
	}
#pragma unroll
	for (int i = 0; i < NDQ_AGG_KEYS_MAX * NDQ_AGG_KEY_SLOT / 8; i++)
		if (i < words && ((const __u64 *)e->key)[i] != k[i])
			return false;
	e->count++;
	return true;
}

static __always_inline void aggregate(struct scratch *s, struct counters *cnt, __u32 cpu)
{
	struct netdevq_event *ev = &s->ev;
	struct netdevq_agg_value *v;
	__u64 val = 0;

	if (cfg.agg_has_value && !loc_present(ev, &cfg.agg_value))
		return; /* nothing to fold: the Lua path skips such events too */
#pragma unroll
	for (int i = 0; i < NDQ_AGG_KEYS_MAX; i++) { /* the map's key is agg_nkeys slots long */
		if (i < cfg.agg_nkeys)
			put_key(s->key.k + i * NDQ_AGG_KEY_SLOT, ev, &cfg.agg_key[i]);
	}
	if (cfg.agg_has_value)
		val = loc_number(ev, &cfg.agg_value);
	if ((cfg.derived & NDQ_DERIVED_AGG_TABLE) && count_in_table(s, cpu)) {
		cnt->c[NDQ_CNT_AGGREGATED]++;
		return;
	}

	v = bpf_map_lookup_elem(&aggs, &s->key);
	if (!v) {
		bpf_map_update_elem(&aggs, &s->key, &s->zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&aggs, &s->key);
		if (!v) {
			cnt->c[NDQ_CNT_AGG_OVERFLOW]++;
			return;
		}
	}
	v->count++;
	if (cfg.agg_has_value) { /* a count alone leaves sum, min and max at 0 */
		if (v->count == 1 || val < v->min)
			v->min = val;
		if (val > v->max)
			v->max = val;
		v->sum += val;
	}
	if (cfg.agg_hist) {
		__u32 slot = cfg.agg_hist == NDQ_HIST_LOG2 ? log2_slot(val) : linear_slot(val);
		if (slot >= NDQ_AGG_SLOTS)
			slot = NDQ_AGG_SLOTS - 1;
		barrier_var(
			slot); /* the clamp above may become a move the verifier cannot follow */
		if (slot < NDQ_AGG_SLOTS)
			v->slot[slot]++;
	}
	cnt->c[NDQ_CNT_AGGREGATED]++;
}

/* a kernel filter on the protocol, an address or a port: the headers must be decoded */
static __always_inline bool filter_l3l4(void)
{
	return cfg.derived & NDQ_DERIVED_FILTER_L3L4;
}

static __always_inline int l3l4_filter(const struct netdevq_event *ev)
{
	if (cfg.proto.n && (!ev->l3 || !IN_SET(proto, ev->proto)))
		return 0;
	if (cfg.saddr.n && !in_prefix_set(&cfg.saddr, ev->l3, ev->saddr))
		return 0;
	if (cfg.daddr.n && !in_prefix_set(&cfg.daddr, ev->l3, ev->daddr))
		return 0;
	if (cfg.host.n && !in_prefix_set(&cfg.host, ev->l3, ev->saddr) &&
	    !in_prefix_set(&cfg.host, ev->l3, ev->daddr))
		return 0;
	if (cfg.sport.n && (!(ev->flags & NDQ_EV_L4) || !IN_SET(sport, ev->sport)))
		return 0;
	if (cfg.dport.n && (!(ev->flags & NDQ_EV_L4) || !IN_SET(dport, ev->dport)))
		return 0;
	if (cfg.port.n &&
	    (!(ev->flags & NDQ_EV_L4) || (!IN_SET(port, ev->sport) && !IN_SET(port, ev->dport))))
		return 0;
	return 1;
}

/* Read a member of the sk_buff: directly (tp_btf) or from the raw-mode copy at its CO-RE offset. */
#define SKB(f) \
	(btf ? skb->f : *(typeof(skb->f) *)(s->skb + bpf_core_field_offset(struct sk_buff, f)))

#define OFF(t, f) ((__u32)bpf_core_field_offset(struct t, f))
#define END(t, f) (OFF(t, f) + (__u32)bpf_core_field_size(struct t, f))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* A 16-byte name as its two little-endian words w0, w1 into out, every byte after the first NUL
 * zeroed: a renamed device keeps stale bytes after it (strscpy does not pad), and names are
 * compared and keyed whole. (v - 0x01..) & ~v & 0x80.. marks the zero bytes; its lowest bit is
 * the first one's. */
static __always_inline void clean_name(__u64 *out, __u64 w0, __u64 w1)
{
	const __u64 ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	__u64 z0 = (w0 - ones) & ~w0 & highs, z1 = (w1 - ones) & ~w1 & highs;

	if (z0) {
		w0 &= ((z0 & -z0) >> 7) - 1;
		w1 = 0;
	} else if (z1) {
		w1 &= ((z1 & -z1) >> 7) - 1;
	}
	out[0] = w0;
	out[1] = w1;
}

/* The device's ifindex, type, name and namespace pointer. Raw mode fetches them with one
 * bpf_probe_read_kernel of the span of net_device that holds them (offsets are CO-RE
 * relocations, so the span is a constant the verifier sees; a kernel where the members lie
 * too far apart gets one read per member instead). */
static __always_inline struct net *read_dev(struct scratch *s, struct netdevq_event *ev,
					    struct net_device *dev, const bool btf)
{
	struct net *net;

	if (btf) {
		ev->ifindex = dev->ifindex;
		ev->dev_type = dev->type;
		net = dev->nd_net.net;
		clean_name((__u64 *)ev->dev, *(__u64 *)&dev->name[0], *(__u64 *)&dev->name[8]);
		return net;
	}
	/* type lies far from the others (536 vs 224..296 on 6.18): raw mode does not read it and
	 * tells Ethernet from the link header (decode.h) */
	__u32 lo =
		MIN(OFF(net_device, ifindex), MIN(OFF(net_device, name), OFF(net_device, nd_net)));
	__u32 hi =
		MAX(END(net_device, ifindex), MAX(END(net_device, name), END(net_device, nd_net)));
	ev->dev_type = 0;
	if (hi - lo <= DEV_SPAN_MAX) {
		if (bpf_probe_read_kernel(s->devspan, hi - lo, (char *)dev + lo))
			return NULL;
		ev->ifindex = *(int *)(s->devspan + OFF(net_device, ifindex) - lo);
		net = *(struct net **)(s->devspan + OFF(net_device, nd_net) - lo);
		clean_name((__u64 *)ev->dev, *(__u64 *)(s->devspan + OFF(net_device, name) - lo),
			   *(__u64 *)(s->devspan + OFF(net_device, name) - lo + 8));
		return net;
	}
	ev->ifindex = BPF_CORE_READ(dev, ifindex);
	*(__u64 *)&ev->dev[0] = 0;
	*(__u64 *)&ev->dev[8] = 0;
	bpf_core_read_str(ev->dev, sizeof(ev->dev), &dev->name);
	return BPF_CORE_READ(dev, nd_net.net);
}

/* The task on the CPU, from its task_struct (direct loads: cheaper than the pid_tgid, comm and
 * cgroup helpers, with the same values). */
static __always_inline void read_task(struct netdevq_event *ev)
{
	struct task_struct *task = bpf_get_current_task_btf();

	ev->pid = task->tgid;
	ev->tid = task->pid;
}

/* bpf_get_current_pid_tgid()'s value, from the task_struct */
static __always_inline __u64 current_pid_tgid(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return ((__u64)task->tgid << 32) | (__u32)task->pid;
}

static __always_inline void read_comm(char *comm)
{
	struct task_struct *task = bpf_get_current_task_btf();

	/* the kernel keeps comm NUL-padded (strscpy_pad): the bytes bpf_get_current_comm copies */
	*(__u64 *)&comm[0] = *(__u64 *)&task->comm[0];
	*(__u64 *)&comm[8] = *(__u64 *)&task->comm[8];
}

/* bpf_get_current_cgroup_id(): the id of the task's cgroup v2 (default hierarchy) */
static __always_inline __u64 read_cgroup(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return task->cgroups->dfl_cgrp->kn->id;
}

/* Header bytes start at the link header (reset by __dev_queue_xmit before the tracepoint), or at
 * the network header when the device has none. One read serves parsing and the snap bytes: into
 * the event when it needs no parsing (or is the scratch event carrying all NDQ_SNAP_MAX bytes),
 * else into scratch, and the snaplen bytes the event carries are copied from there.
 * Returns 0 when the kernel filter on the protocol, an address or a port rejects the packet
 * (also when the read failed: then nothing parsed, and such a filter must fail). */
struct frame {
	unsigned char *at; /* the link header, or the network header on a device without one */
	__u32 l2;	   /* bytes before the network header */
	__u32 avail;	   /* bytes from at to the end of the linear data */
};

/* ARPHRD_* of the device where the sk_buff is a BTF pointer, else 0: for decoding only (a
 * filter's peek and a rejected packet skip the net_device's cache line) */
#define DEV_TYPE(skb, btf) ((btf) ? (skb)->dev->type : 0)

/* Where the packet's headers lie (ev->len and ev->data_len read). */
static __always_inline struct frame frame_of(struct scratch *s, struct netdevq_event *ev,
					     struct sk_buff *skb, const bool btf)
{
	unsigned char *head = SKB(head);
	__u16 mac = SKB(mac_header), net = SKB(network_header);
	__u32 start = mac != (__u16)~0U ? mac : net;
	__u32 linear_end = (__u32)(SKB(data) - head) + ev->len - ev->data_len;

	return (struct frame){ .at = head + start,
			       .l2 = net >= start ? net - start : 0,
			       .avail = linear_end > start ? linear_end - start : 0 };
}

/* Whether loads may reach any address safely (bpf_rdonly_cast to void: Linux 6.16+), for a
 * program whose sk_buff is a BTF pointer (tp_btf, --read direct) */
#define IN_PLACE_OK(btf) \
	((btf) && bpf_core_enum_value_exists(enum bpf_features, BPF_FEAT_RDONLY_CAST_TO_VOID))

static __always_inline int read_headers(struct scratch *s, struct netdevq_event *ev,
					struct sk_buff *skb, const bool btf, const bool in_place)
{
	struct frame fr = frame_of(s, ev, skb, btf);
	__u32 l2 = fr.l2, avail = fr.avail;
	__u32 want = cfg.snaplen, span;
	const bool parse = (cfg.need & (NDQ_NEED_HEADERS | NDQ_NEED_L4)) || filter_l3l4();
	const bool filter_addrs = cfg.saddr.n || cfg.daddr.n || cfg.host.n;
	/* addresses only for the output or an address filter (a port filter skips their copies) */
	const bool addrs = (cfg.need & NDQ_NEED_HEADERS) || filter_addrs;
	bool decided = !filter_l3l4(); /* the filter has passed (or there is none) */

	ev->flags = 0;
	ev->l3 = 0;
	ev->snap_len = 0;
	ev->l2_len = 0;
	if (parse && want < PARSE_BYTES)
		want = PARSE_BYTES;
	if (want > NDQ_SNAP_MAX)
		want = NDQ_SNAP_MAX;
	span = avail < want ? avail : want; /* the bytes decoding may look at */
	/* decoding reads a few bytes past an offset below NDQ_SNAP_MAX: only the scratch event has
	 * room after its snap, a ring record ends there */
	const bool own = parse && (cfg.snaplen < NDQ_SNAP_MAX || in_place);
	__u8 *buf = own ? s->hdr : ev->snap;

	/* A kernel whose verifier lets loads reach any address safely (tp_btf and --read direct,
	 * Linux 6.16+) reads the headers where they lie. A protocol, address or port filter first
	 * looks at the few bytes it checks (a packet it rejects costs no decode); with no snap bytes
	 * to carry, the headers are decoded in place, no copy (a 192-byte probe read: ~80 ns). Same
	 * bytes, same bounds: the same fields. */
	if (parse && IN_PLACE_OK(btf)) {
		const __u8 *pkt = bpf_rdonly_cast(fr.at, 0);

		/* the peek is all a filter on them, or proto and the ports alone, need */
		if ((!decided || !(cfg.need & NDQ_NEED_HEADERS)) &&
		    peek_headers(ev, pkt, l2, span, filter_addrs)) {
			if (!decided && !l3l4_filter(ev))
				return 0;
			decided = true; /* the decoding below gives these members the same values */
			if (!(cfg.need & NDQ_NEED_HEADERS) && !cfg.snaplen) {
				ev->l2_len = l2;
				return 1;
			}
		}
		if (!cfg.snaplen) {
			ev->flags = 0;
			ev->l3 = 0;
			ev->l2_len = l2;
			ev->dev_type = DEV_TYPE(skb, btf); /* read_dev's: link_kind reads it */
			decode_headers(ev, pkt, l2, span, bpf_ntohs(SKB(vlan_proto)), SKB(vlan_tci),
				       addrs);
			return decided || l3l4_filter(ev);
		}
	}
	if (want && bpf_probe_read_kernel(buf, want, fr.at) == 0) {
		ev->snap_len = avail < cfg.snaplen ? avail : cfg.snaplen;
		ev->l2_len = l2;
		if (parse) {
			ev->dev_type = DEV_TYPE(skb, btf);
			decode_headers(ev, buf, l2, span, bpf_ntohs(SKB(vlan_proto)), SKB(vlan_tci),
				       addrs);
		}
		if (own && cfg.snaplen)
			bpf_probe_read_kernel(ev->snap, cfg.snaplen, buf);
	}
	return decided || l3l4_filter(ev);
}

/* --- pcap-filter expressions decided in the kernel (issue 16) ---------------------------------
 * netdevq_pcap_eth[_copy] and netdevq_pcap_raw[_copy] are stubs whose bodies the loader replaces
 * as the program loads (csrc/pcap_kernel.c) with the translation of libpcap's program for an Ethernet
 * and a raw IP link (csrc/cbpf_ebpf.c); cfg.pcap says whether handle() calls them, before any
 * decoding (a rejected packet costs the expression alone). They see the packet as libpcap does
 * on a live capture: from the link header (Ethernet; an offloaded VLAN tag written back after
 * the MACs) or from the IP header. frame holds its first caplen bytes (at most NDQ_SNAP_MAX
 * are loaded from it); past them the translation reads the linear data at `data` (linear bytes
 * there). Where loads may reach any address (IN_PLACE_OK), frame is the packet itself; else,
 * and for an offloaded tag, a per-CPU copy. */
struct ndq_pcap_frame {
	__u8 b[NDQ_SNAP_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ndq_pcap_frame);
} pcap_frame SEC(".maps");

/* Static, so that the verifier checks the spliced body at each call with the caller's registers.
 * A link has two stubs, one called with the packet itself and one with the per-CPU copy: the
 * verifier lets each load instruction see one kind of pointer only. The volatile and the asm keep
 * the compiler from assuming what a stub returns, or dropping arguments it does not read. */
#define PCAP_STUB(name)                                                                           \
	static __noinline int name(const void *frame, __u32 caplen, __u32 wirelen,                \
				   const void *data, __u32 linear)                                \
	{                                                                                         \
		volatile int match = 1;                                                           \
                                                                                                  \
		asm volatile("" ::"r"(frame), "r"(caplen), "r"(wirelen), "r"(data), "r"(linear)); \
		return match;                                                                     \
	}
PCAP_STUB(netdevq_pcap_eth)
PCAP_STUB(netdevq_pcap_eth_copy)
PCAP_STUB(netdevq_pcap_raw)
PCAP_STUB(netdevq_pcap_raw_copy)

/* n bytes at p into the per-CPU frame from byte off (a constant), as many as fit */
static __always_inline int frame_copy(struct ndq_pcap_frame *f, const __u32 off, const void *p,
				      __u64 n)
{
	const __u64 room = NDQ_SNAP_MAX - off;

	if (n > room)
		n = room;
	barrier_var(n);
	if (n > room) /* (the verifier's bound) */
		return -1;
	return bpf_probe_read_kernel(f->b + off, n, p);
}

static __always_inline int pcap_match(struct scratch *s, struct netdevq_event *ev,
				      struct sk_buff *skb, const bool btf)
{
	struct frame fr = frame_of(s, ev, skb, btf);
	__u16 tpid = bpf_ntohs(SKB(vlan_proto)), tci = SKB(vlan_tci);
	__u32 zero = 0, l2;
	struct ndq_pcap_frame *f;
	int link;

	if (IN_PLACE_OK(btf)) { /* the packet itself */
		const __u8 *pkt = bpf_rdonly_cast(fr.at, 0);

		link = link_kind(pkt, fr.l2, fr.avail, DEV_TYPE(skb, btf));
		if (link == LINK_OTHER) { /* from the IP header */
			l2 = MIN(fr.l2, fr.avail);
			return netdevq_pcap_raw(pkt + l2, fr.avail - l2,
						ev->len > l2 ? ev->len - l2 : 0, fr.at + l2,
						fr.avail - l2);
		}
		if (!tpid)
			return netdevq_pcap_eth(pkt, fr.avail, ev->len, fr.at, fr.avail);
	}
	f = bpf_map_lookup_elem(&pcap_frame, &zero);
	if (!f)
		return 0;
	if (!IN_PLACE_OK(btf)) { /* a copy of it */
		if (frame_copy(f, 0, fr.at, fr.avail))
			return 0;
		link = link_kind(f->b, fr.l2, fr.avail, DEV_TYPE(skb, btf));
		if (link == LINK_OTHER) {
			l2 = MIN(fr.l2, fr.avail);
			if (l2 && frame_copy(f, 0, fr.at + l2, (__u64)fr.avail - l2))
				return 0;
			return netdevq_pcap_raw_copy(f, MIN(fr.avail - l2, NDQ_SNAP_MAX),
						     ev->len > l2 ? ev->len - l2 : 0, fr.at + l2,
						     fr.avail - l2);
		}
		if (!tpid)
			return netdevq_pcap_eth_copy(f, MIN(fr.avail, NDQ_SNAP_MAX), ev->len, fr.at,
						     fr.avail);
	}
	/* an offloaded tag, written back after the MACs: past the frame, byte i of what libpcap
	 * sees is byte i - 4 of the packet */
	if (fr.avail < 12 || frame_copy(f, 0, fr.at, 12) ||
	    frame_copy(f, 16, fr.at + 12, (__u64)fr.avail - 12))
		return 0;
	f->b[12] = tpid >> 8;
	f->b[13] = tpid & 0xff;
	f->b[14] = tci >> 8;
	f->b[15] = tci & 0xff;
	return netdevq_pcap_eth_copy(f, MIN(fr.avail + 4, NDQ_SNAP_MAX), ev->len + 4, fr.at - 4,
				     fr.avail + 4);
}
/* --- end of pcap-filter expressions ------------------------------------------------------- */

#include "owner.bpf.h" /* socket owner: maps, learning programs, owner_read, owner_who_filter */

/* BPF_RB_* flags for an event of size bytes: wake the consumer once per wakeup_bytes emitted on
 * this CPU; in between it picks events up on its poll timeout. Cheaper than asking the ring how
 * full it is. */
static __always_inline __u64 wake_flags(struct scratch *s, __u64 size)
{
	if (!cfg.wakeup_bytes)
		return 0;
	s->pending += size;
	if (s->pending >= cfg.wakeup_bytes) {
		s->pending = 0;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* Buffer c's n events out as one ring record. They count as emitted when appended: a full
 * ring moves them to lost (atomically: a flush may run between an append's counter updates). */
static __always_inline void batch_out(struct batch *b, __u32 c, __u32 n, struct scratch *s,
				      struct counters *cnt)
{
	__u64 bytes = (__u64)n * emit_size();

	if (!bytes || bytes > NDQ_BATCH_BYTES) /* never: the verifier wants the bound */
		return;
	if (bpf_ringbuf_output(&events, b->buf[c & 1], bytes, wake_flags(s, bytes))) {
		__sync_fetch_and_add(&cnt->c[NDQ_CNT_LOST], n);
		__sync_fetch_and_add(&cnt->c[NDQ_CNT_EMITTED], -(__s64)n);
	}
}

/* Whether anything reads the members every event carries whatever `need` says (skb, mark,
 * cpu, ...: the block before pid in struct netdevq_event): events go out, or an aggregation
 * key or value lies there (csrc/derive.c). An in-kernel count by device reads none of them. */
static __always_inline bool common_read(void)
{
	return cfg.derived & NDQ_DERIVED_COMMON;
}

/* A matched event out: into the aggregation and/or the ring buffer (from handle(), or from
 * bpf/latency.bpf.h when its fate is known). */
static __always_inline void deliver(struct scratch *s, struct counters *cnt, __u32 cpu)
{
	struct netdevq_event *ev = &s->ev;

	if (cfg.agg_on)
		aggregate(s, cnt, cpu);
	if (cfg.emit) {
		__u64 size = emit_size();

		if (bpf_ringbuf_output(&events, ev, size, wake_flags(s, size)))
			cnt->c[NDQ_CNT_LOST]++;
		else
			cnt->c[NDQ_CNT_EMITTED]++;
	}
}

#include "latency.bpf.h" /* queue latency and drops: lat_held, the fate programs */

/* btf: skb is a BTF pointer (members are loads); cast: the direct program, which may call
 * bpf_rdonly_cast.
 * Long on purpose (over 200 lines): filters, the ring reservation and the fill share one event
 * pointer, which is either a ring record or scratch; the verifier must see every path from the
 * reserve to its submit or discard in one function, and the order of the reads (cheapest filter
 * first, the rest only for matching events) is the design, easiest checked top to bottom. */
static __always_inline int handle(void *ctx, struct sk_buff *skb, const bool btf, const bool cast)
{
	/* Filters run first, each reading only what it checks; what the output needs and no filter
	 * read comes after. cfg members are constants to the verifier: untaken branches vanish. */
	const bool filter_task = cfg.derived &
				 NDQ_DERIVED_FILTER_TASK; /* follow_pid: owner_who_filter */
	const bool filter_dev = cfg.derived & NDQ_DERIVED_FILTER_DEV;
	const bool need_dev = cfg.derived & NDQ_DERIVED_NEED_DEV;
	/* Reserve in place: with nothing to filter (csrc/derive.c), the event is written
	 * straight into its ring buffer record (no scratch copy), and a full ring costs one failed
	 * reserve. Member paths, kstacks and aggregations keep the scratch event. */
	const bool held = cfg.need & NDQ_NEED_LATENCY; /* out later, from scratch (latency.bpf.h) */
	const bool in_place = cfg.derived & NDQ_DERIVED_IN_PLACE;
	__u64 size = emit_size();
	__u32 zero = 0, cpu;
	struct counters *cnt;
	struct scratch *s;
	const bool batched = in_place && cfg.batch > 1;
	struct netdevq_event *ev, *rec = NULL;
	struct net *net = NULL;
	struct batch *b = NULL;
	__u32 bc = 0, bn = 0;

	THIS_CPU(cpu, cnt, s);
	if (!cnt || !s)
		return 0;
	cnt->c[NDQ_CNT_SEEN]++;
	if (batched) { /* the next slot of this CPU's batch */
		b = bpf_map_lookup_elem(&batches, &zero);
		if (!b)
			return 0;
		b->busy = 1;
		bc = b->cur & 1;
		bn = b->n[bc];
		if (bn >= cfg.batch) /* never: a full batch goes out at once */
			bn = 0;
		ev = (void *)b->buf[bc] + bn * size;
	} else if (in_place) {
		ev = bpf_ringbuf_reserve(&events, size, 0);
		if (!ev) {
			cnt->c[NDQ_CNT_LOST]++;
			return 0;
		}
	} else {
		ev = &s->ev;
	}

	if (filter_task) {
		read_task(ev);
		if (cfg.pid.n && !IN_SET(pid, ev->pid))
			goto filtered;
		if (cfg.tid.n && !IN_SET(tid, ev->tid))
			goto filtered;
	}
	if (cfg.n_comm) {
		read_comm(ev->comm);
		if (!in_name_set(cfg.comm, cfg.n_comm, ev->comm))
			goto filtered;
	}

	if (!btf || cfg.n_paths) { /* member paths read from the copy too (bpf/skbpath.h) */
		__u32 copy = bpf_core_type_size(struct sk_buff);
		if (copy > SKB_COPY_MAX)
			copy = SKB_COPY_MAX;
		if (bpf_probe_read_kernel(s->skb, copy, skb)) {
			cnt->c[NDQ_CNT_READ_FAILED]++;
			if (batched)
				b->busy = 0;
			else if (in_place)
				bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
			return 0;
		}
	}
	if (cfg.need & NDQ_NEED_OWNER) {
		bool kernel_made = owner_read(ev, OWNER_SKB_SK(skb, s->skb, btf), btf);

		if (!owner_who_filter(ev, kernel_made))
			goto filtered;
	}
	ev->len = SKB(len);
	if (cfg.len_set && (ev->len < cfg.len_min || ev->len > cfg.len_max))
		goto filtered;
	/* read here only to be checked; for the output, below */
	if (cfg.mark.n && !IN_SET(mark, SKB(mark)))
		goto filtered;
	if (cfg.queue.n && !IN_SET(queue, SKB(queue_mapping)))
		goto filtered;
	if (cfg.priority.n && !IN_SET(priority, SKB(priority)))
		goto filtered;
	ev->ethertype = bpf_ntohs(SKB(protocol));
	if (cfg.ethertype.n && !IN_SET(ethertype, ev->ethertype))
		goto filtered;
	ev->data_len = SKB(data_len);

	if (filter_dev || need_dev) {
		net = read_dev(s, ev, SKB(dev), btf);
		if (cfg.ifindex.n && !IN_SET(ifindex, ev->ifindex))
			goto filtered;
		if (cfg.n_dev && !in_name_set(cfg.dev, cfg.n_dev, ev->dev))
			goto filtered;
	}
	if (cfg.netns.n || (cfg.need & NDQ_NEED_NETNS)) {
		if (btf)
			ev->netns = net ? net->ns.inum : 0;
		else
			ev->netns = net ? BPF_CORE_READ(net, ns.inum) : 0;
		if (cfg.netns.n && !IN_SET(netns, ev->netns))
			goto filtered;
	}

	if (cfg.pcap && !pcap_match(s, ev, skb, btf)) /* issue 16 */
		goto filtered;
	if (!read_headers(s, ev, skb, btf, in_place)) /* the protocol, address, port filter */
		goto filtered;

	if (cfg.n_cgroup || (cfg.need & NDQ_NEED_CGROUP)) {
		ev->cgroup = read_cgroup();
		if (cfg.n_cgroup) {
			int hit = 0;
#pragma unroll
			for (int i = 0; i < NDQ_SET_MAX; i++)
				if (i < cfg.n_cgroup && cfg.cgroup[i] == ev->cgroup)
					hit = 1;
			if (!hit)
				goto filtered;
		}
	}
	/* member paths last: each costs a probe read or more */
	if (cfg.n_paths && !filter_paths(ev, skb, s->skb))
		goto filtered;

	/* matched. A filtered event (built in scratch) takes its ring record now: when the ring is
	 * full, the reads below are skipped (the aggregation, when there is one, still wants them) */
	if (cfg.emit && !in_place && !cfg.agg_on && !held) {
		rec = bpf_ringbuf_reserve(&events, size, 0);
		if (!rec) {
			cnt->c[NDQ_CNT_LOST]++;
			return 0;
		}
	}
	/* the rest of what the output asks for */
	if ((cfg.need & NDQ_NEED_OWNER) && ev->owner_pid)
		ev->flags |= NDQ_EV_OWNER; /* read_headers reset the flags */
	if (!filter_task && (cfg.need & NDQ_NEED_TASK))
		read_task(ev);
	if (!cfg.n_comm && (cfg.need & NDQ_NEED_TASK))
		read_comm(ev->comm);
	if (cfg.need & NDQ_NEED_GSO) {
		struct skb_shared_info *sh = (void *)(SKB(head) + SKB(end));
		if (cast) { /* --read direct: plain loads, like the sk_buff's */
			sh = bpf_rdonly_cast(sh, cfg.shinfo_btf_id);
			ev->gso_size = sh->gso_size;
			ev->gso_segs = sh->gso_segs;
		} else if (OFF(skb_shared_info, gso_segs) == OFF(skb_shared_info, gso_size) + 2) {
			__u16 g[2] = {};
			bpf_probe_read_kernel(g, sizeof(g),
					      (char *)sh + OFF(skb_shared_info, gso_size));
			ev->gso_size = g[0];
			ev->gso_segs = g[1];
		} else {
			ev->gso_size = BPF_CORE_READ(sh, gso_size);
			ev->gso_segs = BPF_CORE_READ(sh, gso_segs);
		}
	}
	if (cfg.need & NDQ_NEED_TS)
		ev->ts = bpf_ktime_get_ns();
	if (common_read()) {
		ev->mark = SKB(mark);
		ev->queue = SKB(queue_mapping);
		ev->priority = SKB(priority);
		ev->mac_len = SKB(mac_len);
		ev->hdr_len = SKB(hdr_len);
		ev->hash = SKB(hash);
		ev->skb = (__u64)skb;
		ev->cpu = cpu;
	}
	if (!in_place) /* in_place: no paths, no kstack (and no room for them in the record) */
		finish_paths(ctx, ev, skb, s->skb);

	if (cfg.need & NDQ_NEED_LATENCY)
		return latency_hold(s, cnt, skb,
				    SKB(dev)); /* out when its fate is known (never in place) */
	if (batched) {
		/* out when full, or at once when it is the batch's first event and the consumer
		 * has taken everything (a quiet device's events wait for no flush), unless a flush
		 * this append interrupted will hand the buffer over. Only the first event looks:
		 * the query reads the consumer's position, a cache line user space keeps writing;
		 * the others wait for a full batch or the next flush (FLUSH_MS). */
		cnt->c[NDQ_CNT_EMITTED]++;
		bn++;
		if (bn >= cfg.batch ||
		    (bn == 1 && !b->flushing && !bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA))) {
			batch_out(b, bc, bn, s, cnt);
			bn = 0;
		}
		b->n[bc] = bn;
		b->busy = 0;
	} else if (in_place) {
		bpf_ringbuf_submit(ev, wake_flags(s, size));
		cnt->c[NDQ_CNT_EMITTED]++;
	} else if (rec) {
		bpf_probe_read_kernel(rec, size, ev); /* scratch to its record: one copy */
		bpf_ringbuf_submit(rec, wake_flags(s, size));
		cnt->c[NDQ_CNT_EMITTED]++;
	} else {
		deliver(s, cnt, cpu);
	}
	return 0;

filtered:
	/* never: in_place means no filter, but the verifier wants the release */
	if (batched)
		b->busy = 0;
	else if (in_place)
		bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
	cnt->c[NDQ_CNT_KFILTERED]++;
	return 0;
}

SEC("raw_tp/net_dev_queue")
int netdevq_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return handle(ctx, (struct sk_buff *)ctx->args[0], false, false);
}

SEC("raw_tp/net_dev_queue")
int netdevq_direct(struct bpf_raw_tracepoint_args *ctx)
{
	struct sk_buff *skb = bpf_rdonly_cast((void *)ctx->args[0], cfg.skb_btf_id);

	return handle(ctx, skb, true, true);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(netdevq_btf, struct sk_buff *skb)
{
	return handle(ctx, skb, true, false);
}

/* Follows the -c process tree: a child of a tracked process is tracked. A new process whose
 * parent is not tracked got a pid that a tracked process held once (pids are recycled): it is
 * not part of the tree, whatever netdevq_exit missed. Threads (same tgid) change nothing. */
/* Hands over this CPU's batch (the consumer runs it on each CPU with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_RUN_ON_CPU: from an IPI, or directly on its own CPU). Returns 1 when an append
 * it interrupted holds the batch (try again), else 0. */
SEC("raw_tp")
int netdevq_flush(void *ctx)
{
	__u32 zero = 0, c, n, cpu;
	struct batch *b = bpf_map_lookup_elem(&batches, &zero);
	struct counters *cnt;
	struct scratch *s;

	THIS_CPU(cpu, cnt, s);

	if (!b || !cnt || !s)
		return 0;
	if (b->busy || b->flushing)
		return 1;
	b->flushing = 1;
	c = b->cur & 1;
	b->cur = c ^ 1; /* appends from here on (an interrupt's) go to the other buffer */
	n = b->n[c];	/* read after the switch: an append before it is in */
	if (n) {
		if (n > NDQ_BATCH_MAX)
			n = NDQ_BATCH_MAX;
		batch_out(b, c, n, s, cnt);
		b->n[c] = 0;
	}
	b->flushing = 0;
	return 0;
}

SEC("raw_tp/sched_process_fork")
int netdevq_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u8 one = 1;

	if (ptgid == ctgid)
		return 0;
	if (bpf_map_lookup_elem(&tracked, &ptgid)) {
		bpf_map_update_elem(&tracked, &ctgid, &one, BPF_ANY);
	} else {
		bpf_map_delete_elem(&tracked, &ctgid);
		bpf_map_delete_elem(&exited, &ctgid);
	}
	return 0;
}

/* Prunes the tree: a process whose last thread exits moves from `tracked` (fixed size, live
 * processes) to `exited` (bounded, see there). The exit tracepoint fires after the thread
 * group's count (signal->live) is decremented: 0 means this was the last thread. */
SEC("raw_tp/sched_process_exit")
int netdevq_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u8 one = 1;

	if (BPF_CORE_READ(task, signal, live.counter) != 0 || !bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	bpf_map_update_elem(&exited, &tgid, &one, BPF_ANY);
	bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}
