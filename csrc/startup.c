/* startup.c - what makes the time from start to attached short:
 *
 * 1. The heap for the load. bpf_object__load makes libbpf (1.1) read the kernel's BTF
 *    (/sys/kernel/btf/vmlinux, 5.5 MB on 6.18) into one malloc'd buffer, copy it into another and
 *    index it: ~11 MB of fresh memory, touched once, page by page. glibc serves blocks that size
 *    with mmap, and on a VM each 4 KiB first touch is a fault (2,900 of them, ~60% of the parse).
 *    While the object is opened and loaded, big blocks come from the heap instead, the heap grows
 *    in one step and is marked for transparent huge pages: the same bytes fault in 2 MiB at a
 *    time. Afterwards glibc's defaults come back and the freed BTF is trimmed from the heap.
 *    Where THP is off, the madvise changes nothing.
 *
 * 2. The pre-open (core.preopen, which the CLI calls before it loads its Lua modules). A second
 *    thread opens the embedded object with its CO-RE types cut down (csrc/corebtf.c: it reads
 *    the kernel's BTF for that, and frees it) and has libbpf read the kernel's BTF into it while
 *    the main thread loads Lua and parses the command line; core.open then takes that object when
 *    it would have opened the same one itself (the embedded object, no btf_path; -v says so:
 *    libbpf's log of that open was not printed). The thread allocates from the
 *    main arena, the heap of 1. (M_ARENA_MAX 1, which glibc keeps for the process: the CLI's
 *    other threads, libmicrohttpd's, share that arena too), blocks every signal, creates no
 *    kernel object, and is joined before the object is used, before any fork() (a child forked
 *    while the thread held an allocator lock would wait for it forever: seen with ASan), or at
 *    exit.
 *
 * Measured on a 2-vCPU kvm guest (kernel 6.18), start to attached, `-o comm,pid,dev,len`:
 * 186-222 ms before both, 122-164 ms with 1. Peak RSS unchanged (24 MB).
 */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include "core.h"
#include "corebtf.h"
#include "pcap_kernel.h"

#define LOAD_HEAP_PAD (40u << 20)	/* > twice the kernel BTF: one brk covers the load */
#define LOAD_MMAP_THRESHOLD (32u << 20) /* the largest glibc takes (64-bit) */
#define HUGE_PAGE (2u << 20)
#define GLIBC_DEFAULT_PAD (128u << 10) /* M_TOP_PAD, M_TRIM_THRESHOLD, M_MMAP_THRESHOLD */

void ndq_load_heap_begin(void)
{
	uintptr_t p, top, from;

	mallopt(M_MMAP_THRESHOLD, (int)LOAD_MMAP_THRESHOLD);
	mallopt(M_TRIM_THRESHOLD, (int)(2 * LOAD_HEAP_PAD));
	mallopt(M_TOP_PAD, (int)LOAD_HEAP_PAD);
	p = (uintptr_t)malloc(1u << 20); /* grows the heap by the pad */
	top = (uintptr_t)sbrk(0);
	from = (p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
	/* only when p is in the brk heap (not under a sanitizer's or valgrind's allocator) */
	if (p && p < top && top - p <= 2 * LOAD_HEAP_PAD && from < top &&
	    madvise((void *)from, top - from, MADV_HUGEPAGE) && ndq_verbose)
		fprintf(stderr, "netdevq: madvise(MADV_HUGEPAGE): %s\n", strerror(errno));
	free((void *)p);
}

void ndq_load_heap_end(void)
{
	mallopt(M_TOP_PAD, (int)GLIBC_DEFAULT_PAD);
	mallopt(M_TRIM_THRESHOLD, (int)GLIBC_DEFAULT_PAD);
	mallopt(M_MMAP_THRESHOLD, (int)GLIBC_DEFAULT_PAD);
	malloc_trim(0);
}

/* --- the pre-open -------------------------------------------------------------------------- */
static enum { IDLE, RUNNING, JOINED } state; /* main thread only */
static pthread_t worker;
static struct bpf_object *opened; /* the worker's result; after the join, until taken */
static struct ndq_corebtf opened_core = { .fd = -1 }; /* its CO-RE types */

static void *preopen_work(void *unused)
{
	LIBBPF_OPTS(bpf_object_open_opts, oopts);
	struct bpf_object *obj;
	struct bpf_program *btf;

	oopts.object_name = NDQ_OBJECT_NAME;
	/* reads the kernel's BTF for the cut-down CO-RE types, and frees it before libbpf reads
	 * it below: the two are not in memory at once */
	obj = ndq_corebtf_open(&opened_core, NULL, netdevq_bpf_object, netdevq_bpf_object_size,
			       &oopts);
	btf = obj ? bpf_object__find_program_by_name(obj, NDQ_BTF_PROG) : NULL;
	/* reads the kernel's BTF into obj (what the load would do first); a failure here is
	 * reported by the load, which tries again */
	if (btf)
		bpf_program__set_attach_target(btf, 0, NDQ_TRACEPOINT);
	opened = obj;
	return NULL;
}

static void join(void)
{
	if (state == RUNNING)
		pthread_join(worker, NULL);
	state = JOINED;
}

void ndq_preopen_join(void)
{
	join();
}

static void close_untaken(void)
{
	join();
	bpf_object__close(opened);
	opened = NULL;
	ndq_corebtf_end(&opened_core);
}

/* core.preopen(): starts the pre-open, once per process (later calls, and a machine without
 * kernel BTF: nothing). true when the thread runs. */
int ndq_preopen(lua_State *L)
{
	sigset_t all, old;
	bool started;

	if (state != IDLE) { /* running (or done): never a second thread */
		lua_pushboolean(L, 0);
		return 1;
	}
	if (access(KERNEL_BTF, R_OK) != 0) {
		state = JOINED;
		lua_pushboolean(L, 0);
		return 1;
	}
	/* the pcap handlers are matched as an object opens: the pre-opened one must have them */
	ndq_pcap_kernel_register();
	ndq_load_heap_begin();
	mallopt(M_ARENA_MAX, 1);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	started = pthread_create(&worker, NULL, preopen_work, NULL) == 0;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	state = started ? RUNNING : JOINED;
	if (started)
		atexit(close_untaken);
	lua_pushboolean(L, started);
	return 1;
}

/* core.preopen_wait(): waits for the thread (its object stays for the next core.open) */
int ndq_preopen_wait(lua_State *L)
{
	join();
	return 0;
}

/* core.preopen_close(): waits for the thread and closes its object if no open took it */
int ndq_preopen_close(lua_State *L)
{
	close_untaken();
	return 0;
}

struct bpf_object *ndq_preopen_take(bool usable, struct ndq_corebtf *core)
{
	struct bpf_object *obj;

	join();
	obj = opened;
	opened = NULL;
	if (usable && obj) {
		*core = opened_core;
		opened_core.fd = -1;
		return obj;
	}
	bpf_object__close(obj);
	ndq_corebtf_end(&opened_core);
	return NULL;
}
