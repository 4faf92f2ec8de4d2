/* netdevq_core.c - the C Lua module `netdevq.core`: load the BPF object, attach, poll the ring
 * buffer into a batch that Lua reads through the FFI, read counters and aggregations, close.
 *
 * Expected failures return nil, "what failed: why; what to do". Misuse raises.
 * One idempotent close serves :close() and __gc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <lauxlib.h>
#include <lua.h>

#include "netdevq.h"
#include "owner.h"
#include "pcap_filter.h"
#include "btf_path.h"
#include "kstack.h"

#define TRACER_MT "netdevq.Tracer"
#define NETDEVQ_VERSION "0.1.0"
#define DEFAULT_RINGBUF (8u << 20)
#define DEFAULT_BATCH 4096
#define DEFAULT_AGG_KEYS 4096
#define BATCH_FULL (-1000000)
#define KERNEL_BTF "/sys/kernel/btf/vmlinux"

/* The BPF object and the ABI header, embedded by bpf_blobs.S (see CMakeLists.txt). */
extern const unsigned char netdevq_bpf_object[];
extern const char netdevq_abi_header[];
extern const unsigned long long netdevq_bpf_object_size, netdevq_abi_header_size;

/* LuaJIT speaks the Lua 5.1 API: this is all of the compat layer we need. */
static void set_funcs(lua_State *L, const luaL_Reg *l)
{
	for (; l->name; l++) {
		lua_pushcfunction(L, l->func);
		lua_setfield(L, -2, l->name);
	}
}

struct tracer {
	struct bpf_object *obj;
	struct bpf_link *link;
	struct bpf_link *fork_link;
	struct bpf_program *prog;
	struct bpf_program *fork_prog;
	struct ring_buffer *rb;
	struct netdevq_event *batch;
	size_t batch_n, batch_cap;
	struct netdevq_agg_key *agg_keys;
	struct netdevq_agg_value *agg_vals;
	size_t agg_cap;
	void *percpu_buf;
	int counters_fd, aggs_fd, tracked_fd;
	__u32 follow_pid;
	__u32 agg_value_size;
	struct ndq_pcap *pcap;
	struct ndq_owner *owner; /* socket-owner links (owner.c) */
	__u64 pcap_dropped;
	__u64 received;
	char mode[8];
};

struct tracer_ud {
	struct tracer *t;
};

static volatile sig_atomic_t interrupted;
static int verbose;

static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (!verbose && level != LIBBPF_WARN)
		return 0;
	if (!verbose)
		return 0; /* warnings are summarised in our own one-line errors; -v shows them */
	return vfprintf(stderr, fmt, args);
}

static int push_fail(lua_State *L, const char *fmt, ...)
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

static void tracer_free(struct tracer *t)
{
	if (!t)
		return;
	ring_buffer__free(t->rb);
	bpf_link__destroy(t->link);
	bpf_link__destroy(t->fork_link);
	ndq_owner_free(t->owner);
	bpf_object__close(t->obj);
	ndq_pcap_free(t->pcap);
	free(t->batch);
	free(t->agg_keys);
	free(t->agg_vals);
	free(t->percpu_buf);
	free(t);
}

static struct tracer *check_tracer(lua_State *L)
{
	struct tracer_ud *ud = luaL_checkudata(L, 1, TRACER_MT);
	if (!ud->t)
		luaL_error(L, "netdevq: tracer is closed");
	return ud->t;
}

static bool pcap_match(struct tracer *t, const struct netdevq_event *ev)
{
	return ndq_pcap_match_event(t->pcap, ev);
}

