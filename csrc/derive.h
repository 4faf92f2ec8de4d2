/* derive.h - what a configuration implies for the net_dev_queue program, computed once. */
#ifndef NDQ_DERIVE_H
#define NDQ_DERIVE_H

#include <linux/types.h>

#include "netdevq.h"

/* Fills cfg->derived (NDQ_DERIVED_*), cfg->event_size and cfg->batch from the other members:
 * the last change to cfg before it goes into .rodata. max_batch: the most events one ring
 * record may carry (1 where the kernel cannot flush a batch: no batching); max_bytes: the
 * largest record the ring buffer should take (a batch stays far below the ring's size);
 * agg_keys: the most keys an aggregation holds; ncpu: the possible CPUs (0: unknown). */
void ndq_derive(struct netdevq_config *cfg, __u32 max_batch, __u32 max_bytes, __u32 agg_keys,
		__u32 ncpu);

#endif /* NDQ_DERIVE_H */
