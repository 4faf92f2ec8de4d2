/* tracer.c - the methods of a loaded tracer: attach/detach, the ring buffer polled into the
 * batch Lua reads through the FFI, counters, aggregation map reads, close (one idempotent close
 * serves :close() and __gc). */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "core.h"
#include "latency.h"
#include "owner.h"
#include "pcap_filter.h"

#define BATCH_FULL (-1000000)
#define FLUSH_MS 100 /* the longest a batched event waits for a poll to hand it over */

void ndq_tracer_free(struct tracer *t)
{
	if (!t)
		return;
	ring_buffer__free(t->rb);
	bpf_link__destroy(t->link);
	bpf_link__destroy(t->fork_link);
	bpf_link__destroy(t->exit_link);
	ndq_owner_free(t->owner);
	ndq_latency_free(t->latency);
	bpf_object__close(t->obj);
	ndq_pcap_free(t->pcap);
	free(t->agg_keys);
	free(t->agg_vals);
	free(t->percpu_buf);
	free(t->table_buf);
	free(t->table_idx);
	free(t->table_base);
	free(t->table_known);
	free(t); /* t->batch belongs to its userdata (see core.h) */
}

static struct tracer *check_tracer(lua_State *L)
{
	struct tracer_ud *ud = luaL_checkudata(L, 1, TRACER_MT);

	if (!ud->t)
		luaL_error(L, "netdevq: tracer is closed");
	return ud->t;
}

/* one event of a ring record into the batch, unless the user-space pcap filter drops it */
static void take_event(struct tracer *t, const void *data, size_t size)
{
	struct netdevq_event *dst = &t->batch[t->batch_n];

	if (size > sizeof(*dst))
		size = sizeof(*dst);
	memcpy(dst, data, size);
	/* a record may end before snap (no snap bytes, no fate members) or within it */
	size_t snap_room = size > offsetof(struct netdevq_event, snap) ?
				   size - offsetof(struct netdevq_event, snap) :
				   0;
	if (dst->snap_len > snap_room)
		dst->snap_len = 0;
	if (t->pcap && !t->pcap_kernel && !ndq_pcap_match_event(t->pcap, dst)) {
		t->pcap_dropped++;
		return;
	}
	t->batch_n++;
}

/* A ring record holds one event, or a CPU's batch of them (event_size bytes each). The poll
 * stops while the batch still has room for a whole record: a record is never split. */
int ndq_on_sample(void *ctx, void *data, size_t size)
{
	struct tracer *t = ctx;
	size_t step = t->event_size;

	/* (the bound on batch_n never acts: a record holds at most kbatch events) */
	if (t->kbatch > 1 && step && size > step && size % step == 0)
		for (size_t off = 0; off < size && t->batch_n < t->batch_cap; off += step)
			take_event(t, (const char *)data + off, step);
	else
		take_event(t, data, size);
	return t->batch_n + t->kbatch > t->batch_cap ? BATCH_FULL : 0;
}

/* Every CPU's batch into the ring (netdevq_flush run on each CPU). A CPU whose batch an append
 * holds that moment is tried again, a few times: a program still running after a detach, or one
 * this flush interrupted. Offline CPUs have nothing to flush (ENXIO). */
static void flush_batches(struct tracer *t)
{
	if (t->flush_fd < 0)
		return;
	for (int cpu = 0; cpu < t->ncpu; cpu++) {
		for (int try = 0; try < 100; try++) {
			LIBBPF_OPTS(bpf_test_run_opts, run);

			run.flags = BPF_F_TEST_RUN_ON_CPU;
			run.cpu = (__u32)cpu;
			if (bpf_prog_test_run_opts(t->flush_fd, &run) || run.retval == 0)
				break;
			sched_yield();
		}
	}
	t->last_flush = ndq_monotonic_ns();
}

/* consume what the ring holds, after handing every CPU's batch over when flush */
static int take(struct tracer *t, bool flush)
{
	if (flush)
		flush_batches(t);
	return ring_buffer__consume(t->rb);
}

/* 0, or the nil, err pair pushed */
static int attach_one(lua_State *L, struct bpf_program *prog, struct bpf_link **link,
		      const char *tracepoint)
{
	int err;

	*link = bpf_program__attach(prog);
	if (*link)
		return 0;
	err = errno;
	*link = NULL;
	return ndq_push_fail(L, "attaching to %s failed (%s)", tracepoint, strerror(err));
}

