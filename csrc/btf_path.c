/* btf_path.c - sk_buff member paths (skb.dev.mtu, skb.sk.__sk_common.skc_family, skb.cb[2], ...)
 * resolved against the kernel's BTF with libbpf's BTF API, for the reader in bpf/skbpath.h.
 *
 *   core.btf_open([file]) -> btf | nil, err      (default: the running kernel's BTF)
 *   btf:resolve(path)     -> { hops=, off={...}, size=, kind=, ctype=, bit_off=, bit_size=,
 *                              enum={[value]=name} } | nil, err [, member names]
 *   btf:members(path)     -> "struct net_device", { {name=, type=, offset=, bits=}, ... } | nil, err
 *   btf:close()           (also on garbage collection)
 *
 * Pointers are followed (at most NDQ_PATH_HOPS per path), embedded structs and anonymous
 * unions/structs looked through, arrays indexed with a constant [n]. The value's kind:
 * "unsigned", "signed", "enum", "string" (char array, first NDQ_PATH_STR bytes), "pointer".
 * An unknown member fails with "struct X has no member 'y'" and the list of X's member names,
 * from which the Lua side suggests the nearest ones (one edit distance for every name).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/types.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <lauxlib.h>
#include <lua.h>

#include "netdevq.h"
#include "btf_path.h"

#define BTF_MT "netdevq.BTF"
#define PATH_MAX_LEN 256
#define NAME_LEN 128
#define DECL_LEN 256

struct btf_ud {
	struct btf *btf;
};

/* What a walk along a path has reached. */
struct walk {
	__u32 type_id;	/* type of what is reached (modifiers and typedefs kept) */
	__u32 off;	/* byte offset in the struct the last pointer led to */
	__u32 bit_off;	/* bitfield: bit offset from off; else 0 */
	__u32 bit_size; /* bitfield width; 0: not a bitfield */
	int hops;	/* pointers followed */
	__u32 hop_off[NDQ_PATH_HOPS + 1];
	char where[PATH_MAX_LEN]; /* the path so far, for messages */
};

static struct btf *check_btf(lua_State *L)
{
	struct btf_ud *ud = luaL_checkudata(L, 1, BTF_MT);
	if (!ud->btf)
		luaL_error(L, "netdevq: BTF handle is closed");
	return ud->btf;
}

static __u32 skip_mods(const struct btf *btf, __u32 id)
{
	const struct btf_type *t = btf__type_by_id(btf, id);

	while (t && (btf_is_mod(t) || btf_is_typedef(t))) {
		id = t->type;
		t = btf__type_by_id(btf, id);
	}
	return id;
}

/* "struct net_device *", "unsigned int", "char[16]" ... (libbpf's own C declarations) */
static void emit_decl(void *ctx, const char *fmt, va_list args)
{
	char *buf = ctx;
	size_t n = strlen(buf);

	if (n < DECL_LEN - 1)
		vsnprintf(buf + n, DECL_LEN - n, fmt, args);
}

static const char *type_decl(const struct btf *btf, __u32 id, char *buf)
{
	struct btf_dump_emit_type_decl_opts opts = { .sz = sizeof(opts), .field_name = "" };
	struct btf_dump *d;

	buf[0] = 0;
	d = btf_dump__new(btf, emit_decl, buf, NULL);
	if (!d || btf_dump__emit_type_decl(d, id, &opts))
		snprintf(buf, DECL_LEN, "type #%u", id);
	btf_dump__free(d);
	/* an anonymous struct or union is declared whole: one line says "struct {...}" */
	char *open = strchr(buf, '{'), *close = strrchr(buf, '}');
	if (open && close > open) {
		char tail[DECL_LEN];
		snprintf(tail, sizeof(tail), "%s", close + 1);
		snprintf(open, DECL_LEN - (size_t)(open - buf), "{...}%s", tail);
	}
	return buf;
}

/* "struct net_device", "union {...}" for messages */
static const char *composite_name(const struct btf *btf, __u32 id, char *buf)
{
	const struct btf_type *t = btf__type_by_id(btf, skip_mods(btf, id));
	const char *name = btf__name_by_offset(btf, t->name_off);

	snprintf(buf, NAME_LEN, "%s %s", btf_is_union(t) ? "union" : "struct",
		 name && *name ? name : "(anonymous)");
	return buf;
}

