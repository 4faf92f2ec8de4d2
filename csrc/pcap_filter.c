/* pcap_filter.c - see pcap_filter.h */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <pcap/pcap.h>

#include "netdevq.h"

#include "pcap_filter.h"
#include "startup.h"

struct ndq_pcap {
	struct bpf_program eth, raw;
	int have_eth, have_raw;
};

/* What the compiling child sends back: this header, then eth's and raw's instructions. */
struct reply {
	int32_t have[2];
	uint32_t len[2];
	char err[256];
};

static const int dlts[2] = { DLT_EN10MB, DLT_RAW };

/* libpcap is opened on first use (dlopen of NDQ_LIBPCAP_SONAME, the soname the build linked
 * against): a run without an expression maps neither it nor the eight libraries it pulls in
 * (dbus, systemd, cap, gcrypt, gpg-error, lzma, zstd, lz4), which cost ~5 ms of start and
 * ~1 MiB of memory. The functions used, each as `lib.NAME` for libpcap's pcap_NAME: */
#define PCAP_FUNCS(X)                                                                     \
	X(open_dead, pcap_t *, (int, int))                                                \
	X(compile, int, (pcap_t *, struct bpf_program *, const char *, int, bpf_u_int32)) \
	X(geterr, char *, (pcap_t *))                                                     \
	X(close, void, (pcap_t *))                                                        \
	X(freecode, void, (struct bpf_program *))                                         \
	X(offline_filter, int,                                                            \
	  (const struct bpf_program *, const struct pcap_pkthdr *, const u_char *))
#define PCAP_FIELD(name, ret, args) ret(*name) args;
static struct {
	int loaded;
	PCAP_FUNCS(PCAP_FIELD)
} lib;
#undef PCAP_FIELD

