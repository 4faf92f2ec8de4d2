/* loader.c - core.open: the options, the BPF object (embedded, bytes or a path; a user's object
 * is trial-loaded in a child first), its configuration (.rodata config, map sizes, which programs
 * load) and the load. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "core.h"
#include "corebtf.h"
#include "derive.h"
#include "kstack.h"
#include "latency.h"
#include "owner.h"
#include "pcap_filter.h"
#include "pcap_kernel.h"
#include "sets.h"

#define PCAP_BUDGET_MS 10000 /* libpcap's optimizer is slow on long expressions */

/* What core.open was given. Strings belong to the options table (kept on the stack). */
struct open_opts {
	const char *mode, *read, *object, *object_bytes, *btf_path, *pcap;
	size_t object_len, pcap_len;
	const char *set_values; /* struct netdevq_set_key[]: the values of the sets kept in a map */
	size_t set_values_len;
	int set_bitmaps;  /* those sets that became bitmaps (csrc/sets.c) */
	const char *path; /* the read path in use: read_path(), then "probe" after a fallback */
	int ringbuf_size, batch, agg_keys, pcap_snaplen;
	int ncpu; /* libbpf_num_possible_cpus(): negative when it failed */
	struct netdevq_config cfg;
};

static int opt_int(lua_State *L, int idx, const char *key, lua_Integer def, lua_Integer lo,
		   lua_Integer hi)
{
	lua_Integer v = def;

	lua_getfield(L, idx, key);
	if (!lua_isnil(L, -1)) {
		if (!lua_isnumber(L, -1))
			luaL_error(L, "netdevq.core.open: option '%s' must be a number", key);
		v = lua_tointeger(L, -1);
		if (v < lo || v > hi)
			luaL_error(L, "netdevq.core.open: option '%s' out of range (%d..%d)", key,
				   (int)lo, (int)hi);
	}
	lua_pop(L, 1);
	return (int)v;
}

/* A string option; binary ones (object_bytes, config) give len, text ones must hold no NUL. */
static const char *opt_str(lua_State *L, int idx, const char *key, size_t *len)
{
	const char *s;
	size_t n;

	lua_getfield(L, idx, key);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return NULL;
	}
	if (!lua_isstring(L, -1))
		luaL_error(L, "netdevq.core.open: option '%s' must be a string", key);
	s = lua_tolstring(L, -1, &n);
	lua_pop(L, 1); /* the options table keeps the string alive */
	if (len)
		*len = n;
	else if (strlen(s) != n)
		luaL_error(L, "netdevq.core.open: option '%s' contains a NUL byte", key);
	return s;
}

static bool kernel_at_least(int major, int minor);

static void read_options(lua_State *L, struct open_opts *o)
{
	size_t config_len = 0;
	const char *config;

	luaL_checktype(L, 1, LUA_TTABLE);
	memset(o, 0, sizeof(*o));
	o->mode = opt_str(L, 1, "mode", NULL);
	if (!o->mode)
		o->mode = "raw";
	if (strcmp(o->mode, "raw") != 0 && strcmp(o->mode, "btf") != 0)
		luaL_error(L, "netdevq.core.open: mode must be 'raw' or 'btf', not '%s'", o->mode);
	o->read = opt_str(L, 1, "read", NULL);
	if (!o->read)
		o->read = "auto";
	if (strcmp(o->read, "auto") != 0 && strcmp(o->read, "direct") != 0 &&
	    strcmp(o->read, "probe") != 0)
		luaL_error(L,
			   "netdevq.core.open: read must be 'auto', 'direct' or 'probe', not '%s'",
			   o->read);
	o->object = opt_str(L, 1, "object", NULL);
	o->object_bytes = opt_str(L, 1, "object_bytes", &o->object_len);
	config = opt_str(L, 1, "config", &config_len);
	o->btf_path = opt_str(L, 1, "btf_path", NULL);
	o->pcap = opt_str(L, 1, "pcap", &o->pcap_len); /* a NUL inside: a clean error in open */
	o->set_values = opt_str(L, 1, "set_values", &o->set_values_len);
	if (o->set_values_len % sizeof(struct netdevq_set_key) ||
	    o->set_values_len / sizeof(struct netdevq_set_key) > 16 * NDQ_SET_MAP_MAX)
		luaL_error(L, "netdevq.core.open: set_values must be whole struct netdevq_set_key "
			      "entries (at most 16 sets' worth)");
	o->ringbuf_size = opt_int(L, 1, "ringbuf_size", DEFAULT_RINGBUF, 4096, 1 << 30);
	o->batch = opt_int(L, 1, "batch", DEFAULT_BATCH, 1, 1 << 20);
	o->agg_keys = opt_int(L, 1, "agg_max_keys", DEFAULT_AGG_KEYS, 1, 1 << 20);
	o->pcap_snaplen = opt_int(L, 1, "pcap_snaplen", NDQ_SNAP_MAX, 1, 65535);
	lua_getfield(L, 1, "verbose");
	ndq_verbose = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (config && config_len != sizeof(o->cfg))
		luaL_error(L, "netdevq.core.open: config is %d bytes, struct netdevq_config is %d",
			   (int)config_len, (int)sizeof(o->cfg));
	if (config)
		memcpy(&o->cfg, config, sizeof(o->cfg));
	ndq_owner_config(&o->cfg);
	o->set_bitmaps = ndq_sets_plan(&o->cfg, o->set_values, o->set_values_len);
	/* last, from all of the above. Batches need a flush run on each CPU (BPF_F_TEST_RUN_ON_CPU
	 * on raw_tp: Linux 5.10); one holds at most an eighth of the ring buffer, so that a full
	 * ring still has room for batches from other CPUs */
	o->ncpu = libbpf_num_possible_cpus();
	ndq_derive(&o->cfg, kernel_at_least(5, 10) ? (__u32)o->batch : 1,
		   (__u32)o->ringbuf_size / 8, (__u32)o->agg_keys,
		   o->ncpu > 0 ? (__u32)o->ncpu : 0);
}

