/* netdevq.h - the ABI between bpf/netdevq.bpf.c, csrc/ and the Lua side.
 *
 * One source of truth: compiled into the BPF object and the C module, and handed (without its '#'
 * lines) to ffi.cdef by lua/netdevq/abi.lua. Fixed-width types only, constants as enums so that
 * LuaJIT's C parser sees them too. Change a layout here and every side follows on rebuild;
 * spec/abi_spec.lua checks that the C module and the Lua side agree on sizes and offsets.
 */
#ifndef NETDEVQ_H
#define NETDEVQ_H

enum {
	NDQ_COMM_LEN = 16,
	NDQ_IFNAME_LEN = 16,
	NDQ_SNAP_MAX = 256,    /* header bytes an event can carry (from the L2 header on) */
	NDQ_SET_MAX = 8,       /* values in one kernel-filter set (an or-set: a == 1 or a == 2) */
	NDQ_PREFIX_MAX = 4,    /* address prefixes in one kernel-filter prefix set */
	NDQ_AGG_KEYS_MAX = 6,  /* fields in one in-kernel aggregation key (a 5-tuple fits) */
	NDQ_AGG_KEY_SLOT = 24, /* bytes per key field in the packed key: 16 + family + padding */
	NDQ_AGG_SLOTS = 68,    /* histogram slots in an aggregation value */
	/* A count keeps its first keys in a table of this many slots per CPU (power of two) in
	 * front of the hash: struct netdevq_agg_slot, NDQ_DERIVED_AGG_TABLE */
	NDQ_AGG_TABLE_SLOTS = 256,
	/* Per-CPU batches: events written in place are gathered on their CPU and handed over as
	 * one ring record of netdevq_config.batch events (event_size bytes each, back to back);
	 * a reserve and submit per event cost about 100 ns */
	NDQ_BATCH_MAX = 32,	/* events in one record */
	NDQ_BATCH_BYTES = 8192, /* bytes of one batch buffer */
};

/* --- sk_buff member paths (skb.dev.mtu, ...: issue 14) ----------------------------------------
 * csrc/btf_path.c resolves a path against the kernel's BTF into hops: off[0..hops-1] are the
 * offsets of the pointers followed (the first in the sk_buff, each next in what the previous one
 * points to), off[hops] the offset of the value; bpf/skbpath.h reads them. */
enum {
	NDQ_PATHS_MAX = 8,	/* paths in one run */
	NDQ_PATH_HOPS = 4,	/* pointers one path may follow */
	NDQ_PATH_STR = 16,	/* bytes of a char array value (longer arrays are cut) */
	NDQ_KSTACK_DEPTH = 127, /* frames in a kernel stack (the stack map's value: __u64 ips) */
};
enum { NDQ_PK_UINT = 0, NDQ_PK_SINT = 1, NDQ_PK_STR = 2 }; /* how the kernel treats a value */
enum { NDQ_PC_RANGE = 1, NDQ_PC_NE = 2 }; /* kernel filter on a path (netdevq_path.cmp) */

struct netdevq_path {
	__u8 hops;     /* pointers followed (0..NDQ_PATH_HOPS) */
	__u8 size;     /* bytes read at off[hops] (1..8; NDQ_PK_STR: 1..NDQ_PATH_STR) */
	__u8 kind;     /* NDQ_PK_* */
	__u8 bit_off;  /* bitfield: its lowest bit in the bytes read (little endian) */
	__u8 bit_size; /* bitfield width; 0: the whole bytes */
	__u8 cmp;      /* NDQ_PC_*: the event passes when lo <= v <= hi (the path present; signed
			  compare for NDQ_PK_SINT) and v != ne (or the path absent) */
	__u8 pad[2];
	__u32 off[5]; /* NDQ_PATH_HOPS + 1 */
	__u64 lo, hi, ne;
};
/* --- end of sk_buff member paths ------------------------------------------------------------ */

