/* owner.c - loader side of socket-owner attribution (see bpf/owner.bpf.h and owner.h). */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "owner.h"

#define OWNER_PREFIX "ndq_owner_"
#define OWNER_LINKS_MAX 8

struct ndq_owner {
	struct bpf_link *links[OWNER_LINKS_MAX];
	int n;
};

static bool is_owner_prog(const struct bpf_program *p)
{
	return strncmp(bpf_program__name(p), OWNER_PREFIX, strlen(OWNER_PREFIX)) == 0;
}

void ndq_owner_config(struct netdevq_config *cfg)
{
	if (cfg->who_pid.n || cfg->n_who_comm || cfg->follow_pid)
		cfg->need |= NDQ_NEED_OWNER;
}

void ndq_owner_select(struct bpf_object *obj, const struct netdevq_config *cfg)
{
	bool on = cfg->need & NDQ_NEED_OWNER;
	struct bpf_program *p;
	struct bpf_map *m;

	bpf_object__for_each_program(p, obj)
		if (is_owner_prog(p))
			bpf_program__set_autoload(p, on);
	if (on)
		return;
	if ((m = bpf_object__find_map_by_name(obj, "owners")))
		bpf_map__set_max_entries(m, 1);
	if ((m = bpf_object__find_map_by_name(obj, "owner_inodes")))
		bpf_map__set_max_entries(m, 1);
	if ((m = bpf_object__find_map_by_name(obj, "owner_listeners")))
		bpf_map__set_max_entries(m, 1);
}

/* /proc/PID/comm into comm (NUL-padded); false when the process is gone. */
static bool read_comm(int pid_dir, char comm[NDQ_COMM_LEN])
{
	int fd = openat(pid_dir, "comm", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	memset(comm, 0, NDQ_COMM_LEN);
	if (fd < 0)
		return false;
	n = read(fd, comm, NDQ_COMM_LEN);
	close(fd);
	if (n <= 0)
		return false;
	if (comm[n - 1] == '\n') /* at most 15 characters and a newline (TASK_COMM_LEN) */
		n--;
	memset(comm + n, 0, NDQ_COMM_LEN - (size_t)n);
	return true;
}

/* Every socket inode in /proc/PID/fd/ -> { pid, pid, comm } (the first process seen keeps a
 * socket that several share). Processes and fds that vanish meanwhile are skipped. */
static void scan_pid(int map_fd, int proc_fd, const char *name, __u32 pid)
{
	struct netdevq_owner o = { .pid = pid, .tid = pid };

	char link[64];
	struct dirent *de;
	int pid_dir, fd_dir;
	DIR *fds;

	pid_dir = openat(proc_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pid_dir < 0)
		return;
	fd_dir = openat(pid_dir, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd_dir < 0 || !read_comm(pid_dir, o.comm) || !(fds = fdopendir(fd_dir))) {
		if (fd_dir >= 0)
			close(fd_dir);
		close(pid_dir);
		return;
	}
	while ((de = readdir(fds))) {
		unsigned long long ino;
		ssize_t n;

		if (de->d_name[0] == '.')
			continue;
		n = readlinkat(dirfd(fds), de->d_name, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (sscanf(link, "socket:[%llu]", &ino) == 1) {
			__u64 key = ino;

			o.ino = ino;
			/* EEXIST (shared) and E2BIG (map full) leave the socket as it is */
			bpf_map_update_elem(map_fd, &key, &o, BPF_NOEXIST);
		}
	}
	closedir(fds);
	close(pid_dir);
}

static void scan_proc(int map_fd)
{
	DIR *proc = opendir("/proc");
	struct dirent *de;

	if (!proc)
		return; /* no /proc: sockets are learned as they are used */
	while ((de = readdir(proc))) {
		char *end;
		unsigned long pid;

		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		pid = strtoul(de->d_name, &end, 10);
		if (*end || pid == 0 || pid > 0xffffffffUL)
			continue;
		scan_pid(map_fd, dirfd(proc), de->d_name, (__u32)pid);
	}
	closedir(proc);
}

int ndq_owner_attach(struct ndq_owner **owner, struct bpf_object *obj, char *msg, size_t msglen)
{
	struct ndq_owner *o;
	struct bpf_program *p;
	struct bpf_map *inodes;

	*owner = NULL;
	inodes = bpf_object__find_map_by_name(obj, "owner_inodes");
	bpf_object__for_each_program(p, obj)
		if (is_owner_prog(p) && bpf_program__autoload(p))
			break;
	if (!p || !inodes)
		return 0; /* not asked for */
	o = calloc(1, sizeof(*o));
	if (!o) {
		snprintf(msg, msglen, "out of memory");
		return -1;
	}
	/* softirq_entry last: attached before softirq_exit, a softirq that enters between the two
	 * attaches would leave its CPU's nesting count at 1 for good (never "in task" again) */
	for (int pass = 0; pass < 2; pass++)
		bpf_object__for_each_program(p, obj) {
			bool entry = strcmp(bpf_program__name(p), "ndq_owner_softirq_entry") == 0;

			if (!is_owner_prog(p) || !bpf_program__autoload(p) || entry != (pass == 1))
				continue;
			if (o->n == OWNER_LINKS_MAX || !(o->links[o->n] = bpf_program__attach(p))) {
				int err = o->n == OWNER_LINKS_MAX ? E2BIG : errno;

				snprintf(
					msg, msglen,
					"attaching the socket-owner program %s failed (%s): owner fields, "
					"-p, --comm and -c need the sock tracepoints of Linux 6.3 or later",
					bpf_program__section_name(p), strerror(err));
				ndq_owner_free(o);
				return -1;
			}
			o->n++;
		}
	/* after the programs: a socket opened from here on is learned when it is used */
	scan_proc(bpf_map__fd(inodes));
	*owner = o;
	return 0;
}

void ndq_owner_free(struct ndq_owner *owner)
{
	if (!owner)
		return;
	for (int i = 0; i < owner->n; i++)
		bpf_link__destroy(owner->links[i]);
	free(owner);
}
