/* test_cbpf.c - the cBPF -> eBPF translator (csrc/cbpf_ebpf.c) against libpcap's own
 * bpf_filter(), registered in ctest as cbpf_translator (needs root: the translations run in the
 * kernel, through spec/tools/cbpf_harness.c).
 *
 * 1. every classic BPF opcode libpcap emits, in small hand-written programs;
 * 2. a corpus of tcpdump expressions compiled by libpcap (Ethernet), on crafted packets;
 * 3. random cBPF programs that pass bpf_validate(), on random packets (fuzz; NDQ_FUZZ_SEED,
 *    NDQ_FUZZ_PROGRAMS change seed and count).
 * Each program runs on each packet under several splits of the packet into the frame (caplen
 * bytes, read directly) and the linear data (read with bpf_probe_read_kernel): its return
 * value must equal bpf_filter(prog, pkt, wirelen, linear), the bytes there are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pcap/pcap.h>

#include "cbpf_ebpf.h"
#include "cbpf_harness.h"

struct pkt {
	const char *name;
	uint8_t b[HARNESS_PKT_MAX];
	uint32_t len;
};

static long checked, failed;

/* --- crafted packets ------------------------------------------------------------------------ */

static uint32_t put(uint8_t *b, uint32_t at, const char *hex)
{
	unsigned v;

	while (*hex) {
		if (*hex == ' ') {
			hex++;
			continue;
		}
		if (sscanf(hex, "%2x", &v) != 1 || !hex[1])
			break;
		b[at++] = (uint8_t)v;
		hex += 2;
	}
	return at;
}

static const char *ETH_IP4 = "02000000000202000000000108 00";
static const char *ETH_IP6 = "02000000000202000000000186dd";

static void ip4(struct pkt *p, const char *name, const char *l2, int proto, int frag,
		const char *l4, uint32_t payload)
{
	uint32_t at = put(p->b, 0, l2), ip = at, total;

	p->name = name;
	at = put(p->b, at, "4500 0000 1234 0000 4000 0000 c6120001 c6120002");
	p->b[ip + 9] = (uint8_t)proto;
	p->b[ip + 6] = (uint8_t)(frag >> 8);
	p->b[ip + 7] = (uint8_t)frag;
	at = put(p->b, at, l4);
	for (uint32_t i = 0; i < payload; i++)
		p->b[at + i] = (uint8_t)('A' + i % 26);
	at += payload;
	total = at - ip;
	p->b[ip + 2] = (uint8_t)(total >> 8);
	p->b[ip + 3] = (uint8_t)total;
	p->len = at;
}

static int make_packets(struct pkt *ps)
{
	int n = 0;
	struct pkt *p;

	/* UDP 198.18.0.1:7000 > .2:40000, payload "ABC..": udp[300:2] = "AB"? (payload 292 on) */
	ip4(&ps[n++], "udp4", ETH_IP4, 17, 0x4000, "1b58 9c40 0000 0000", 400);
	p = &ps[n - 1];
	p->b[14 + 20 + 300] = 'A';
	p->b[14 + 20 + 301] = 'B';
	ip4(&ps[n++], "tcp4 syn 443", ETH_IP4, 6, 0x4000,
	    "c350 01bb 00000001 00000000 5002 ffff 0000 0000", 0);
	ip4(&ps[n++], "tcp4 http get", ETH_IP4, 6, 0x4000,
	    "c351 0050 00000001 00000001 8018 ffff 0000 0000 0101080a0000000100000002", 0);
	put(ps[n - 1].b, ps[n - 1].len - 12, "0101080a 47455420 2f20"); /* options, then GET / */
	ip4(&ps[n++], "icmp echo", ETH_IP4, 1, 0, "0800 0000 0001 0001", 56);
	ip4(&ps[n++], "frag first", ETH_IP4, 17, 0x2000, "1b58 1b59 0000 0000", 1000);
	ip4(&ps[n++], "frag later", ETH_IP4, 17, 0x00b9, "", 600);
	ip4(&ps[n++], "vlan 100 udp", "0200000000020200000000018100 0064 0800", 17, 0,
	    "1b58 1b59 0000 0000", 80);
	ip4(&ps[n++], "qinq", "02000000000202000000000188a8 00c8 8100 0064 0800", 6, 0,
	    "c350 01bb 00000001 00000000 5012 ffff 0000 0000", 20);
	p = &ps[n++];
	p->name = "arp request";
	p->len = put(p->b, 0,
		     "ffffffffffff0200000000010806 0001 0800 0604 0001 020000000001 c6120001 "
		     "000000000000 c6120002 000000000000000000000000000000000000");
	p = &ps[n++];
	p->name = "ip6 hbh frag tcp";
	p->len = put(p->b, 0, ETH_IP6);
	p->len = put(p->b, p->len,
		     "60000000 0030 0040 20010db8000000000000000000000001 "
		     "20010db8000000000000000000000002 2c00 0000 00000000 " /* hop-by-hop -> frag */
		     "0600 0001 00000001 "				    /* fragment -> tcp */
		     "c350 1f90 00000001 00000000 5002 ffff 0000 0000");
	p = &ps[n++];
	p->name = "ip6 udp big";
	p->len = put(p->b, 0, ETH_IP6);
	p->len = put(p->b, p->len,
		     "60000000 0400 1140 20010db8000000000000000000000001 "
		     "20010db8000000000000000000000002 1b58 1b58 0400 0000");
	for (uint32_t i = 0; i < 1016; i++)
		p->b[p->len++] = (uint8_t)i;
	p = &ps[n++];
	p->name = "runt";
	p->len = put(p->b, 0, "0200000000020200");
	return n;
}

