/* sets.c - see sets.h */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/bpf.h>

#include "sets.h"

/* the members of struct netdevq_config a large set may be (the filter's pushdown puts them
 * there; a key naming anything else only ever sits in the hash map, as before) */
static const size_t SET_MEMBERS[] = {
	offsetof(struct netdevq_config, ifindex),  offsetof(struct netdevq_config, pid),
	offsetof(struct netdevq_config, tid),	   offsetof(struct netdevq_config, netns),
	offsetof(struct netdevq_config, proto),	   offsetof(struct netdevq_config, ethertype),
	offsetof(struct netdevq_config, mark),	   offsetof(struct netdevq_config, queue),
	offsetof(struct netdevq_config, priority), offsetof(struct netdevq_config, sport),
	offsetof(struct netdevq_config, dport),	   offsetof(struct netdevq_config, port),
};
#define N_MEMBERS (sizeof(SET_MEMBERS) / sizeof(SET_MEMBERS[0]))

static struct netdevq_set_key key_at(const char *values, size_t i)
{
	struct netdevq_set_key k;

	memcpy(&k, values + i * sizeof(k), sizeof(k));
	return k;
}

/* the set at offset off of cfg, or NULL when no set may be there */
static const struct netdevq_u32_set *set_at(const struct netdevq_config *cfg, __u32 off)
{
	for (size_t i = 0; i < N_MEMBERS; i++)
		if (SET_MEMBERS[i] == off)
			return (const void *)((const char *)cfg + off);
	return NULL;
}

static bool in_bitmap(const struct netdevq_config *cfg, struct netdevq_set_key k)
{
	const struct netdevq_u32_set *s = set_at(cfg, k.set);

	return s && s->n == NDQ_SET_IN_BITS;
}

int ndq_sets_plan(struct netdevq_config *cfg, const char *values, size_t len)
{
	size_t n = len / sizeof(struct netdevq_set_key);
	int bitmaps = 0;

	for (size_t m = 0; m < N_MEMBERS; m++) {
		struct netdevq_u32_set *s = (void *)((char *)cfg + SET_MEMBERS[m]);
		bool small = true;

		if (s->n == NDQ_SET_IN_BITS) /* only this function makes bitmaps */
			s->n = NDQ_SET_IN_MAP;
		if (s->n != NDQ_SET_IN_MAP)
			continue;
		for (size_t i = 0; i < n && small; i++) {
			struct netdevq_set_key k = key_at(values, i);

			small = k.set != SET_MEMBERS[m] || k.v <= 0xffff;
		}
		if (small) {
			s->n = NDQ_SET_IN_BITS;
			s->v[0] = (__u32)bitmaps++;
		}
	}
	return bitmaps;
}

void ndq_sets_size(struct bpf_object *obj, const struct netdevq_config *cfg, const char *values,
		   size_t len, int bitmaps)
{
	size_t n = len / sizeof(struct netdevq_set_key), hashed = 0;

	for (size_t i = 0; i < n; i++)
		hashed += !in_bitmap(cfg, key_at(values, i));
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "sets"),
				 hashed ? (__u32)hashed : 1);
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "set_bits"),
				 bitmaps ? (__u32)bitmaps * NDQ_SET_BITS_WORDS : 1);
}

int ndq_sets_fill(struct bpf_object *obj, const struct netdevq_config *cfg, const char *values,
		  size_t len, int bitmaps, char *msg, size_t msglen)
{
	int fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "sets"));
	int bits_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "set_bits"));
	size_t n = len / sizeof(struct netdevq_set_key),
	       words = (size_t)bitmaps * NDQ_SET_BITS_WORDS;
	__u64 *bits = words ? calloc(words, sizeof(*bits)) : NULL;
	__u8 one = 1;
	int rc = 0;

	if (words && !bits) {
		snprintf(msg, msglen, "setting the kernel filter's sets failed (out of memory)");
		return -1;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		struct netdevq_set_key k = key_at(values, i);

		if (in_bitmap(cfg, k))
			bits[set_at(cfg, k.set)->v[0] * NDQ_SET_BITS_WORDS + k.v / 64] |=
				1ULL << (k.v % 64);
		else if (bpf_map_update_elem(fd, &k, &one, BPF_ANY))
			rc = -1;
	}
	for (__u32 w = 0; w < words && !rc; w++)
		if (bits[w] && bpf_map_update_elem(bits_fd, &w, &bits[w], BPF_ANY))
			rc = -1;
	if (rc)
		snprintf(msg, msglen, "setting the kernel filter's sets failed (%s)",
			 strerror(errno));
	free(bits);
	return rc;
}
