/* module.c - luaopen_netdevq_core: the module table, the tracer metatable, the struct layout
 * Lua checks its cdefs against, libbpf logging. See core.h for the other parts. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include <bpf/libbpf.h>

#include "core.h"
#include "pcap_kernel.h"
#include "btf_path.h"
#include "kstack.h"
#include "latency.h"

/* The BPF object and the ABI header, embedded by bpf_blobs.S (see CMakeLists.txt). */
extern const char netdevq_abi_header[];
extern const unsigned long long netdevq_abi_header_size;

int ndq_verbose;

/* LuaJIT speaks the Lua 5.1 API: this is all of the compat layer we need. */
void ndq_set_funcs(lua_State *L, const luaL_Reg *l)
{
	for (; l->name; l++) {
		lua_pushcfunction(L, l->func);
		lua_setfield(L, -2, l->name);
	}
}

int ndq_push_fail(lua_State *L, const char *fmt, ...)
{
	va_list ap;
	char buf[1024];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	lua_pushnil(L);
	lua_pushstring(L, buf);
	return 2;
}

static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	/* warnings are summarised in our own one-line errors; -v shows everything */
	if (!ndq_verbose)
		return 0;
	return vfprintf(stderr, fmt, args);
}

__u64 ndq_monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ull + (__u64)ts.tv_nsec;
}

static int core_monotonic_ns(lua_State *L)
{
	lua_pushnumber(L, (lua_Number)ndq_monotonic_ns());
	return 1;
}

static void push_layout(lua_State *L)
{
#define OFF(m)                                                 \
	lua_pushinteger(L, offsetof(struct netdevq_event, m)); \
	lua_setfield(L, -2, #m)
	lua_createtable(L, 0, 6);
	lua_pushinteger(L, sizeof(struct netdevq_event));
	lua_setfield(L, -2, "event_size");
	lua_pushinteger(L, sizeof(struct netdevq_config));
	lua_setfield(L, -2, "config_size");
	lua_pushinteger(L, sizeof(struct netdevq_agg_key));
	lua_setfield(L, -2, "agg_key_size");
	lua_pushinteger(L, sizeof(struct netdevq_agg_value));
	lua_setfield(L, -2, "agg_value_size");
	lua_createtable(L, 0, 40);
	OFF(ts);
	OFF(skb);
	OFF(cgroup);
	OFF(pid);
	OFF(tid);
	OFF(cpu);
	OFF(ifindex);
	OFF(netns);
	OFF(len);
	OFF(data_len);
	OFF(mac_len);
	OFF(hdr_len);
	OFF(queue);
	OFF(gso_size);
	OFF(gso_segs);
	OFF(ethertype);
	OFF(priority);
	OFF(mark);
	OFF(hash);
	OFF(dev_type);
	OFF(l3);
	OFF(saddr);
	OFF(daddr);
	OFF(sport);
	OFF(dport);
	OFF(proto);
	OFF(tcp_flags);
	OFF(ttl);
	OFF(tos);
	OFF(smac);
	OFF(dmac);
	OFF(flags);
	OFF(snap_len);
	OFF(l2_len);
	OFF(comm);
	OFF(dev);
	OFF(owner_cgroup);
	OFF(owner_pid);
	OFF(owner_tid);
	OFF(owner_uid);
	OFF(owner_comm);
	OFF(sojourn_ns);
	OFF(xmit_ns);
	OFF(xmit_rc);
	OFF(drop_reason);
	OFF(snap);
	lua_setfield(L, -2, "offsets");
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, offsetof(struct netdevq_config, follow_pid));
	lua_setfield(L, -2, "follow_pid");
	lua_pushinteger(L, offsetof(struct netdevq_config, dev));
	lua_setfield(L, -2, "dev");
	lua_pushinteger(L, offsetof(struct netdevq_config, host));
	lua_setfield(L, -2, "host");
	lua_pushinteger(L, offsetof(struct netdevq_config, lhist_step));
	lua_setfield(L, -2, "lhist_step");
	lua_setfield(L, -2, "config_offsets");
#undef OFF
}

/* core.prune(on) -> the previous setting (pcap_kernel.h) */
static int core_prune(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TBOOLEAN);
	lua_pushboolean(L, ndq_load_prune(lua_toboolean(L, 1)));
	return 1;
}

int luaopen_netdevq_core(lua_State *L)
{
	static const luaL_Reg funcs[] = {
		{ "open", ndq_core_open },
		{ "preopen", ndq_preopen },
		{ "preopen_wait", ndq_preopen_wait },
		{ "preopen_close", ndq_preopen_close },
		{ "monotonic_ns", core_monotonic_ns },
		{ "drop_reasons", ndq_drop_reasons },
		{ "prune", core_prune },
		{ NULL, NULL },
	};

	libbpf_set_print(print_libbpf);
	ndq_tracer_register(L);
	ndq_kstack_register(L);
	lua_newtable(L);
	ndq_set_funcs(L, funcs);
	ndq_set_funcs(L, ndq_proc_funcs);
	ndq_signals_register(L);
	lua_pushstring(L, NETDEVQ_VERSION);
	lua_setfield(L, -2, "_VERSION");
	lua_pushlstring(L, netdevq_abi_header, (size_t)netdevq_abi_header_size);
	lua_setfield(L, -2, "HEADER");
	lua_pushinteger(L, libbpf_num_possible_cpus());
	lua_setfield(L, -2, "ncpus");
	push_layout(L);
	lua_setfield(L, -2, "layout");
	ndq_btf_path_register(L);
	return 1;
}