/* --- running one program -------------------------------------------------------------------- */

static int run_on(const char *what, struct bpf_program *prog, int fd, const struct pkt *p)
{
	uint32_t L = p->len;
	uint32_t splits[][2] = {
		{ L < 256 ? L : 256, L },
		{ L < 64 ? L : 64, L },
		{ L < 14 ? L : 14, L < 100 ? L : 100 },
		{ L < 256 ? L : 256, L < 256 ? L : 256 },
		{ 0, L },
		{ L < 37 ? L : 37, L < 301 ? L : 301 },
	};
	int bad = 0;

	for (size_t s = 0; s < sizeof(splits) / sizeof(splits[0]); s++) {
		uint32_t want = bpf_filter(prog->bf_insns, p->b, L, splits[s][1]), got = 0;
		int rc = harness_run(fd, p->b, splits[s][0], L, splits[s][1], &got);

		checked++;
		if (rc || got != want) {
			if (failed + bad < 20)
				fprintf(stderr,
					"FAIL %s on %s (caplen %u linear %u len %u): eBPF %u (rc %d), "
					"bpf_filter %u\n",
					what, p->name, splits[s][0], splits[s][1], L, got, rc,
					want);
			bad++;
		}
	}
	return bad;
}

/* failures of this program (counted in failed too) */
static int check_program(const char *what, struct bpf_program *prog, const struct pkt *ps, int np)
{
	static char log[1 << 20];
	char err[256];
	uint64_t *insns;
	size_t n;
	int fd;

	if (ndq_cbpf_to_ebpf((const struct sock_filter *)prog->bf_insns, prog->bf_len, &insns, &n,
			     err, sizeof(err))) {
		fprintf(stderr, "FAIL %s: translation: %s\n", what, err);
		failed++;
		return 1;
	}
	fd = harness_load(insns, n, log, sizeof(log));
	free(insns);
	if (fd < 0) {
		size_t l = strlen(log);
		fprintf(stderr, "FAIL %s: the kernel refused the translation (%s)\n%s\n", what,
			strerror(-fd), l > 3000 ? log + l - 3000 : log);
		failed++;
		return 1;
	}
	int bad = 0;

	for (int i = 0; i < np; i++)
		bad += run_on(what, prog, fd, &ps[i]);
	failed += bad;
	close(fd);
	return bad;
}

/* --- 1. every opcode ------------------------------------------------------------------------ */

#define S(c, k)                \
	{                      \
		(c), 0, 0, (k) \
	}
#define J(c, t, f, k)              \
	{                          \
		(c), (t), (f), (k) \
	}

