/* corebtf.c - the BTF that libbpf's CO-RE relocations search, cut down from the kernel's.
 *
 * For each type a relocation names (struct sk_buff, struct net_device, ...) libbpf 1.1 looks for
 * candidates of the same name in the whole target BTF: one pass over every type (126,000 on
 * 6.18) per local type, 14 passes for `-o comm,pid,dev,len`, about half of bpf_object__load.
 * Here one pass keeps the kernel types whose (essential) name a type of the object's BTF
 * has, and everything they embed: member types, array elements, typedef and modifier targets,
 * but not what a pointer points to (a pointer member only has to be a pointer: libbpf's field
 * check stops there, so such pointers point to void). Typically 1-3% of the types. The result
 * goes to a memfd whose /proc/self/fd path is the object's btf_custom_path; libbpf reads it at
 * load, and still reads the kernel's BTF for kfuncs and tp_btf targets.
 *
 * Relocations that return a type id (bpf_core_type_id_kernel) would give this BTF's ids, not the
 * kernel's: the object takes the ids it hands to bpf_rdonly_cast from the config instead
 * (skb_btf_id, shinfo_btf_id), which come from the same pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "core.h"
#include "corebtf.h"

/* the part of a name before its last "X___Y" flavor separator, as libbpf compares them */
static size_t essential_len(const char *name)
{
	size_t n = strlen(name);

	if (!memmem(name, n, "___", 3)) /* nearly every kernel name: no flavor */
		return n;
	for (size_t i = n >= 5 ? n - 4 : 0; i-- > 0;) {
		const char *s = name + i;

		if (s[0] != '_' && s[1] == '_' && s[2] == '_' && s[3] == '_' && s[4] != '_')
			return i + 1;
	}
	return n;
}

/* An open-addressing set of the local names (pointers into the local BTF's strings) */
struct names {
	const char **name;
	size_t *len;
	size_t cap;
};

static size_t hash(const char *s, size_t n)
{
	size_t h = 5381;

	for (size_t i = 0; i < n; i++)
		h = h * 33 + (unsigned char)s[i];
	return h;
}

static bool names_has(const struct names *set, const char *s, size_t n)
{
	for (size_t i = hash(s, n) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
		if (!set->name[i])
			return false;
		if (set->len[i] == n && memcmp(set->name[i], s, n) == 0)
			return true;
	}
}

static void names_add(struct names *set, const char *s, size_t n)
{
	size_t i = hash(s, n) & (set->cap - 1);

	while (set->name[i]) {
		if (set->len[i] == n && memcmp(set->name[i], s, n) == 0)
			return;
		i = (i + 1) & (set->cap - 1);
	}
	set->name[i] = s;
	set->len[i] = n;
}

/* the kinds a relocation's root type can have, and libbpf matches by name */
static bool named_kind(const struct btf_type *t)
{
	switch (btf_kind(t)) {
	case BTF_KIND_STRUCT:
	case BTF_KIND_UNION:
	case BTF_KIND_ENUM:
	case BTF_KIND_ENUM64:
	case BTF_KIND_FWD:
	case BTF_KIND_TYPEDEF:
	case BTF_KIND_INT:
	case BTF_KIND_FLOAT: return true;
	default: return false;
	}
}

static int local_names(const struct btf *local, struct names *set)
{
	__u32 n = btf__type_cnt(local);

	set->cap = 64;
	while (set->cap < 2 * (size_t)n)
		set->cap *= 2;
	set->name = calloc(set->cap, sizeof(*set->name));
	set->len = calloc(set->cap, sizeof(*set->len));
	if (!set->name || !set->len)
		return -ENOMEM;
	for (__u32 id = 1; id < n; id++) {
		const struct btf_type *t = btf__type_by_id(local, id);
		const char *name = btf__name_by_offset(local, t->name_off);

		if (named_kind(t) && name && *name)
			names_add(set, name, essential_len(name));
	}
	return 0;
}

/* Marks id and, depth first, what it embeds (keep[id] = 1); stack holds ids to visit. Ids
 * outside the target (a malformed btf_path file) are not followed. */
