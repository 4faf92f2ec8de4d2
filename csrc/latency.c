/* latency.c - loader side of queue latency and drops (see bpf/latency.bpf.h and latency.h). */
#include <errno.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <lauxlib.h>

#include "latency.h"

#define LAT_PREFIX "ndq_lat_"
#define LAT_LINKS_MAX 4
#define DROP_PREFIX "SKB_DROP_REASON_"

struct ndq_latency {
	struct bpf_link *links[LAT_LINKS_MAX];
	int n;
};

/* ndq_lat_<what>_<mode> */
static bool is_lat_prog(const struct bpf_program *p, const char *mode)
{
	const char *name = bpf_program__name(p);
	size_t nl = strlen(name), ml;

	if (strncmp(name, LAT_PREFIX, strlen(LAT_PREFIX)) != 0)
		return false;
	if (!mode)
		return true;
	ml = strlen(mode);
	return nl > ml + 1 && name[nl - ml - 1] == '_' && strcmp(name + nl - ml, mode) == 0;
}

/* latency_held_size() of bpf/latency.bpf.h: the bytes of an event the kernel side emits (its
 * record size, csrc/derive.c), in 8-byte words */
static __u32 held_size(const struct netdevq_config *cfg)
{
	size_t size = ((size_t)cfg->event_size + 7) & ~(size_t)7;

	return size > sizeof(struct netdevq_event) ? sizeof(struct netdevq_event) : (__u32)size;
}

void ndq_latency_select(struct bpf_object *obj, const struct netdevq_config *cfg, const char *mode)
{
	bool on = cfg->need & NDQ_NEED_LATENCY;
	struct bpf_program *p;
	struct bpf_map *m = bpf_object__find_map_by_name(obj, "lat_held");

	bpf_object__for_each_program(p, obj)
		if (is_lat_prog(p, NULL))
			bpf_program__set_autoload(p, on && is_lat_prog(p, mode));
	if (!m)
		return;
	if (on)
		bpf_map__set_value_size(m, held_size(cfg)); /* only what leaves: copied twice */
	else
		bpf_map__set_max_entries(m, 1);
}

int ndq_latency_attach(struct ndq_latency **lat, struct bpf_object *obj, char *msg, size_t msglen)
{
	struct ndq_latency *l = NULL;
	struct bpf_program *p;

	*lat = NULL;
	bpf_object__for_each_program(p, obj) {
		if (!is_lat_prog(p, NULL) || !bpf_program__autoload(p))
			continue;
		if (!l && !(l = calloc(1, sizeof(*l)))) {
			snprintf(msg, msglen, "out of memory");
			return -1;
		}
		if (l->n == LAT_LINKS_MAX || !(l->links[l->n] = bpf_program__attach(p))) {
			int err = l->n == LAT_LINKS_MAX ? E2BIG : errno;

			snprintf(
				msg, msglen,
				"attaching the latency program %s failed (%s): sojourn_ns, xmit_ns, "
				"xmit_rc and drop_reason need the net_dev_start_xmit, net_dev_xmit, "
				"kfree_skb and consume_skb tracepoints",
				bpf_program__section_name(p), strerror(err));
			ndq_latency_free(l);
			return -1;
		}
		l->n++;
	}
	*lat = l;
	return 0;
}

void ndq_latency_free(struct ndq_latency *lat)
{
	if (!lat)
		return;
	for (int i = 0; i < lat->n; i++)
		bpf_link__destroy(lat->links[i]);
	free(lat);
}

int ndq_drop_reasons(lua_State *L)
{
	const char *file = luaL_optstring(L, 1, NULL);
	struct btf *btf = file ? btf__parse(file, NULL) : btf__load_vmlinux_btf();
	const struct btf_type *t;
	const struct btf_enum *e;
	int id;

	if (!btf) {
		int err = errno;

		lua_pushnil(L);
		lua_pushfstring(L, "cannot read kernel BTF%s%s (%s)", file ? " from " : "",
				file ? file : "", strerror(err));
		return 2;
	}
	id = btf__find_by_name_kind(btf, "skb_drop_reason", BTF_KIND_ENUM);
	lua_newtable(L);
	if (id > 0) {
		t = btf__type_by_id(btf, id);
		e = btf_enum(t);
		for (int i = 0; i < btf_vlen(t); i++, e++) {
			const char *name = btf__name_by_offset(btf, e->name_off);

			if (!name)
				continue;
			if (strncmp(name, DROP_PREFIX, strlen(DROP_PREFIX)) == 0)
				name += strlen(DROP_PREFIX);
			lua_pushstring(L, name);
			lua_rawseti(L, -2, (int)e->val);
		}
	}
	btf__free(btf);
	return 1;
}