/* --- the raw-mode read path (--read) ---------------------------------------------------------
 * probe: netdevq_raw, bpf_probe_read_kernel copies of the sk_buff (any kernel with raw_tp).
 * direct: netdevq_direct, bpf_rdonly_cast and plain loads (the kfunc is in Linux 6.2+).
 * auto: direct on a 6.2+ kernel (no BTF parse at start: that costs ~20 ms), and probe when the
 * direct program then fails to load (the kernel lacks the kfunc, or its verifier refuses the
 * program for another reason: -v says which). */
static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

/* which read path o asks for, auto resolved: "probe", "direct" or "btf" (btf mode) */
static const char *read_path(const struct open_opts *o)
{
	if (strcmp(o->mode, "btf") == 0)
		return "btf";
	if (strcmp(o->read, "auto") == 0)
		return kernel_at_least(6, 2) ? "direct" : "probe";
	return o->read;
}

static const char *prog_name(const char *path)
{
	return strcmp(path, "btf") == 0	   ? NDQ_BTF_PROG :
	       strcmp(path, "direct") == 0 ? "netdevq_direct" :
					     "netdevq_raw";
}

/* After a failed load of the direct program: whether the kernel lacks bpf_rdonly_cast (its BTF
 * names no such function; libbpf resolves kfuncs there too, whatever btf_path says). Parsed only
 * on this path. */
static bool kfunc_missing(void)
{
	struct btf *vmlinux = btf__load_vmlinux_btf();
	bool missing;

	if (!vmlinux)
		return false;
	missing = btf__find_by_name_kind(vmlinux, "bpf_rdonly_cast", BTF_KIND_FUNC) < 0;
	btf__free(vmlinux);
	return missing;
}
/* --- end of the read path -------------------------------------------------------------------- */

static const char *object_name(const struct open_opts *o)
{
	return o->object ? o->object : o->object_bytes ? "(object_bytes)" : "(embedded)";
}

/* libbpf 1.1 crashes on some malformed objects (bad BTF above all) while it opens or loads them
 * (spec/fuzz/elf_fuzz.lua finds such objects). An object the user names, unlike the embedded one,
 * is therefore opened and loaded once in a child process first: when that child dies, the object
 * is refused with a clean error and this process never parses it. The child loads the program
 * of o->mode only, like the real load. */