/* -c: the root pid tracked, the tree followed through forks and pruned at exits */
static int attach_follow(lua_State *L, struct tracer *t)
{
	__u8 one = 1;
	int rc;

	if (bpf_map_update_elem(t->tracked_fd, &t->follow_pid, &one, BPF_ANY))
		return ndq_push_fail(L, "cannot track pid %u (%s)", t->follow_pid, strerror(errno));
	rc = attach_one(L, t->fork_prog, &t->fork_link, "sched_process_fork");
	if (!rc)
		rc = attach_one(L, t->exit_prog, &t->exit_link, "sched_process_exit");
	return rc;
}

/* t:attach() -> true | nil, err */
static int tracer_attach(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	bool raw = strcmp(t->mode, "raw") == 0;
	char msg[256];
	int err;

	if (t->link)
		return luaL_error(L, "netdevq: tracer is already attached");
	if (t->follow_pid && !t->fork_link && (err = attach_follow(L, t)) != 0)
		return err;
	if (!t->owner && ndq_owner_attach(&t->owner, t->obj, msg, sizeof(msg)))
		return ndq_push_fail(L, "%s", msg);
	if (!t->latency && ndq_latency_attach(&t->latency, t->obj, msg, sizeof(msg)))
		return ndq_push_fail(L, "%s", msg);
	t->link = bpf_program__attach(t->prog);
	if (!t->link) {
		err = errno;
		t->link = NULL;
		if (err == ENOENT || err == EINVAL)
			return ndq_push_fail(L,
					     "attaching %s/net_dev_queue failed (%s): this kernel "
					     "has no net_dev_queue tracepoint%s",
					     raw ? "raw_tp" : "tp_btf", strerror(err),
					     raw ? "" : " usable by tp_btf (try --mode raw)");
		return ndq_push_fail(L, "attaching net_dev_queue failed (%s)", strerror(err));
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
	bpf_link__destroy(t->exit_link);
	t->link = t->fork_link = t->exit_link = NULL;
	ndq_owner_free(t->owner);
	t->owner = NULL;
	ndq_latency_free(t->latency);
	t->latency = NULL;
	return 0;
}

/* t:poll(timeout_ms) -> n, batch (userdata: struct netdevq_event[n]) | nil, err
 * Drains what is pending; waits up to timeout_ms only when nothing is. The batch is refilled by
 * the next poll: deliver it completely first (init.lua's Tracer:poll does). */
static int tracer_poll(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	int timeout = (int)luaL_optinteger(L, 2, 100);
	int rc;

	t->batch_n = 0;
	/* batches: a CPU's events wait for a full batch while the consumer has not caught up; a
	 * flush hands them over within FLUSH_MS of any poll, and on a drain (timeout 0) */
	rc = take(t,
		  t->flush_fd >= 0 && ndq_monotonic_ns() - t->last_flush >= FLUSH_MS * 1000000ull);
	if (rc >= 0 && t->batch_n == 0 && timeout == 0 && t->flush_fd >= 0)
		rc = take(t, true);
	for (int waited = 0; rc >= 0 && t->batch_n == 0 && timeout != 0 && !ndq_interrupted;) {
		int wait = timeout;

		if (t->flush_fd >= 0 && (wait < 0 || wait - waited > FLUSH_MS))
			wait = FLUSH_MS;
		else if (t->flush_fd >= 0)
			wait = timeout - waited;
		rc = ring_buffer__poll(t->rb, wait);
		/* with adaptive wakeup, data below the threshold is picked up here on timeout */
		if (rc >= 0 && t->batch_n == 0)
			rc = take(t, t->flush_fd >= 0);
		waited += wait;
		if (timeout > 0 && waited >= timeout)
			break;
	}
	if (rc < 0 && rc != BATCH_FULL && rc != -EINTR)
		return ndq_push_fail(L, "polling the ring buffer failed (%s)", strerror(-rc));
	t->received += t->batch_n;
	lua_pushinteger(L, (lua_Integer)t->batch_n);
	lua_getfenv(L, 1);
	lua_rawgeti(L, -1, 1);
	lua_remove(L, -2);
	return 2;
}

/* t:counters() -> { seen=, kfiltered=, emitted=, lost=, aggregated=, agg_overflow=,
 *                   read_failed=, pcap_dropped=, received= } */
static int tracer_counters(lua_State *L)
{
	static const char *names[NDQ_CNT_MAX] = { "seen",	 "kfiltered",  "emitted",
						  "lost",	 "aggregated", "agg_overflow",
						  "read_failed", "held" };
	struct tracer *t = check_tracer(L);
	int ncpu = t->ncpu; /* set when the tracer opened */
	__u64 sum[NDQ_CNT_MAX] = { 0 };
	__u64 *vals;
	__u32 key = 0;

	vals = calloc((size_t)ncpu, sizeof(__u64) * NDQ_CNT_STRIDE);
	if (!vals)
		return ndq_push_fail(L, "out of memory");
	for (key = 0; key < (__u32)ncpu; key++) /* one entry per CPU, NDQ_CNT_STRIDE apart */
		if (bpf_map_lookup_elem(t->counters_fd, &key,
					vals + (size_t)key * NDQ_CNT_STRIDE)) {
			int e = errno;

			free(vals);
			return ndq_push_fail(L, "reading counters failed (%s)", strerror(e));
		}
	for (int c = 0; c < ncpu; c++)
		for (int i = 0; i < NDQ_CNT_MAX; i++)
			sum[i] += vals[c * NDQ_CNT_STRIDE + i];
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

/* Room for n records in t->agg_keys and t->agg_vals: -1 when out of memory */
static int agg_reserve(struct tracer *t, size_t n)
{
	size_t cap = t->agg_cap ? t->agg_cap : 256;
	void *p;

	if (n <= t->agg_cap)
		return 0;
	while (cap < n)
		cap *= 2;
	if (!(p = realloc(t->agg_keys, cap * sizeof(*t->agg_keys))))
		return -1;
	t->agg_keys = p;
	if (!(p = realloc(t->agg_vals, cap * sizeof(*t->agg_vals))))
		return -1;
	t->agg_vals = p;
	t->agg_cap = cap;
	return 0;
}

/* The keys of the aggregation map into t->agg_keys; -1 when out of memory. Keys first: deleting
 * while walking would restart the walk. */
static long agg_collect_keys(struct tracer *t)
{
	struct netdevq_agg_key key, next, *prev = NULL;
	size_t n = 0;

	/* the map's keys may be shorter than the struct: the rest stays zero */
	memset(&next, 0, sizeof(next));
	while (bpf_map_get_next_key(t->aggs_fd, prev, &next) == 0) {
		if (agg_reserve(t, n + 1))
			return -1;
		t->agg_keys[n++] = next;
		key = next;
		prev = &key;
		memset(&next, 0, sizeof(next));
	}
	return (long)n;
}

/* Reads (and with reset deletes) one key's per-CPU values into t->percpu_buf; 0 when read. */
static int agg_lookup(struct tracer *t, const struct netdevq_agg_key *k, bool reset)
{
	int rc;

	if (!reset)
		return bpf_map_lookup_elem(t->aggs_fd, k, t->percpu_buf);
	rc = bpf_map_lookup_and_delete_elem(t->aggs_fd, k, t->percpu_buf);
	if (rc && errno != ENOENT) {
		rc = bpf_map_lookup_elem(t->aggs_fd, k, t->percpu_buf);
		bpf_map_delete_elem(t->aggs_fd, k);
	}
	return rc;
}

/* Per-CPU values merged into m: count and sum add, min/max fold, histogram slots add. */
static void agg_merge(struct tracer *t, struct netdevq_agg_value *m, int ncpu, size_t stride)
{
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
}

/* The whole count table into t->table_buf (batched lookups): 0, or -1 with errno set */
static int table_read(struct tracer *t)
{
	__u32 done = 0, cur, next;

	while (done < t->table_n) {
		__u32 count = t->table_n - done;
		int rc = bpf_map_lookup_batch(
			t->aggtab_fd, done ? &cur : NULL, &next, t->table_idx + done,
			(char *)t->table_buf + (size_t)done * t->table_slot_size, &count, NULL);
		done += count;
		if (rc)
			return errno == ENOENT ? 0 : -1; /* ENOENT: past the last slot */
		cur = next;
	}
	return 0;
}

/* Appends the count table's keys from record `out` on: every slot counted since the last reset
 * (the kernel never clears a slot: a reset remembers its count). Only the slot's CPU writes it,
 * key before count; a read that meets a slot being filled may still see part of its key, so the
 * first time a slot shows a count it is read again, and that key is the one. Returns the new
 * number of records, or -1 (errno set). */
static long agg_read_table(struct tracer *t, size_t out, bool reset)
{
	const size_t size = t->table_slot_size, key_size = size - sizeof(__u64);

	if (!t->table_buf) {
		t->table_buf = calloc(t->table_n, size);
		t->table_idx = calloc(t->table_n, sizeof(*t->table_idx));
		t->table_base = calloc(t->table_n, sizeof(*t->table_base));
		t->table_known = calloc(t->table_n, 1);
		if (!t->table_buf || !t->table_idx || !t->table_base || !t->table_known) {
			errno = ENOMEM;
			return -1;
		}
	}
	if (table_read(t))
		return -1;
	for (__u32 i = 0; i < t->table_n; i++) {
		char *slot = (char *)t->table_buf + (size_t)i * size;
		__u64 count;

		memcpy(&count, slot, sizeof(count));
		if (!count)
			continue;
		if (!t->table_known[i]) {
			if (bpf_map_lookup_elem(t->aggtab_fd, &i, slot))
				return -1;
			memcpy(&count, slot, sizeof(count));
			t->table_known[i] = 1;
		}
		if (count == t->table_base[i])
			continue;
		if (agg_reserve(t, out + 1)) {
			errno = ENOMEM;
			return -1;
		}
		memset(&t->agg_keys[out], 0, sizeof(t->agg_keys[out]));
		memcpy(t->agg_keys[out].k, slot + sizeof(count), key_size);
		memset(&t->agg_vals[out], 0, sizeof(t->agg_vals[out]));
		t->agg_vals[out].count = count - t->table_base[i];
		if (reset)
			t->table_base[i] = count;
		out++;
	}
	return (long)out;
}

/* t:agg_read(reset) -> n, keys (struct netdevq_agg_key[n]), values (struct netdevq_agg_value[n])
 * (light userdata, valid until the next agg_read or close) */
static int tracer_agg_read(lua_State *L)
{
	struct tracer *t = check_tracer(L);
	bool reset = lua_toboolean(L, 2);
	int ncpu = t->ncpu; /* set when the tracer opened */
	size_t stride = (t->agg_value_size + 7) & ~7u, out = 0;
	long n;

	if (!t->percpu_buf && !(t->percpu_buf = calloc((size_t)ncpu, stride)))
		return ndq_push_fail(L, "out of memory");
	n = agg_collect_keys(t);
	if (n < 0)
		return ndq_push_fail(L, "out of memory");
	for (long i = 0; i < n; i++) {
		if (agg_lookup(t, &t->agg_keys[i], reset))
			continue; /* vanished meanwhile */
		agg_merge(t, &t->agg_vals[out], ncpu, stride);
		t->agg_keys[out++] = t->agg_keys[i];
	}
	if (t->table_n) { /* a key may be in both: the Lua side adds records with equal keys */
		long total = agg_read_table(t, out, reset);

		if (total < 0)
			return ndq_push_fail(L, "reading the count table failed (%s)",
					     strerror(errno));
		out = (size_t)total;
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
		return ndq_push_fail(L, "reading program info failed (%s)", strerror(errno));
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, info.id);
	lua_setfield(L, -2, "id");
	lua_pushnumber(L, (lua_Number)info.run_time_ns);
	lua_setfield(L, -2, "run_time_ns");
	lua_pushnumber(L, (lua_Number)info.run_cnt);
	lua_setfield(L, -2, "run_cnt");
	return 1;
}

/* t:read_path() -> "probe" | "direct" | "btf": how the program reads the sk_buff (loader.c) */
static int tracer_read_path(lua_State *L)
{
	lua_pushstring(L, check_tracer(L)->read);
	return 1;
}

/* t:kernel_batch() -> events per ring record: 1, or the size of the per-CPU batches */
static int tracer_kernel_batch(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)check_tracer(L)->kbatch);
	return 1;
}

/* t:close(): idempotent; __gc too. The batch userdata stays valid for whoever still holds it. */
static int tracer_close(lua_State *L)
{
	struct tracer_ud *ud = luaL_checkudata(L, 1, TRACER_MT);

	ndq_tracer_free(ud->t);
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

void ndq_tracer_register(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "attach", tracer_attach },
		{ "detach", tracer_detach },
		{ "poll", tracer_poll },
		{ "counters", tracer_counters },
		{ "agg_read", tracer_agg_read },
		{ "prog_stats", tracer_prog_stats },
		{ "close", tracer_close },
		{ "read_path", tracer_read_path },
		{ "kernel_batch", tracer_kernel_batch },
		{ NULL, NULL },
	};

	if (luaL_newmetatable(L, TRACER_MT)) {
		lua_newtable(L);
		ndq_set_funcs(L, methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, tracer_close);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, tracer_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
}
