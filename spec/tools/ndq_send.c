/* ndq_send.c - known test traffic for the netdevq specs and benchmarks.
 *
 * Built by CMake as build/ndq_send (specs find it through $NDQ_SEND or build/ndq_send).
 *
 *   ndq_send [OPTIONS] MODE ARGS...
 *
 * OPTIONS (before MODE)
 *   --wait-file PATH after printing the pid line, wait (up to 60 s, else exit 3) until PATH
 *                    exists: lets a spec start a tracer for this pid, then release the traffic
 *   --delay-ms N     sleep N ms (0..60000) after printing the pid line (and the wait), before sending
 *   --mark N         SO_MARK on the sending socket (skb->mark)
 *   --priority N     SO_PRIORITY on the sending socket (skb->priority, 0..6 unprivileged)
 *   --tos N          IP_TOS / IPV6_TCLASS (0..255)
 *   --ttl N          IP_TTL / IPV6_UNICAST_HOPS (1..255)
 *   --rcvbuf N       SO_RCVBUF on the sending socket (the kernel keeps 2N in sk->sk_rcvbuf)
 *   --name NAME      the process's comm (prctl PR_SET_NAME, at most 15 bytes): tells the
 *                    processes of one spec apart by name
 *
 * MODES
 *   udp4 SRC DST DPORT SPORT SIZE[,SIZE...] [COUNT]   UDP payloads of the given sizes (each COUNT
 *   udp6 SRC DST DPORT SPORT SIZE[,SIZE...] [COUNT]   times, default 1) from SRC:SPORT to DST:DPORT
 *   tcp4 SRC DST DPORT SPORT                          connect, send nothing, close (needs a listener)
 *   tcp6 SRC DST DPORT SPORT
 *   tcplisten ADDR PORT [TIMEOUT_MS]                  accept one connection, read to EOF, exit;
 *                                                     prints "listening" once it accepts connects
 *   icmp4 SRC DST COUNT                               ICMP echo requests, 56 payload bytes (84-byte
 *   icmp6 SRC DST COUNT                               IPv4 packets, 104-byte IPv6 packets), waits up
 *                                                     to 1 s for the replies, prints "replies N"
 *   flood DST PORT SECONDS [SIZE]                     UDP to DST:PORT (v4 or v6) for SECONDS (1..600)
 *                                                     or 50 million datagrams, whichever comes
 *                                                     first; prints "sent N", "errors N", "pps N"
 *   udprecv ADDR PORT COUNT TIMEOUT_MS                bind, print "ready", then one line per
 *                                                     datagram: "recv SIZE SRCADDR SRCPORT"; exits
 *                                                     0 after COUNT datagrams, 3 on timeout
 *   tcpsink ADDR PORT TIMEOUT_MS                      accept one connection, write the 1-byte go
 *                                                     "g", read to EOF, print "received N", close
 *   tcpbulk SRC DST DPORT SPORT BYTES                 connect, read the go byte, write BYTES
 *                                                     (1..100000000), shut down writing, read to
 *                                                     EOF, print "sent N", close
 *   tcppush ADDR PORT TIMEOUT_MS BYTES                accept one connection, print "accepted",
 *                                                     (--wait-file), write BYTES, print "pushed",
 *                                                     read to EOF
 *   tcphold SRC DST DPORT SPORT                       connect, print "connected", (--wait-file),
 *                                                     close without reading: whatever arrives
 *                                                     meanwhile is acknowledged by the kernel only
 *
 * Every mode first prints "pid N" (flushed) and, when it is done, "done". Errors: one line on
 * stderr starting with "ndq_send:", exit status 1 (usage 2).
 *
 * Traffic goes only to the addresses the caller passes. Callers (the specs and benchmarks) use
 * loopback or the network namespaces they created themselves, with addresses from 198.18.0.0/15
 * and 2001:db8::/32. Every loop here is bounded (counts, sizes and durations are range-checked).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZES 64
#define MAX_UDP_PAYLOAD 65507
#define MAX_COUNT 100000
#define FLOOD_MAX_PACKETS 50000000ULL
#define ICMP_PAYLOAD 56

struct opts {
	const char *wait_file;
	int delay_ms;
	long mark;      /* -1: not set */
	long priority;
	long tos;
	long ttl;
	long rcvbuf;
};