static void trial_child(const struct open_opts *o, const struct bpf_object_open_opts *oopts)
{
	const char *name = prog_name(o->path);
	struct bpf_object *obj;
	struct bpf_program *p, *want;

	/* a crash here is the expected outcome for some objects: let the signal end the child
	 * plainly (no sanitizer or debugger handler reporting it as an error of its own) */
	signal(SIGSEGV, SIG_DFL);
	signal(SIGBUS, SIG_DFL);
	signal(SIGFPE, SIG_DFL);
	signal(SIGILL, SIG_DFL);
	signal(SIGABRT, SIG_DFL);
	ndq_verbose = 0;
	obj = o->object ? bpf_object__open_file(o->object, oopts) :
			  bpf_object__open_mem(o->object_bytes, o->object_len, oopts);
	if (!obj)
		_exit(3);
	want = bpf_object__find_program_by_name(obj, name);
	if (want)
		bpf_object__for_each_program(p, obj)
			bpf_program__set_autoload(p, p == want);
	_exit(bpf_object__load(obj) ? 3 : 0);
}

static bool is_elf(const struct open_opts *o)
{
	unsigned char magic[4] = { 0 };

	if (o->object) {
		FILE *f = fopen(o->object, "rb");

		if (f) {
			if (fread(magic, 1, sizeof(magic), f) != sizeof(magic))
				magic[0] = 0;
			fclose(f);
		}
	} else if (o->object_len >= sizeof(magic)) {
		memcpy(magic, o->object_bytes, sizeof(magic));
	}
	return memcmp(magic, "\177ELF", sizeof(magic)) == 0;
}

/* 0 (go on: the real open reports any failure) or -1 with msg set */
static int trial_load(const struct open_opts *o, const struct bpf_object_open_opts *oopts,
		      char *msg, size_t msglen)
{
	int st = 0;
	pid_t pid, r;

	/* what is not ELF at all, libbpf refuses before parsing anything: no child needed */
	if (!is_elf(o))
		return 0;
	fflush(NULL);
	ndq_preopen_join();
	pid = fork();
	if (pid < 0) {
		snprintf(msg, msglen, "fork failed (%s)", strerror(errno));
		return -1;
	}
	if (pid == 0)
		trial_child(o, oopts);
	do {
		r = waitpid(pid, &st, 0);
	} while (r < 0 && errno == EINTR);
	if (r == pid && WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 3))
		return 0;
	if (r == pid && WIFSIGNALED(st))
		snprintf(msg, msglen,
			 "BPF object %s is malformed: libbpf crashed on it (signal %d in a trial "
			 "load): rebuild with scripts/setup",
			 object_name(o), WTERMSIG(st));
	else
		snprintf(msg, msglen,
			 "BPF object %s is malformed: libbpf failed on it (status %d in a trial "
			 "load): rebuild with scripts/setup",
			 object_name(o), r == pid ? WEXITSTATUS(st) : -1);
	return -1;
}

static int check_btf(const struct open_opts *o, struct bpf_object_open_opts *oopts, char *msg,
		     size_t msglen)
{
	const char *path = o->btf_path ? o->btf_path : KERNEL_BTF;

	if (access(path, R_OK) != 0) {
		snprintf(msg, msglen,
			 "kernel BTF not found at %s (%s): netdevq needs a kernel built with "
			 "CONFIG_DEBUG_INFO_BTF=y",
			 path, strerror(errno));
		return -1;
	}
	oopts->btf_custom_path = o->btf_path;
	return 0;
}

static int open_object(struct tracer *t, const struct open_opts *o,
		       struct bpf_object_open_opts *oopts, struct ndq_corebtf *core, char *msg,
		       size_t msglen)
{
	char why[128];
	int err;

	oopts->object_name = NDQ_OBJECT_NAME;
	if (o->object && access(o->object, R_OK) != 0) {
		snprintf(msg, msglen,
			 "cannot read BPF object %s (%s): give the path of a netdevq.bpf.o, or "
			 "none for the embedded one",
			 o->object, strerror(errno));
		return -1;
	}
	if ((o->object || o->object_bytes) && trial_load(o, oopts, msg, msglen))
		return -1;
	/* the pre-opened object, when it is the one this open would make: the embedded object and
	 * the kernel's BTF */
	t->obj = ndq_preopen_take(!o->object && !o->object_bytes && !o->btf_path, core);
	if (t->obj) {
		if (ndq_verbose)
			fprintf(stderr, "netdevq: the BPF object was opened while the CLI started "
					"(libbpf's log of that open is not kept)\n");
	} else if (o->object_bytes) {
		t->obj = ndq_corebtf_open(core, NULL, o->object_bytes, o->object_len, oopts);
	} else {
		t->obj = ndq_corebtf_open(core, o->object, netdevq_bpf_object,
					  netdevq_bpf_object_size, oopts);
	}
	if (t->obj) {
		if (ndq_verbose && core->fd >= 0)
			fprintf(stderr,
				"netdevq: CO-RE relocations search %u of the %u types of %s: those "
				"the object names and what they embed\n",
				core->kept, core->total, o->btf_path ? o->btf_path : KERNEL_BTF);
		return 0;
	}
	err = -errno;
	libbpf_strerror(err, why, sizeof(why)); /* knows libbpf's own codes (4000+) too */
	snprintf(msg, msglen,
		 "BPF object %s is not a valid netdevq object (%s): rebuild with scripts/setup",
		 object_name(o), why);
	return -1;
}