/* Finds member `name` in struct/union `id`, looking through anonymous members. */
static bool find_member(const struct btf *btf, __u32 id, const char *name, __u32 *bit_off,
			__u32 *bit_size, __u32 *type_id)
{
	const struct btf_type *t = btf__type_by_id(btf, skip_mods(btf, id));
	const struct btf_member *m = btf_members(t);

	for (int i = 0; i < btf_vlen(t); i++, m++) {
		const char *mname = btf__name_by_offset(btf, m->name_off);
		__u32 off = btf_member_bit_offset(t, i);

		if (mname && *mname) {
			if (strcmp(mname, name) == 0) {
				*bit_off = off;
				*bit_size = btf_member_bitfield_size(t, i);
				*type_id = m->type;
				return true;
			}
			continue;
		}
		if (btf_is_composite(btf__type_by_id(btf, skip_mods(btf, m->type))) &&
		    find_member(btf, m->type, name, bit_off, bit_size, type_id)) {
			*bit_off += off;
			return true;
		}
	}
	return false;
}

/* Pushes a member list of struct/union id onto the Lua table at the top: anonymous members
 * flattened (a path names their members directly), zero-length markers skipped. */
static void push_members(lua_State *L, const struct btf *btf, __u32 id, __u32 base, int *n,
			 bool with_types)
{
	const struct btf_type *t = btf__type_by_id(btf, skip_mods(btf, id));
	const struct btf_member *m = btf_members(t);
	char decl[DECL_LEN];

	for (int i = 0; i < btf_vlen(t); i++, m++) {
		const char *mname = btf__name_by_offset(btf, m->name_off);
		__u32 off = base + btf_member_bit_offset(t, i);

		if (!mname || !*mname) {
			if (btf_is_composite(btf__type_by_id(btf, skip_mods(btf, m->type))))
				push_members(L, btf, m->type, off, n, with_types);
			continue;
		}
		if (btf__resolve_size(btf, m->type) == 0)
			continue; /* markers: __cacheline_group_begin, __pkt_type_offset[0], ... */
		lua_pushinteger(L, ++*n);
		if (!with_types) {
			lua_pushstring(L, mname);
		} else {
			lua_createtable(L, 0, 4);
			lua_pushstring(L, mname);
			lua_setfield(L, -2, "name");
			lua_pushstring(L, type_decl(btf, m->type, decl));
			lua_setfield(L, -2, "type");
			lua_pushinteger(L, off / 8);
			lua_setfield(L, -2, "offset");
			lua_pushinteger(L, btf_member_bitfield_size(t, i));
			lua_setfield(L, -2, "bits");
		}
		lua_settable(L, -3);
	}
}

/* Makes w->type_id a struct or union to look a member up in, following a pointer; 0 or an
 * error message in err. */
static int enter_composite(const struct btf *btf, struct walk *w, const char *next, char *err,
			   size_t errlen)
{
	const struct btf_type *t = btf__type_by_id(btf, skip_mods(btf, w->type_id));
	char decl[DECL_LEN];

	if (btf_is_ptr(t)) {
		const struct btf_type *to = btf__type_by_id(btf, skip_mods(btf, t->type));
		if (w->bit_size)
			goto scalar;
		if (!to || !btf_is_composite(to)) {
			snprintf(err, errlen,
				 "%s is %s, not a pointer to a struct: it has no member '%s'",
				 w->where, type_decl(btf, w->type_id, decl), next);
			return -1;
		}
		if (w->hops >= NDQ_PATH_HOPS) {
			snprintf(err, errlen,
				 "%s.%s follows too many pointers: a path may follow at most %d "
				 "(NDQ_PATH_HOPS)",
				 w->where, next, NDQ_PATH_HOPS);
			return -1;
		}
		w->hop_off[w->hops++] = w->off;
		w->off = 0;
		w->type_id = t->type;
		return 0;
	}
	if (btf_is_composite(t))
		return 0;
scalar:
	snprintf(err, errlen, "%s is %s%s, not a struct or a pointer to one: it has no member '%s'",
		 w->where, w->bit_size ? "a bitfield of " : "", type_decl(btf, w->type_id, decl),
		 next);
	return -1;
}