static void keep_with_embedded(const struct btf *btf, __u32 id, __u8 *keep, __u32 *stack)
{
	__u32 n = btf__type_cnt(btf);
	size_t top = 0;

#define VISIT(i)                                 \
	do {                                     \
		__u32 v_ = (i);                  \
		if (v_ && v_ < n && !keep[v_]) { \
			keep[v_] = 1;            \
			stack[top++] = v_;       \
		}                                \
	} while (0)
	VISIT(id);
	while (top) {
		const struct btf_type *t = btf__type_by_id(btf, stack[--top]);

		switch (btf_kind(t)) {
		case BTF_KIND_STRUCT:
		case BTF_KIND_UNION: {
			const struct btf_member *m = btf_members(t);

			for (__u16 i = 0; i < btf_vlen(t); i++)
				VISIT(m[i].type);
			break;
		}
		case BTF_KIND_ARRAY:
			VISIT(btf_array(t)->type);
			VISIT(btf_array(t)->index_type);
			break;
		case BTF_KIND_TYPEDEF:
		case BTF_KIND_VOLATILE:
		case BTF_KIND_CONST:
		case BTF_KIND_RESTRICT:
		case BTF_KIND_TYPE_TAG: VISIT(t->type); break;
		default: /* pointers (not followed), ints, enums, floats, forward declarations */
			break;
		}
	}
#undef VISIT
}

/* 0: void, and what a pointer points to when it is not kept */
static __u32 remap(const __u32 *new_id, __u32 n, __u32 id)
{
	return id && id < n ? new_id[id] : 0;
}

/* The kept types, in their order, with their references renumbered */
static struct btf *copy_kept(const struct btf *target, const __u8 *keep, __u32 *new_id)
{
	__u32 n = btf__type_cnt(target);
	struct btf *out = btf__new_empty();

	if (!out)
		return NULL;
	for (__u32 id = 1; id < n; id++) {
		int nid;

		if (!keep[id])
			continue;
		nid = btf__add_type(out, target, btf__type_by_id(target, id));
		if (nid < 0) {
			btf__free(out);
			return NULL;
		}
		new_id[id] = (__u32)nid;
	}
	for (__u32 id = 1; id < btf__type_cnt(out); id++) {
		/* out's own, writable copy (btf__add_type made it) */
		struct btf_type *t = (struct btf_type *)btf__type_by_id(out, id);

		switch (btf_kind(t)) {
		case BTF_KIND_STRUCT:
		case BTF_KIND_UNION: {
			struct btf_member *m = btf_members(t);

			for (__u16 i = 0; i < btf_vlen(t); i++)
				m[i].type = remap(new_id, n, m[i].type);
			break;
		}
		case BTF_KIND_ARRAY:
			btf_array(t)->type = remap(new_id, n, btf_array(t)->type);
			btf_array(t)->index_type = remap(new_id, n, btf_array(t)->index_type);
			break;
		case BTF_KIND_PTR:
		case BTF_KIND_TYPEDEF:
		case BTF_KIND_VOLATILE:
		case BTF_KIND_CONST:
		case BTF_KIND_RESTRICT:
		case BTF_KIND_TYPE_TAG: t->type = remap(new_id, n, t->type); break;
		default: break;
		}
	}
	return out;
}

static int write_all(int fd, const void *data, size_t size)
{
	for (size_t done = 0; done < size;) {
		ssize_t w = write(fd, (const char *)data + done, size - done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -errno;
		done += (size_t)w;
	}
	return 0;
}

/* The target's first struct named name */
static void find_struct(const struct btf *target, const struct btf_type *t, __u32 id,
			const char *name, __u32 *out)
{
	if (!*out && btf_is_struct(t) &&
	    strcmp(btf__name_by_offset(target, t->name_off), name) == 0)
		*out = id;
}

/* The kernel's BTF, from a read-only mapping of it where the kernel allows one (Linux 6.16+):
 * no read calls (a sysfs read returns a page at a time: 1,350 of them for 5.5 MB) and no buffer
 * to read into; btf__new copies it out. Elsewhere read as libbpf reads it. */
static struct btf *kernel_btf(void)
{
	int fd = open(KERNEL_BTF, O_RDONLY | O_CLOEXEC);
	struct btf *btf = NULL;
	struct stat st;
	void *map;

	if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map != MAP_FAILED) {
			btf = btf__new(map, (__u32)st.st_size);
			munmap(map, (size_t)st.st_size);
		}
	}
	if (fd >= 0)
		close(fd);
	return btf ? btf : btf__load_vmlinux_btf();
}