static int rodata_config_offset(struct bpf_object *obj, size_t *off)
{
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_type *sec;
	const struct btf_var_secinfo *vs;
	int id;

	if (!btf)
		return -ENOENT;
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0)
		return -ENOENT;
	sec = btf__type_by_id(btf, id);
	vs = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *var = btf__type_by_id(btf, vs->type);

		if (strcmp(btf__name_by_offset(btf, var->name_off), "cfg") == 0) {
			if (vs->size != sizeof(struct netdevq_config))
				return -EPROTO;
			*off = vs->offset;
			return 0;
		}
	}
	return -ENOENT;
}

static struct bpf_map *map_by_suffix(struct bpf_object *obj, const char *suffix)
{
	struct bpf_map *map;
	size_t sl = strlen(suffix);

	bpf_object__for_each_map(map, obj) {
		const char *name = bpf_map__name(map);
		size_t nl = strlen(name);

		if (nl >= sl && strcmp(name + nl - sl, suffix) == 0)
			return map;
	}
	return NULL;
}

/* The config into the object's .rodata `cfg` (its initial value): -1 with msg set */
static int write_config(struct bpf_map *rodata, size_t cfg_off, const struct netdevq_config *cfg,
			char *msg, size_t msglen)
{
	size_t size = 0;
	const void *initial = bpf_map__initial_value(rodata, &size);
	char *init = NULL;
	int err = -EPROTO;

	if (!initial || cfg_off + sizeof(*cfg) > size)
		goto cleanup;
	init = malloc(size);
	err = -ENOMEM;
	if (!init)
		goto cleanup;
	memcpy(init, initial, size);
	memcpy(init + cfg_off, cfg, sizeof(*cfg));
	err = bpf_map__set_initial_value(rodata, init, size);
cleanup:
	free(init);
	if (err == -EPROTO)
		return 1; /* not an object of this version: the caller says so */
	if (err)
		snprintf(msg, msglen, "setting the kernel filter failed (%s)", strerror(-err));
	return err ? -1 : 0;
}

/* (configure_object checked that the maps are there and that o->ncpu is positive) */
static void size_maps(struct tracer *t, const struct open_opts *o)
{
	const __u32 ncpu = (__u32)o->ncpu;
	const struct netdevq_config *cfg = &o->cfg;
	struct bpf_map *events = bpf_object__find_map_by_name(t->obj, "events");
	struct bpf_map *aggs = bpf_object__find_map_by_name(t->obj, "aggs");
	struct bpf_map *aggtab = bpf_object__find_map_by_name(t->obj, "aggtab");

	bpf_map__set_max_entries(events, o->ringbuf_size);
	/* one entry per CPU (bpf/netdevq.bpf.c, struct counters) */
	bpf_map__set_max_entries(bpf_object__find_map_by_name(t->obj, "counters"), ncpu);
	bpf_map__set_max_entries(bpf_object__find_map_by_name(t->obj, "scratch"), ncpu);
	if (cfg->agg_on) {
		/* hash only the key slots in use: the BPF side builds a full, zero-padded key */
		bpf_map__set_key_size(aggs, cfg->agg_key_size);
		/* elements allocated as keys come (the BPF memory allocator, which tracing programs
		 * may use from Linux 6.1), not all at creation: that took ~65 ms for 65,024 */
		if (kernel_at_least(6, 1))
			bpf_map__set_map_flags(aggs, bpf_map__map_flags(aggs) | BPF_F_NO_PREALLOC);
		/* the table's slots come off the hash (csrc/derive.c agg_table) */
		bpf_map__set_max_entries(aggs, (__u32)o->agg_keys -
						       (cfg->derived & NDQ_DERIVED_AGG_TABLE ?
								ncpu * NDQ_AGG_TABLE_SLOTS :
								0));
		t->agg_value_size = cfg->agg_hist ? sizeof(struct netdevq_agg_value) :
						    offsetof(struct netdevq_agg_value, slot);
	} else {
		bpf_map__set_max_entries(aggs, 1);
		t->agg_value_size = offsetof(struct netdevq_agg_value, slot);
	}
	bpf_map__set_value_size(aggs, t->agg_value_size);
	if (cfg->derived & NDQ_DERIVED_AGG_TABLE) {
		t->table_n = ncpu * NDQ_AGG_TABLE_SLOTS;
		t->table_slot_size = offsetof(struct netdevq_agg_slot, key) + cfg->agg_key_size;
		bpf_map__set_max_entries(aggtab, t->table_n);
		bpf_map__set_value_size(aggtab, t->table_slot_size);
	} else {
		bpf_map__set_max_entries(aggtab, 1);
	}
	ndq_sets_size(t->obj, cfg, o->set_values, o->set_values_len, o->set_bitmaps);
	if (!cfg->follow_pid) {
		bpf_map__set_max_entries(bpf_object__find_map_by_name(t->obj, "tracked"), 1);
		bpf_map__set_max_entries(bpf_object__find_map_by_name(t->obj, "exited"), 1);
	}
}