/* Applies "[n]" to what w has reached (an array, or a pointer: followed, then indexed). */
static int index_into(const struct btf *btf, struct walk *w, long n, char *err, size_t errlen)
{
	const struct btf_type *t = btf__type_by_id(btf, skip_mods(btf, w->type_id));
	char decl[DECL_LEN];
	__u32 elem;
	__s64 size;

	if (btf_is_array(t)) {
		const struct btf_array *a = btf_array(t);
		if (n < 0 || (__u64)n >= a->nelems) {
			snprintf(err, errlen, "%s[%ld] is out of bounds: %s has %u elements",
				 w->where, n, w->where, a->nelems);
			return -1;
		}
		elem = a->type;
	} else if (btf_is_ptr(t) && !w->bit_size) {
		if (w->hops >= NDQ_PATH_HOPS) {
			snprintf(err, errlen,
				 "%s[%ld] follows too many pointers: a path may follow at most %d "
				 "(NDQ_PATH_HOPS)",
				 w->where, n, NDQ_PATH_HOPS);
			return -1;
		}
		w->hop_off[w->hops++] = w->off;
		w->off = 0;
		elem = t->type;
	} else {
		snprintf(err, errlen, "%s is %s, not an array or a pointer: it cannot take [%ld]",
			 w->where, type_decl(btf, w->type_id, decl), n);
		return -1;
	}
	size = btf__resolve_size(btf, elem);
	if (size <= 0 || n > (long)(0x7fffffff / size)) {
		snprintf(err, errlen, "%s[%ld]: elements of unknown size cannot be indexed",
			 w->where, n);
		return -1;
	}
	w->off += (__u32)(n * size);
	w->type_id = elem;
	return 0;
}

/* Walks `path` (after "skb") from struct sk_buff. Returns 0, or -1 with err set; -2 when a
 * member is unknown (then *miss_struct is the struct it was looked up in). */
static int walk_path(const struct btf *btf, const char *path, struct walk *w, char *err,
		     size_t errlen, __u32 *miss_struct)
{
	const char *p = path;
	int skb = btf__find_by_name_kind(btf, "sk_buff", BTF_KIND_STRUCT);
	char name[NAME_LEN], sname[NAME_LEN];

	memset(w, 0, sizeof(*w));
	if (skb < 0) {
		snprintf(err, errlen, "the kernel's BTF has no struct sk_buff");
		return -1;
	}
	w->type_id = (__u32)skb;
	if (strncmp(p, "skb", 3) != 0 || (p[3] != '.' && p[3] != 0)) {
		snprintf(err, errlen,
			 "a member path starts with 'skb.' (e.g. skb.dev.mtu), not '%s'", path);
		return -1;
	}
	snprintf(w->where, sizeof(w->where), "skb");
	p += 3;
	while (*p) {
		size_t n = 0;
		__u32 bit_off, bit_size, type_id;

		if (*p != '.') {
			snprintf(err, errlen,
				 "bad member path '%s' at column %d: expected '.' or '['", path,
				 (int)(p - path) + 1);
			return -1;
		}
		p++;
		while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z') ||
		       p[n] == '_' || (n > 0 && p[n] >= '0' && p[n] <= '9'))
			n++;
		if (n == 0 || n >= sizeof(name)) {
			snprintf(err, errlen,
				 "bad member path '%s' at column %d: expected a member name", path,
				 (int)(p - path) + 1);
			return -1;
		}
		memcpy(name, p, n);
		name[n] = 0;
		p += n;
		if (enter_composite(btf, w, name, err, errlen))
			return -1;
		if (!find_member(btf, w->type_id, name, &bit_off, &bit_size, &type_id)) {
			snprintf(err, errlen, "%s has no member '%s'",
				 composite_name(btf, w->type_id, sname), name);
			*miss_struct = w->type_id;
			return -2;
		}
		w->off += bit_off / 8;
		w->bit_off = bit_size ? bit_off % 8 : 0;
		w->bit_size = bit_size;
		w->type_id = type_id;
		snprintf(w->where + strlen(w->where), sizeof(w->where) - strlen(w->where), ".%s",
			 name);
		while (*p == '[') {
			char *end;
			long idx = strtol(p + 1, &end, 0);
			if (end == p + 1 || *end != ']') {
				snprintf(err, errlen,
					 "bad member path '%s' at column %d: expected [NUMBER]",
					 path, (int)(p - path) + 1);
				return -1;
			}
			if (w->bit_size) {
				snprintf(err, errlen, "%s is a bitfield: it cannot take [%ld]",
					 w->where, idx);
				return -1;
			}
			if (index_into(btf, w, idx, err, errlen))
				return -1;
			snprintf(w->where + strlen(w->where), sizeof(w->where) - strlen(w->where),
				 "[%ld]", idx);
			p = end + 1;
		}
	}
	return 0;
}

