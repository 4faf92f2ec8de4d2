/* skbpath.h - the generic sk_buff member reader (skb.dev.mtu, skb.sk.sk_rcvbuf, ...).
 *
 * Included by netdevq.bpf.c after cfg. csrc/btf_path.c resolves each path against the kernel's
 * BTF into cfg.path[i]: the offsets of up to NDQ_PATH_HOPS pointers to follow, then the offset,
 * size and kind of the value. Every path is read the same way in both modes, with
 * bpf_probe_read_kernel: a path is data, not code, so one bounded reader serves any member.
 * cfg is frozen .rodata, so each hop count, offset and size is a constant to the verifier and the
 * unrolled loops keep only the paths and hops in use.
 *
 * A NULL pointer on the way (or a failed read) leaves the path absent: its bit in
 * ev->path_present stays 0, and a kernel comparison on it fails (like other absent fields).
 */
#ifndef NETDEVQ_SKBPATH_H
#define NETDEVQ_SKBPATH_H

/* Kernel stacks of matching events (cfg.kstack): ids in the event, frames here. The loader sizes
 * the map (1 entry when unused). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, NDQ_KSTACK_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

/* For a matching event: its kernel stack, and the present paths as flags (NDQ_EV_PATH0 << i,
 * where aggregation keys and values look for presence). */
static __always_inline void finish_paths(void *ctx, struct netdevq_event *ev)
{
	ev->kstack = cfg.kstack ? bpf_get_stackid(ctx, &kstacks, 0) : -1;
	ev->flags |= (__u16)(ev->path_present * NDQ_EV_PATH0);
}

/* Reads path i into ev->path[i]; returns 1 when it was read. */
static __always_inline int read_path(struct netdevq_event *ev, __u64 skb, const int i)
{
	const volatile struct netdevq_path *p = &cfg.path[i];
	__u64 ptr = skb, v;
	__u32 size = p->size, last = p->hops;

	ev->path[i][0] = 0;
	ev->path[i][1] = 0;
#pragma unroll
	for (int h = 0; h < NDQ_PATH_HOPS; h++) {
		if (h < p->hops) {
			if (bpf_probe_read_kernel(&ptr, sizeof(ptr), (void *)(ptr + p->off[h])) ||
			    !ptr)
				return 0;
		}
	}
	if (size > NDQ_PATH_STR)
		size = NDQ_PATH_STR;
	if (size == 0 || last > NDQ_PATH_HOPS ||
	    bpf_probe_read_kernel(ev->path[i], size, (void *)(ptr + p->off[last])))
		return 0;
	if (p->kind == NDQ_PK_STR)
		return 1;
	v = ev->path[i][0];
	if (p->bit_size) {
		v >>= p->bit_off & 63;
		if (p->bit_size < 64)
			v &= (1ULL << p->bit_size) - 1;
	}
	if (p->kind == NDQ_PK_SINT) {
		__u32 width = p->bit_size ? p->bit_size : size * 8;
		__u32 shift = 64 - width;
		v = (__u64)((__s64)(v << (shift & 63)) >> (shift & 63));
	}
	ev->path[i][0] = v;
	return 1;
}

/* Whether path i passes the kernel filter: within lo..hi, and not ne. Like every filter on an
 * absent field, a range fails and "not equal" holds when the path is absent. */
static __always_inline int path_passes(const struct netdevq_event *ev, const int i)
{
	const volatile struct netdevq_path *p = &cfg.path[i];
	__u64 v = ev->path[i][0];

	if (!(ev->path_present & (1u << i)))
		return !(p->cmp & NDQ_PC_RANGE);
	if (p->cmp & NDQ_PC_RANGE) {
		if (p->kind == NDQ_PK_SINT ? ((__s64)v < (__s64)p->lo || (__s64)v > (__s64)p->hi) :
					     (v < p->lo || v > p->hi))
			return 0;
	}
	if ((p->cmp & NDQ_PC_NE) && v == p->ne)
		return 0;
	return 1;
}

/* Reads every configured path into ev; returns 0 when one of them fails its kernel filter. */
static __always_inline int read_paths(struct netdevq_event *ev, void *skb)
{
	ev->path_present = 0;
#pragma unroll
	for (int i = 0; i < NDQ_PATHS_MAX; i++) {
		if (i < cfg.n_paths) {
			if (read_path(ev, (__u64)skb, i))
				ev->path_present |= 1u << i;
			if (cfg.path[i].cmp && !path_passes(ev, i))
				return 0;
		}
	}
	return 1;
}

/* Aggregation keys and values on paths (field id NDQ_F_PATH + i) and on kstack. */
static __always_inline int path_field(__u32 f)
{
	return (f >= NDQ_F_PATH && f < NDQ_F_PATH + NDQ_PATHS_MAX) || f == NDQ_F_KSTACK;
}

static __always_inline int path_present(const struct netdevq_event *ev, __u32 f)
{
	if (f == NDQ_F_KSTACK)
		return ev->kstack >= 0;
	return (ev->path_present >> ((f - NDQ_F_PATH) & 7)) & 1;
}

static __always_inline __u64 path_num(const struct netdevq_event *ev, __u32 f)
{
	if (f == NDQ_F_KSTACK)
		return (__u64)ev->kstack;
	return ev->path[(f - NDQ_F_PATH) & 7][0];
}

/* A key slot holds the path's 16 bytes: the number in the first 8 (the rest zero), or the
 * string; kstack's slot its stack id. */
static __always_inline void path_key(__u8 *slot, const struct netdevq_event *ev, __u32 f)
{
	if (f == NDQ_F_KSTACK) {
		__builtin_memset(slot, 0, NDQ_AGG_KEY_SLOT);
		*(__u64 *)slot = (__u64)ev->kstack;
		return;
	}
	__builtin_memcpy(slot, ev->path[(f - NDQ_F_PATH) & 7], NDQ_AGG_KEY_SLOT);
}

#endif /* NETDEVQ_SKBPATH_H */
