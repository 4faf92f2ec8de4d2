/* sets.h - the large kernel-filter sets (more than NDQ_SET_MAX values): their form, the sizes
 * and contents of their maps. */
#ifndef NDQ_SETS_H
#define NDQ_SETS_H

#include <stddef.h>
#include <bpf/libbpf.h>
#include <linux/types.h>

#include "netdevq.h"

/* Rewrites cfg before it goes into .rodata: a set kept in the map "sets" (n == NDQ_SET_IN_MAP)
 * whose values all lie below 65536 becomes a bitmap (n = NDQ_SET_IN_BITS, v[0] = its slot).
 * values: struct netdevq_set_key[], len bytes. Returns the number of bitmaps. */
int ndq_sets_plan(struct netdevq_config *cfg, const char *values, size_t len);

/* The maps' sizes (before load) */
void ndq_sets_size(struct bpf_object *obj, const struct netdevq_config *cfg, const char *values,
		   size_t len, int bitmaps);

/* The values into the maps (after load, before attach): -1 with msg set */
int ndq_sets_fill(struct bpf_object *obj, const struct netdevq_config *cfg, const char *values,
		  size_t len, int bitmaps, char *msg, size_t msglen);

#endif /* NDQ_SETS_H */
