/*
 * kmod_index_core.h - kmod's binary index (libkmod-index.c's on-disk trie) as depmod
 * builds and writes it, in plain C: the core of fastlkm.depmod._kmod_index.
 * Functions returning int give -1 when memory runs out.
 */
#ifndef FASTLKM_KMOD_INDEX_CORE_H
#define FASTLKM_KMOD_INDEX_CORE_H

#include <stddef.h>
#include <stdint.h>

#define INDEX_MAGIC 0xB007F457u
#define INDEX_VERSION 0x00020001u
#define NODE_PREFIX 0x80000000u
#define NODE_VALUES 0x40000000u
#define NODE_CHILDS 0x20000000u
#define NODE_MASK 0x0FFFFFFFu
#define KIDS_MIN 4

struct ix_node {
	uint32_t prefix;	/* offset of the prefix in the arena */
	uint32_t plen;
	uint32_t values;	/* first value (a number in vals), 0 for none */
	uint32_t nvalues;
	uint8_t *kids;		/* cap chars in ascending order, then cap node numbers */
	uint16_t nkids, cap;
};

struct ix_value {
	uint32_t prio, str, len;
	uint32_t next;		/* 0 ends the list (vals[0] is never used) */
};

struct kmod_index {
	struct ix_node *nodes;
	uint32_t nnodes, capnodes;
	struct ix_value *vals;
	uint32_t nvals, capvals;
	uint8_t *arena;
	size_t alen, acap;
};

int kix_init(struct kmod_index *ix);
void kix_free(struct kmod_index *ix);
/* index_insert(): 1 when the same value was already there, else 0 */
int kix_insert(struct kmod_index *ix, const uint8_t *k, size_t klen, const uint8_t *v,
	       size_t vlen, uint32_t prio);
/* each node's offset in the file of kmod *version* (30 or 34), and the file's size; -2
 * when it exceeds kmod's 28-bit node offsets.  off: a slot per node */
int kix_layout(const struct kmod_index *ix, int version, uint32_t *off, uint64_t *total);
/* the file into buf (of kix_layout()'s total bytes) */
void kix_write(const struct kmod_index *ix, const uint32_t *off, uint8_t *buf);
/* SuperFastHash as kmod's shared/hash.c computes it */
uint32_t kix_superfast(const uint8_t *key, size_t len);

#endif