static struct opts g_opts = { NULL, 0, -1, -1, -1, -1, -1 };

static void die(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "ndq_send: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void usage(const char *msg)
{
	fprintf(stderr, "ndq_send: %s\n"
		"usage: ndq_send [--wait-file PATH] [--delay-ms N] [--mark N] [--priority N] [--tos N] [--ttl N] [--rcvbuf N] MODE ARGS...\n"
		"  udp4|udp6 SRC DST DPORT SPORT SIZE[,SIZE...] [COUNT]\n"
		"  tcp4|tcp6 SRC DST DPORT SPORT\n"
		"  tcplisten ADDR PORT [TIMEOUT_MS]\n"
		"  icmp4|icmp6 SRC DST COUNT\n"
		"  flood DST PORT SECONDS [SIZE]\n"
		"  udprecv ADDR PORT COUNT TIMEOUT_MS\n"
		"  tcpsink ADDR PORT TIMEOUT_MS | tcppush ADDR PORT TIMEOUT_MS BYTES\n"
		"  tcpbulk SRC DST DPORT SPORT BYTES | tcphold SRC DST DPORT SPORT\n", msg);
	exit(2);
}

static long parse_num(const char *s, long min, long max, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "ndq_send: %s must be an integer in %ld..%ld, got '%s'\n", what, min, max, s);
		exit(2);
	}
	return v;
}

/* Parses an IPv4 or IPv6 literal (no names: nothing is resolved). family 0 = either. */
static socklen_t parse_addr(const char *s, int port, int family, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family != AF_INET6) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons(port);
			return sizeof(*sin);
		}
	}
	if (family != AF_INET) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons(port);
			return sizeof(*sin6);
		}
	}
	fprintf(stderr, "ndq_send: '%s' is not an %s address literal\n", s,
		family == AF_INET ? "IPv4" : family == AF_INET6 ? "IPv6" : "IP");
	exit(2);
}

static void print_addr(const struct sockaddr_storage *ss, char *buf, size_t len, int *port)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, buf, len);
		*port = ntohs(sin->sin_port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, buf, len);
		*port = ntohs(sin6->sin6_port);
	}
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* --wait-file, then --delay-ms: called once a mode has its sockets ready, right before sending. */
static void pause_before_sending(void)
{
	if (g_opts.wait_file) {
		int i;
		for (i = 0; i < 6000 && access(g_opts.wait_file, F_OK) != 0; i++)
			sleep_ms(10);
		if (i == 6000) {
			say("timeout");
			fprintf(stderr, "ndq_send: %s did not appear within 60 s\n", g_opts.wait_file);
			exit(3);
		}
	}
	if (g_opts.delay_ms)
		sleep_ms(g_opts.delay_ms);
}