static int begin(struct ndq_corebtf *c)
{
	c->fd = memfd_create("netdevq-core-btf", MFD_CLOEXEC);
	if (c->fd < 0)
		return -errno;
	snprintf(c->path, sizeof(c->path), "/proc/self/fd/%d", c->fd);
	return 0;
}

/* Writes the types of target that local's named types need into c's memfd: 0 or -errno */
static int build(struct ndq_corebtf *c, const struct btf *local, const struct btf *target)
{
	struct names set = { 0 };
	__u32 n = btf__type_cnt(target);
	__u8 *keep = calloc(n, 1);
	__u32 *ids = calloc(n, sizeof(*ids)); /* the DFS stack, then the new ids */
	struct btf *out = NULL;
	int err = -ENOMEM;

	if (!keep || !ids || local_names(local, &set))
		goto done;
	for (__u32 id = 1; id < n; id++) {
		const struct btf_type *t = btf__type_by_id(target, id);
		const char *name;

		if (!named_kind(t) || !t->name_off)
			continue;
		name = btf__name_by_offset(target, t->name_off);
		if (!name || !names_has(&set, name, essential_len(name)))
			continue;
		keep_with_embedded(target, id, keep, ids);
		find_struct(target, t, id, "sk_buff", &c->skb_id);
		find_struct(target, t, id, "skb_shared_info", &c->shinfo_id);
	}
	err = -EBADF;
	if (c->fd < 0)
		goto done;
	err = -ENOMEM;
	memset(ids, 0, n * sizeof(*ids));
	out = copy_kept(target, keep, ids);
	if (out) {
		__u32 size;
		const void *raw = btf__raw_data(out, &size);

		c->kept = btf__type_cnt(out) - 1;
		c->total = n - 1;
		err = raw ? write_all(c->fd, raw, size) : -ENOMEM;
	}
done:
	btf__free(out);
	free(keep);
	free(ids);
	free(set.name);
	free(set.len);
	return err;
}

struct bpf_object *ndq_corebtf_open(struct ndq_corebtf *c, const char *file, const void *bytes,
				    size_t len, struct bpf_object_open_opts *oopts)
{
	const char *target_path = oopts->btf_custom_path; /* btf_path, or NULL: the kernel's */
	const struct btf *local;
	struct bpf_object *obj;
	struct btf *target;
	int err = -EINVAL;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	/* btf_path: libbpf searches the user's types whole; only the ids are needed from them */
	if (!target_path && begin(c) == 0)
		oopts->btf_custom_path = c->path;
	obj = file ? bpf_object__open_file(file, oopts) : bpf_object__open_mem(bytes, len, oopts);
	oopts->btf_custom_path = target_path;
	if (!obj) {
		ndq_corebtf_end(c);
		return NULL;
	}
	local = bpf_object__btf(obj);
	target = target_path ? btf__parse(target_path, NULL) : kernel_btf();
	if (local && target)
		err = build(c, local, target); /* the ids even without a memfd */
	btf__free(target);
	if (err == 0 || c->fd < 0)
		return obj;
	/* the relocations search the whole target instead, as libbpf does by itself */
	ndq_corebtf_end(c);
	bpf_object__close(obj);
	return file ? bpf_object__open_file(file, oopts) : bpf_object__open_mem(bytes, len, oopts);
}

void ndq_corebtf_end(struct ndq_corebtf *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}
