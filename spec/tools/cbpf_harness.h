/* cbpf_harness.h - see cbpf_harness.c */
#ifndef NETDEVQ_CBPF_HARNESS_H
#define NETDEVQ_CBPF_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#define HARNESS_FRAME 256    /* NDQ_PCAP_FRAME */
#define HARNESS_PKT_MAX 4096 /* the longest test packet */

int harness_init(void);
/* the fd of the loaded program, or -errno (the verifier's log in log) */
int harness_load(const uint64_t *body, size_t nbody, char *log, size_t loglen);
/* runs it on a packet: frame = pkt[0..caplen), data = pkt[0..linear) */
int harness_run(int fd, const uint8_t *pkt, uint32_t caplen, uint32_t wirelen, uint32_t linear,
		uint32_t *ret);

#endif
