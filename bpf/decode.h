/* decode.h - header decoding for netdevq.bpf.c: Ethernet with 802.1Q/802.1ad tags, IPv4, IPv6
 * with its extension headers, the upper layer (ports, TCP flags, ICMP type and code), and ARP
 * for IPv4 over Ethernet.
 *
 * Input: the header bytes read into snap (NDQ_SNAP_MAX bytes: the event's or per-CPU scratch;
 * from the link header on), l2 (bytes of link header before the network header, from
 * skb->network_header), avail (bytes of snap that are valid) and the skb's offloaded VLAN tag
 * (hw_proto 0: none). Every read is bounded by avail and every offset masked, so the verifier
 * accepts it in raw and btf mode alike; loops have constant bounds and are unrolled.
 */
#ifndef NETDEVQ_DECODE_H
#define NETDEVQ_DECODE_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ARPHRD_ETHER 1
#define ARPHRD_LOOPBACK 772
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define IPPROTO_SCTP 132
/* Header bytes read for decoding: QinQ (22) + IPv6 (40) + a few extension headers + TCP's 14.
 * Offsets into snap are masked with SNAP_MASK (snap is NDQ_SNAP_MAX = 256 bytes). */
#define PARSE_BYTES 192
#define SNAP_MASK 255
#define VLAN_TAGS_MAX 3 /* tags in the frame walked through (QinQ and one more) */
#define IP6_EXT_MAX 6	/* IPv6 extension headers walked before giving up */

static __always_inline __u16 be16_at(const __u8 *p)
{
	return (__u16)((p[0] << 8) | p[1]);
}

static __always_inline bool vlan_tpid(__u16 t)
{
	return t == ETH_P_8021Q || t == ETH_P_8021AD;
}

enum { LINK_OTHER, LINK_ETHER, LINK_ETHER_TAGGED };

/* The link header's kind, from the l2 bytes before the network header: Ethernet (and loopback,
 * which fakes one), tagged when a VLAN tag follows the MACs, or another (none, tun, GRE ...).
 * dev_type is known only in btf mode; without it a 14-byte link header, or a longer one
 * starting with a VLAN tag, is taken for Ethernet. Decoding and the kernel's pcap expression
 * (which picks libpcap's Ethernet or raw IP program by it) agree through this one place. */
static __always_inline int link_kind(const __u8 *snap, __u32 l2, __u32 avail, __u16 dev_type)
{
	bool tagged;

	if (l2 < 14 || l2 >= 64 || avail < 14)
		return LINK_OTHER;
	tagged = vlan_tpid(be16_at(snap + 12));
	if (dev_type ? dev_type != ARPHRD_ETHER && dev_type != ARPHRD_LOOPBACK :
		       l2 != 14 && !tagged)
		return LINK_OTHER;
	return tagged ? LINK_ETHER_TAGGED : LINK_ETHER;
}

/* The link layer: MACs and the tags in the frame. Returns the offset of the network header and
 * sets *etype to the network protocol (the frame's after its tags, else skb->protocol). */
static __always_inline __u32 decode_l2(struct netdevq_event *ev, const __u8 *snap, __u32 l2,
				       __u32 avail, __u16 *etype, const bool addrs)
{
	__u32 off = 14;
	int link = link_kind(snap, l2, avail, ev->dev_type);

	*etype = ev->ethertype;
	if (link == LINK_OTHER)
		return l2;
	if (addrs) {
		__builtin_memcpy(ev->dmac, snap, 6);
		__builtin_memcpy(ev->smac, snap + 6, 6);
	}
	ev->flags |= NDQ_EV_MAC;
	if (link != LINK_ETHER_TAGGED)
		return l2;
		/* The tags in the frame; the first is the fields' tag unless the skb holds one (outermost).
	 * The network header follows the last, wherever skb->network_header points. */
#pragma unroll
	for (int i = 0; i < VLAN_TAGS_MAX; i++) {
		__u16 tpid = be16_at(snap + off - 2);
		if (!vlan_tpid(tpid) || avail < off + 4)
			break;
		if (!(ev->flags & NDQ_EV_VLAN)) {
			ev->vlan_proto = tpid;
			ev->vlan_tci = be16_at(snap + off);
			ev->flags |= NDQ_EV_VLAN;
		}
		off += 4;
	}
	*etype = be16_at(snap + off - 2);
	return off;
}

static __always_inline bool ip6_ext_hdr(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_FRAGMENT ||
	       nh == IPPROTO_AH || nh == IPPROTO_DSTOPTS;
}

/* IPv6 extension headers from the fixed header's next header (in ev->proto) on: leaves the
 * upper-layer protocol in ev->proto and returns its offset; 0 when there is no upper-layer header
 * to read (a non-first fragment, or a chain longer than IP6_EXT_MAX or than the bytes read). */
