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

/* Kernel stacks of matching events (cfg.kstack): ids in the event, frames here. One entry unless
 * the loader asks for kstack (csrc/kstack.c sizes it then). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, NDQ_KSTACK_DEPTH * sizeof(__u64));
} kstacks SEC(".maps");

/* The low `size` bytes of v (size 1..8). */
static __always_inline __u64 low_bytes(__u64 v, __u32 size)
{
	return size >= 8 ? v : v & ((1ULL << ((size & 7) * 8)) - 1);
}

/* Reads path i into ev->path[i]; returns 1 when it was read. copy: the copy of the sk_buff
 * (SKB_COPY_MAX bytes) that handle() makes in both modes when paths are read: what lies in the
 * sk_buff itself (the first pointer, or a value with no pointer before it) is loaded from there,
 * without a helper call. */
static __always_inline int read_path(struct netdevq_event *ev, __u64 skb, const __u8 *copy,
				     const int i)
{
	const volatile struct netdevq_path *p = &cfg.path[i];
	__u64 ptr = skb, v;
	__u32 size = p->size, last = p->hops, off;

	ev->path[i][0] = 0;
	ev->path[i][1] = 0;
	if (size > NDQ_PATH_STR)
		size = NDQ_PATH_STR;
	if (size == 0 || last > NDQ_PATH_HOPS)
		return 0;
#pragma unroll
	for (int h = 0; h < NDQ_PATH_HOPS; h++) {
		if (h < last) {
			off = p->off[h];
			if (h == 0 && copy && off <= SKB_COPY_MAX - 8)
				ptr = *(const __u64 *)(copy + off);
			else if (bpf_probe_read_kernel(&ptr, sizeof(ptr), (void *)(ptr + off)))
				return 0;
			if (!ptr)
				return 0;
		}
	}
	off = p->off[last];
	if (last == 0 && copy && off <= SKB_COPY_MAX - 16) {
		ev->path[i][0] = low_bytes(*(const __u64 *)(copy + off), size);
		if (size > 8)
			ev->path[i][1] = low_bytes(*(const __u64 *)(copy + off + 8), size - 8);
	} else if (bpf_probe_read_kernel(ev->path[i], size, (void *)(ptr + off))) {
		return 0;
	}
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

/* After the other filters: reads the paths the kernel filter checks; returns 0 when one of them
 * fails. The rest are read for matching events only (finish_paths). */
static __always_inline int filter_paths(struct netdevq_event *ev, void *skb, const __u8 *copy)
{
	ev->path_present = 0;
#pragma unroll
	for (int i = 0; i < NDQ_PATHS_MAX; i++) {
		if (i < cfg.n_paths && cfg.path[i].cmp) {
			if (read_path(ev, (__u64)skb, copy, i))
				ev->path_present |= 1u << i;
			if (!path_passes(ev, i))
				return 0;
		}
	}
	return 1;
}

/* For a matching event: the paths no filter read, and its kernel stack. */
static __always_inline void finish_paths(void *ctx, struct netdevq_event *ev, void *skb,
					 const __u8 *copy)
{
	long id = cfg.kstack ? bpf_get_stackid(ctx, &kstacks, 0) : -1;

#pragma unroll
	for (int i = 0; i < NDQ_PATHS_MAX; i++)
		if (i < cfg.n_paths && !cfg.path[i].cmp && read_path(ev, (__u64)skb, copy, i))
			ev->path_present |= 1u << i;
	ev->kstack = id >= 0 ? (__u32)id + 1 : 0;
}

#endif /* NETDEVQ_SKBPATH_H */