/* Per-CPU counters (array map "counters", entry smp_processor_id()), summed by the loader. */
enum netdevq_counter {
	NDQ_CNT_SEEN = 0,	  /* every net_dev_queue hit */
	NDQ_CNT_KFILTERED = 1,	  /* dropped by the kernel filter */
	NDQ_CNT_EMITTED = 2,	  /* handed to the ring buffer */
	NDQ_CNT_LOST = 3,	  /* ring buffer full: not handed over */
	NDQ_CNT_AGGREGATED = 4,	  /* folded into the in-kernel aggregation */
	NDQ_CNT_AGG_OVERFLOW = 5, /* aggregation map full: key not added */
	NDQ_CNT_READ_FAILED = 6,  /* raw mode: the sk_buff could not be read (seen, then dropped) */
	/* latency fields: +1 when a matched event is held for its fate, -1 when it leaves (on
	 * another CPU maybe: only the sum over CPUs means something). What is still held, plus what
	 * never came out (pushed out of the full hold map, or a fate not seen) */
	NDQ_CNT_HELD = 7,
	NDQ_CNT_MAX = 8,
	/* a CPU's entry in "counters", in __u64 (padded: no two CPUs share a cache line) */
	NDQ_CNT_STRIDE = 16,
};

/* Where the kernel finds one aggregation key or value in struct netdevq_event, and when the event
 * carries it at all: the loader writes these from the Lua field catalogue (offsetof on this very
 * struct), so the kernel side names no field and a new field needs no kernel code to be a key. */
enum {
	NDQ_LOC_NUMBER = 0,  /* an unsigned integer of size 1, 2, 4 or 8 */
	NDQ_LOC_BYTES = 1,   /* size bytes (names, MACs), copied into the key slot */
	NDQ_LOC_ADDRESS = 2, /* ev->l3 says the family: 4 (4 bytes) or 6 (16 bytes) */
	NDQ_LOC_IPV4 = 3,    /* an IPv4 address whatever ev->l3 says (ARP's): 4 bytes */
};

struct netdevq_field_loc {
	__u16 off;	   /* offsetof(struct netdevq_event, member) */
	__u8 size;	   /* bytes of the member */
	__u8 kind;	   /* NDQ_LOC_* */
	__u16 when_flags;  /* present only when ev->flags has all of these bits (0: always) */
	__u8 when_l3;	   /* present only when ev->l3 != 0 */
	__u8 when_nonzero; /* present only when the value is not 0 */
	__u8 when_path; /* present only when sk_buff member path when_path - 1 was read (0: always) */
	__u8 pad;
};

/* Which optional parts the kernel side reads for output (netdevq_config.need). What a kernel
 * filter checks is read regardless. skb members (len, mark, ...), cpu and skb are always there;
 * a part not asked for holds stale bytes, so readers only look at what they asked for. */
enum {
	NDQ_NEED_HEADERS = 1, /* parse L2/L3/L4: ethertype .. tcp_flags, ttl, tos */
	NDQ_NEED_NETNS = 2,
	NDQ_NEED_GSO = 4,
	NDQ_NEED_CGROUP = 8,
	NDQ_NEED_TASK = 16, /* pid, tid, comm */
	NDQ_NEED_DEV = 32,  /* dev, ifindex, dev_type */
	NDQ_NEED_TS = 64,   /* ts (bpf_ktime_get_ns costs ~40 ns: only when shown) */
	/* owner_*: loads and attaches the socket-owner programs (bpf/owner.bpf.h); the loader sets
	 * it too when who_pid, who_comm or follow_pid ask for the owner */
	NDQ_NEED_OWNER = 128,
	NDQ_NEED_ALL = 255,
	/* sojourn_ns, xmit_ns, xmit_rc, drop_reason: loads and attaches the fate programs
	 * (bpf/latency.bpf.h); outside NDQ_NEED_ALL, so that only asking for them costs */
	NDQ_NEED_LATENCY = 256,
	/* proto, sport, dport without the rest of the headers: where the kernel can (Linux 6.16+,
	 * bpf/decode.h peek_headers) they come from a few loads instead of the whole decoding.
	 * NDQ_NEED_HEADERS covers them; outside NDQ_NEED_ALL, which has HEADERS */
	NDQ_NEED_L4 = 512,
};