static int open_socket(int family, int type, int proto)
{
	int fd = socket(family, type | SOCK_CLOEXEC, proto);
	int one = 1;

	if (fd < 0)
		die("socket: %s", strerror(errno));
	if (g_opts.mark >= 0) {
		int v = (int)g_opts.mark;
		if (setsockopt(fd, SOL_SOCKET, SO_MARK, &v, sizeof(v)))
			die("setsockopt SO_MARK %d: %s (needs CAP_NET_ADMIN)", v, strerror(errno));
	}
	if (g_opts.priority >= 0) {
		int v = (int)g_opts.priority;
		if (setsockopt(fd, SOL_SOCKET, SO_PRIORITY, &v, sizeof(v)))
			die("setsockopt SO_PRIORITY %d: %s", v, strerror(errno));
	}
	if (g_opts.rcvbuf >= 0) {
		int v = (int)g_opts.rcvbuf;
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v)))
			die("setsockopt SO_RCVBUF %d: %s", v, strerror(errno));
	}
	if (g_opts.tos >= 0) {
		int v = (int)g_opts.tos;
		int r = family == AF_INET ? setsockopt(fd, IPPROTO_IP, IP_TOS, &v, sizeof(v))
					  : setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &v, sizeof(v));
		if (r)
			die("setsockopt TOS/TCLASS %d: %s", v, strerror(errno));
	}
	if (g_opts.ttl >= 0) {
		int v = (int)g_opts.ttl;
		int r = family == AF_INET ? setsockopt(fd, IPPROTO_IP, IP_TTL, &v, sizeof(v))
					  : setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &v, sizeof(v));
		if (r)
			die("setsockopt TTL/HOPS %d: %s", v, strerror(errno));
	}
	if (type == SOCK_STREAM || type == SOCK_DGRAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	return fd;
}

static void bind_or_die(int fd, const struct sockaddr_storage *ss, socklen_t len, const char *s)
{
	if (bind(fd, (const struct sockaddr *)ss, len))
		die("bind %s: %s", s, strerror(errno));
}

static int mode_udp(int family, int argc, char **argv)
{
	struct sockaddr_storage src, dst;
	socklen_t slen, dlen;
	long sizes[MAX_SIZES];
	int nsizes = 0, fd;
	long count = 1, dport, sport;
	char *list, *tok, *save = NULL;
	static char payload[MAX_UDP_PAYLOAD];

	if (argc < 5 || argc > 6)
		usage("udp4/udp6 take SRC DST DPORT SPORT SIZE[,SIZE...] [COUNT]");
	dport = parse_num(argv[2], 1, 65535, "DPORT");
	sport = parse_num(argv[3], 0, 65535, "SPORT");
	slen = parse_addr(argv[0], (int)sport, family, &src);
	dlen = parse_addr(argv[1], (int)dport, family, &dst);
	list = strdup(argv[4]);
	if (!list)
		die("out of memory");
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (nsizes == MAX_SIZES)
			usage("at most 64 sizes");
		sizes[nsizes++] = parse_num(tok, 0, MAX_UDP_PAYLOAD, "SIZE");
	}
	free(list);
	if (nsizes == 0)
		usage("SIZE list is empty");
	if (argc == 6)
		count = parse_num(argv[5], 1, MAX_COUNT, "COUNT");
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (char)('a' + i % 26);

	fd = open_socket(family, SOCK_DGRAM, IPPROTO_UDP);
	bind_or_die(fd, &src, slen, argv[0]);
	pause_before_sending();
	for (int i = 0; i < nsizes; i++) {
		for (long c = 0; c < count; c++) {
			ssize_t n = sendto(fd, payload, (size_t)sizes[i], 0, (struct sockaddr *)&dst, dlen);
			if (n < 0)
				die("sendto %s port %ld: %s", argv[1], dport, strerror(errno));
		}
	}
	close(fd);
	say("done");
	return 0;
}

static int mode_tcp(int family, int argc, char **argv)
{
	struct sockaddr_storage src, dst;
	socklen_t slen, dlen;
	long dport, sport;
	int fd;

	if (argc != 4)
		usage("tcp4/tcp6 take SRC DST DPORT SPORT");
	dport = parse_num(argv[2], 1, 65535, "DPORT");
	sport = parse_num(argv[3], 0, 65535, "SPORT");
	slen = parse_addr(argv[0], (int)sport, family, &src);
	dlen = parse_addr(argv[1], (int)dport, family, &dst);
	fd = open_socket(family, SOCK_STREAM, IPPROTO_TCP);
	bind_or_die(fd, &src, slen, argv[0]);
	pause_before_sending();
	if (connect(fd, (struct sockaddr *)&dst, dlen))
		die("connect %s port %ld: %s", argv[1], dport, strerror(errno));
	close(fd);
	say("done");
	return 0;
}

