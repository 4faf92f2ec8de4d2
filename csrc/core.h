/* core.h - what the parts of the C Lua module `netdevq.core` share (internal; one module):
 *
 *   module.c   luaopen_netdevq_core: registration, metatables, layout, libbpf logging
 *   loader.c   core.open: options, the object (embedded, bytes or path; trial load in a child),
 *              its configuration and load
 *   tracer.c   tracer methods: attach/detach, ring buffer polling into the batch, counters,
 *              aggregation map reads, close
 *   proc.c     the -c child: spawn, release, waitpid, terminate
 *   signals.c  SIGINT/SIGTERM as a flag; blocked writes give up once it is set
 *   owner.c    the socket-owner programs (which load, attaching them, the /proc scan)
 *   pcap_filter.c  tcpdump expressions (libpcap), kept apart: its struct bpf_program collides
 *   startup.c  the heap while an object loads; the pre-open thread (core.preopen)
 *
 * Expected failures return nil, "what failed: why; what to do". Misuse raises.
 */
#ifndef NETDEVQ_CORE_H
#define NETDEVQ_CORE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include <linux/types.h>
#include <bpf/libbpf.h>

#include <lauxlib.h>
#include <lua.h>

#include "netdevq.h"
#include "startup.h"

#define TRACER_MT "netdevq.Tracer"
#define NETDEVQ_VERSION "0.1.0"
/* 2 MiB, libpcap's default buffer: the producer laps a ring this size while its lines are still
 * cached; with 8 MiB every record went to memory no CPU held (a streamed event cost 25-35 ns more
 * here, bench/run). A flood of every field still loses nothing; --ringbuf-size for more. */
#define DEFAULT_RINGBUF (2u << 20)
#define DEFAULT_BATCH 4096
#define DEFAULT_AGG_KEYS 4096
#define KERNEL_BTF "/sys/kernel/btf/vmlinux"
#define NDQ_OBJECT_NAME "netdevq" /* the BPF object, as libbpf names it */
#define NDQ_TRACEPOINT "net_dev_queue"
#define NDQ_BTF_PROG "netdevq_btf" /* tp_btf/net_dev_queue */

struct ndq_pcap;
struct ndq_owner;
struct ndq_latency;

struct tracer {
	struct bpf_object *obj;
	struct bpf_link *link;
	struct bpf_link *fork_link;
	struct bpf_link *exit_link;
	struct bpf_program *prog;
	struct bpf_program *fork_prog;
	struct bpf_program *exit_prog;
	struct bpf_program *flush_prog; /* netdevq_flush: hands a CPU's batch over */
	struct ring_buffer *rb;
	struct netdevq_event *batch; /* the payload of a userdata the tracer's userdata keeps */
	size_t batch_n, batch_cap;
	size_t event_size; /* bytes of one event in a ring record (cfg.event_size) */
	size_t kbatch;	   /* events one ring record may carry (cfg.batch) */
	int ncpu;	   /* possible CPUs: entries of counters, scratch and the per-CPU maps */
	int flush_fd;	   /* netdevq_flush when kbatch > 1, else -1 */
	__u64 last_flush;  /* CLOCK_MONOTONIC ns of the last flush */
	struct netdevq_agg_key *agg_keys;
	struct netdevq_agg_value *agg_vals;
	size_t agg_cap;
	void *percpu_buf;
	/* a count's table in front of aggs (NDQ_DERIVED_AGG_TABLE; tracer.c agg_read_table):
	 * table_n slots of table_slot_size bytes (0 slots: no table), each slot's count when last
	 * reset, and whether its key was read whole */
	__u32 table_n, table_slot_size;
	void *table_buf;
	__u32 *table_idx;
	__u64 *table_base;
	__u8 *table_known;
	int counters_fd, aggs_fd, aggtab_fd, tracked_fd;
	__u32 follow_pid;
	__u32 agg_value_size;
	struct ndq_pcap *pcap;
	bool pcap_kernel; /* the kernel decides pcap (pcap_kernel.c); not t->pcap in on_sample */
	struct ndq_owner *owner;     /* socket-owner links (owner.c) */
	struct ndq_latency *latency; /* fate program links (latency.c) */
	__u64 pcap_dropped;
	__u64 received;
	char mode[8];
	char read[8]; /* the read path in use: "probe", "direct" or "btf" (loader.c) */
};

/* The tracer's userdata; its environment table holds the batch userdata at [1], so that a
 * batch Lua still walks stays valid when the tracer is closed meanwhile (from a callback, or
 * while a coroutine that was delivering it is suspended). */
struct tracer_ud {
	struct tracer *t;
};

/* module.c */
extern int ndq_verbose;
extern const unsigned char netdevq_bpf_object[]; /* embedded by bpf_blobs.S (CMakeLists.txt) */
extern const unsigned long long netdevq_bpf_object_size;
int ndq_push_fail(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ndq_set_funcs(lua_State *L, const luaL_Reg *l);
__u64 ndq_monotonic_ns(void); /* CLOCK_MONOTONIC in ns (core.monotonic_ns, the flush timer) */

/* loader.c */
int ndq_core_open(lua_State *L);

/* tracer.c */
void ndq_tracer_free(struct tracer *t);
int ndq_on_sample(void *ctx, void *data, size_t size);
void ndq_tracer_register(lua_State *L);

/* proc.c */
extern const luaL_Reg ndq_proc_funcs[];

/* startup.c: the pre-open (core.preopen) and the object it opened: NULL when there is none,
 * and when !usable (then it is closed); *core gets its CO-RE types (csrc/corebtf.c) */
struct ndq_corebtf;
int ndq_preopen(lua_State *L);
int ndq_preopen_wait(lua_State *L);
int ndq_preopen_close(lua_State *L);
struct bpf_object *ndq_preopen_take(bool usable, struct ndq_corebtf *core);

/* signals.c */
extern volatile sig_atomic_t ndq_interrupted;
void ndq_signals_register(lua_State *L);

#endif