static void set_int(lua_State *L, const char *key, lua_Integer v)
{
	lua_pushinteger(L, v);
	lua_setfield(L, -2, key);
}

/* The value's kind and size, pushed into the result table; 0 or -1 with err. */
static int push_value(lua_State *L, const struct btf *btf, const struct walk *w, char *err,
		      size_t errlen)
{
	__u32 id = skip_mods(btf, w->type_id);
	const struct btf_type *t = btf__type_by_id(btf, id);
	const char *kind = NULL;
	__u32 size = t->size;
	char decl[DECL_LEN];

	if (btf_is_int(t)) {
		if (t->size > 8) {
			snprintf(err, errlen, "%s is %s: integers wider than 8 bytes are not read",
				 w->where, type_decl(btf, w->type_id, decl));
			return -1;
		}
		kind = btf_int_encoding(t) & BTF_INT_SIGNED ? "signed" : "unsigned";
	} else if (btf_is_any_enum(t)) {
		kind = "enum";
		lua_createtable(L, 0, btf_vlen(t));
		for (int i = 0; i < btf_vlen(t); i++) {
			__u64 v;
			const char *n;
			if (btf_is_enum(t)) {
				v = btf_kflag(t) ? (__u64)(__s64)btf_enum(t)[i].val :
						   (__u64)(__u32)btf_enum(t)[i].val;
				n = btf__name_by_offset(btf, btf_enum(t)[i].name_off);
			} else {
				v = btf_enum64_value(btf_enum64(t) + i);
				n = btf__name_by_offset(btf, btf_enum64(t)[i].name_off);
			}
			lua_pushnumber(L,
				       (lua_Number)(btf_kflag(t) ? (double)(__s64)v : (double)v));
			lua_pushstring(L, n);
			lua_settable(L, -3);
		}
		lua_setfield(L, -2, "enum");
		lua_pushboolean(L, btf_kflag(t));
		lua_setfield(L, -2, "signed");
	} else if (btf_is_ptr(t)) {
		kind = "pointer";
		size = 8;
	} else if (btf_is_array(t)) {
		const struct btf_type *e = btf__type_by_id(btf, skip_mods(btf, btf_array(t)->type));
		if (!btf_is_int(e) || e->size != 1) {
			snprintf(
				err, errlen,
				"%s is %s: name one element, e.g. %s[0] (only char arrays are read "
				"whole, as strings)",
				w->where, type_decl(btf, w->type_id, decl), w->where);
			return -1;
		}
		kind = "string";
		size = btf_array(t)->nelems < NDQ_PATH_STR ? btf_array(t)->nelems : NDQ_PATH_STR;
	} else if (btf_is_composite(t)) {
		snprintf(err, errlen,
			 "%s is %s: name one of its members (netdevq -l %s lists them)", w->where,
			 type_decl(btf, w->type_id, decl), w->where);
		return -1;
	} else {
		snprintf(err, errlen,
			 "%s is %s: only integers, enums, char arrays and pointers "
			 "are read",
			 w->where, type_decl(btf, w->type_id, decl));
		return -1;
	}
	if (w->bit_size) {
		size = (w->bit_off + w->bit_size + 7) / 8;
		if (size > 8) {
			snprintf(err, errlen,
				 "%s is a bitfield spanning more than 8 bytes: not read", w->where);
			return -1;
		}
	}
	if (size == 0) {
		snprintf(err, errlen, "%s is %s, which has no bytes to read", w->where,
			 type_decl(btf, w->type_id, decl));
		return -1;
	}
	lua_pushstring(L, kind);
	lua_setfield(L, -2, "kind");
	set_int(L, "size", size);
	set_int(L, "bit_off", w->bit_off);
	set_int(L, "bit_size", w->bit_size);
	lua_pushstring(L, type_decl(btf, w->type_id, decl));
	lua_setfield(L, -2, "ctype");
	return 0;
}