static __always_inline __u32 decode_ip6_ext(struct netdevq_event *ev, const __u8 *snap, __u32 off,
					    __u32 avail)
{
	__u8 nh = ev->proto;

#pragma unroll
	for (int i = 0; i < IP6_EXT_MAX; i++) {
		if (!ip6_ext_hdr(nh))
			return off;
		if (off > PARSE_BYTES || avail < off + 8)
			return 0;
		barrier_var(off);
		const __u8 *h = snap + (off & SNAP_MASK);
		__u32 len = ((__u32)h[1] + 1) * 8;

		ev->ip6_ext++;
		ev->proto = h[0];
		if (nh == IPPROTO_FRAGMENT) {
			ev->frag_off = be16_at(h + 2) & 0xfff8;
			ev->flags |= NDQ_EV_IPFRAG;
			if (ev->frag_off) {
				ev->flags |= NDQ_EV_FRAG;
				return 0;
			}
			len = 8;
		} else if (nh == IPPROTO_AH) {
			len = ((__u32)h[1] + 2) * 4;
		}
		nh = h[0];
		off += len;
	}
	return ip6_ext_hdr(nh) ? 0 : off;
}

/* The upper layer at offset l4: ports (TCP, UDP, SCTP), TCP flags, ICMP/ICMPv6 type and code. */
static __always_inline void decode_l4(struct netdevq_event *ev, const __u8 *snap, __u32 l4,
				      __u32 avail)
{
	__u8 p = ev->proto;

	if (l4 > PARSE_BYTES || avail < l4 + 4)
		return;
	barrier_var(l4);
	const __u8 *th = snap + (l4 & SNAP_MASK);
	if (p == IPPROTO_ICMP || p == IPPROTO_ICMPV6) {
		ev->icmp_type = th[0];
		ev->icmp_code = th[1];
		ev->flags |= NDQ_EV_ICMP;
		return;
	}
	if (p != IPPROTO_TCP && p != IPPROTO_UDP && p != IPPROTO_SCTP)
		return;
	ev->sport = be16_at(th);
	ev->dport = be16_at(th + 2);
	ev->flags |= NDQ_EV_L4;
	if (p == IPPROTO_TCP && avail >= l4 + 14) {
		ev->tcp_flags = th[13];
		ev->flags |= NDQ_EV_TCP;
	}
}

/* ARP at ip (avail >= 28 checked): Ethernet hardware addresses and IPv4 protocol addresses
 * only (RFC 826 for IPv4 over Ethernet; anything else stays undecoded, as tcpdump prints it raw). */
static __always_inline void decode_arp(struct netdevq_event *ev, const __u8 *ip)
{
	if (be16_at(ip) != ARPHRD_ETHER || be16_at(ip + 2) != ETH_P_IP || ip[4] != 6 || ip[5] != 4)
		return;
	ev->arp_op = be16_at(ip + 6);
	__builtin_memcpy(ev->arp_sha, ip + 8, 6);
	__builtin_memcpy(ev->arp_spa, ip + 14, 4);
	__builtin_memcpy(ev->arp_tha, ip + 18, 6);
	__builtin_memcpy(ev->arp_tpa, ip + 24, 4);
	ev->flags |= NDQ_EV_ARP;
}

/* Everything from the header bytes in snap. hw_proto/hw_tci: the skb's offloaded VLAN tag
 * (skb->vlan_proto in host order, skb->vlan_tci; proto 0: none), the outermost when present.
 * addrs 0 (a kernel filter on protocol or ports only, nothing for the output): MAC, IP and ARP
 * addresses are left out, the rest is decoded as always. */
