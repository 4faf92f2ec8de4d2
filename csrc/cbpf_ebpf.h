/* cbpf_ebpf.h - classic BPF (what libpcap compiles a tcpdump expression into) translated into
 * the body of an eBPF function the kernel runs on each event (bpf/netdevq.bpf.c's pcap stubs,
 * whose bodies csrc/pcap_kernel.c replaces with it as the program loads).
 *
 * The function the translation is the body of:
 *
 *   int f(const struct ndq_pcap_frame *frame, __u32 caplen, __u32 wirelen, __u64 data,
 *         __u32 linear)
 *
 *   frame    the packet's first bytes as libpcap sees them (from the link header, an offloaded
 *            VLAN tag written back); may be NULL (then it returns 0)
 *   caplen   bytes valid in frame (at most NDQ_PCAP_FRAME)
 *   wirelen  the packet's length (BPF_LEN)
 *   data     kernel address of the packet's byte 0 for bytes past caplen: a load of bytes
 *            [caplen, linear) reads them with bpf_probe_read_kernel
 *   linear   bytes of the packet readable at data (the sk_buff's linear part)
 *
 * It returns what the cBPF program returns (non-zero: the packet matches). As in cBPF, a load
 * past the bytes there are (past linear: a GSO packet's paged fragments too) and a division by
 * zero end the program with 0: the packet does not match.
 *
 * Kept apart from libpcap's and libbpf's headers (their struct bpf_insn collide): the cBPF
 * program comes in the kernel's struct sock_filter layout (the same bytes as libpcap's
 * struct bpf_insn) and the eBPF one goes out as 8-byte instructions. */
#ifndef NETDEVQ_CBPF_EBPF_H
#define NETDEVQ_CBPF_EBPF_H

#include <stddef.h>
#include <stdint.h>

#define NDQ_PCAP_FRAME 256 /* bytes of struct ndq_pcap_frame (bpf/netdevq.bpf.c) */

struct sock_filter;

/* The eBPF instructions (struct bpf_insn, 8 bytes each) into *out (malloc'd, *n of them): 0, or
 * -1 with err set (an opcode outside classic BPF, a jump out of the program, no return at its
 * end: what bpf_validate refuses). */
int ndq_cbpf_to_ebpf(const struct sock_filter *prog, size_t len, uint64_t **out, size_t *n,
		     char *err, size_t errlen);

#endif