static int mode_tcplisten(int argc, char **argv)
{
	struct sockaddr_storage addr;
	socklen_t alen;
	long port, timeout_ms = 10000;
	int fd, cfd;
	struct pollfd pfd;
	char buf[4096];
	double deadline;

	if (argc < 2 || argc > 3)
		usage("tcplisten takes ADDR PORT [TIMEOUT_MS]");
	port = parse_num(argv[1], 1, 65535, "PORT");
	if (argc == 3)
		timeout_ms = parse_num(argv[2], 1, 600000, "TIMEOUT_MS");
	alen = parse_addr(argv[0], (int)port, 0, &addr);
	fd = open_socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
	bind_or_die(fd, &addr, alen, argv[0]);
	if (listen(fd, 1))
		die("listen: %s", strerror(errno));
	say("listening");
	deadline = now_s() + timeout_ms / 1000.0;

	pfd.fd = fd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, (int)timeout_ms) <= 0) {
		say("timeout");
		return 3;
	}
	cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
	if (cfd < 0)
		die("accept: %s", strerror(errno));
	for (;;) {
		int left = (int)((deadline - now_s()) * 1000);
		ssize_t n;
		if (left <= 0) {
			say("timeout");
			return 3;
		}
		pfd.fd = cfd;
		if (poll(&pfd, 1, left) <= 0)
			continue;
		n = read(cfd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
	}
	close(cfd);
	close(fd);
	say("done");
	return 0;
}

static uint16_t inet_csum(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t sum = 0;

	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)(p[len - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

/* Raw sockets (root), so that no ping binary and no ping_group_range are needed. */
static int mode_icmp(int family, int argc, char **argv)
{
	struct sockaddr_storage src, dst;
	socklen_t slen, dlen;
	long count;
	int fd, replies = 0;
	uint16_t id = (uint16_t)getpid();
	uint8_t pkt[8 + ICMP_PAYLOAD], rbuf[2048];
	double deadline;

	if (argc != 3)
		usage("icmp4/icmp6 take SRC DST COUNT");
	count = parse_num(argv[2], 1, 1000, "COUNT");
	slen = parse_addr(argv[0], 0, family, &src);
	dlen = parse_addr(argv[1], 0, family, &dst);
	fd = open_socket(family, SOCK_RAW, family == AF_INET ? IPPROTO_ICMP : IPPROTO_ICMPV6);
	bind_or_die(fd, &src, slen, argv[0]);
	if (family == AF_INET6) {
		/* only echo replies, so that a busy namespace can't fill the receive loop */
		struct icmp6_filter f;
		ICMP6_FILTER_SETBLOCKALL(&f);
		ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f);
		setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof(f));
	}
	pause_before_sending();
	for (long seq = 0; seq < count; seq++) {
		memset(pkt, 0, sizeof(pkt));
		pkt[0] = family == AF_INET ? ICMP_ECHO : ICMP6_ECHO_REQUEST;
		pkt[4] = id >> 8;
		pkt[5] = id & 0xff;
		pkt[6] = (uint8_t)(seq >> 8);
		pkt[7] = (uint8_t)seq;
		for (int i = 0; i < ICMP_PAYLOAD; i++)
			pkt[8 + i] = (uint8_t)i;
		if (family == AF_INET) { /* the kernel sums ICMPv6 (RFC 3542), not ICMPv4 */
			uint16_t c = inet_csum(pkt, sizeof(pkt));
			memcpy(pkt + 2, &c, 2);
		}
		if (sendto(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&dst, dlen) < 0)
			die("sendto %s: %s", argv[1], strerror(errno));
	}
	deadline = now_s() + 1.0;
	while (replies < count) {
		int left = (int)((deadline - now_s()) * 1000);
		struct pollfd pfd = { fd, POLLIN, 0 };
		ssize_t n;
		const uint8_t *icmp;

		if (left <= 0 || poll(&pfd, 1, left) <= 0)
			break;
		n = recv(fd, rbuf, sizeof(rbuf), 0);
		if (n <= 0)
			continue;
		icmp = rbuf;
		if (family == AF_INET) { /* IPv4 raw sockets deliver the IP header */
			size_t ihl = (size_t)(rbuf[0] & 0x0f) * 4;
			if ((size_t)n < ihl + 8)
				continue;
			icmp = rbuf + ihl;
			n -= (ssize_t)ihl;
			if (icmp[0] != ICMP_ECHOREPLY)
				continue;
		} else if (n < 8 || icmp[0] != ICMP6_ECHO_REPLY) {
			continue;
		}
		if ((icmp[4] << 8 | icmp[5]) == id)
			replies++;
	}
	close(fd);
	say("replies %d", replies);
	say("done");
	return 0;
}