static int on_sample(void *ctx, void *data, size_t size)
{
	struct tracer *t = ctx;
	struct netdevq_event *dst = &t->batch[t->batch_n];

	if (size > sizeof(*dst))
		size = sizeof(*dst);
	memcpy(dst, data, size);
	if (size < sizeof(*dst))
		dst->snap_len = dst->snap_len <= size - offsetof(struct netdevq_event, snap) ?
					dst->snap_len :
					0;
	if (t->pcap && !pcap_match(t, dst)) {
		t->pcap_dropped++;
		return 0;
	}
	t->batch_n++;
	return t->batch_n >= t->batch_cap ? BATCH_FULL : 0;
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

static const char *opt_str(lua_State *L, int idx, const char *key, size_t *len)
{
	const char *s;

	lua_getfield(L, idx, key);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return NULL;
	}
	if (!lua_isstring(L, -1))
		luaL_error(L, "netdevq.core.open: option '%s' must be a string", key);
	s = lua_tolstring(L, -1, len);
	lua_pop(L, 1); /* the options table keeps the string alive */
	return s;
}

/* libbpf 1.1 crashes on some malformed objects (bad BTF above all) while it opens or loads them
 * (spec/fuzz/elf_fuzz.lua finds such objects). An object the user names, unlike the embedded one,
 * is therefore opened and loaded once in a child process first: when that child dies, the object
 * is refused with a clean error and this process never parses it. The child loads the program
 * of `mode` only, like the real load; returns 0 (go on) or -1 with msg set. */
static int trial_load(const char *path, const void *buf, size_t len, const char *mode,
		      const struct bpf_object_open_opts *oopts, char *msg, size_t msglen)
{
	const char *prog_name = strcmp(mode, "raw") == 0 ? "netdevq_raw" : "netdevq_btf";
	unsigned char magic[4] = { 0 };
	int st = 0;
	pid_t pid, r;

	/* what is not ELF at all, libbpf refuses before parsing anything: no child needed */
	if (path) {
		FILE *f = fopen(path, "rb");
		if (f) {
			if (fread(magic, 1, sizeof(magic), f) != sizeof(magic))
				magic[0] = 0;
			fclose(f);
		}
	} else if (len >= sizeof(magic)) {
		memcpy(magic, buf, sizeof(magic));
	}
	if (memcmp(magic, "\177ELF", sizeof(magic)) != 0)
		return 0;

	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		snprintf(msg, msglen, "fork failed (%s)", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		struct bpf_object *obj;
		struct bpf_program *p, *want;

		/* a crash here is the expected outcome for some objects: let the signal end the child
		 * plainly (no sanitizer or debugger handler reporting it as an error of its own) */
		signal(SIGSEGV, SIG_DFL);
		signal(SIGBUS, SIG_DFL);
		signal(SIGFPE, SIG_DFL);
		signal(SIGILL, SIG_DFL);
		signal(SIGABRT, SIG_DFL);
		verbose = 0;
		obj = path ? bpf_object__open_file(path, oopts) :
			     bpf_object__open_mem(buf, len, oopts);
		if (!obj)
			_exit(3);
		want = bpf_object__find_program_by_name(obj, prog_name);
		if (want)
			bpf_object__for_each_program(p, obj)
				bpf_program__set_autoload(p, p == want);
		_exit(bpf_object__load(obj) ? 3 : 0);
	}
	do {
		r = waitpid(pid, &st, 0);
	} while (r < 0 && errno == EINTR);
	if (r == pid && WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 3))
		return 0;
	if (r == pid && WIFSIGNALED(st))
		snprintf(msg, msglen,
			 "BPF object %s is malformed: libbpf crashed on it (signal %d in a trial "
			 "load): rebuild with scripts/setup",
			 path ? path : "(object_bytes)", WTERMSIG(st));
	else
		snprintf(msg, msglen,
			 "BPF object %s is malformed: libbpf failed on it (status %d in a trial "
			 "load): rebuild with scripts/setup",
			 path ? path : "(object_bytes)", r == pid ? WEXITSTATUS(st) : -1);
	return -1;
}

/* core.open{ mode=, object=, object_bytes=, config=, ringbuf_size=, batch=, agg_max_keys=,
 *            btf_path=, pcap=, pcap_snaplen=, verbose= } -> tracer | nil, err */
