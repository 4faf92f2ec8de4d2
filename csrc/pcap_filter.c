/* pcap_filter.c - see pcap_filter.h */
#include <stdio.h>
#include <stdlib.h>
#include <pcap/pcap.h>

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

void ndq_pcap_free(struct ndq_pcap *p)
{
	if (!p)
		return;
	pcap_freecode(&p->eth); /* safe on a zeroed program */
	pcap_freecode(&p->raw);
	free(p);
}