/* Event flags (netdevq_event.flags). */
enum {
	NDQ_EV_MAC = 1,	 /* smac/dmac valid: the device has an Ethernet header */
	NDQ_EV_L4 = 2,	 /* sport/dport valid (TCP, UDP, SCTP) */
	NDQ_EV_TCP = 4,	 /* tcp_flags valid */
	NDQ_EV_FRAG = 8, /* non-first IPv4/IPv6 fragment: no L4 header */
	/* decoding: ICMP, VLAN, fragments */
	NDQ_EV_ICMP = 16,    /* icmp_type/icmp_code valid (ICMP, ICMPv6) */
	NDQ_EV_VLAN = 32,    /* vlan_* valid: the outermost 802.1Q/802.1ad tag */
	NDQ_EV_VLAN_HW = 64, /* that tag is the skb's offloaded one (not in snap) */
	NDQ_EV_IPFRAG = 128, /* an IP fragment, first or not: frag_off valid */
	NDQ_EV_IP6 = 256,    /* IPv6: ip6_ext valid */
	NDQ_EV_ARP = 512,    /* arp_* valid: ARP for IPv4 over Ethernet */
	/* owner_* valid (bpf/owner.bpf.h); a high bit, so header-decoding flags keep the low ones */
	NDQ_EV_OWNER = 0x8000,
	/* fate (bpf/latency.bpf.h): handed to the driver (sojourn_ns valid), the driver returned
	 * (xmit_ns, xmit_rc valid), freed by kfree_skb (drop_reason valid) */
	NDQ_EV_XMIT = 0x1000,
	NDQ_EV_XMIT_DONE = 0x2000,
	NDQ_EV_DROP = 0x4000,
};

/* Histogram kinds (netdevq_config.agg_hist). */
enum { NDQ_HIST_NONE = 0, NDQ_HIST_LOG2 = 1, NDQ_HIST_LINEAR = 2 };

struct netdevq_event {
	__u64 ts;  /* bpf_ktime_get_ns() */
	__u64 skb; /* skb address */
	/* what every event is written (up to l3): the first bytes of its ring record, so that an
	 * event of a few fields dirties few cache lines */
	__u32 len, data_len;
	__u16 mac_len, hdr_len;
	__u16 queue;
	__u16 ethertype; /* host order, from skb->protocol */
	__u32 priority, mark, hash;
	__u32 cpu;
	__u16 flags;	/* NDQ_EV_* */
	__u16 snap_len; /* bytes valid in snap */
	__u16 l2_len;	/* bytes of link header in snap before the network header */
	__u16 l3;	/* 0 none, 4 IPv4, 6 IPv6 */
	__u32 pid, tid;
	char comm[16];
	char dev[16];
	__u32 ifindex;
	__u32 netns; /* inode number of the device's network namespace */
	__u64 cgroup;
	__u16 gso_size, gso_segs;
	__u16 dev_type; /* ARPHRD_* of the device (btf mode; 0 in raw mode) */
	__u16 arp_op;	/* ARP operation (1 request, 2 reply, ...), host order */
	/* socket owner (NDQ_NEED_OWNER): the process that last sent, received, connected, accepted
	 * or listened on skb->sk (a request sock: its listener). owner_pid 0: no socket or owner
	 * unknown, and then every owner_* member is 0 */
	__u64 owner_cgroup; /* the sock's cgroup v2 id (sk->sk_cgrp_data) */
	__u32 owner_pid, owner_tid;
	__u32 owner_uid; /* sk->sk_uid */
	__u32 owner_pad;
	char owner_comm[16];
	__u8 saddr[16], daddr[16]; /* IPv4 in the first 4 bytes, network order */
	__u16 sport, dport;	   /* host order */
	__u8 proto;		   /* IP protocol number (IPv6: after the extension headers) */
	__u8 tcp_flags;		   /* TCP header byte 13 (CWR ECE URG ACK PSH RST SYN FIN) */
	__u8 ttl, tos;
	__u8 smac[6], dmac[6];
	/* decoding: ICMP, VLAN, fragments, IPv6 extension headers, ARP */
	__u8 icmp_type, icmp_code;
	__u16 vlan_tci;	  /* PCP (3 bits), DEI, VID (12 bits), host order */
	__u16 vlan_proto; /* TPID: 0x8100 (802.1Q) or 0x88a8 (802.1ad), host order */
	__u16 frag_off;	  /* fragment offset in bytes (IPv4 and IPv6) */
	__u16 vlan_id;	  /* vlan_tci's VID and PCP, apart: what aggregation keys read */
	__u8 vlan_pcp;
	__u8 ip6_ext;		     /* IPv6 extension headers walked before the upper layer */
	__u8 arp_sha[6], arp_tha[6]; /* ARP sender and target hardware addresses */
	__u8 arp_spa[4], arp_tpa[4]; /* ARP sender and target protocol (IPv4) addresses */
	__u8 pad1[4];
	/* fate (NDQ_NEED_LATENCY, bpf/latency.bpf.h): ns from net_dev_queue to net_dev_start_xmit,
	 * ns from net_dev_start_xmit to net_dev_xmit and the driver's return code, enum
	 * skb_drop_reason of a kfree_skb before the driver returned */
	__u64 sojourn_ns, xmit_ns;
	__u32 xmit_rc; /* int in the kernel: the catalogue reads it signed */
	__u32 drop_reason;
	__u8 snap[256]; /* NDQ_SNAP_MAX bytes from the start of the link header */
	/* sk_buff member paths and kstack, after snap: only an event of a run that asks for them
	 * carries them (it is then sent up to its last path). Bit i of path_present: path i was
	 * read, no NULL pointer on the way (netdevq_field_loc.when_path looks there).
	 * path[i]: integers as a 64-bit number (sign-extended, bitfields extracted), strings as
	 * their bytes. */
	__u32 path_present;
	__u32 kstack;	  /* kernel stack: 1 + its id in the stack map "kstacks" (0: none) */
	__u64 path[8][2]; /* NDQ_PATHS_MAX */
};