/* Config, map sizes and programs of the opened object: -1 with msg set */
static int configure_object(struct tracer *t, struct open_opts *o, const struct ndq_corebtf *core,
			    char *msg, size_t msglen)
{
	static const char *maps[] = { "events",	  "aggs", "aggtab",   "tracked", "exited",
				      "counters", "sets", "set_bits", "batches", "scratch" };
	struct bpf_map *rodata = map_by_suffix(t->obj, ".rodata");
	struct bpf_program *p;
	size_t cfg_off = 0;
	bool complete = rodata != NULL;
	int rc = 1;

	for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++)
		complete = complete && bpf_object__find_map_by_name(t->obj, maps[i]);
	t->prog = bpf_object__find_program_by_name(t->obj, prog_name(o->path));
	t->fork_prog = bpf_object__find_program_by_name(t->obj, "netdevq_fork");
	t->exit_prog = bpf_object__find_program_by_name(t->obj, "netdevq_exit");
	t->flush_prog = bpf_object__find_program_by_name(t->obj, "netdevq_flush");
	o->cfg.skb_btf_id = core->skb_id;
	o->cfg.shinfo_btf_id = core->shinfo_id;
	if (complete && t->prog && t->fork_prog && t->exit_prog && t->flush_prog &&
	    rodata_config_offset(t->obj, &cfg_off) == 0)
		rc = write_config(rodata, cfg_off, &o->cfg, msg, msglen);
	if (rc > 0)
		snprintf(msg, msglen,
			 "BPF object %s is not a netdevq object of this version (maps, programs or "
			 "config missing): rebuild with scripts/setup",
			 object_name(o));
	if (rc)
		return -1;
	bpf_object__for_each_program(p, t->obj) {
		bool follow = (p == t->fork_prog || p == t->exit_prog) && o->cfg.follow_pid;

		bool flush = p == t->flush_prog && o->cfg.batch > 1;

		bpf_program__set_autoload(p, p == t->prog || follow || flush);
	}
	t->event_size = o->cfg.event_size;
	t->kbatch = o->cfg.batch;
	ndq_owner_select(t->obj, &o->cfg);
	ndq_latency_select(t->obj, &o->cfg, o->mode);
	t->follow_pid = o->cfg.follow_pid;
	if (o->ncpu <= 0) {
		snprintf(msg, msglen, "cannot count the possible CPUs (%s)", strerror(-o->ncpu));
		return -1;
	}
	t->ncpu = o->ncpu;
	size_maps(t, o);
	if (ndq_kstack_setup(t->obj, &o->cfg)) {
		snprintf(msg, msglen, "this BPF object cannot capture kernel stacks: rebuild it");
		return -1;
	}
	return 0;
}

