/* startup.h - the parts of startup.c that need no libbpf or Lua types (pcap_filter.c, which
 * cannot see libbpf's struct bpf_program next to libpcap's, uses them too). */
#ifndef NETDEVQ_STARTUP_H
#define NETDEVQ_STARTUP_H

/* the heap while an object opens and loads */
void ndq_load_heap_begin(void);
void ndq_load_heap_end(void);

/* Waits for the pre-open thread, if one runs (its object stays for the next open). Every
 * fork() calls it first: a child forked while that thread holds an allocator lock (glibc's,
 * or a sanitizer's) would wait for it forever. */
void ndq_preopen_join(void);

#endif /* NETDEVQ_STARTUP_H */
