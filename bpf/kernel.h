/* kernel.h - the few kernel types netdevq reads, declared for CO-RE.
 *
 * Only the members used are listed; preserve_access_index makes every access a relocation that
 * libbpf resolves against the running kernel's BTF at load time, so member order and offsets
 * here do not matter and anonymous unions/struct groups in the real sk_buff are matched by name.
 * Keeping this small (instead of a generated vmlinux.h) lets the object build on a machine
 * without BTF and keeps the build reproducible.
 */
#ifndef NETDEVQ_KERNEL_H
#define NETDEVQ_KERNEL_H

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct sock;
struct socket;

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct net_device {
	char name[16];
	int ifindex;
	unsigned short type;
	possible_net_t nd_net;
};

struct sk_buff {
	struct net_device *dev;
	struct sock *sk;
	unsigned int len;
	unsigned int data_len;
	__u16 mac_len;
	__u16 hdr_len;
	__u16 queue_mapping;
	__u32 priority;
	__u32 hash;
	__u32 mark;
	__be16 protocol;
	__u16 transport_header;
	__u16 network_header;
	__u16 mac_header;
	__be16 vlan_proto; /* the offloaded VLAN tag (0: none) */
	__u16 vlan_tci;
	unsigned int tail; /* sk_buff_data_t: an offset from head on 64-bit kernels */
	unsigned int end;
	unsigned char *head;
	unsigned char *data;
};

struct skb_shared_info {
	unsigned short gso_size;
	unsigned short gso_segs;
};

struct signal_struct {
	struct {
		int counter;
	} live; /* atomic_t: threads of the group not yet through do_exit */
};

struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp; /* the task's cgroup in the default (v2) hierarchy */
};

struct task_struct {
	unsigned int flags;
	int pid;
	int tgid;
	char comm[16];
	struct css_set *cgroups;
	struct signal_struct *signal;
};

/* the socket owner (owner.bpf.h) */
struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__u16 skc_num; /* local port, host order */
	possible_net_t skc_net;
	struct sock *skc_listener; /* request socks: the listener */
};

struct sock_cgroup_data {
	struct cgroup *cgroup;
};

typedef struct {
	__u32 val;
} kuid_t;

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	kuid_t sk_uid;
	struct sock_cgroup_data sk_cgrp_data;
	__u8 sk_kern_sock : 1;
};

struct inode {
	unsigned long i_ino;
};

struct file {
	struct inode *f_inode;
};

struct socket {
	struct sock *sk;
	struct file *file;
};

struct socket_alloc { /* sockfs allocates the socket and its inode together */
	struct socket socket;
	struct inode vfs_inode;
};

#pragma clang attribute pop

/* What the running kernel's verifier allows, as enum values in its BTF (checked with
 * bpf_core_enum_value_exists): bpf_rdonly_cast(p, 0) gives read-only untrusted memory, loads
 * at any offset that cannot fault (Linux 6.16+). */
enum bpf_features {
	BPF_FEAT_RDONLY_CAST_TO_VOID = 0,
};

#endif /* NETDEVQ_KERNEL_H */
