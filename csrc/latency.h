/* latency.h - the fate programs of the BPF object (bpf/latency.bpf.h), seen from the loader:
 * which to load, attaching them, and the names of the kernel's drop reasons. */
#ifndef NETDEVQ_LATENCY_H
#define NETDEVQ_LATENCY_H

#include <stddef.h>
#include <bpf/libbpf.h>

#include <lua.h>

#include "netdevq.h"

struct ndq_latency;

/* Between open and load: load the fate programs of `mode` ("raw" or "btf") only when cfg->need
 * has NDQ_NEED_LATENCY, else shrink lat_held to one entry. */
void ndq_latency_select(struct bpf_object *obj, const struct netdevq_config *cfg, const char *mode);

/* After load, before the net_dev_queue program: attach the loaded fate programs (*lat stays
 * NULL when none is loaded). 0, or -1 with msg set. */
int ndq_latency_attach(struct ndq_latency **lat, struct bpf_object *obj, char *msg, size_t msglen);

/* Destroys the links (idempotent; NULL is fine). */
void ndq_latency_free(struct ndq_latency *lat);

/* core.drop_reasons([btf_file]) -> { [value] = "QDISC_DROP", ... } | nil, err */
int ndq_drop_reasons(lua_State *L);

#endif /* NETDEVQ_LATENCY_H */