static int mode_flood(int argc, char **argv)
{
	struct sockaddr_storage dst;
	socklen_t dlen;
	long port, seconds, size = 64;
	int fd;
	unsigned long long sent = 0, errors = 0;
	double start, end, elapsed;
	static char payload[MAX_UDP_PAYLOAD];

	if (argc < 3 || argc > 4)
		usage("flood takes DST PORT SECONDS [SIZE]");
	port = parse_num(argv[1], 1, 65535, "PORT");
	seconds = parse_num(argv[2], 1, 600, "SECONDS");
	if (argc == 4)
		size = parse_num(argv[3], 0, MAX_UDP_PAYLOAD, "SIZE");
	dlen = parse_addr(argv[0], (int)port, 0, &dst);
	fd = open_socket(dst.ss_family, SOCK_DGRAM, IPPROTO_UDP);
	memset(payload, 'x', sizeof(payload));
	pause_before_sending();

	start = now_s();
	end = start + (double)seconds;
	while (sent + errors < FLOOD_MAX_PACKETS) {
		for (int i = 0; i < 1024; i++) {
			if (sendto(fd, payload, (size_t)size, 0, (struct sockaddr *)&dst, dlen) < 0)
				errors++;
			else
				sent++;
		}
		if (now_s() >= end)
			break;
	}
	elapsed = now_s() - start;
	close(fd);
	say("sent %llu", sent);
	say("errors %llu", errors);
	say("seconds %.3f", elapsed);
	say("pps %.0f", elapsed > 0 ? (double)sent / elapsed : 0.0);
	say("done");
	return 0;
}

static int mode_udprecv(int argc, char **argv)
{
	struct sockaddr_storage addr, from;
	socklen_t alen, flen;
	long port, count, timeout_ms;
	int fd, got = 0;
	double deadline;
	static char buf[65536];
	char host[INET6_ADDRSTRLEN];

	if (argc != 4)
		usage("udprecv takes ADDR PORT COUNT TIMEOUT_MS");
	port = parse_num(argv[1], 1, 65535, "PORT");
	count = parse_num(argv[2], 1, MAX_COUNT, "COUNT");
	timeout_ms = parse_num(argv[3], 1, 600000, "TIMEOUT_MS");
	alen = parse_addr(argv[0], (int)port, 0, &addr);
	fd = open_socket(addr.ss_family, SOCK_DGRAM, IPPROTO_UDP);
	bind_or_die(fd, &addr, alen, argv[0]);
	say("ready");
	deadline = now_s() + timeout_ms / 1000.0;
	while (got < count) {
		int left = (int)((deadline - now_s()) * 1000);
		struct pollfd pfd = { fd, POLLIN, 0 };
		ssize_t n;
		int sport;

		if (left <= 0 || poll(&pfd, 1, left) <= 0) {
			say("timeout");
			return 3;
		}
		flen = sizeof(from);
		n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recvfrom: %s", strerror(errno));
		}
		print_addr(&from, host, sizeof(host), &sport);
		say("recv %zd %s %d", n, host, sport);
		got++;
	}
	close(fd);
	say("done");
	return 0;
}