/* --- large filter sets (issue 12) --------------------------------------------------------------
 * A u32 set of more than NDQ_SET_MAX values has n == NDQ_SET_IN_MAP and keeps its values in the
 * hash map "sets" instead of v[]: one key per value, { offsetof(struct netdevq_config, member),
 * value }. The loader adds the keys between load and attach (core.open's set_values). */
enum {
	NDQ_SET_IN_MAP = 0x10000, /* netdevq_u32_set.n: the values are in the map */
	NDQ_SET_MAP_MAX =
		4096, /* values of one set the map may hold (a "!= x" of 65535 stays in Lua) */
	/* netdevq_u32_set.n of such a set whose values all lie below 65536 (ports, protocols,
	 * queues, ...), as the loader rewrites it (csrc/sets.c): a bitmap of NDQ_SET_BITS_WORDS
	 * 64-bit words in the array map "set_bits", from word v[0] * NDQ_SET_BITS_WORDS on */
	NDQ_SET_IN_BITS = 0x20000,
	NDQ_SET_BITS_WORDS = 1024,
};

struct netdevq_set_key {
	__u32 set; /* offsetof(struct netdevq_config, member) */
	__u32 v;
};
/* --- end of large filter sets ----------------------------------------------------------------- */

struct netdevq_u32_set {
	__u32 n; /* 0: no constraint */
	__u32 v[8];
};

struct netdevq_prefix {
	__u8 family; /* 4 or 6 */
	__u8 bits;
	__u8 pad[2];
	__u8 addr[16]; /* network order, bits beyond the prefix zero */
};

struct netdevq_prefix_set {
	__u32 n; /* 0: no constraint */
	struct netdevq_prefix p[4];
};

/* Written into .rodata between open and load: the verifier drops every check left at its zero. */
struct netdevq_config {
	__u32 snaplen;	    /* bytes of snap to hand over (0..NDQ_SNAP_MAX) */
	__u32 need;	    /* NDQ_NEED_* */
	__u32 wakeup_bytes; /* wake the consumer once this much data is pending (0: every event) */
	__u32 emit;	    /* 1: events go to the ring buffer */
	__u32 follow_pid;   /* != 0: only this process tree (tracked map, fed by fork events) */
	__u32 pad0;
	/* kernel filter: every non-empty part must hold (a conjunction) */
	struct netdevq_u32_set ifindex, pid, tid, netns, proto, ethertype, mark, queue, priority;
	struct netdevq_u32_set sport, dport, port; /* port: sport or dport */
	__u32 len_set;				   /* 1: len_min <= len <= len_max */
	__u32 len_min, len_max;
	__u32 n_cgroup;
	__u64 cgroup[8];
	__u32 n_comm, n_dev;
	char comm[8][16];
	char dev[8][16];
	struct netdevq_prefix_set saddr, daddr, host; /* host: saddr or daddr */
	/* in-kernel aggregation (agg_on = 1) */
	__u32 agg_on;
	__u32 agg_nkeys;
	__u32 agg_has_value;		     /* 0: count only */
	__u32 agg_hist;			     /* NDQ_HIST_* */
	struct netdevq_field_loc agg_key[6]; /* NDQ_AGG_KEYS_MAX */
	struct netdevq_field_loc agg_value;
	__s64 lhist_min, lhist_max, lhist_step;
	/* -p, --comm: the socket owner's pid/comm when known, the task's otherwise (these and
	 * follow_pid check it that way) */
	struct netdevq_u32_set who_pid;
	__u32 n_who_comm;
	char who_comm[8][16];
	/* sk_buff member paths read into every event (and checked when cmp is set) */
	__u32 n_paths;
	__u32 kstack;		     /* 1: capture the kernel stack of every matching event */
	struct netdevq_path path[8]; /* NDQ_PATHS_MAX */
	/* 1: the pcap expression is decided in the kernel (netdevq_pcap_eth/raw, issue 16) */
	__u32 pcap;
	__u32 pcap_pad;
	/* sojourn_ns kernel filter: sojourn_min <= sojourn_ns <= sojourn_max (and the packet
	 * reached the driver), decided when its fate is known (bpf/latency.bpf.h) */
	__u32 sojourn_set;
	__u32 sojourn_pad;
	__u64 sojourn_min, sojourn_max;
	/* What the members above imply, written by the loader last (csrc/derive.c): NDQ_DERIVED_*
	 * bits and the size of an event's ring record. The program tests a bit where it would
	 * otherwise combine a dozen members on every event: the verifier drops the branches a
	 * constant decides, not the loads and arithmetic that decide them. */
	__u32 derived;
	__u32 event_size;
	__u32 batch;	    /* events per ring record (1: a record per event, no batch) */
	__u32 agg_key_size; /* bytes of an aggregation key: its slots in use (a count by nothing
			     * has one, all zero) */
	/* The BTF ids of struct sk_buff and struct skb_shared_info in the types CO-RE relocates
	 * against, for bpf_rdonly_cast: written by the loader (csrc/corebtf.c finds them; a type
	 * id relocation would give the id in the cut-down BTF libbpf searches, not the kernel's) */
	__u32 skb_btf_id;
	__u32 shinfo_btf_id;
};