static int load_object(struct tracer *t, char *msg, size_t msglen)
{
	char why[128];
	int err;

	ndq_load_begin(t->obj);
	err = bpf_object__load(t->obj);
	ndq_load_end();
	ndq_load_heap_end(); /* the kernel's BTF is freed: trimmed before the ring buffer maps */

	if (err) {
		libbpf_strerror(err, why, sizeof(why));
		if (err == -EPERM)
			snprintf(msg, msglen,
				 "permission denied loading the BPF program (%s): run as root, or "
				 "with CAP_BPF and CAP_PERFMON",
				 why);
		else
			snprintf(msg, msglen,
				 "loading the BPF program failed (%s%s): run with -v for libbpf's "
				 "log",
				 why, err == -EACCES ? ", the verifier rejected it" : "");
		return -1;
	}
	t->counters_fd = bpf_map__fd(bpf_object__find_map_by_name(t->obj, "counters"));
	t->aggs_fd = bpf_map__fd(bpf_object__find_map_by_name(t->obj, "aggs"));
	t->aggtab_fd = bpf_map__fd(bpf_object__find_map_by_name(t->obj, "aggtab"));
	t->tracked_fd = bpf_map__fd(bpf_object__find_map_by_name(t->obj, "tracked"));
	t->flush_fd = t->kbatch > 1 ? bpf_program__fd(t->flush_prog) : -1;
	t->rb = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(t->obj, "events")),
				 ndq_on_sample, t, NULL);
	if (!t->rb) {
		snprintf(msg, msglen, "ring buffer setup failed (%s)", strerror(errno));
		return -1;
	}
	return 0;
}

/* Open, configure and load (the kernel's pcap program spliced in as it loads, when asked);
 * --read auto falls back to the probe-read program when the direct one does not load. 0; -1 with
 * msg set; 1: the kernel refused the pcap expression (msg says why: kind "pcap_kernel"). */
static int open_and_load(struct tracer *t, struct open_opts *o, struct bpf_object_open_opts *oopts,
			 char *msg, size_t msglen)
{
	struct ndq_corebtf core = { .fd = -1 };
	char why[320];
	int rc;

	ndq_load_heap_begin();
	if (open_object(t, o, oopts, &core, msg, msglen) ||
	    configure_object(t, o, &core, msg, msglen)) {
		ndq_corebtf_end(&core);
		ndq_load_heap_end();
		return -1;
	}
	/* tp_btf: the attach id from the kernel BTF the load reads anyway, now (with the pcap
	 * handlers registered, their prepare step would otherwise read that BTF a second time). A
	 * failure here fails the load too, which says why. */
	if (strcmp(o->path, "btf") == 0)
		(void)bpf_program__set_attach_target(t->prog, 0, NDQ_TRACEPOINT);
	if (t->pcap_kernel)
		ndq_pcap_kernel_request(t->obj, t->prog, t->pcap);
	rc = load_object(t, msg, msglen);
	ndq_corebtf_end(&core); /* libbpf has read it */
	if (t->pcap_kernel && (ndq_pcap_kernel_finish(rc == 0, why, sizeof(why)) || rc)) {
		char load[512];

		snprintf(load, sizeof(load), "%s", rc ? msg : why);
		snprintf(msg, msglen, "pcap filter: the kernel refused it in %s mode (%.400s)",
			 o->mode, load);
		return 1;
	}
	if (rc == 0)
		return ndq_sets_fill(t->obj, &o->cfg, o->set_values, o->set_values_len,
				     o->set_bitmaps, msg, msglen);
	if (strcmp(o->path, "direct") != 0)
		return -1;
	if (strcmp(o->read, "direct") == 0) {
		if (kfunc_missing())
			snprintf(
				msg, msglen,
				"--read direct: this kernel has no bpf_rdonly_cast kfunc (Linux 6.2+): "
				"use --read probe");
		return -1;
	}
	/* auto: a kernel without the kfunc, or whose verifier refuses the direct program: the
	 * probe-read program instead */
	if (ndq_verbose)
		fprintf(stderr,
			"netdevq: the direct-load program did not load (%s): reading with "
			"probe reads\n",
			msg);
	ring_buffer__free(t->rb);
	t->rb = NULL;
	bpf_object__close(t->obj);
	t->obj = NULL;
	o->path = "probe";
	return open_and_load(t, o, oopts, msg, msglen);
}

/* The tracer userdata (on the stack) with its batch userdata in its environment. */
static struct tracer_ud *push_tracer(lua_State *L, int batch)
{
	struct tracer_ud *ud = lua_newuserdata(L, sizeof(*ud));