static int core_open(lua_State *L)
{
	LIBBPF_OPTS(bpf_object_open_opts, oopts);
	struct netdevq_config cfg = { 0 };
	struct tracer *t = NULL;
	struct tracer_ud *ud;
	struct bpf_map *rodata, *events, *aggs, *tracked, *counters;
	const char *mode, *object, *object_bytes, *config, *btf_path, *pcap_expr;
	size_t object_len = 0, config_len = 0, rodata_size = 0, cfg_off = 0;
	int ringbuf_size, batch, agg_keys, pcap_snaplen, err;
	char msg[512];
	const void *rodata_init;

	luaL_checktype(L, 1, LUA_TTABLE);
	mode = opt_str(L, 1, "mode", NULL);
	if (!mode)
		mode = "raw";
	if (strcmp(mode, "raw") != 0 && strcmp(mode, "btf") != 0)
		return luaL_error(L, "netdevq.core.open: mode must be 'raw' or 'btf', not '%s'",
				  mode);
	object = opt_str(L, 1, "object", NULL);
	object_bytes = opt_str(L, 1, "object_bytes", &object_len);
	config = opt_str(L, 1, "config", &config_len);
	btf_path = opt_str(L, 1, "btf_path", NULL);
	pcap_expr = opt_str(L, 1, "pcap", NULL);
	ringbuf_size = opt_int(L, 1, "ringbuf_size", DEFAULT_RINGBUF, 4096, 1 << 30);
	batch = opt_int(L, 1, "batch", DEFAULT_BATCH, 1, 1 << 20);
	agg_keys = opt_int(L, 1, "agg_max_keys", DEFAULT_AGG_KEYS, 1, 1 << 20);
	pcap_snaplen = opt_int(L, 1, "pcap_snaplen", NDQ_SNAP_MAX, 1, 65535);
	lua_getfield(L, 1, "verbose");
	verbose = lua_toboolean(L, -1);
	lua_pop(L, 1);

	if (ringbuf_size & (ringbuf_size - 1))
		return push_fail(L, "ring buffer size %d is not a power of two: pick e.g. %d",
				 ringbuf_size, 1 << (31 - __builtin_clz((unsigned)ringbuf_size)));
	if (config && config_len != sizeof(cfg))
		return luaL_error(
			L, "netdevq.core.open: config is %d bytes, struct netdevq_config is %d",
			(int)config_len, (int)sizeof(cfg));
	if (config)
		memcpy(&cfg, config, sizeof(cfg));
	ndq_owner_config(&cfg);

	t = calloc(1, sizeof(*t));
	if (!t)
		return push_fail(L, "out of memory");
	t->counters_fd = t->aggs_fd = t->tracked_fd = -1;
	snprintf(t->mode, sizeof(t->mode), "%s", mode);
	t->batch_cap = (size_t)batch;
	t->batch = calloc(t->batch_cap, sizeof(*t->batch));
	if (!t->batch) {
		snprintf(msg, sizeof(msg), "out of memory for a batch of %d events", batch);
		goto fail;
	}
	if (pcap_expr && !(t->pcap = ndq_pcap_compile(pcap_expr, pcap_snaplen, msg, sizeof(msg))))
		goto fail;

	if (btf_path) {
		if (access(btf_path, R_OK) != 0) {
			snprintf(
				msg, sizeof(msg),
				"kernel BTF not found at %s (%s): netdevq needs a kernel built with "
				"CONFIG_DEBUG_INFO_BTF=y",
				btf_path, strerror(errno));
			goto fail;
		}
		oopts.btf_custom_path = btf_path;
	} else if (access(KERNEL_BTF, R_OK) != 0) {
		snprintf(msg, sizeof(msg),
			 "kernel BTF not found at " KERNEL_BTF
			 " (%s): netdevq needs a kernel built "
			 "with CONFIG_DEBUG_INFO_BTF=y",
			 strerror(errno));
		goto fail;
	}

	oopts.object_name = "netdevq";
	if (object) {
		if (access(object, R_OK) != 0) {
			snprintf(
				msg, sizeof(msg),
				"cannot read BPF object %s (%s): give the path of a netdevq.bpf.o, or "
				"none for the embedded one",
				object, strerror(errno));
			goto fail;
		}
		if (trial_load(object, NULL, 0, mode, &oopts, msg, sizeof(msg)))
			goto fail;
		t->obj = bpf_object__open_file(object, &oopts);
	} else if (object_bytes) {
		if (trial_load(NULL, object_bytes, object_len, mode, &oopts, msg, sizeof(msg)))
			goto fail;
		t->obj = bpf_object__open_mem(object_bytes, object_len, &oopts);
	} else {
		t->obj = bpf_object__open_mem(netdevq_bpf_object, netdevq_bpf_object_size, &oopts);
	}
	if (!t->obj) {
		char why[128];

		err = -errno;
		t->obj = NULL;
		libbpf_strerror(err, why, sizeof(why)); /* knows libbpf's own codes (4000+) too */
		snprintf(msg, sizeof(msg),
			 "BPF object %s is not a valid netdevq object (%s): rebuild with "
			 "scripts/setup",
			 object	      ? object :
			 object_bytes ? "(object_bytes)" :
					"(embedded)",
			 why);
		goto fail;
	}

	rodata = map_by_suffix(t->obj, ".rodata");
	events = bpf_object__find_map_by_name(t->obj, "events");
	aggs = bpf_object__find_map_by_name(t->obj, "aggs");
	tracked = bpf_object__find_map_by_name(t->obj, "tracked");
	counters = bpf_object__find_map_by_name(t->obj, "counters");
	t->prog = bpf_object__find_program_by_name(
		t->obj, strcmp(mode, "raw") == 0 ? "netdevq_raw" : "netdevq_btf");
	t->fork_prog = bpf_object__find_program_by_name(t->obj, "netdevq_fork");
	if (!rodata || !events || !aggs || !tracked || !counters || !t->prog || !t->fork_prog ||
	    rodata_config_offset(t->obj, &cfg_off) != 0 ||
	    !(rodata_init = bpf_map__initial_value(rodata, &rodata_size)) ||
	    cfg_off + sizeof(cfg) > rodata_size) {
		snprintf(msg, sizeof(msg),
			 "BPF object %s is not a netdevq object of this version (maps, programs or "
			 "config missing): rebuild with scripts/setup",
			 object	      ? object :
			 object_bytes ? "(object_bytes)" :
					"(embedded)");
		goto fail;
	}
	{
		char *init = malloc(rodata_size);
		if (!init) {
			snprintf(msg, sizeof(msg), "out of memory");
			goto fail;
		}
		memcpy(init, rodata_init, rodata_size);
		memcpy(init + cfg_off, &cfg, sizeof(cfg));
		err = bpf_map__set_initial_value(rodata, init, rodata_size);
		free(init);
		if (err) {
			snprintf(msg, sizeof(msg), "setting the kernel filter failed (%s)",
				 strerror(-err));
			goto fail;
		}
	}

	{
		struct bpf_program *p;
		bpf_object__for_each_program(p, t->obj)
			bpf_program__set_autoload(p, p == t->prog ||
							     (p == t->fork_prog && cfg.follow_pid));
	}
	ndq_owner_select(t->obj, &cfg);
	t->follow_pid = cfg.follow_pid;
	bpf_map__set_max_entries(events, ringbuf_size);
	if (cfg.agg_on) {
		/* hash only the key slots in use: the BPF side builds a full, zero-padded key */
		bpf_map__set_key_size(aggs, (cfg.agg_nkeys ? cfg.agg_nkeys : 1) * NDQ_AGG_KEY_SLOT);
		bpf_map__set_max_entries(aggs, agg_keys);
		t->agg_value_size = cfg.agg_hist ? sizeof(struct netdevq_agg_value) :
						   offsetof(struct netdevq_agg_value, slot);
	} else {
		bpf_map__set_max_entries(aggs, 1);
		t->agg_value_size = offsetof(struct netdevq_agg_value, slot);
	}
	bpf_map__set_value_size(aggs, t->agg_value_size);
	if (!cfg.follow_pid)
		bpf_map__set_max_entries(tracked, 1);
	if (ndq_kstack_setup(t->obj, &cfg)) {
		snprintf(msg, sizeof(msg),
			 "this BPF object cannot capture kernel stacks: rebuild it");
		goto fail;
	}

	err = bpf_object__load(t->obj);
	if (err) {
		char why[128];

		libbpf_strerror(err, why, sizeof(why));
		if (err == -EPERM)
			snprintf(msg, sizeof(msg),
				 "permission denied loading the BPF program (%s): run as root, or "
				 "with CAP_BPF and CAP_PERFMON",
				 why);
		else
			snprintf(
				msg, sizeof(msg),
				"loading the BPF program failed (%s%s): run with -v for libbpf's log",
				why, err == -EACCES ? ", the verifier rejected it" : "");
		goto fail;
	}
	t->counters_fd = bpf_map__fd(counters);
	t->aggs_fd = bpf_map__fd(aggs);
	t->tracked_fd = bpf_map__fd(tracked);
	t->rb = ring_buffer__new(bpf_map__fd(events), on_sample, t, NULL);
	if (!t->rb) {
		snprintf(msg, sizeof(msg), "ring buffer setup failed (%s)", strerror(errno));
		goto fail;
	}

	ud = lua_newuserdata(L, sizeof(*ud));
	ud->t = t;
	luaL_getmetatable(L, TRACER_MT);
	lua_setmetatable(L, -2);
	return 1;

fail:
	tracer_free(t);
	return push_fail(L, "%s", msg);
}

