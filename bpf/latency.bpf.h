/* latency.bpf.h - queue latency and drops: the fields sojourn_ns, xmit_ns, xmit_rc and
 * drop_reason (included by netdevq.bpf.c).
 *
 * When cfg.need has NDQ_NEED_LATENCY, handle() does not emit a matched event at net_dev_queue:
 * latency_hold() keeps it in `lat_held`, keyed by (sk_buff, net_device) address, and the event
 * leaves when the packet's fate is known:
 *
 *   net_dev_start_xmit  the driver is handed the packet: sojourn_ns = now - queued
 *   net_dev_xmit        the driver returned: xmit_ns, xmit_rc; the event is emitted (or folded
 *                       into the aggregation) and the entry deleted
 *   skb:kfree_skb       freed before the driver got it (a qdisc drop, a purge on reset or link
 *                       down): emitted with drop_reason (enum skb_drop_reason; the names come from
 *                       the kernel's BTF in user space) and without sojourn_ns. Freed while the
 *                       driver has it: drop_reason rides on the net_dev_xmit event.
 *   skb:consume_skb     freed without error before the driver: a GSO packet segmented in software,
 *                       by validate_xmit_skb (the device lacks the offload) or by a qdisc that
 *                       splits what exceeds its size (tbf, cake). The segments are new sk_buffs
 *                       that never passed net_dev_queue and are not followed: the packet is
 *                       emitted here with neither sojourn_ns nor drop_reason (a time taken here
 *                       would be ~0 for a qdisc that segments at enqueue, before the wait).
 *
 * A driver that answers NETDEV_TX_BUSY gets the packet requeued: the entry goes back to
 * "queued" with its first timestamp, so sojourn_ns ends at the start_xmit whose call took the
 * packet and includes the requeue wait. The key holds the device too, so that stacked devices
 * (vlan, bond, a tunnel queueing the same sk_buff on its lower device inside its own xmit) get one
 * event per device, the upper one's xmit_ns covering the lower device's queue.
 *
 * Devices without a queue (lo, veth without a qdisc, noqueue) go straight from net_dev_queue to
 * the driver: their sojourn_ns is the few hundred ns in between. With a qdisc it is the wait in
 * the qdisc plus what held the queue back (a stopped queue: BQL limit, a full ring).
 *
 * `lat_held` (its values: the event's first latency_held_size() bytes) is an LRU hash: it cannot grow past NDQ_LATENCY_MAX entries whatever happens to the
 * packets (one freed by a path without a tracepoint only costs a slot until it is the least
 * recently used). While held, an entry's sojourn_ns holds the queue timestamp and, in the driver
 * (NDQ_EV_XMIT), xmit_ns the start_xmit timestamp; both become durations on their way out.
 * None of the programs here loads unless NDQ_NEED_LATENCY is asked for (csrc/latency.c).
 */
#ifndef NETDEVQ_LATENCY_BPF_H
#define NETDEVQ_LATENCY_BPF_H

#define NDQ_LATENCY_MAX 16384 /* packets held at once; the loader shrinks it to 1 when unused */
#define NDQ_NETDEV_TX_BUSY 0x10

/* CO-RE: whether kfree_skb carries a drop reason (Linux 5.17 and later) */
enum skb_drop_reason {
	SKB_DROP_REASON_NOT_SPECIFIED = 2,
};

struct lat_key {
	__u64 skb;
	__u64 dev;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NDQ_LATENCY_MAX);
	/* sizes: the loader sets the value's (see aggs in netdevq.bpf.c) */
	__uint(key_size, sizeof(struct lat_key));
	__uint(value_size, sizeof(struct netdevq_event));
} lat_held SEC(".maps");

/* The bytes of an event held: what deliver() emits (the loader sets lat_held's value size to it,
 * csrc/latency.c, from the same cfg.event_size), at most the whole event. */
static __always_inline __u32 latency_held_size(void)
{
	__u64 size = emit_size();

	size = (size + 7) & ~7ULL;
	return size > sizeof(struct netdevq_event) ? sizeof(struct netdevq_event) : size;
}

/* From handle(): hold the matched event until its fate is known. */
static __always_inline int latency_hold(struct scratch *s, struct counters *cnt,
					struct sk_buff *skb, struct net_device *dev)
{
	struct lat_key k = { .skb = (__u64)skb, .dev = (__u64)dev };
	struct netdevq_event *ev = &s->ev;

	ev->flags &= ~(NDQ_EV_XMIT | NDQ_EV_XMIT_DONE | NDQ_EV_DROP);
	ev->sojourn_ns = (cfg.need & NDQ_NEED_TS) ? ev->ts : bpf_ktime_get_ns();
	ev->xmit_ns = 0;
	ev->xmit_rc = 0;
	ev->drop_reason = 0;
	long err = bpf_map_update_elem(&lat_held, &k, ev, BPF_NOEXIST);

	if (err == 0) {
		cnt->c[NDQ_CNT_HELD]++;
		return 0;
	}
	/* Not held, so this event cannot come out; or the address is held already: that packet was
	 * freed and its memory reused without a fate seen here, and its event is the one lost (this
	 * one takes its place, the held count stays). Counted as lost either way, never silent. */
	cnt->c[NDQ_CNT_LOST]++;
	if (err == -17 /* EEXIST */)
		bpf_map_update_elem(&lat_held, &k, ev, BPF_EXIST);
	return 0;
}

