/* pcap_filter.c - see pcap_filter.h */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/types.h>
#include <pcap/pcap.h>

#include "netdevq.h"

#include "pcap_filter.h"

struct ndq_pcap {
	struct bpf_program eth, raw;
	int have_eth, have_raw;
};

/* An expression may hold for one link type only (`ether src ...` has no meaning on raw IP, like
 * tcpdump refusing it on a tun device): packets of the other link type then never match. It is
 * an error only when it compiles for neither. */
struct ndq_pcap *ndq_pcap_compile(const char *expr, int snaplen, char *err, size_t errlen)
{
	struct ndq_pcap *p = calloc(1, sizeof(*p));
	struct bpf_program *progs[2];
	int *have[2];
	static const int dlts[2] = { DLT_EN10MB, DLT_RAW };

	if (!p) {
		snprintf(err, errlen, "pcap filter: out of memory");
		return NULL;
	}
	progs[0] = &p->eth;
	progs[1] = &p->raw;
	have[0] = &p->have_eth;
	have[1] = &p->have_raw;
	for (int i = 0; i < 2; i++) {
		pcap_t *h = pcap_open_dead(dlts[i], snaplen);

		if (!h) {
			snprintf(err, errlen, "pcap filter: cannot create a libpcap handle");
			goto fail;
		}
		/* on failure keep the Ethernet message: the one tcpdump on an Ethernet device shows */
		if (pcap_compile(h, progs[i], expr, 1, PCAP_NETMASK_UNKNOWN) == 0)
			*have[i] = 1;
		else if (i == 0)
			snprintf(err, errlen, "pcap filter: %s", pcap_geterr(h));
		pcap_close(h);
	}
	if (!p->have_eth && !p->have_raw)
		goto fail;
	return p;
fail:
	ndq_pcap_free(p);
	return NULL;
}

int ndq_pcap_match(const struct ndq_pcap *p, int ethernet, const unsigned char *pkt,
		   unsigned int caplen, unsigned int len)
{
	struct pcap_pkthdr hdr = { .caplen = caplen, .len = len };

	if (!(ethernet ? p->have_eth : p->have_raw))
		return 0;
	return pcap_offline_filter(ethernet ? &p->eth : &p->raw, &hdr, pkt) != 0;
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

void ndq_pcap_free(struct ndq_pcap *p)
{
	if (!p)
		return;
	pcap_freecode(&p->eth); /* safe on a zeroed program */
	pcap_freecode(&p->raw);
	free(p);
}