static __always_inline void decode_headers(struct netdevq_event *ev, const __u8 *snap, __u32 l2,
					   __u32 avail, __u16 hw_proto, __u16 hw_tci,
					   const bool addrs)
{
	__u16 etype;
	__u32 l3, l4;
	const __u8 *ip;

	if (hw_proto) {
		ev->vlan_proto = hw_proto;
		ev->vlan_tci = hw_tci;
		ev->flags |= NDQ_EV_VLAN | NDQ_EV_VLAN_HW;
	}
	l3 = decode_l2(ev, snap, l2, avail, &etype, addrs);
	ev->vlan_id = ev->vlan_tci & 0xfff;
	ev->vlan_pcp = ev->vlan_tci >> 13;
	if (l3 >= 64)
		return;
	/* keep the masks: the compiler proves them redundant, the verifier needs them */
	barrier_var(l3);
	ip = snap + (l3 & 63);
	if (etype == ETH_P_IP && avail >= l3 + 20 && (ip[0] >> 4) == 4) {
		__u32 ihl = (ip[0] & 0xf) * 4;
		__u16 frag = be16_at(ip + 6);
		if (ihl < 20)
			return;
		ev->l3 = 4;
		ev->tos = ip[1];
		ev->ttl = ip[8];
		ev->proto = ip[9];
		if (addrs) {
			__builtin_memcpy(ev->saddr, ip + 12, 4);
			__builtin_memcpy(ev->daddr, ip + 16, 4);
		}
		if (frag & 0x3fff) { /* MF or an offset */
			ev->frag_off = (frag & 0x1fff) * 8;
			ev->flags |= NDQ_EV_IPFRAG;
			if (ev->frag_off) {
				ev->flags |= NDQ_EV_FRAG;
				return;
			}
		}
		l4 = l3 + ihl;
	} else if (etype == ETH_P_IPV6 && avail >= l3 + 40 && (ip[0] >> 4) == 6) {
		ev->l3 = 6;
		ev->tos = (__u8)(((ip[0] & 0xf) << 4) | (ip[1] >> 4));
		ev->proto = ip[6];
		ev->ttl = ip[7];
		if (addrs) {
			__builtin_memcpy(ev->saddr, ip + 8, 16);
			__builtin_memcpy(ev->daddr, ip + 24, 16);
		}
		ev->ip6_ext = 0;
		ev->flags |= NDQ_EV_IP6;
		l4 = decode_ip6_ext(ev, snap, l3 + 40, avail);
		if (!l4)
			return;
	} else if (etype == ETH_P_ARP && avail >= l3 + 28) {
		if (addrs)
			decode_arp(ev, ip);
		return;
	} else {
		return;
	}
	decode_l4(ev, snap, l4, avail);
}

/* What l3l4_filter checks (l3, proto, the addresses when asked, the ports), from a few loads
 * where the headers are plain: no VLAN tag in the frame, IPv4, or IPv6 whose next header is the
 * upper layer. Returns 1 when ev then holds exactly what decode_headers would put there (the
 * same bytes and bounds), 0 when it cannot tell (a tag, an IPv6 extension header): then
 * decode_headers decides. Only the members named are written. pkt is memory the loads may not
 * fault on (bpf_rdonly_cast to void): wide, unaligned loads, the fewer the cheaper. */
static __always_inline int peek_headers(struct netdevq_event *ev, const __u8 *pkt, __u32 l2,
					__u32 avail, const bool addrs)
{
	const __u8 *ip;
	__u64 w;
	__u32 l4, ports;
	__u8 p;

	ev->flags = 0;
	ev->l3 = 0;
	if (l2 >= 64) /* decode_headers reads no network header there */
		return 1;
	if (l2 >= 14 && avail >= 14 && vlan_tpid(bpf_ntohs(*(const __u16 *)(pkt + 12))))
		return 0;
	/* untagged: the network header at l2, its protocol skb->protocol (see decode_l2) */
	barrier_var(l2);
	ip = pkt + (l2 & 63);
	w = *(const __u64 *)ip; /* little endian: byte i of the header is bits 8i..8i+7 */
	if (ev->ethertype == ETH_P_IP && avail >= l2 + 20 && (w & 0xf0) == 0x40) {
		__u32 ihl = (w & 0xf) * 4;
		if (ihl < 20)
			return 1;
		ev->l3 = 4;
		p = ev->proto = ip[9];
		if (addrs) {
			__builtin_memcpy(ev->saddr, ip + 12, 4);
			__builtin_memcpy(ev->daddr, ip + 16, 4);
		}
		if ((w >> 48) & 0xff1f) /* a fragment offset: no upper-layer header */
			return 1;
		l4 = l2 + ihl;
	} else if (ev->ethertype == ETH_P_IPV6 && avail >= l2 + 40 && (w & 0xf0) == 0x60) {
		ev->l3 = 6;
		p = ev->proto = (w >> 48) & 0xff;
		if (ip6_ext_hdr(p))
			return 0;
		if (addrs) {
			__builtin_memcpy(ev->saddr, ip + 8, 16);
			__builtin_memcpy(ev->daddr, ip + 24, 16);
		}
		l4 = l2 + 40;
	} else {
		return 1; /* ARP or another protocol: no l3 */
	}
	if (l4 > PARSE_BYTES || avail < l4 + 4 ||
	    (p != IPPROTO_TCP && p != IPPROTO_UDP && p != IPPROTO_SCTP))
		return 1;
	barrier_var(l4);
	ports = *(const __u32 *)(pkt + (l4 & SNAP_MASK));
	ev->sport = bpf_ntohs((__u16)ports);
	ev->dport = bpf_ntohs((__u16)(ports >> 16));
	ev->flags = NDQ_EV_L4;
	return 1;
}

#endif /* NETDEVQ_DECODE_H */