/* Reads until EOF (bounded by the deadline); returns the bytes read, -1 on timeout. */
static long long read_to_eof(int fd, double deadline)
{
	static char buf[65536];
	long long total = 0;

	for (;;) {
		int left = (int)((deadline - now_s()) * 1000);
		struct pollfd pfd = { fd, POLLIN, 0 };
		ssize_t n;

		if (left <= 0)
			return -1;
		if (poll(&pfd, 1, left) <= 0)
			continue;
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return total;
		total += n;
	}
}

static void write_all(int fd, long long bytes)
{
	static char buf[16384];

	memset(buf, 'x', sizeof(buf));
	while (bytes > 0) {
		ssize_t n = write(fd, buf, bytes < (long long)sizeof(buf) ? (size_t)bytes : sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write: %s", strerror(errno));
		bytes -= n;
	}
}

/* tcpsink (push 0: write the go byte, read to EOF) and tcppush (push 1: wait, write BYTES, read
 * to EOF): one connection each. */
static int mode_tcpserve(int argc, char **argv, int push)
{
	struct sockaddr_storage addr;
	socklen_t alen;
	long port, timeout_ms;
	long long bytes = 0, got;
	struct pollfd pfd;
	int fd, cfd;
	double deadline;

	if (argc != 3 + push)
		usage(push ? "tcppush takes ADDR PORT TIMEOUT_MS BYTES" :
			     "tcpsink takes ADDR PORT TIMEOUT_MS");
	port = parse_num(argv[1], 1, 65535, "PORT");
	timeout_ms = parse_num(argv[2], 1, 600000, "TIMEOUT_MS");
	if (push)
		bytes = parse_num(argv[3], 1, 100000000, "BYTES");
	alen = parse_addr(argv[0], (int)port, 0, &addr);
	fd = open_socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
	bind_or_die(fd, &addr, alen, argv[0]);
	if (listen(fd, 1))
		die("listen: %s", strerror(errno));
	say("listening");
	deadline = now_s() + timeout_ms / 1000.0;
	pfd.fd = fd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, (int)timeout_ms) <= 0) {
		say("timeout");
		return 3;
	}
	cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
	if (cfd < 0)
		die("accept: %s", strerror(errno));
	if (push) {
		say("accepted");
		pause_before_sending();
		write_all(cfd, bytes);
		say("pushed");
	} else {
		write_all(cfd, 1);
	}
	got = read_to_eof(cfd, deadline);
	if (got < 0) {
		say("timeout");
		return 3;
	}
	if (!push)
		say("received %lld", got);
	close(cfd);
	close(fd);
	say("done");
	return 0;
}

/* tcpbulk (bulk 1: wait for the go byte, write BYTES, read to EOF) and tcphold (bulk 0: wait,
 * close without reading). */
static int mode_tcpclient(int argc, char **argv, int bulk)
{
	struct sockaddr_storage src, dst;
	socklen_t slen, dlen;
	long dport, sport;
	long long bytes = 0;
	char go;
	int fd;

	if (argc != 4 + bulk)
		usage(bulk ? "tcpbulk takes SRC DST DPORT SPORT BYTES" :
			     "tcphold takes SRC DST DPORT SPORT");
	dport = parse_num(argv[2], 1, 65535, "DPORT");
	sport = parse_num(argv[3], 0, 65535, "SPORT");
	if (bulk)
		bytes = parse_num(argv[4], 1, 100000000, "BYTES");
	slen = parse_addr(argv[0], (int)sport, 0, &src);
	dlen = parse_addr(argv[1], (int)dport, src.ss_family, &dst);
	fd = open_socket(src.ss_family, SOCK_STREAM, IPPROTO_TCP);
	bind_or_die(fd, &src, slen, argv[0]);
	if (connect(fd, (struct sockaddr *)&dst, dlen))
		die("connect %s port %ld: %s", argv[1], dport, strerror(errno));
	if (!bulk) {
		say("connected");
		pause_before_sending();
		close(fd);
		say("done");
		return 0;
	}
	if (read(fd, &go, 1) != 1)
		die("no go byte from %s port %ld", argv[1], dport);
	pause_before_sending();
	write_all(fd, bytes);
	if (shutdown(fd, SHUT_WR))
		die("shutdown: %s", strerror(errno));
	if (read_to_eof(fd, now_s() + 60) < 0)
		die("no EOF from %s port %ld within 60 s", argv[1], dport);
	close(fd);
	say("sent %lld", bytes);
	say("done");
	return 0;
}

