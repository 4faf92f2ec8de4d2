/* cbpf_harness.c - runs a translated cBPF program (csrc/cbpf_ebpf.c) in the kernel for
 * spec/tools/test_cbpf.c: a socket filter that calls the translation as a function with the
 * frame, caplen, wirelen, data and linear of cbpf_ebpf.h, run with BPF_PROG_TEST_RUN.
 *
 * The frame and the whole packet sit in array maps; `data` is the kernel address of the packet
 * map's value (read as a number with bpf_probe_read_kernel, so the translation's loads past
 * caplen really go through the helper). Kept apart from libpcap (struct bpf_insn collides). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>

#include "cbpf_harness.h"

struct params {
	__u32 caplen, wirelen, linear, pad;
};

static int frame_fd = -1, pkt_fd = -1, params_fd = -1;

static struct bpf_insn mk(__u8 code, __u8 dst, __u8 src, __s16 off, __s32 imm)
{
	struct bpf_insn i = { .code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm };
	return i;
}

int harness_init(void)
{
	frame_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "cbpf_frame", 4, HARNESS_FRAME, 1, NULL);
	pkt_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "cbpf_pkt", 4, HARNESS_PKT_MAX, 1, NULL);
	params_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "cbpf_params", 4, sizeof(struct params), 1,
				   NULL);
	return frame_fd < 0 || pkt_fd < 0 || params_fd < 0 ? -1 : 0;
}

/* r0 = the value of map fd's only entry (or exit 0) */
static size_t lookup(struct bpf_insn *p, size_t n, int fd)
{
	p[n++] = mk(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, fd);
	p[n++] = mk(0, 0, 0, 0, 0);
	p[n++] = mk(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0);
	p[n++] = mk(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4);
	p[n++] = mk(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
	p[n++] = mk(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 2, 0);
	p[n++] = mk(BPF_ALU | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0);
	p[n++] = mk(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
	return n;
}

int harness_load(const uint64_t *body, size_t nbody, char *log, size_t loglen)
{
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_buf = log, .log_size = (unsigned)loglen,
		    .log_level = 1);
	size_t cap = nbody + 64, n = 0;
	struct bpf_insn *p = calloc(cap, sizeof(*p));
	int fd;

	if (!p)
		return -ENOMEM;
	p[n++] = mk(BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0);
	n = lookup(p, n, pkt_fd);
	p[n++] = mk(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_0, -16, 0);
	p[n++] = mk(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_10, 0, 0);
	p[n++] = mk(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_1, 0, 0, -24);
	p[n++] = mk(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, 8);
	p[n++] = mk(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
	p[n++] = mk(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -16);
	p[n++] = mk(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_probe_read_kernel);
	n = lookup(p, n, params_fd);
	p[n++] = mk(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_0, 0, 0);
	n = lookup(p, n, frame_fd);
	p[n++] = mk(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_0, 0, 0);
	p[n++] = mk(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_6, 0, 0);
	p[n++] = mk(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_3, BPF_REG_6, 4, 0);
	p[n++] = mk(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_5, BPF_REG_6, 8, 0);
	p[n++] = mk(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_4, BPF_REG_10, -24, 0);
	p[n++] = mk(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_CALL, 0, 1);
	p[n++] = mk(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
	memcpy(p + n, body, nbody * sizeof(*p));
	n += nbody;
	if (log && loglen)
		log[0] = '\0';
	fd = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, "cbpf_test", "GPL", p, n, &opts);
	if (fd < 0 && log && loglen && !log[0]) {
		/* the verifier log can be too small for a long program: retry without it */
		opts.log_buf = NULL;
		opts.log_size = 0;
		opts.log_level = 0;
		fd = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, "cbpf_test", "GPL", p, n, &opts);
	}
	free(p);
	return fd < 0 ? -errno : fd;
}

int harness_run(int fd, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen, uint32_t linear,
		uint32_t *ret)
{
	static uint8_t frame[HARNESS_FRAME], whole[HARNESS_PKT_MAX];
	unsigned char data[64] = { 0 };
	struct params pa = { .caplen = caplen, .wirelen = wirelen, .linear = linear };
	__u32 key = 0;
	LIBBPF_OPTS(bpf_test_run_opts, topts, .data_in = data, .data_size_in = sizeof(data),
		    .repeat = 1);

	if (caplen > HARNESS_FRAME || linear > HARNESS_PKT_MAX)
		return -EINVAL;
	/* bytes past what is valid hold garbage: the translation must not read them */
	memset(frame, 0xa5, sizeof(frame));
	memset(whole, 0x5a, sizeof(whole));
	memcpy(frame, pkt, caplen);
	memcpy(whole, pkt, linear);
	if (bpf_map_update_elem(frame_fd, &key, frame, 0) ||
	    bpf_map_update_elem(pkt_fd, &key, whole, 0) ||
	    bpf_map_update_elem(params_fd, &key, &pa, 0) || bpf_prog_test_run_opts(fd, &topts))
		return -errno;
	*ret = topts.retval;
	return 0;
}
