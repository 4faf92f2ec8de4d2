/* owner.bpf.h - socket-owner attribution: the owner_* fields (included by netdevq.bpf.c).
 *
 * The task on the CPU at net_dev_queue is often not the process a packet belongs to: datagrams
 * that waited for ARP/ND, TCP ACKs, retransmissions and data released when a window opens leave
 * from softirq or timers. The socket knows better. The programs here (loaded and attached only
 * when cfg.need has NDQ_NEED_OWNER: the loader leaves them out otherwise, so they cost nothing
 * then) learn who uses each socket, keyed by the struct sock address in the LRU hash `owners`.
 * All are raw tracepoints (fentry/kprobes would see syscalls before they act, but machines that
 * refuse BPF trampolines exist, this one among them, and kprobes may be compiled out):
 *
 *   sock_send_length      after every sock_sendmsg (send*, write, splice, sendfile, io_uring)
 *   sock_recv_length      after every sock_recvmsg (recv*, read)     (both since Linux 6.3)
 *   inet_sock_set_state   -> SYN_SENT: connect(); -> LISTEN: listen(), and the listener is
 *                         remembered by (netns, port) in `owner_listeners`; LISTEN -> SYN_RECV:
 *                         a new child sock, owned by its listener's owner until its process
 *                         uses it (so a server's first ACKs are its own); LISTEN -> CLOSE
 *   tcp_destroy_sock      a TCP sock goes: so does its entry
 *
 * Other socks leave the LRU when it is full; a freed sock's address reused by a new one is told
 * apart by the socket inode number stored with the owner. Kernel threads and kernel sockets
 * (sk_kern_sock) never get an owner, nor do AF_UNIX and AF_NETLINK sockets (no skb of theirs
 * reaches a device: they would only crowd the map).
 *
 * At net_dev_queue, owner_read resolves skb->sk: a full sock is itself, a request sock (SYN-ACK,
 * TCP_NEW_SYN_RECV) stands for its listener, a timewait sock has no owner. A sock missing from
 * `owners` is looked up by its socket inode in `owner_inodes`, which the loader fills once at
 * attach from /proc/PID/fd (sockets opened before netdevq started); a hit is cached in `owners`.
 * owner_cgroup and owner_uid come from the sock itself (sk_cgrp_data, sk_uid).
 */
#ifndef NETDEVQ_OWNER_BPF_H
#define NETDEVQ_OWNER_BPF_H

#define NDQ_AF_UNIX 1
#define NDQ_AF_NETLINK 16
#define NDQ_TCP_SYN_SENT 2
#define NDQ_TCP_SYN_RECV 3
#define NDQ_TCP_TIME_WAIT 6
#define NDQ_TCP_CLOSE 7
#define NDQ_TCP_LISTEN 10
#define NDQ_TCP_NEW_SYN_RECV 12
#define NDQ_PF_KTHREAD 0x00200000
#define NDQ_OWNER_MAX \
	65536 /* the loader shrinks the maps to 1 entry when owners are not asked for */

/* The kernel types read here are declared, with the others, in kernel.h. */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NDQ_OWNER_MAX);
	__type(key, __u64); /* struct sock address */
	__type(value, struct netdevq_owner);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NDQ_OWNER_MAX);
	__type(key, __u64); /* socket inode number */
	__type(value, struct netdevq_owner);
} owner_inodes SEC(".maps");

struct owner_listener_key {
	__u64 net; /* struct net address */
	__u64 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct owner_listener_key);
	__type(value, struct netdevq_owner);
} owner_listeners SEC(".maps");

/* Softirq handlers running on each CPU (softirq_entry/softirq_exit below). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} owner_softirq SEC(".maps");

/* Whether net_dev_queue runs for the task on the CPU (its own send, connect or close) rather
 * than in a softirq that merely borrowed it: softirq_entry/exit keep a per-CPU count. (The
 * preempt count would tell directly, but its per-CPU symbol is missing from kallsyms without
 * CONFIG_KALLSYMS_ALL, and BPF programs may run on a private stack, so the stack cannot tell.)
 * Interrupt handlers do not queue packets of sockets. */
