/* derive.c - see derive.h
 *
 * The program (bpf/netdevq.bpf.c handle()) used to combine these members itself on every event.
 * Their values are constants to the verifier, which then drops the branches they decide, but
 * the loads and the arithmetic deciding them stayed: about 90 instructions before the first
 * filter. Here they are decided once, by the rules the program documents where it tests each
 * bit. */
#include <stddef.h>

#include "derive.h"

#define END_OF(m) (offsetof(struct netdevq_event, m) + sizeof(((struct netdevq_event *)0)->m))

/* The last member each part of `need` writes. A record without header bytes, fate members or
 * paths stops after the last part its run asks for: a smaller record costs less to write (a
 * 64-byte reserve/write/submit costs about 50 ns less than a 256-byte one). Members a run does
 * not ask for are stale anyway. */
static const struct {
	__u32 need;
	size_t end;
} PART_END[] = {
	{ NDQ_NEED_TASK, END_OF(comm) },
	{ NDQ_NEED_DEV | NDQ_NEED_NETNS, END_OF(dev_type) }, /* the netns comes with the device */
	{ NDQ_NEED_CGROUP, END_OF(cgroup) },
	{ NDQ_NEED_GSO, END_OF(gso_segs) },
	/* L4 alone: a frame the peek cannot read is decoded whole (tags, ICMP, ARP ...) */
	{ NDQ_NEED_HEADERS | NDQ_NEED_L4, END_OF(arp_tpa) },
	{ NDQ_NEED_OWNER, END_OF(owner_comm) },
};

/* the size of an event's ring record: up to its last header byte, or up to its last member
 * path when it carries paths or a kernel stack; without header bytes or fate members, up to
 * the last part it asks for (the members before pid are always written) */
static __u32 event_size(const struct netdevq_config *cfg)
{
	size_t size = offsetof(struct netdevq_event, snap) + cfg->snaplen;

	if (!cfg->snaplen && !(cfg->need & NDQ_NEED_LATENCY)) {
		size = offsetof(struct netdevq_event, pid);
		for (size_t i = 0; i < sizeof(PART_END) / sizeof(PART_END[0]); i++)
			if ((cfg->need & PART_END[i].need) && PART_END[i].end > size)
				size = PART_END[i].end;
	}
	if (cfg->n_paths || cfg->kstack)
		size = offsetof(struct netdevq_event, path) + 16 * (size_t)cfg->n_paths;
	return (__u32)(size > sizeof(struct netdevq_event) ? sizeof(struct netdevq_event) : size);
}

/* whether anything reads the members every event carries whatever `need` says (the block
 * before pid): events go out, or an aggregation key or value lies there */
static int common_read(const struct netdevq_config *cfg)
{
	const size_t end = offsetof(struct netdevq_event, pid);

	if (cfg->emit)
		return 1;
	for (__u32 i = 0; i < cfg->agg_nkeys && i < NDQ_AGG_KEYS_MAX; i++)
		if (cfg->agg_key[i].off < end)
			return 1;
	return cfg->agg_has_value && cfg->agg_value.off < end;
}

/* events per ring record: as many written-in-place events as a batch buffer (and max_bytes)
 * holds, up to max_batch (what the consumer takes per poll: a record is never split) */
static __u32 batch_size(const struct netdevq_config *cfg, int in_place, __u32 max_batch,
			__u32 max_bytes)
{
	__u32 bytes = max_bytes < NDQ_BATCH_BYTES ? max_bytes : NDQ_BATCH_BYTES;
	__u32 n = cfg->event_size ? bytes / cfg->event_size : 1;

	if (!in_place)
		return 1;
	if (n > NDQ_BATCH_MAX)
		n = NDQ_BATCH_MAX;
	if (n > max_batch)
		n = max_batch;
	return n ? n : 1;
}

/* A count keeps its first keys in a per-CPU table in front of the hash (bpf/netdevq.bpf.c
 * count_in_table) when the key limit leaves the hash at least as many: table and hash together
 * never hold more than agg_keys keys (the loader gives the hash what the table may not take). */
static int agg_table(const struct netdevq_config *cfg, __u32 agg_keys, __u32 ncpu)
{
	const __u64 table = (__u64)ncpu * NDQ_AGG_TABLE_SLOTS;

	return cfg->agg_on && !cfg->agg_has_value && !cfg->agg_hist && ncpu &&
	       agg_keys >= 2 * table;
}

void ndq_derive(struct netdevq_config *cfg, __u32 max_batch, __u32 max_bytes, __u32 agg_keys,
		__u32 ncpu)
{
	const int filter_task = cfg->pid.n || cfg->tid.n;
	const int filter_dev = cfg->ifindex.n || cfg->n_dev || cfg->netns.n;
	const int need_dev = (cfg->need & (NDQ_NEED_DEV | NDQ_NEED_NETNS)) || cfg->agg_on;
	const int filter_who = (cfg->need & NDQ_NEED_OWNER) &&
			       (cfg->follow_pid || cfg->who_pid.n || cfg->n_who_comm);
	const int filter_l3l4 = cfg->proto.n || cfg->saddr.n || cfg->daddr.n || cfg->host.n ||
				cfg->sport.n || cfg->dport.n || cfg->port.n;
	const int filter_any = filter_task || cfg->n_comm || filter_who || cfg->len_set ||
			       cfg->mark.n || cfg->queue.n || cfg->priority.n || cfg->ethertype.n ||
			       filter_dev || filter_l3l4 || cfg->n_cgroup || cfg->pcap;
	/* a filter, member paths, kstacks, aggregations and held events (latency) build the
	 * event in scratch first */
	const int in_place = cfg->emit && !filter_any && !cfg->agg_on && !cfg->n_paths &&
			     !cfg->kstack && !(cfg->need & NDQ_NEED_LATENCY);

	cfg->derived = (filter_task ? NDQ_DERIVED_FILTER_TASK : 0) |
		       (filter_dev ? NDQ_DERIVED_FILTER_DEV : 0) |
		       (need_dev ? NDQ_DERIVED_NEED_DEV : 0) |
		       (filter_l3l4 ? NDQ_DERIVED_FILTER_L3L4 : 0) |
		       (in_place ? NDQ_DERIVED_IN_PLACE : 0) |
		       (common_read(cfg) ? NDQ_DERIVED_COMMON : 0) |
		       (agg_table(cfg, agg_keys, ncpu) ? NDQ_DERIVED_AGG_TABLE : 0);
	cfg->event_size = event_size(cfg);
	cfg->agg_key_size = (cfg->agg_nkeys ? cfg->agg_nkeys : 1) * NDQ_AGG_KEY_SLOT;
	cfg->batch = batch_size(cfg, in_place, max_batch, max_bytes);
}
