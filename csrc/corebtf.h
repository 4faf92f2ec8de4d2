/* corebtf.h - the cut-down BTF libbpf's CO-RE relocations search (csrc/corebtf.c). */
#ifndef NDQ_COREBTF_H
#define NDQ_COREBTF_H

#include <stddef.h>
#include <linux/types.h>

struct btf;
struct bpf_object;
struct bpf_object_open_opts;

struct ndq_corebtf {
	int fd;		   /* the memfd holding it (-1: none) */
	char path[32];	   /* /proc/self/fd/N: the object's btf_custom_path */
	__u32 skb_id;	   /* the target's struct sk_buff (0: not found) */
	__u32 shinfo_id;   /* its struct skb_shared_info */
	__u32 kept, total; /* types kept, of the target's */
};

/* Opens the object from file, or from bytes/len. Without oopts->btf_custom_path (btf_path), its
 * CO-RE relocations search the kernel's types it needs, cut down into a memfd (c->fd; -1 where
 * that cannot be made: then libbpf searches the kernel's BTF whole, as it does btf_path's).
 * c->skb_id and c->shinfo_id come from the kernel's BTF, or btf_path's. NULL, errno set, when
 * the open fails. */
struct bpf_object *ndq_corebtf_open(struct ndq_corebtf *c, const char *file, const void *bytes,
				    size_t len, struct bpf_object_open_opts *oopts);
/* Closes the memfd (once the load has read it) */
void ndq_corebtf_end(struct ndq_corebtf *c);

#endif