/* t:attach() -> true | nil, err */
static int tracer_attach(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	char msg[256];
	int err;

	if (t->link)
		return luaL_error(L, "netdevq: tracer is already attached");
	if (t->follow_pid) {
		__u8 one = 1;
		if (bpf_map_update_elem(t->tracked_fd, &t->follow_pid, &one, BPF_ANY))
			return push_fail(L, "cannot track pid %u (%s)", t->follow_pid,
					 strerror(errno));
		t->fork_link = bpf_program__attach(t->fork_prog);
		if (!t->fork_link) {
			err = errno;
			t->fork_link = NULL;
			return push_fail(L, "attaching to sched_process_fork failed (%s)",
					 strerror(err));
		}
	}
	if (!t->owner && ndq_owner_attach(&t->owner, t->obj, msg, sizeof(msg)))
		return push_fail(L, "%s", msg);
	t->link = bpf_program__attach(t->prog);
	if (!t->link) {
		err = errno;
		t->link = NULL;
		if (err == ENOENT || err == EINVAL)
			return push_fail(
				L,
				"attaching %s/net_dev_queue failed (%s): this kernel has no "
				"net_dev_queue tracepoint%s",
				strcmp(t->mode, "raw") == 0 ? "raw_tp" : "tp_btf", strerror(err),
				strcmp(t->mode, "btf") == 0 ? " usable by tp_btf (try --mode raw)" :
							      "");
		return push_fail(L, "attaching net_dev_queue failed (%s)", strerror(err));
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* t:detach(): destroys the links; maps stay readable (counters, ring buffer, aggregations) and
 * attach() may run again. Idempotent. */
static int tracer_detach(lua_State *L)
{
	struct tracer *t = check_tracer(L);

	bpf_link__destroy(t->link);
	bpf_link__destroy(t->fork_link);
	t->link = t->fork_link = NULL;
	ndq_owner_free(t->owner);
	t->owner = NULL;
	return 0;
}

/* t:poll(timeout_ms) -> n, batch (lightuserdata: struct netdevq_event[n]) | nil, err
 * Drains what is pending; waits up to timeout_ms only when nothing is. */
static int tracer_poll(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	int timeout = (int)luaL_optinteger(L, 2, 100);
	int rc;

	t->batch_n = 0;
	rc = ring_buffer__consume(t->rb);
	if (rc >= 0 && t->batch_n == 0 && timeout != 0 && !interrupted) {
		rc = ring_buffer__poll(t->rb, timeout);
		/* with adaptive wakeup, data below the threshold is picked up here on timeout */
		if (rc >= 0 && t->batch_n == 0)
			rc = ring_buffer__consume(t->rb);
	}
	if (rc < 0 && rc != BATCH_FULL && rc != -EINTR)
		return push_fail(L, "polling the ring buffer failed (%s)", strerror(-rc));
	t->received += t->batch_n;
	lua_pushinteger(L, (lua_Integer)t->batch_n);
	lua_pushlightuserdata(L, t->batch);
	return 2;
}

/* t:counters() -> { seen=, kfiltered=, emitted=, lost=, aggregated=, agg_overflow=,
 *                   pcap_dropped=, received= } */
static int tracer_counters(lua_State *L)
{
	static const char *names[NDQ_CNT_MAX] = { "seen", "kfiltered",	"emitted",
						  "lost", "aggregated", "agg_overflow" };
	struct tracer *t = check_tracer(L);
	int ncpu = libbpf_num_possible_cpus();
	__u64 sum[NDQ_CNT_MAX] = { 0 };
	__u64 *vals;
	__u32 key = 0;

	if (ncpu <= 0)
		return push_fail(L, "cannot count CPUs (%s)", strerror(-ncpu));
	vals = calloc((size_t)ncpu, sizeof(__u64) * NDQ_CNT_MAX);
	if (!vals)
		return push_fail(L, "out of memory");
	if (bpf_map_lookup_elem(t->counters_fd, &key, vals)) {
		free(vals);
		return push_fail(L, "reading counters failed (%s)", strerror(errno));
	}
	for (int c = 0; c < ncpu; c++)
		for (int i = 0; i < NDQ_CNT_MAX; i++)
			sum[i] += vals[c * NDQ_CNT_MAX + i];
	free(vals);
	lua_createtable(L, 0, NDQ_CNT_MAX + 2);
	for (int i = 0; i < NDQ_CNT_MAX; i++) {
		lua_pushnumber(L, (lua_Number)sum[i]);
		lua_setfield(L, -2, names[i]);
	}
	lua_pushnumber(L, (lua_Number)t->pcap_dropped);
	lua_setfield(L, -2, "pcap_dropped");
	lua_pushnumber(L, (lua_Number)t->received);
	lua_setfield(L, -2, "received");
	return 1;
}

/* t:agg_read(reset) -> n, keys (struct netdevq_agg_key[n]), values (struct netdevq_agg_value[n])
 * Per-CPU values merged: count and sum add, min/max fold, histogram slots add. */
static int tracer_agg_read(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	bool reset = lua_toboolean(L, 2);
	int ncpu = libbpf_num_possible_cpus();
	size_t stride = (t->agg_value_size + 7) & ~7u, n = 0;
	struct netdevq_agg_key key, next, *prev = NULL;

	if (ncpu <= 0)
		return push_fail(L, "cannot count CPUs (%s)", strerror(-ncpu));
	if (!t->percpu_buf && !(t->percpu_buf = calloc((size_t)ncpu, stride)))
		return push_fail(L, "out of memory");
	/* collect keys first: deleting while walking would restart the walk */
	/* the map's keys may be shorter than the struct: the rest stays zero */
	memset(&next, 0, sizeof(next));
	while (bpf_map_get_next_key(t->aggs_fd, prev, &next) == 0) {
		if (n == t->agg_cap) {
			size_t cap = t->agg_cap ? t->agg_cap * 2 : 256;
			void *k = realloc(t->agg_keys, cap * sizeof(*t->agg_keys));
			if (!k)
				return push_fail(L, "out of memory");
			t->agg_keys = k;
			void *v = realloc(t->agg_vals, cap * sizeof(*t->agg_vals));
			if (!v)
				return push_fail(L, "out of memory");
			t->agg_vals = v;
			t->agg_cap = cap;
		}
		t->agg_keys[n++] = next;
		key = next;
		prev = &key;
		memset(&next, 0, sizeof(next));
	}
	size_t out = 0;
	for (size_t i = 0; i < n; i++) {
		struct netdevq_agg_value *m = &t->agg_vals[out];
		int rc;

		if (reset) {
			rc = bpf_map_lookup_and_delete_elem(t->aggs_fd, &t->agg_keys[i],
							    t->percpu_buf);
			if (rc && errno != ENOENT) {
				rc = bpf_map_lookup_elem(t->aggs_fd, &t->agg_keys[i],
							 t->percpu_buf);
				bpf_map_delete_elem(t->aggs_fd, &t->agg_keys[i]);
			}
		} else {
			rc = bpf_map_lookup_elem(t->aggs_fd, &t->agg_keys[i], t->percpu_buf);
		}
		if (rc)
			continue; /* vanished meanwhile */
		memset(m, 0, sizeof(*m));
		for (int c = 0; c < ncpu; c++) {
			const struct netdevq_agg_value *v =
				(const void *)((const char *)t->percpu_buf + (size_t)c * stride);
			if (!v->count)
				continue;
			if (!m->count || v->min < m->min)
				m->min = v->min;
			if (v->max > m->max)
				m->max = v->max;
			m->count += v->count;
			m->sum += v->sum;
			if (t->agg_value_size == sizeof(*v))
				for (int s = 0; s < NDQ_AGG_SLOTS; s++)
					m->slot[s] += v->slot[s];
		}
		t->agg_keys[out++] = t->agg_keys[i];
	}
	lua_pushinteger(L, (lua_Integer)out);
	lua_pushlightuserdata(L, t->agg_keys);
	lua_pushlightuserdata(L, t->agg_vals);
	return 3;
}

/* t:prog_stats() -> { id=, run_time_ns=, run_cnt= } (kernel.bpf_stats_enabled must be on) */
static int tracer_prog_stats(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	struct bpf_prog_info info = { 0 };
	__u32 len = sizeof(info);

	if (bpf_obj_get_info_by_fd(bpf_program__fd(t->prog), &info, &len))
		return push_fail(L, "reading program info failed (%s)", strerror(errno));
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, info.id);
	lua_setfield(L, -2, "id");
	lua_pushnumber(L, (lua_Number)info.run_time_ns);
	lua_setfield(L, -2, "run_time_ns");
	lua_pushnumber(L, (lua_Number)info.run_cnt);
	lua_setfield(L, -2, "run_cnt");
	return 1;
}

/* t:kstack(id) -> the stack's addresses (string of __u64) | nil */
static int tracer_kstack(lua_State *L)
{
	return ndq_kstack_push(L, check_tracer(L)->obj, luaL_checkinteger(L, 2));
}

static int tracer_close(lua_State *L)
{
	struct tracer_ud *ud = luaL_checkudata(L, 1, TRACER_MT);
	tracer_free(ud->t);
	ud->t = NULL;
	return 0;
}

static int tracer_tostring(lua_State *L)
{
	struct tracer_ud *ud = luaL_checkudata(L, 1, TRACER_MT);
	if (ud->t)
		lua_pushfstring(L, "netdevq.Tracer (%s, %s)", ud->t->mode,
				ud->t->link ? "attached" : "loaded");
	else
		lua_pushstring(L, "netdevq.Tracer (closed)");
	return 1;
}

static void on_signal(int sig)
{
	interrupted = sig;
}

/* core.catch_signals(): SIGINT/SIGTERM set a flag (LuaJIT has no signals) and interrupt polls. */
static int core_catch_signals(lua_State *L)
{
	struct sigaction sa = { 0 };

	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	(void)L;
	return 0;
}

/* core.interrupted() -> signal number or false */
static int core_interrupted(lua_State *L)
{
	if (interrupted)
		lua_pushinteger(L, interrupted);
	else
		lua_pushboolean(L, 0);
	return 1;
}

static int core_ignore_sigpipe(lua_State *L)
{
	signal(SIGPIPE, SIG_IGN);
	(void)L;
	return 0;
}

/* core.spawn(argv) -> pid, gate_fd, status_fd | nil, err: forks a child that waits until core.release(gate_fd)
 * and then execs argv (no shell). The tracer attaches in between, so nothing is missed. */
static int core_spawn(lua_State *L)
{
	int n, gate[2], status[2];
	char **argv;
	pid_t pid;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = (int)lua_objlen(L, 1);
	if (n < 1)
		return luaL_argerror(L, 1, "empty command");
	argv = calloc((size_t)n + 1, sizeof(char *));
	if (!argv)
		return push_fail(L, "out of memory");
	for (int i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		argv[i] = (char *)luaL_checkstring(L, -1);
		lua_pop(L, 1); /* the table keeps it alive */
	}
	if (pipe2(gate, O_CLOEXEC) || pipe2(status, O_CLOEXEC)) {
		free(argv);
		return push_fail(L, "pipe failed (%s)", strerror(errno));
	}
	pid = fork();
	if (pid < 0) {
		free(argv);
		return push_fail(L, "fork failed (%s)", strerror(errno));
	}
	if (pid == 0) {
		char c;
		int e;
		signal(SIGPIPE, SIG_DFL);
		close(gate[1]);
		close(status[0]);
		if (read(gate[0], &c, 1) != 1)
			_exit(127);
		execvp(argv[0], argv);
		e = errno;
		if (write(status[1], &e, sizeof(e)) < 0)
			_exit(127);
		_exit(127);
	}
	free(argv);
	close(gate[0]);
	close(status[1]);
	lua_pushinteger(L, pid);
	lua_pushinteger(L, gate[1]);
	lua_pushinteger(L, status[0]);
	return 3;
}

/* core.release(gate_fd, status_fd) -> true | nil, err (the exec failed: errno text) */
static int core_release(lua_State *L)
{
	int gate = (int)luaL_checkinteger(L, 1), st = (int)luaL_checkinteger(L, 2), e = 0;
	ssize_t r;

	if (write(gate, "g", 1) != 1) {
		close(gate);
		close(st);
		return push_fail(L, "starting the command failed (%s)", strerror(errno));
	}
	close(gate);
	r = read(st, &e, sizeof(e));
	close(st);
	if (r == (ssize_t)sizeof(e))
		return push_fail(L, "%s", strerror(e));
	lua_pushboolean(L, 1);
	return 1;
}

/* core.waitpid(pid, nohang) -> pid, "exited"|"signaled", code | 0 (still running) | nil, err */
static int core_waitpid(lua_State *L)
{
	pid_t pid = (pid_t)luaL_checkinteger(L, 1);
	int st = 0;
	pid_t r = waitpid(pid, &st, lua_toboolean(L, 2) ? WNOHANG : 0);

	if (r < 0)
		return push_fail(L, "waitpid failed (%s)", strerror(errno));
	lua_pushinteger(L, r);
	if (r == 0)
		return 1;
	if (WIFEXITED(st)) {
		lua_pushstring(L, "exited");
		lua_pushinteger(L, WEXITSTATUS(st));
	} else {
		lua_pushstring(L, "signaled");
		lua_pushinteger(L, WTERMSIG(st));
	}
	return 3;
}

static int core_monotonic_ns(lua_State *L)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec * 1e9 + (lua_Number)ts.tv_nsec);
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

int luaopen_netdevq_core(lua_State *L)
{
	static const luaL_Reg tracer_methods[] = {
		{ "attach", tracer_attach },
		{ "detach", tracer_detach },
		{ "poll", tracer_poll },
		{ "counters", tracer_counters },
		{ "agg_read", tracer_agg_read },
		{ "prog_stats", tracer_prog_stats },
		{ "close", tracer_close },
		{ "kstack", tracer_kstack },
		{ NULL, NULL },
	};
	static const luaL_Reg funcs[] = {
		{ "open", core_open },
		{ "catch_signals", core_catch_signals },
		{ "interrupted", core_interrupted },
		{ "ignore_sigpipe", core_ignore_sigpipe },
		{ "spawn", core_spawn },
		{ "release", core_release },
		{ "waitpid", core_waitpid },
		{ "monotonic_ns", core_monotonic_ns },
		{ NULL, NULL },
	};

	libbpf_set_print(print_libbpf);
	if (luaL_newmetatable(L, TRACER_MT)) {
		lua_newtable(L);
		set_funcs(L, tracer_methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, tracer_close);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, tracer_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);

	lua_newtable(L);
	set_funcs(L, funcs);
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
