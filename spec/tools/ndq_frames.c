/* ndq_frames.c - hand-built and option-carrying test traffic for the decoding specs.
 *
 * Built by CMake as build/ndq_frames.
 *
 *   ndq_frames frames IFNAME HEX [HEX...]
 *       send each HEX string (a whole Ethernet frame, 14..1514 bytes) as is through an AF_PACKET
 *       raw socket on IFNAME: frames with 802.1Q/802.1ad tags, IPv6 routing headers, ...
 *   ndq_frames udp6 SRC DST DPORT SPORT SIZE[,SIZE...] OPT[,OPT...]
 *       UDP over IPv6 with extension headers the kernel builds from socket options; OPT is hop
 *       (IPV6_HOPOPTS) or dst (IPV6_DSTOPTS), each an 8-byte header of PadN. A SIZE above the
 *       path MTU is sent as fragments.
 *   ndq_frames echo6 SRC DST SIZE
 *       one ICMPv6 echo request with SIZE payload bytes (fragments above the MTU), then waits up
 *       to 1 s for the reply and prints "replies N".
 *
 * Prints "pid N" first and "done" at the end; errors: one line on stderr starting with
 * "ndq_frames:", exit status 1 (usage 2). Traffic goes only to the interface or addresses given:
 * the specs use the veth pairs in namespaces they created.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FRAME_MAX 1514
#define PAYLOAD_MAX 65000

static void die(int code, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "ndq_frames: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static size_t parse_hex(const char *s, unsigned char *out)
{
	size_t n = strlen(s);

	if (n % 2 || n / 2 < ETH_HLEN || n / 2 > FRAME_MAX)
		die(2, "a frame is 14..%d bytes of hex digits: '%.20s...'", FRAME_MAX, s);
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			die(2, "not a hex digit in frame %zu", i);
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return n / 2;
}

static int mode_frames(int argc, char **argv)
{
	static unsigned char frame[FRAME_MAX];
	struct sockaddr_ll sll = { .sll_family = AF_PACKET };
	int fd;

	if (argc < 2)
		die(2, "usage: frames IFNAME HEX [HEX...]");
	sll.sll_ifindex = (int)if_nametoindex(argv[0]);
	if (!sll.sll_ifindex)
		die(1, "no interface '%s'", argv[0]);
	/* protocol 0: a send-only socket; the kernel takes skb->protocol from the frame */
	fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0)
		die(1, "AF_PACKET socket: %s", strerror(errno));
	sll.sll_halen = ETH_ALEN;
	for (int i = 1; i < argc; i++) {
		size_t n = parse_hex(argv[i], frame);
		memcpy(sll.sll_addr, frame, ETH_ALEN);
		if (sendto(fd, frame, n, 0, (struct sockaddr *)&sll, sizeof(sll)) != (ssize_t)n)
			die(1, "send of frame %d: %s", i, strerror(errno));
	}
	close(fd);
	return 0;
}

static int opt_name(const char *s)
{
	if (!strcmp(s, "hop"))
		return IPV6_HOPOPTS;
	if (!strcmp(s, "dst"))
		return IPV6_DSTOPTS;
	die(2, "unknown option header '%s' (hop, dst)", s);
	return -1;
}

static int mode_udp6(int argc, char **argv)
{
	static unsigned char payload[PAYLOAD_MAX];
	/* next header (the kernel fills it), length 0 (8 bytes), PadN of 4 bytes */
	unsigned char opts[8] = { 0, 0, 1, 4, 0, 0, 0, 0 };
	struct sockaddr_in6 src = { .sin6_family = AF_INET6 }, dst = { .sin6_family = AF_INET6 };
	char *list, *tok, *save;
	int fd;

	if (argc != 6)
		die(2, "usage: udp6 SRC DST DPORT SPORT SIZE[,SIZE...] OPT[,OPT...]");
	if (inet_pton(AF_INET6, argv[0], &src.sin6_addr) != 1 ||
	    inet_pton(AF_INET6, argv[1], &dst.sin6_addr) != 1)
		die(2, "bad IPv6 address");
	dst.sin6_port = htons((unsigned short)atoi(argv[2]));
	src.sin6_port = htons((unsigned short)atoi(argv[3]));
	fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)))
		die(1, "socket/bind: %s", strerror(errno));
	list = strdup(argv[5]);
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (setsockopt(fd, IPPROTO_IPV6, opt_name(tok), opts, sizeof(opts)))
			die(1, "setsockopt %s: %s", tok, strerror(errno));
	free(list);
	list = strdup(argv[4]);
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		long size = strtol(tok, NULL, 10);
		if (size < 0 || size > PAYLOAD_MAX)
			die(2, "size %s out of range (0..%d)", tok, PAYLOAD_MAX);
		memset(payload, 'x', (size_t)size);
		if (sendto(fd, payload, (size_t)size, 0, (struct sockaddr *)&dst, sizeof(dst)) !=
		    size)
			die(1, "sendto: %s", strerror(errno));
	}
	free(list);
	close(fd);
	return 0;
}

static int mode_echo6(int argc, char **argv)
{
	static unsigned char buf[PAYLOAD_MAX + 8];
	struct sockaddr_in6 src = { .sin6_family = AF_INET6 }, dst = { .sin6_family = AF_INET6 };
	struct pollfd pfd;
	long size;
	int fd, replies = 0;

	if (argc != 3)
		die(2, "usage: echo6 SRC DST SIZE");
	if (inet_pton(AF_INET6, argv[0], &src.sin6_addr) != 1 ||
	    inet_pton(AF_INET6, argv[1], &dst.sin6_addr) != 1)
		die(2, "bad IPv6 address");
	size = strtol(argv[2], NULL, 10);
	if (size < 0 || size > PAYLOAD_MAX)
		die(2, "size out of range (0..%d)", PAYLOAD_MAX);
	fd = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
	if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)))
		die(1, "socket/bind: %s", strerror(errno));
	memset(buf, 0, 8);
	buf[0] = 128; /* echo request; the kernel fills the checksum */
	buf[4] = 0x4e;
	buf[5] = 0x44; /* identifier "ND" */
	buf[7] = 1;    /* sequence 1 */
	memset(buf + 8, 'p', (size_t)size);
	if (sendto(fd, buf, (size_t)size + 8, 0, (struct sockaddr *)&dst, sizeof(dst)) != size + 8)
		die(1, "sendto: %s", strerror(errno));
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (poll(&pfd, 1, 1000) > 0) { /* one wait of at most 1 s per datagram read */
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n >= 8 && buf[0] == 129 && buf[4] == 0x4e && buf[5] == 0x44) {
			replies++;
			break;
		}
		if (n < 0)
			break;
	}
	printf("replies %d\n", replies);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	int rc;

	if (argc < 2)
		die(2,
		    "usage: ndq_frames frames IFNAME HEX... | udp6 SRC DST DPORT SPORT SIZES OPTS | "
		    "echo6 SRC DST SIZE");
	printf("pid %d\n", (int)getpid());
	fflush(stdout);
	if (!strcmp(argv[1], "frames"))
		rc = mode_frames(argc - 2, argv + 2);
	else if (!strcmp(argv[1], "udp6"))
		rc = mode_udp6(argc - 2, argv + 2);
	else if (!strcmp(argv[1], "echo6"))
		rc = mode_echo6(argc - 2, argv + 2);
	else
		die(2, "unknown mode '%s' (frames, udp6, echo6)", argv[1]);
	printf("done\n");
	return rc;
}