/* 0 once libpcap's functions are in lib; else -1 and a one-line message in err */
static int lib_open(char *err, size_t errlen)
{
	void *h;

	if (lib.loaded)
		return 0;
	h = dlopen(NDQ_LIBPCAP_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		snprintf(err, errlen, "pcap filter: cannot load libpcap: %s", dlerror());
		return -1;
	}
#define PCAP_SYM(name, ret, args)                                                           \
	if (!(*(void **)&lib.name = dlsym(h, "pcap_" #name))) {                             \
		snprintf(err, errlen, "pcap filter: %s has no pcap_%s", NDQ_LIBPCAP_SONAME, \
			 #name);                                                            \
		return -1;                                                                  \
	}
	PCAP_FUNCS(PCAP_SYM)
#undef PCAP_SYM
	lib.loaded = 1; /* the handle stays open for the process's life */
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Compiles for both link types into p. An expression may hold for one link type only (`ether
 * src ...` has no meaning on raw IP, like tcpdump refusing it on a tun device): packets of the
 * other link type then never match. It is an error only when it compiles for neither; the
 * Ethernet message is kept in err (the one tcpdump on an Ethernet device shows). */
static int compile_both(const char *expr, int snaplen, struct ndq_pcap *p, char *err, size_t errlen)
{
	struct bpf_program *progs[2] = { &p->eth, &p->raw };
	int *have[2] = { &p->have_eth, &p->have_raw };

	for (int i = 0; i < 2; i++) {
		pcap_t *h = lib.open_dead(dlts[i], snaplen);

		if (!h) {
			snprintf(err, errlen, "pcap filter: cannot create a libpcap handle");
			return -1;
		}
		if (lib.compile(h, progs[i], expr, 1, PCAP_NETMASK_UNKNOWN) == 0)
			*have[i] = 1;
		else if (i == 0)
			snprintf(err, errlen, "pcap filter: %s", lib.geterr(h));
		lib.close(h);
	}
	return 0;
}

/* In the child: compile, send the reply, exit. */
static void compile_child(const char *expr, int snaplen, int fd)
{
	struct ndq_pcap p;
	struct reply r;
	int status = 0;

	memset(&r, 0, sizeof(r));
	memset(&p, 0, sizeof(p));
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	compile_both(expr, snaplen, &p, r.err, sizeof(r.err));
	r.have[0] = p.have_eth;
	r.have[1] = p.have_raw;
	r.len[0] = p.have_eth ? p.eth.bf_len : 0;
	r.len[1] = p.have_raw ? p.raw.bf_len : 0;
	if (write_all(fd, &r, sizeof(r)) ||
	    (r.have[0] && write_all(fd, p.eth.bf_insns, r.len[0] * sizeof(struct bpf_insn))) ||
	    (r.have[1] && write_all(fd, p.raw.bf_insns, r.len[1] * sizeof(struct bpf_insn))))
		status = 1;
	_exit(status);
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Reads the child's whole reply into *buf (malloc'd), within budget_ms and until *stop is set.
 * 0, or with err set -2 (over budget: the expression's fault) or -1. */
static int read_reply(int fd, int budget_ms, volatile sig_atomic_t *stop, char **buf, size_t *len,
		      char *err, size_t errlen)
{
	struct timespec t0;
	size_t cap = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	*buf = NULL;
	*len = 0;
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		long left = budget_ms - elapsed_ms(&t0);
		ssize_t n;

		if (stop && *stop) {
			snprintf(err, errlen,
				 "compiling the pcap filter was interrupted (signal %d)",
				 (int)*stop);
			return -1;
		}
		if (left <= 0) {
			snprintf(
				err, errlen,
				"pcap filter: libpcap did not finish compiling the expression within "
				"%d s: shorten it (fewer terms), or use a field filter (-f)",
				budget_ms / 1000);
			return -2;
		}
		if (poll(&pfd, 1, left > 100 ? 100 : (int)left) <= 0)
			continue; /* timeout or EINTR: check the budget and the stop flag */
		if (*len == cap) {
			char *b = realloc(*buf, cap = cap ? cap * 2 : 65536);

			if (!b) {
				snprintf(err, errlen, "pcap filter: out of memory");
				return -1;
			}
			*buf = b;
		}
		n = read(fd, *buf + *len, cap - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		*len += (size_t)n;
	}
}

static int take_program(struct bpf_program *prog, const char **src, size_t *left, uint32_t n)
{
	size_t bytes = (size_t)n * sizeof(struct bpf_insn);

	if (bytes > *left || n == 0)
		return -1;
	prog->bf_insns = malloc(bytes);
	if (!prog->bf_insns)
		return -1;
	memcpy(prog->bf_insns, *src, bytes);
	prog->bf_len = n;
	*src += bytes;
	*left -= bytes;
	return 0;
}

/* The reply into p: 0, or with err set -2 (it compiles for no link type) or -1. */
static int parse_reply(struct ndq_pcap *p, const char *buf, size_t len, char *err, size_t errlen)
{
	struct reply r;
	const char *src = buf + sizeof(r);
	size_t left;

	if (len < sizeof(r)) {
		snprintf(err, errlen, "pcap filter: the compiling process failed");
		return -1;
	}
	memcpy(&r, buf, sizeof(r));
	r.err[sizeof(r.err) - 1] = '\0';
	left = len - sizeof(r);
	if ((r.have[0] && take_program(&p->eth, &src, &left, r.len[0])) ||
	    (r.have[1] && take_program(&p->raw, &src, &left, r.len[1]))) {
		snprintf(err, errlen, "pcap filter: the compiling process sent a short reply");
		return -1;
	}
	p->have_eth = r.have[0];
	p->have_raw = r.have[1];
	if (!p->have_eth && !p->have_raw) {
		snprintf(err, errlen, "%s", r.err[0] ? r.err : "pcap filter: does not compile");
		return -2;
	}
	return 0;
}

/* libpcap's compiler cannot be interrupted and its optimizer grows much faster than the
 * expression (tcpdump -d: 20 host terms 12 ms, 100 terms 0.5 s, 400 terms 19 s, 3,000 terms
 * many minutes). An expression longer than INLINE_MAX bytes is therefore compiled in a child,
 * which is killed when the budget runs out or *stop is set (a signal), and sends the programs
 * back over a pipe; a shorter one (at most a few tens of milliseconds) compiles here. */
#define INLINE_MAX 256

struct ndq_pcap *ndq_pcap_compile(const char *expr, int snaplen, int budget_ms,
				  volatile sig_atomic_t *stop, char *err, size_t errlen,
				  bool *bad_expr)
{
	struct ndq_pcap *p = calloc(1, sizeof(*p));
	int fds[2] = { -1, -1 }, rc = -1, st;
	char *buf = NULL;
	size_t len = 0;
	pid_t pid = -1;

	snprintf(err, errlen, "pcap filter: out of memory");
	if (!p || lib_open(err, errlen))
		goto cleanup;
	if (strlen(expr) <= INLINE_MAX) {
		rc = compile_both(expr, snaplen, p, err, errlen);
		if (rc == 0 && !p->have_eth && !p->have_raw)
			rc = -2;
		goto cleanup;
	}
	if (pipe2(fds, O_CLOEXEC)) {
		snprintf(err, errlen, "pcap filter: pipe failed (%s)", strerror(errno));
		goto cleanup;
	}
	fflush(NULL);
	ndq_preopen_join();
	pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "pcap filter: fork failed (%s)", strerror(errno));
		goto cleanup;
	}
	if (pid == 0) {
		close(fds[0]);
		compile_child(expr, snaplen, fds[1]);
	}
	close(fds[1]);
	fds[1] = -1;
	rc = read_reply(fds[0], budget_ms, stop, &buf, &len, err, errlen);
	if (rc == 0)
		rc = parse_reply(p, buf, len, err, errlen);
cleanup:
	if (pid > 0) {
		kill(pid, SIGKILL); /* done already, or over budget */
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
	}
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(buf);
	*bad_expr = rc == -2;
	if (rc == 0)
		return p;
	ndq_pcap_free(p);
	return NULL;
}

int ndq_pcap_match(const struct ndq_pcap *p, int ethernet, const unsigned char *pkt,
		   unsigned int caplen, unsigned int len)
{
	struct pcap_pkthdr hdr = { .caplen = caplen, .len = len };

	if (!(ethernet ? p->have_eth : p->have_raw))
		return 0;
	return lib.offline_filter(ethernet ? &p->eth : &p->raw, &hdr, pkt) != 0;
}

/* As libpcap hands packets to a filter on a live capture: from the link header on, an offloaded
 * VLAN tag (skb metadata) written back into the frame after the MACs, the way tcpdump sees it. */
int ndq_pcap_match_event(const struct ndq_pcap *p, const struct netdevq_event *ev)
{
	unsigned char frame[NDQ_SNAP_MAX + 4];
	int ethernet = ev->flags & NDQ_EV_MAC;
	__u32 off = ethernet ? 0 : ev->l2_len; /* other link headers: from the IP header */
	__u32 caplen = ev->snap_len, len = ev->len;

	if (caplen > NDQ_SNAP_MAX || off > caplen)
		return 0;
	if (ethernet && (ev->flags & NDQ_EV_VLAN_HW) && caplen >= 12) {
		memcpy(frame, ev->snap, 12);
		frame[12] = ev->vlan_proto >> 8;
		frame[13] = ev->vlan_proto & 0xff;
		frame[14] = ev->vlan_tci >> 8;
		frame[15] = ev->vlan_tci & 0xff;
		memcpy(frame + 16, ev->snap + 12, caplen - 12);
		return ndq_pcap_match(p, 1, frame, caplen + 4, (len > caplen ? len : caplen) + 4);
	}
	return ndq_pcap_match(p, ethernet, ev->snap + off, caplen - off,
			      len > off ? len - off : caplen - off);
}

const struct sock_filter *ndq_pcap_insns(const struct ndq_pcap *p, int ethernet, size_t *len)
{
	const struct bpf_program *prog = ethernet ? &p->eth : &p->raw;

	if (!(ethernet ? p->have_eth : p->have_raw))
		return NULL;
	*len = prog->bf_len;
	return (const struct sock_filter *)prog->bf_insns;
}

void ndq_pcap_free(struct ndq_pcap *p)
{
	if (!p)
		return;
	if (lib.loaded) {	       /* else nothing was compiled */
		lib.freecode(&p->eth); /* safe on a zeroed program */
		lib.freecode(&p->raw);
	}
	free(p);
}
