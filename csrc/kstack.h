/* kstack.h - kernel stacks of matching events (the "kstacks" stack map; csrc/kstack.c). */
#ifndef NETDEVQ_KSTACK_H
#define NETDEVQ_KSTACK_H

#include <bpf/libbpf.h>
#include <lua.h>

#include "netdevq.h"

/* Sizes the stack map before load: room for many stacks when cfg asks for them, else 1 entry.
 * Returns 0, or -errno (an object without the map can still run without kstack). */
int ndq_kstack_setup(struct bpf_object *obj, const struct netdevq_config *cfg);

/* Adds t:kstack(id) to the tracer metatable (registered already): the stack's instruction
 * pointers as a string of native __u64s (innermost first, zeros cut), or nil when the map has no
 * such stack. */
void ndq_kstack_register(lua_State *L);

#endif /* NETDEVQ_KSTACK_H */
