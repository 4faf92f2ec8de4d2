/* pcap_filter.h - tcpdump expressions compiled by libpcap, run on captured header bytes.
 * Kept apart from the libbpf code: libpcap's and libbpf's `struct bpf_program` collide. */
#ifndef NETDEVQ_PCAP_FILTER_H
#define NETDEVQ_PCAP_FILTER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

struct ndq_pcap;

/* One program per link type (Ethernet and raw IP); NULL and a message in err on failure, with
 * *bad_expr set when the expression is at fault (it does not compile, or not within budget_ms)
 * rather than the system or a signal. Long expressions compile in a child process within
 * budget_ms, given up when *stop (may be NULL) is set. */
struct ndq_pcap *ndq_pcap_compile(const char *expr, int snaplen, int budget_ms,
				  volatile sig_atomic_t *stop, char *err, size_t errlen,
				  bool *bad_expr);
/* 1 when the packet matches; pkt starts at the link header (ethernet) or the IP header. */
int ndq_pcap_match(const struct ndq_pcap *p, int ethernet, const unsigned char *pkt,
		   unsigned int caplen, unsigned int len);
/* ndq_pcap_match on an event's snap bytes as a live capture shows them (offloaded VLAN tag
 * written back into the frame, other link headers skipped). */
struct netdevq_event;
int ndq_pcap_match_event(const struct ndq_pcap *p, const struct netdevq_event *ev);
void ndq_pcap_free(struct ndq_pcap *p);
/* The compiled program for Ethernet (ethernet != 0) or raw IP in the kernel's struct sock_filter
 * layout (libpcap's struct bpf_insn), *len instructions; NULL when the expression has no meaning
 * on that link type. */
struct sock_filter;
const struct sock_filter *ndq_pcap_insns(const struct ndq_pcap *p, int ethernet, size_t *len);

#endif