int main(int argc, char **argv)
{
	int i = 1;
	const char *mode;

	while (i < argc && strncmp(argv[i], "--", 2) == 0) {
		const char *o = argv[i];
		if (i + 1 >= argc)
			usage("option needs a value");
		if (!strcmp(o, "--wait-file"))
			g_opts.wait_file = argv[i + 1];
		else if (!strcmp(o, "--delay-ms"))
			g_opts.delay_ms = (int)parse_num(argv[i + 1], 0, 60000, "--delay-ms");
		else if (!strcmp(o, "--mark"))
			g_opts.mark = parse_num(argv[i + 1], 0, 0x7fffffff, "--mark");
		else if (!strcmp(o, "--priority"))
			g_opts.priority = parse_num(argv[i + 1], 0, 0x7fffffff, "--priority");
		else if (!strcmp(o, "--tos"))
			g_opts.tos = parse_num(argv[i + 1], 0, 255, "--tos");
		else if (!strcmp(o, "--ttl"))
			g_opts.ttl = parse_num(argv[i + 1], 1, 255, "--ttl");
		else if (!strcmp(o, "--rcvbuf"))
			g_opts.rcvbuf = parse_num(argv[i + 1], 0, 0x7fffffff, "--rcvbuf");
		else if (!strcmp(o, "--name")) {
			if (strlen(argv[i + 1]) > 15 || prctl(PR_SET_NAME, argv[i + 1], 0, 0, 0))
				usage("--name takes 1..15 bytes");
		}
		else
			usage("unknown option");
		i += 2;
	}
	if (i >= argc)
		usage("no MODE");
	mode = argv[i++];
	argc -= i;
	argv += i;

	say("pid %d", (int)getpid());
	if (!strcmp(mode, "udp4"))
		return mode_udp(AF_INET, argc, argv);
	if (!strcmp(mode, "udp6"))
		return mode_udp(AF_INET6, argc, argv);
	if (!strcmp(mode, "tcp4"))
		return mode_tcp(AF_INET, argc, argv);
	if (!strcmp(mode, "tcp6"))
		return mode_tcp(AF_INET6, argc, argv);
	if (!strcmp(mode, "tcplisten"))
		return mode_tcplisten(argc, argv);
	if (!strcmp(mode, "icmp4"))
		return mode_icmp(AF_INET, argc, argv);
	if (!strcmp(mode, "icmp6"))
		return mode_icmp(AF_INET6, argc, argv);
	if (!strcmp(mode, "flood"))
		return mode_flood(argc, argv);
	if (!strcmp(mode, "udprecv"))
		return mode_udprecv(argc, argv);
	if (!strcmp(mode, "tcpsink"))
		return mode_tcpserve(argc, argv, 0);
	if (!strcmp(mode, "tcppush"))
		return mode_tcpserve(argc, argv, 1);
	if (!strcmp(mode, "tcpbulk"))
		return mode_tcpclient(argc, argv, 1);
	if (!strcmp(mode, "tcphold"))
		return mode_tcpclient(argc, argv, 0);
	usage("unknown MODE");
	return 2;
}