/* The held event leaves: through the sojourn_ns kernel filter to deliver(). */
static __always_inline void latency_release(struct lat_key *k, struct netdevq_event *v)
{
	struct counters *cnt;
	struct scratch *s;
	struct netdevq_event *ev;
	__u32 cpu;

	THIS_CPU(cpu, cnt, s);
	if (!cnt || !s)
		return;
	ev = &s->ev;
	if (bpf_probe_read_kernel(ev, latency_held_size(), v))
		return;
	if (bpf_map_delete_elem(&lat_held, k))
		return; /* another CPU released it first */
	cnt->c[NDQ_CNT_HELD]--;
	if (cfg.sojourn_set && (!(ev->flags & NDQ_EV_XMIT) || ev->sojourn_ns < cfg.sojourn_min ||
				ev->sojourn_ns > cfg.sojourn_max)) {
		cnt->c[NDQ_CNT_KFILTERED]++;
		return;
	}
	deliver(s, cnt, cpu);
}

static __always_inline void lat_start(struct sk_buff *skb, struct net_device *dev)
{
	struct lat_key k = { .skb = (__u64)skb, .dev = (__u64)dev };
	struct netdevq_event *v = bpf_map_lookup_elem(&lat_held, &k);
	__u64 now;

	if (!v)
		return;
	now = bpf_ktime_get_ns();
	v->sojourn_ns = now - v->sojourn_ns;
	v->xmit_ns = now;
	v->flags |= NDQ_EV_XMIT;
}

static __always_inline void lat_xmit(struct sk_buff *skb, int rc, struct net_device *dev)
{
	struct lat_key k = { .skb = (__u64)skb, .dev = (__u64)dev };
	struct netdevq_event *v = bpf_map_lookup_elem(&lat_held, &k);
	__u64 now;

	if (!v || !(v->flags & NDQ_EV_XMIT))
		return;
	now = bpf_ktime_get_ns();
	if (rc == NDQ_NETDEV_TX_BUSY) { /* requeued: queued again, since its first timestamp */
		v->sojourn_ns = v->xmit_ns - v->sojourn_ns;
		v->flags &= ~NDQ_EV_XMIT;
		return;
	}
	v->xmit_ns = now - v->xmit_ns;
	v->xmit_rc = (__u32)rc;
	v->flags |= NDQ_EV_XMIT_DONE;
	latency_release(&k, v);
}

/* kfree_skb (drop: reason >= 0) or consume_skb (reason < 0) of skb on the device it is on */
static __always_inline void lat_free(struct sk_buff *skb, struct net_device *dev, int reason)
{
	struct lat_key k = { .skb = (__u64)skb, .dev = (__u64)dev };
	struct netdevq_event *v = bpf_map_lookup_elem(&lat_held, &k);

	if (!v)
		return;
	if (reason >= 0) {
		v->drop_reason = (__u32)reason;
		v->flags |= NDQ_EV_DROP;
	}
	if (v->flags & NDQ_EV_XMIT)
		return; /* the driver has it: net_dev_xmit reports it */
	/* dropped, or consumed before the driver: segmented (see above) */
	latency_release(&k, v);
}

static __always_inline int lat_reason(__u64 arg)
{
	if (!bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED))
		return 0; /* no reason in this kernel: 0 (reported as the number) */
	return (int)(arg & 0x7fffffff);
}

SEC("raw_tp/net_dev_start_xmit")
int ndq_lat_start_raw(struct bpf_raw_tracepoint_args *ctx)
{
	lat_start((struct sk_buff *)ctx->args[0], (struct net_device *)ctx->args[1]);
	return 0;
}

SEC("raw_tp/net_dev_xmit")
int ndq_lat_xmit_raw(struct bpf_raw_tracepoint_args *ctx)
{
	lat_xmit((struct sk_buff *)ctx->args[0], (int)ctx->args[1],
		 (struct net_device *)ctx->args[2]);
	return 0;
}

SEC("raw_tp/kfree_skb")
int ndq_lat_kfree_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];

	lat_free(skb, BPF_CORE_READ(skb, dev), lat_reason(ctx->args[2]));
	return 0;
}

SEC("raw_tp/consume_skb")
int ndq_lat_consume_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];

	lat_free(skb, BPF_CORE_READ(skb, dev), -1);
	return 0;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(ndq_lat_start_btf, struct sk_buff *skb, struct net_device *dev)
{
	lat_start(skb, dev);
	return 0;
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(ndq_lat_xmit_btf, struct sk_buff *skb, int rc, struct net_device *dev)
{
	lat_xmit(skb, rc, dev);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(ndq_lat_kfree_btf, struct sk_buff *skb, void *location, int reason)
{
	lat_free(skb, skb->dev, lat_reason(reason));
	return 0;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(ndq_lat_consume_btf, struct sk_buff *skb)
{
	lat_free(skb, skb->dev, -1);
	return 0;
}

#endif /* NETDEVQ_LATENCY_BPF_H */
