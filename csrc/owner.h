/* owner.h - the socket-owner programs of the BPF object (bpf/owner.bpf.h), seen from the loader:
 * which to load, attaching them, and the one-time /proc scan for sockets opened before start. */
#ifndef NETDEVQ_OWNER_H
#define NETDEVQ_OWNER_H

#include <stddef.h>
#include <bpf/libbpf.h>

#include "netdevq.h"

struct ndq_owner;

/* Before the config goes into .rodata: who_pid, who_comm and follow_pid are checked against
 * the socket owner, so they set NDQ_NEED_OWNER (the one bit both sides test). */
void ndq_owner_config(struct netdevq_config *cfg);

/* Between open and load (after the other programs' autoload was set): load the owner programs
 * only when cfg->need has NDQ_NEED_OWNER, else shrink their maps to one entry. */
void ndq_owner_select(struct bpf_object *obj, const struct netdevq_config *cfg);

/* After load: attach the loaded owner programs, then scan /proc/PID/fd into owner_inodes.
 * *owner stays NULL when they are not loaded. 0, or -1 with msg set. */
int ndq_owner_attach(struct ndq_owner **owner, struct bpf_object *obj, char *msg, size_t msglen);

/* Destroys the links (idempotent; NULL is fine). */
void ndq_owner_free(struct ndq_owner *owner);

#endif /* NETDEVQ_OWNER_H */
