/* kstack.c - kernel stacks of matching events: the "kstacks" stack map of the BPF object
 * (bpf/skbpath.h fills it with bpf_get_stackid), read back by id. Symbolizing the addresses
 * (/proc/kallsyms) is the Lua side's job: lua/netdevq/kstack.lua.
 */
#include <errno.h>
#include <string.h>

#include <linux/types.h>
#include <bpf/bpf.h>

#include <lua.h>

#include "kstack.h"

#define KSTACK_ENTRIES 16384

int ndq_kstack_setup(struct bpf_object *obj, const struct netdevq_config *cfg)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, "kstacks");

	if (!map)
		return cfg->kstack ? -ENOENT : 0;
	return bpf_map__set_max_entries(map, cfg->kstack ? KSTACK_ENTRIES : 1);
}

int ndq_kstack_push(lua_State *L, struct bpf_object *obj, lua_Integer id)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, "kstacks");
	__u64 ips[NDQ_KSTACK_DEPTH];
	__u32 key = (__u32)id;
	int n = 0;

	memset(ips, 0, sizeof(ips));
	if (!map || id < 0 || id > 0xffffffffLL ||
	    bpf_map_lookup_elem(bpf_map__fd(map), &key, ips)) {
		lua_pushnil(L);
		return 1;
	}
	while (n < NDQ_KSTACK_DEPTH && ips[n])
		n++;
	lua_pushlstring(L, (const char *)ips, (size_t)n * sizeof(ips[0]));
	return 1;
}