enum {
	NDQ_DERIVED_FILTER_TASK = 1,  /* pid or tid set (-p checks the socket owner instead) */
	NDQ_DERIVED_FILTER_DEV = 2,   /* ifindex, device name or netns set */
	NDQ_DERIVED_NEED_DEV = 4,     /* the device is read: dev or netns fields, aggregations */
	NDQ_DERIVED_FILTER_L3L4 = 16, /* a protocol, address or port set */
	NDQ_DERIVED_IN_PLACE = 64,    /* events are written straight into their output: a ring
				       * record, or a slot of their CPU's batch (batch > 1) */
	NDQ_DERIVED_COMMON = 128,     /* the members before pid are read (netdevq_event) */
	NDQ_DERIVED_AGG_TABLE = 256,  /* a count: keys go to the per-CPU table first (aggtab) */
};

/* In-kernel aggregation map: per-CPU hash, key -> value. A key field takes one 24-byte slot:
 * numbers as __u64 (host order) in its first 8 bytes, names as their bytes, addresses as 16 bytes
 * (IPv4 in the first 4) and the family (4 or 6) in byte 16; an absent field is all 0xff. */
struct netdevq_agg_key {
	__u8 k[144];	       /* NDQ_AGG_KEYS_MAX * NDQ_AGG_KEY_SLOT */
} __attribute__((aligned(8))); /* slots are cleared and filled a word at a time, not a byte */

/* A slot of the count table (map aggtab: NDQ_AGG_TABLE_SLOTS slots per CPU, CPU c's from
 * c * NDQ_AGG_TABLE_SLOTS, the slot a hash of the key). A key stays in its slot for the run; a
 * key whose slot another key holds goes to the hash. Only the slot's CPU writes it: the key
 * first, then count (0: free). The map's value ends after agg_nkeys key slots. */
struct netdevq_agg_slot {
	__u64 count;
	__u8 key[144]; /* NDQ_AGG_KEYS_MAX * NDQ_AGG_KEY_SLOT */
};

struct netdevq_agg_value {
	__u64 count, sum, min, max;
	__u64 slot[68]; /* NDQ_AGG_SLOTS: log2 slot i = [2^(i-1), 2^i), slot 0 = 0;
	                           linear: 0 = below min, 1..n = buckets, n+1 = at or above max */
};

/* Socket owner as the owner maps keep it (bpf/owner.bpf.h; the loader fills owner_inodes from
 * /proc at attach). */
struct netdevq_owner {
	__u64 ino; /* inode number of the socket when learned (0: none yet): tells reused socks */
	__u64 cgroup; /* the sock's cgroup v2 id and uid (sock_read: 1), read once per owner */
	__u32 uid;
	__u32 sock_read; /* 0 in entries of the /proc scan: cgroup and uid still to be read */
	__u32 pid, tid;
	char comm[16];
};

#endif /* NETDEVQ_H */