static __always_inline bool owner_in_task(void)
{
	__u32 zero = 0, *n = bpf_map_lookup_elem(&owner_softirq, &zero);

	return n && *n == 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(ndq_owner_softirq_entry)
{
	__u32 zero = 0, *n = bpf_map_lookup_elem(&owner_softirq, &zero);

	if (n)
		(*n)++;
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(ndq_owner_softirq_exit)
{
	__u32 zero = 0, *n = bpf_map_lookup_elem(&owner_softirq, &zero);

	if (n && *n) /* attached in the middle of a softirq: its exit finds 0 */
		(*n)--;
	return 0;
}

/* skb->sk: a direct load in btf mode, from the raw-mode copy of the sk_buff otherwise. */
#define OWNER_SKB_SK(skb, copy, btf)             \
	((btf) ? ((struct sk_buff *)(skb))->sk : \
		 *(struct sock **)((copy) + bpf_core_field_offset(struct sk_buff, sk)))

/* The inode number of the sock's socket (0: none, e.g. after close or before accept). */
static __always_inline __u64 owner_ino(struct sock *sk, const bool direct)
{
	struct socket *so;
	struct inode *inode;
	struct file *file;

	if (direct) { /* a BTF pointer: plain loads; the socket's file holds the same inode */
		so = sk->sk_socket;
		file = so ? so->file : NULL;
		inode = file ? file->f_inode : NULL;
		return inode ? inode->i_ino : 0;
	}
	so = BPF_CORE_READ(sk, sk_socket);
	if (!so)
		return 0;
	inode = (void *)((char *)so - bpf_core_field_offset(struct socket_alloc, socket) +
			 bpf_core_field_offset(struct socket_alloc, vfs_inode));
	return BPF_CORE_READ(inode, i_ino);
}

/* What the sock itself says: its cgroup v2 id and uid (both fixed when it was created). */
static __always_inline void owner_sock_read(struct sock *sk, struct netdevq_owner *o,
					    const bool direct)
{
	struct cgroup *cg;

	o->uid = direct ? sk->sk_uid.val : BPF_CORE_READ(sk, sk_uid.val);
	o->cgroup = 0;
	if (bpf_core_field_exists(sk->sk_cgrp_data)) {
		if (direct) {
			cg = sk->sk_cgrp_data.cgroup;
			o->cgroup = cg ? cg->kn->id : 0;
		} else {
			o->cgroup = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
		}
	}
	o->sock_read = 1;
}

/* The task on the CPU uses sk: it owns it now. Fills *now; 0 when sk takes no owner. */
static __always_inline int owner_learn(struct sock *sk, struct netdevq_owner *now,
				       const bool direct)
{
	struct netdevq_owner *o;
	__u64 key = (__u64)sk, id, ino, kern;
	__u32 flags;
	__u16 family;

	if (!sk)
		return 0;
	id = current_pid_tgid();
	ino = owner_ino(sk, direct);
	o = bpf_map_lookup_elem(&owners, &key);
	if (o && o->sock_read && o->tid == (__u32)id && o->pid == id >> 32 && o->ino == ino) {
		*now = *o; /* this thread again (checked when it was learned): nothing to read */
		return 1;
	}
	if (direct) {
		family = sk->__sk_common.skc_family;
		kern = BPF_CORE_READ_BITFIELD(sk, sk_kern_sock);
		flags = ((struct task_struct *)bpf_get_current_task_btf())->flags;
	} else {
		family = BPF_CORE_READ(sk, __sk_common.skc_family);
		kern = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_kern_sock);
		flags = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), flags);
	}
	if (family == NDQ_AF_UNIX || family == NDQ_AF_NETLINK || kern || (flags & NDQ_PF_KTHREAD))
		return 0;
	/* no file: closed (its datagrams may still wait for a neighbour, and another process's
	 * netlink request may release them in its own context) or not accepted yet: nobody holds it */
	if (!ino)
		return 0;
	now->pid = id >> 32;
	now->tid = (__u32)id;
	now->ino = ino;
	bpf_get_current_comm(now->comm, sizeof(now->comm));
	owner_sock_read(sk, now, direct);
	bpf_map_update_elem(&owners, &key, now, BPF_ANY);
	return 1;
}