	ud->t = NULL;
	luaL_getmetatable(L, TRACER_MT);
	lua_setmetatable(L, -2);
	lua_createtable(L, 1, 0);
	lua_newuserdata(L, (size_t)batch * sizeof(struct netdevq_event));
	lua_rawseti(L, -2, 1);
	lua_setfenv(L, -2);
	return ud;
}

/* core.open{ mode=, object=, object_bytes=, config=, ringbuf_size=, batch=, agg_max_keys=,
 *            btf_path=, pcap=, pcap_snaplen=, verbose=, read= } -> tracer | nil, err, kind
 * kind: "usage" (the pcap expression is wrong or over its compile budget), "pcap_kernel" (the
 * config asks the kernel to decide the pcap expression and it cannot: open again with the
 * expression in user space) or "runtime" */
int ndq_core_open(lua_State *L)
{
	LIBBPF_OPTS(bpf_object_open_opts, oopts);
	struct open_opts o;
	struct tracer *t = NULL;
	struct tracer_ud *ud;
	char msg[512] = "out of memory";
	bool usage = false, pcap_kernel = false;
	int rc = 0;

	read_options(L, &o);
	o.path = read_path(&o);
	if (o.pcap && strlen(o.pcap) != o.pcap_len) {
		ndq_push_fail(
			L, "pcap filter: the expression contains a NUL byte (byte %d): remove it",
			(int)strlen(o.pcap) + 1);
		lua_pushliteral(L, "usage");
		return 3;
	}
	if (o.ringbuf_size & (o.ringbuf_size - 1))
		return ndq_push_fail(L, "ring buffer size %d is not a power of two: pick e.g. %d",
				     o.ringbuf_size,
				     1 << (31 - __builtin_clz((unsigned)o.ringbuf_size)));
	ud = push_tracer(L, o.batch); /* may raise: before anything is allocated here */
	t = calloc(1, sizeof(*t));
	if (!t)
		goto cleanup;
	t->counters_fd = t->aggs_fd = t->aggtab_fd = t->tracked_fd = t->flush_fd = -1;
	snprintf(t->mode, sizeof(t->mode), "%s", o.mode);
	t->batch_cap = (size_t)o.batch;
	lua_getfenv(L, -1);
	lua_rawgeti(L, -1, 1);
	t->batch = lua_touserdata(L, -1);
	lua_pop(L, 2);
	if (o.pcap && !(t->pcap = ndq_pcap_compile(o.pcap, o.pcap_snaplen, PCAP_BUDGET_MS,
						   &ndq_interrupted, msg, sizeof(msg), &usage)))
		goto cleanup;
	/* the kernel decides the pcap expression: spliced into the program as it loads; when that
	 * load fails, the caller opens again with the expression in user space */
	t->pcap_kernel = t->pcap && o.cfg.pcap;
	/* the load handler prunes every load; the pcap splice needs it */
	if (ndq_pcap_kernel_register() && t->pcap_kernel) {
		snprintf(msg, sizeof(msg), "pcap filter: libbpf refused the load handler");
		pcap_kernel = true;
		goto cleanup;
	}
	if (check_btf(&o, &oopts, msg, sizeof(msg)))
		goto cleanup;
	rc = open_and_load(t, &o, &oopts, msg, sizeof(msg));
	if (rc) {
		pcap_kernel = rc > 0;
		goto cleanup;
	}
	snprintf(t->read, sizeof(t->read), "%s", o.path);
	if (ndq_verbose)
		fprintf(stderr, "netdevq: read path: %s (%s)\n", o.path,
			strcmp(o.path, "probe") == 0  ? "raw_tp, bpf_probe_read_kernel copies" :
			strcmp(o.path, "direct") == 0 ? "raw_tp, bpf_rdonly_cast direct loads" :
							"tp_btf, direct loads");
	if (t->pcap && !t->pcap_kernel && ndq_verbose)
		fprintf(stderr, "netdevq: pcap filter decided in user space (libpcap)\n");
	if (t->kbatch > 1 && ndq_verbose)
		fprintf(stderr,
			"netdevq: events handed over in per-CPU batches of up to %zu (%zu bytes each)\n",
			t->kbatch, t->event_size);
	ud->t = t;
	return 1;
cleanup:
	ndq_tracer_free(t);
	lua_pop(L, 1);
	ndq_push_fail(L, "%s", msg);
	lua_pushstring(L, usage ? "usage" : pcap_kernel ? "pcap_kernel" : "runtime");
	return 3;
}
