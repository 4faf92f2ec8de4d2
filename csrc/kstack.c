/* kstack.c - kernel stacks of matching events: the "kstacks" stack map of the BPF object
 * (bpf/skbpath.h fills it with bpf_get_stackid), read back by id. Symbolizing the addresses
 * (/proc/kallsyms) is the Lua side's job: lua/netdevq/kstack.lua.
 */
#include <errno.h>
#include <string.h>

#include <linux/types.h>
#include <bpf/bpf.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"
#include "kstack.h"

#define KSTACK_ENTRIES 16384

int ndq_kstack_setup(struct bpf_object *obj, const struct netdevq_config *cfg)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, "kstacks");

	if (!map)
		return cfg->kstack ? -ENOENT : 0;
	return bpf_map__set_max_entries(map, cfg->kstack ? KSTACK_ENTRIES : 1);
}

/* t:kstack(id) */
static int tracer_kstack(lua_State *L)
{
	struct tracer_ud *ud = luaL_checkudata(L, 1, TRACER_MT);
	lua_Integer id = luaL_checkinteger(L, 2);
	struct bpf_map *map;
	__u64 ips[NDQ_KSTACK_DEPTH];
	__u32 key = (__u32)id;
	int n = 0;

	if (!ud->t)
		return luaL_error(L, "netdevq: tracer is closed");
	map = bpf_object__find_map_by_name(ud->t->obj, "kstacks");
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

void ndq_kstack_register(lua_State *L)
{
	luaL_getmetatable(L, TRACER_MT);
	lua_getfield(L, -1, "__index");
	lua_pushcfunction(L, tracer_kstack);
	lua_setfield(L, -2, "kstack");
	lua_pop(L, 2);
}