static __always_inline void owner_listener_key(struct sock *sk, struct owner_listener_key *k)
{
	k->net = (__u64)sk->__sk_common.skc_net.net; /* called from tp_btf programs only */
	k->port = sk->__sk_common.skc_num;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(ndq_owner_send, struct sock *sk)
{
	struct netdevq_owner now = {};

	owner_learn(sk, &now, true);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(ndq_owner_recv, struct sock *sk)
{
	struct netdevq_owner now = {};

	owner_learn(sk, &now, true);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ndq_owner_state, struct sock *sk, int oldstate, int newstate)
{
	struct netdevq_owner now = {}, *o;
	struct owner_listener_key k = {};
	__u64 key = (__u64)sk;

	if (newstate == NDQ_TCP_SYN_SENT) { /* connect(), in the caller's context */
		owner_learn(sk, &now, true);
	} else if (newstate == NDQ_TCP_LISTEN) { /* listen() */
		if (owner_learn(sk, &now, true)) {
			owner_listener_key(sk, &k);
			bpf_map_update_elem(&owner_listeners, &k, &now, BPF_ANY);
		}
	} else if (oldstate == NDQ_TCP_LISTEN && newstate == NDQ_TCP_SYN_RECV) {
		/* a child cloned from its listener (softirq): the listener's owner, no socket yet */
		owner_listener_key(sk, &k);
		o = bpf_map_lookup_elem(&owner_listeners, &k);
		if (o) {
			now = *o;
			now.ino = 0;
			bpf_map_update_elem(&owners, &key, &now, BPF_ANY);
		} else {
			bpf_map_delete_elem(&owners, &key);
		}
	} else if (oldstate == NDQ_TCP_LISTEN && newstate == NDQ_TCP_CLOSE) {
		owner_listener_key(sk, &k);
		bpf_map_delete_elem(&owner_listeners, &k);
	}
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(ndq_owner_destroy, struct sock *sk)
{
	__u64 key = (__u64)sk;

	bpf_map_delete_elem(&owners, &key);
	return 0;
}

/* ev->owner_* for skb->sk (all zero: no owner). Returns whether the packet is the kernel's own
 * (no socket, or one of the kernel's sockets: ARP, ND, MLD, ICMP errors, resets), which the task
 * the kernel made it for may claim (owner_who_filter); 0 for a user socket, owner known or not. */
static __always_inline bool owner_read(struct netdevq_event *ev, struct sock *sk, const bool direct)
{
	struct netdevq_owner now = {}, *o;
	__u64 key, ino, id;
	__u8 state;
	bool d, task;

	ev->owner_pid = 0;
	ev->owner_tid = 0;
	ev->owner_uid = 0;
	ev->owner_cgroup = 0;
	*(__u64 *)&ev->owner_comm[0] = 0;
	*(__u64 *)&ev->owner_comm[8] = 0;
	if (!sk)
		return true;
	state = direct ? sk->__sk_common.skc_state : BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state == NDQ_TCP_TIME_WAIT)
		return false;
	if (state == NDQ_TCP_NEW_SYN_RECV) {
		/* a union member: a plain number even to the verifier, so read as such */
		sk = BPF_CORE_READ(sk, __sk_common.skc_listener);
		if (!sk)
			return false;
	}
	d = direct && state != NDQ_TCP_NEW_SYN_RECV; /* sk is a BTF pointer: plain loads */
	task = state != NDQ_TCP_NEW_SYN_RECV && owner_in_task();
	key = (__u64)sk;
	o = task ? bpf_map_lookup_elem(&owners, &key) : NULL;
	if (task) {
		/* Task context: the sender itself, known already or learned now (the first datagram
		 * of a new socket too). Not when another live process owns the sock: a netlink
		 * request (ip neigh) may release packets that waited for a neighbour in the
		 * requester's context; the send/receive tracepoints are what change an owner. Nor
		 * a closed socket's (owner_learn). */
		id = current_pid_tgid();
		if (o && o->sock_read && o->tid == (__u32)id && o->pid == id >> 32)
			goto found;
	}
	/* the kernel's own sockets have no owner (outside the task: before the map lookup) */
	if (d ? BPF_CORE_READ_BITFIELD(sk, sk_kern_sock) :
		BPF_CORE_READ_BITFIELD_PROBED(sk, sk_kern_sock))
		return true; /* ICMP errors, resets, ND, MLD */
	if (task) {
		ino = owner_ino(sk, d);
		if (!(o && o->sock_read && o->pid != id >> 32 &&
		      !(o->ino && ino && o->ino != ino)) &&
		    owner_learn(sk, &now, direct)) {
			o = &now;
			goto found;
		}
	} else {
		o = bpf_map_lookup_elem(&owners, &key);
		ino = owner_ino(sk, d);
	}
	barrier_var(o); /* keep the null checks ahead of any address the compiler derives */
	if (o && o->ino && ino && o->ino != ino) { /* a freed sock's entry, its address reused */
		bpf_map_delete_elem(&owners, &key);
		o = NULL;
	}
	if (!o) { /* opened before netdevq started? */
		if (!ino)
			return false;
		o = bpf_map_lookup_elem(&owner_inodes, &ino);
		if (!o)
			return false;
		now = *o;
		owner_sock_read(sk, &now, d);
		bpf_map_update_elem(&owners, &key, &now, BPF_NOEXIST);
		o = &now;
	}
found:
	barrier_var(o);
	ev->owner_pid = o->pid;
	ev->owner_tid = o->tid;
	__builtin_memcpy(ev->owner_comm, o->comm, sizeof(ev->owner_comm));
	ev->owner_uid = o->uid;
	ev->owner_cgroup = o->cgroup;
	return false;
}

/* -p, --comm and -c (cfg.who_pid, cfg.who_comm, cfg.follow_pid) check the packet's sender: the
 * socket owner when it is known, else, for the kernel's own packets (kernel_made: owner_read),
 * the task on the CPU when the kernel made the packet in its context. Nobody sent a packet
 * queued from softirq without a known owner (a reply the kernel makes, a neighbour's
 * retransmission, a datagram released by an ARP answer: the task it interrupted is a bystander),
 * nor one of a user socket whose owner is unknown (closed before netdevq started, its datagrams
 * released by another process's netlink request): none of them selects it. */
static __always_inline int owner_who_filter(struct netdevq_event *ev, bool kernel_made)
{
	__u32 pid = ev->owner_pid;
	__u64 task_comm[2];
	const char *comm = ev->owner_comm;

	if (!cfg.follow_pid && !cfg.who_pid.n && !cfg.n_who_comm)
		return 1;
	if (!pid) {
		if (!kernel_made || !owner_in_task())
			return 0;
		pid = current_pid_tgid() >> 32;
	}
	if (cfg.follow_pid && !in_tree(pid))
		return 0;
	if (cfg.who_pid.n && !in_u32_set(&cfg.who_pid, pid))
		return 0;
	if (cfg.n_who_comm) {
		if (!ev->owner_pid) {
			bpf_get_current_comm(task_comm, sizeof(task_comm));
			comm = (const char *)task_comm;
		}
		if (!in_name_set(cfg.who_comm, cfg.n_who_comm, comm))
			return 0;
	}
	return 1;
}

#endif /* NETDEVQ_OWNER_BPF_H */