static const struct opcode_prog {
	const char *name;
	struct bpf_insn p[8];
	int n;
} OPCODE_PROGS[] = {
	{ "ld w abs", { S(BPF_LD | BPF_W | BPF_ABS, 26), S(BPF_RET | BPF_A, 0) }, 2 },
	{ "ld h abs", { S(BPF_LD | BPF_H | BPF_ABS, 12), S(BPF_RET | BPF_A, 0) }, 2 },
	{ "ld b abs", { S(BPF_LD | BPF_B | BPF_ABS, 23), S(BPF_RET | BPF_A, 0) }, 2 },
	{ "ld h abs 334 (past 256)",
	  { S(BPF_LD | BPF_H | BPF_ABS, 334), S(BPF_RET | BPF_A, 0) },
	  2 },
	{ "ld w abs 254 (across 256)",
	  { S(BPF_LD | BPF_W | BPF_ABS, 254), S(BPF_RET | BPF_A, 0) },
	  2 },
	{ "ld w abs 0xffffffff",
	  { S(BPF_LD | BPF_W | BPF_ABS, 0xffffffff), S(BPF_RET | BPF_K, 1) },
	  2 },
	{ "ld w ind",
	  { S(BPF_LDX | BPF_IMM, 10), S(BPF_LD | BPF_W | BPF_IND, 16), S(BPF_RET | BPF_A, 0) },
	  3 },
	{ "ld h ind past 256",
	  { S(BPF_LDX | BPF_IMM, 300), S(BPF_LD | BPF_H | BPF_IND, 34), S(BPF_RET | BPF_A, 0) },
	  3 },
	{ "ld b ind huge x",
	  { S(BPF_LDX | BPF_IMM, 0xfffffff0), S(BPF_LD | BPF_B | BPF_IND, 0x20),
	    S(BPF_RET | BPF_K, 7) },
	  3 },
	{ "ld w len", { S(BPF_LD | BPF_W | BPF_LEN, 0), S(BPF_RET | BPF_A, 0) }, 2 },
	{ "ldx w len, txa",
	  { S(BPF_LDX | BPF_W | BPF_LEN, 0), S(BPF_MISC | BPF_TXA, 0), S(BPF_RET | BPF_A, 0) },
	  3 },
	{ "ldx msh, ind",
	  { S(BPF_LDX | BPF_B | BPF_MSH, 14), S(BPF_LD | BPF_H | BPF_IND, 16),
	    S(BPF_RET | BPF_A, 0) },
	  3 },
	{ "ld imm", { S(BPF_LD | BPF_IMM, 0x12345678), S(BPF_RET | BPF_A, 0) }, 2 },
	{ "st, ldx mem, stx, ld mem",
	  { S(BPF_LD | BPF_IMM, 77), S(BPF_ST, 3), S(BPF_LDX | BPF_MEM, 3),
	    S(BPF_ALU | BPF_ADD | BPF_X, 0), S(BPF_STX, 15), S(BPF_LD | BPF_MEM, 15),
	    S(BPF_RET | BPF_A, 0) },
	  7 },
	{ "tax",
	  { S(BPF_LD | BPF_B | BPF_ABS, 23), S(BPF_MISC | BPF_TAX, 0), S(BPF_LD | BPF_IMM, 0),
	    S(BPF_MISC | BPF_TXA, 0), S(BPF_RET | BPF_A, 0) },
	  5 },
	{ "ret k", { S(BPF_RET | BPF_K, 262144) }, 1 },
	{ "ret k 0", { S(BPF_RET | BPF_K, 0) }, 1 },
	{ "ja", { S(BPF_JMP | BPF_JA, 1), S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) }, 3 },
	{ "jeq k",
	  { S(BPF_LD | BPF_H | BPF_ABS, 12), J(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0x0800),
	    S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  4 },
	{ "jgt k",
	  { S(BPF_LD | BPF_H | BPF_ABS, 16), J(BPF_JMP | BPF_JGT | BPF_K, 1, 0, 100),
	    S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  4 },
	{ "jge k",
	  { S(BPF_LD | BPF_H | BPF_ABS, 16), J(BPF_JMP | BPF_JGE | BPF_K, 1, 0, 0x34),
	    S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  4 },
	{ "jgt k unsigned",
	  { S(BPF_LD | BPF_IMM, 0x80000000), J(BPF_JMP | BPF_JGT | BPF_K, 1, 0, 1),
	    S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  4 },
	{ "jset k",
	  { S(BPF_LD | BPF_B | BPF_ABS, 47), J(BPF_JMP | BPF_JSET | BPF_K, 0, 1, 0x02),
	    S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  4 },
	{ "jeq x",
	  { S(BPF_LDX | BPF_IMM, 0x86dd), S(BPF_LD | BPF_H | BPF_ABS, 12),
	    J(BPF_JMP | BPF_JEQ | BPF_X, 1, 0, 0), S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  5 },
	{ "jgt x",
	  { S(BPF_LDX | BPF_IMM, 0x100), S(BPF_LD | BPF_H | BPF_ABS, 16),
	    J(BPF_JMP | BPF_JGT | BPF_X, 1, 0, 0), S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  5 },
	{ "jge x",
	  { S(BPF_LDX | BPF_IMM, 0x34), S(BPF_LD | BPF_H | BPF_ABS, 16),
	    J(BPF_JMP | BPF_JGE | BPF_X, 1, 0, 0), S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  5 },
	{ "jset x",
	  { S(BPF_LDX | BPF_IMM, 0x12), S(BPF_LD | BPF_B | BPF_ABS, 47),
	    J(BPF_JMP | BPF_JSET | BPF_X, 1, 0, 0), S(BPF_RET | BPF_K, 1), S(BPF_RET | BPF_K, 2) },
	  5 },
#define ALU(op, k, x)                                                                             \
	{ "alu " #op " k " #k,                                                                    \
	  { S(BPF_LD | BPF_W | BPF_ABS, 26), S(BPF_ALU | op | BPF_K, k), S(BPF_RET | BPF_A, 0) }, \
	  3 },                                                                                    \
	{                                                                                         \
		"alu " #op " x " #x,                                                              \
			{ S(BPF_LDX | BPF_IMM, x), S(BPF_LD | BPF_W | BPF_ABS, 26),               \
			  S(BPF_ALU | op | BPF_X, 0), S(BPF_RET | BPF_A, 0) },                    \
			4                                                                         \
	}
	ALU(BPF_ADD, 0xfffffff0, 0x7fffffff),
	ALU(BPF_SUB, 0x12345, 0xffffffff),
	ALU(BPF_MUL, 0x10001, 0x80000001),
	ALU(BPF_DIV, 7, 3),
	ALU(BPF_DIV, 0x80000000, 0),
	ALU(BPF_MOD, 10, 0),
	ALU(BPF_MOD, 0xfffffffe, 255),
	ALU(BPF_AND, 0xff00ff00, 0xf0f0),
	ALU(BPF_OR, 0x0f, 0x80000000),
	ALU(BPF_XOR, 0xffffffff, 0x5a5a5a5a),
	ALU(BPF_LSH, 4, 31),
	ALU(BPF_LSH, 31, 1),
	ALU(BPF_RSH, 3, 30),
	ALU(BPF_RSH, 0, 0),
	{ "alu neg",
	  { S(BPF_LD | BPF_B | BPF_ABS, 23), S(BPF_ALU | BPF_NEG, 0), S(BPF_RET | BPF_A, 0) },
	  3 },
};

static void opcode_programs(const struct pkt *ps, int np)
{
	for (size_t i = 0; i < sizeof(OPCODE_PROGS) / sizeof(OPCODE_PROGS[0]); i++) {
		struct bpf_program prog = { .bf_len = (u_int)OPCODE_PROGS[i].n,
					    .bf_insns = (struct bpf_insn *)OPCODE_PROGS[i].p };

		if (!bpf_validate(prog.bf_insns, (int)prog.bf_len)) {
			fprintf(stderr, "FAIL opcode program '%s' does not pass bpf_validate\n",
				OPCODE_PROGS[i].name);
			failed++;
			continue;
		}
		check_program(OPCODE_PROGS[i].name, &prog, ps, np);
	}
}

/* --- 2. tcpdump expressions ----------------------------------------------------------------- */

static const char *EXPRESSIONS[] = {
	"udp",
	"tcp port 8080",
	"icmp",
	"host 198.18.0.2 and udp",
	"ip6",
	"udp and greater 500",
	"tcp[tcpflags] & tcp-syn != 0",
	"not udp",
	"net 198.18.0.0/24 and dst port 40000",
	"ether src 02:00:00:00:00:01",
	"icmp6 or (tcp and src port 8081)",
	"less 100 and not icmp6",
	"icmp[icmptype] == icmp-echo or (ip6 and ip6[7] == 64 and udp)",
	"ip[1] & 0xfc == 16 or ip6[0:2] & 0x0ff0 == 0x0200",
	"tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)",
	"udp dst portrange 7000-7001 and ip",
	"vlan",
	"vlan 100 and udp",
	"vlan and vlan 100",
	"ether proto 0x88a8",
	"arp",
	"arp and arp[7] = 1",
	"ether broadcast",
	"ether host 02:00:00:00:00:02",
	"ip6 protochain 6",
	"ip6 protochain 17",
	"ip protochain 17",
	"ip[6:2] & 0x1fff != 0",
	"ip[6] & 0x20 != 0",
	"udp[300:2] = 0x4142",
	"udp[300:2] = 0x4143",
	"ether[130] = 0x41",
	"ether[250:4] != 0",
	"ether[300] > 0",
	"ip6[500] < 200",
	"tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
	"tcp dst port 443 and tcp[13] == 2",
	"ip[2:2] / ip[1] > 0",
	"ip[2:2] % ip[1] = 0",
	"ip[2:2] % 7 = 3",
	"ip[2:2] << ip[0] > 0",
	"ip[4:2] >> ip[8] = 0",
	"ip[0] ^ 0x45 = 0",
	"ip[4:4] * 3 > 7",
	"-ip[8] & 0xff = 192",
	"ip[2:2] - 20 > 100",
	"len >= 60 and len <= 1500",
	"ip and ip[8] = 64",
	"ip6 and ip6[6] = 44",
	"ip multicast",
	"ether multicast",
	"tcp or udp or icmp or arp",
};

static void expression_programs(const struct pkt *ps, int np)
{
	pcap_t *h = pcap_open_dead(DLT_EN10MB, 262144);

	for (size_t i = 0; i < sizeof(EXPRESSIONS) / sizeof(EXPRESSIONS[0]); i++) {
		struct bpf_program prog;

		if (pcap_compile(h, &prog, EXPRESSIONS[i], 1, PCAP_NETMASK_UNKNOWN)) {
			fprintf(stderr, "FAIL '%s' does not compile: %s\n", EXPRESSIONS[i],
				pcap_geterr(h));
			failed++;
			continue;
		}
		check_program(EXPRESSIONS[i], &prog, ps, np);
		pcap_freecode(&prog);
	}
	pcap_close(h);
}

/* --- 3. random programs --------------------------------------------------------------------- */

static uint32_t rnd(void)
{
	return (uint32_t)random();
}

static uint32_t pick_k(void)
{
	switch (rnd() % 6) {
	case 0: return rnd();
	case 1: return rnd() % 32;
	case 2: return rnd() % 2 ? 0 : 0xffffffff;
	default: return rnd() % 420;
	}
}

/* a random program of n instructions (forward jumps only, ending in a return) */
static int random_program(struct bpf_insn *p, int max)
{
	static const uint16_t ops[] = {
		BPF_LD | BPF_W | BPF_ABS,
		BPF_LD | BPF_H | BPF_ABS,
		BPF_LD | BPF_B | BPF_ABS,
		BPF_LD | BPF_W | BPF_IND,
		BPF_LD | BPF_H | BPF_IND,
		BPF_LD | BPF_B | BPF_IND,
		BPF_LD | BPF_W | BPF_LEN,
		BPF_LDX | BPF_W | BPF_LEN,
		BPF_LDX | BPF_B | BPF_MSH,
		BPF_LD | BPF_IMM,
		BPF_LDX | BPF_IMM,
		BPF_LD | BPF_MEM,
		BPF_LDX | BPF_MEM,
		BPF_ST,
		BPF_STX,
		BPF_ALU | BPF_NEG,
		BPF_MISC | BPF_TAX,
		BPF_MISC | BPF_TXA,
		BPF_JMP | BPF_JA,
		BPF_RET | BPF_A,
		BPF_RET | BPF_K,
	};
	static const uint16_t alu[] = { BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_MOD,
					BPF_AND, BPF_OR,  BPF_XOR, BPF_LSH, BPF_RSH };
	static const uint16_t jmp[] = { BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET };
	int body = 1 + (int)(rnd() % (uint32_t)(max - 17)), n = 0;
	unsigned mem = 0;
	struct bpf_insn q[256];

	for (int i = 0; i < body; i++) {
		int left = body - i; /* instructions after this one, the final return included */
		struct bpf_insn *x = &q[i];
		uint32_t r = rnd() % 10;

		x->jt = x->jf = 0;
		x->k = pick_k();
		if (r < 3) {
			x->code = BPF_ALU | alu[rnd() % 10] | (rnd() % 2 ? BPF_X : BPF_K);
			if ((BPF_OP(x->code) == BPF_DIV || BPF_OP(x->code) == BPF_MOD) &&
			    BPF_SRC(x->code) == BPF_K && x->k == 0)
				x->k = 1; /* bpf_validate refuses a constant division by zero */
		} else if (r < 5) {
			x->code = BPF_JMP | jmp[rnd() % 4] | (rnd() % 2 ? BPF_X : BPF_K);
			x->jt = (uint8_t)(rnd() % (uint32_t)left);
			x->jf = (uint8_t)(rnd() % (uint32_t)left);
		} else {
			x->code = ops[rnd() % (sizeof(ops) / sizeof(ops[0]))];
			if (BPF_CLASS(x->code) == BPF_ST || BPF_CLASS(x->code) == BPF_STX ||
			    BPF_MODE(x->code) == BPF_MEM)
				x->k %= 16;
			if (BPF_MODE(x->code) == BPF_MEM)
				mem |= 1u << x->k;
			if (x->code == (BPF_JMP | BPF_JA))
				x->k = rnd() % (uint32_t)left;
			if (BPF_CLASS(x->code) == BPF_RET && rnd() % 2)
				x->k = rnd() % 3;
		}
	}
	q[body] = (struct bpf_insn){ BPF_RET | (rnd() % 2 ? BPF_A : BPF_K), 0, 0, rnd() % 2 };
	/* every scratch word read is written first (A is 0 at the start) */
	for (int m = 0; m < 16; m++)
		if (mem & (1u << m))
			p[n++] = (struct bpf_insn){ BPF_ST, 0, 0, (uint32_t)m };
	memcpy(p + n, q, (size_t)(body + 1) * sizeof(*q));
	return n + body + 1;
}

static void random_packet(struct pkt *p, const struct pkt *base)
{
	*p = *base;
	p->name = "random";
	for (int flips = (int)(rnd() % 8); flips > 0; flips--)
		if (p->len)
			p->b[rnd() % p->len] = (uint8_t)rnd();
	if (rnd() % 4 == 0)
		p->len = rnd() % (p->len + 1);
}

static void fuzz(const struct pkt *ps, int np, long programs)
{
	struct bpf_insn p[256];
	struct pkt rp[3];
	char what[64];
	int shown = 0;

	for (long i = 0; i < programs; i++) {
		struct bpf_program prog = { .bf_insns = p };

		prog.bf_len = (u_int)random_program(p, 48);
		if (!bpf_validate(p, (int)prog.bf_len))
			continue;
		for (int j = 0; j < 3; j++)
			random_packet(&rp[j], &ps[rnd() % (uint32_t)np]);
		snprintf(what, sizeof(what), "random program %ld", i);
		if (check_program(what, &prog, rp, 3) && ++shown <= 3) {
			for (u_int k = 0; k < prog.bf_len; k++)
				fprintf(stderr, "  { 0x%02x, %u, %u, 0x%08x }\n", p[k].code,
					p[k].jt, p[k].jf, p[k].k);
		}
	}
}

int main(void)
{
	static struct pkt ps[16];
	const char *seed_env = getenv("NDQ_FUZZ_SEED"), *count_env = getenv("NDQ_FUZZ_PROGRAMS");
	unsigned seed = seed_env ? (unsigned)strtoul(seed_env, NULL, 10) : 20261130u;
	long programs = count_env ? strtol(count_env, NULL, 10) : 3000;
	int np;

	if (geteuid() != 0) {
		fprintf(stderr,
			"cbpf_translator: needs root (the translations run in the kernel)\n");
		return getenv("CI") && strcmp(getenv("CI"), "true") == 0 ? 1 : 77;
	}
	if (harness_init()) {
		perror("cbpf_translator: creating the harness maps");
		return 1;
	}
	np = make_packets(ps);
	opcode_programs(ps, np);
	printf("opcodes: %ld runs, %ld failures\n", checked, failed);
	expression_programs(ps, np);
	printf("opcodes and expressions: %ld runs, %ld failures\n", checked, failed);
	srandom(seed);
	fuzz(ps, np, programs);
	printf("all: %ld runs compared with bpf_filter (fuzz seed %u, %ld programs), %ld failures\n",
	       checked, seed, programs, failed);
	return failed ? 1 : 0;
}