/* btf:resolve(path) */
static int btf_resolve(lua_State *L)
{
	struct btf *btf = check_btf(L);
	const char *path = luaL_checkstring(L, 2);
	struct walk w;
	char err[1024];
	__u32 miss = 0;
	int rc, n = 0;

	rc = walk_path(btf, path, &w, err, sizeof(err), &miss);
	if (rc == -2) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		lua_newtable(L);
		push_members(L, btf, miss, 0, &n, false);
		return 3;
	}
	if (rc) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	lua_createtable(L, 0, 10);
	if (push_value(L, btf, &w, err, sizeof(err))) {
		lua_pop(L, 1);
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	set_int(L, "hops", w.hops);
	w.hop_off[w.hops] = w.off;
	lua_createtable(L, w.hops + 1, 0);
	for (int i = 0; i <= w.hops; i++) {
		lua_pushinteger(L, w.hop_off[i]);
		lua_rawseti(L, -2, i + 1);
	}
	lua_setfield(L, -2, "off");
	lua_pushstring(L, w.where);
	lua_setfield(L, -2, "path");
	return 1;
}

/* btf:members(path): the members of the struct the path names (or points to) */
static int btf_members_of(lua_State *L)
{
	struct btf *btf = check_btf(L);
	const char *path = luaL_checkstring(L, 2);
	const struct btf_type *t;
	struct walk w;
	char err[1024], name[NAME_LEN], decl[DECL_LEN];
	__u32 miss = 0, id;
	int n = 0;

	if (walk_path(btf, path, &w, err, sizeof(err), &miss)) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	id = skip_mods(btf, w.type_id);
	t = btf__type_by_id(btf, id);
	if (btf_is_ptr(t) && !w.bit_size)
		id = skip_mods(btf, t->type);
	t = btf__type_by_id(btf, id);
	if (!btf_is_composite(t)) {
		lua_pushnil(L);
		lua_pushfstring(L, "%s is %s, not a struct or a pointer to one: it has no members",
				path, type_decl(btf, w.type_id, decl));
		return 2;
	}
	lua_pushstring(L, composite_name(btf, id, name));
	lua_newtable(L);
	push_members(L, btf, id, 0, &n, true);
	return 2;
}

static int btf_close(lua_State *L)
{
	struct btf_ud *ud = luaL_checkudata(L, 1, BTF_MT);
	btf__free(ud->btf);
	ud->btf = NULL;
	return 0;
}

/* core.btf_open([file]) */
static int core_btf_open(lua_State *L)
{
	const char *file = luaL_optstring(L, 1, NULL);
	struct btf_ud *ud;
	struct btf *btf;

	btf = file ? btf__parse(file, NULL) : btf__load_vmlinux_btf();
	if (!btf) {
		int err = errno;
		lua_pushnil(L);
		lua_pushfstring(L,
				"cannot read kernel BTF%s%s (%s): member paths need a kernel built "
				"with CONFIG_DEBUG_INFO_BTF=y",
				file ? " from " : "", file ? file : "", strerror(err));
		return 2;
	}
	ud = lua_newuserdata(L, sizeof(*ud));
	ud->btf = btf;
	luaL_getmetatable(L, BTF_MT);
	lua_setmetatable(L, -2);
	return 1;
}

void ndq_btf_path_register(lua_State *L)
{
	if (luaL_newmetatable(L, BTF_MT)) {
		lua_newtable(L);
		lua_pushcfunction(L, btf_resolve);
		lua_setfield(L, -2, "resolve");
		lua_pushcfunction(L, btf_members_of);
		lua_setfield(L, -2, "members");
		lua_pushcfunction(L, btf_close);
		lua_setfield(L, -2, "close");
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, btf_close);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	lua_pushcfunction(L, core_btf_open);
	lua_setfield(L, -2, "btf_open");
}
