/*
 * kmod_index_core.c - kmod's binary index (modules.*.bin) built and written in plain C
 * (kmod_index_core.h), and kmod's SuperFastHash; no Python here (_kmod_index.c binds it).
 *
 * The trie grows as depmod's index_insert() grows it: a node splits where its prefix and
 * the key differ, a value goes before the first one of equal or higher priority
 * (index_add_value()).  Nodes live in one array and refer to each other by number; the
 * prefixes and values are slices of one byte arena, so a split copies nothing.  Writing
 * walks the trie with an explicit stack (a key of any length cannot exhaust the C stack):
 * children first for kmod 30 (index_write__node()), each node before its children for
 * kmod 34.
 */
#include <stdlib.h>
#include <string.h>

#include "kmod_index_core.h"

static inline uint32_t *kid_nodes(const struct ix_node *n)
{
	return (uint32_t *)(n->kids + n->cap);
}

/* --- growth --------------------------------------------------------------------------- */

static int grow(void **p, uint32_t *cap, uint32_t need, size_t size)
{
	uint32_t c = *cap ? *cap : 64;
	void *np;

	if (need <= *cap)
		return 0;
	while (c < need) {
		if (c > UINT32_MAX / 2)
			goto nomem;
		c *= 2;
	}
	np = realloc(*p, (size_t)c * size);
	if (!np)
		goto nomem;
	*p = np;
	*cap = c;
	return 0;
nomem:
	return -1;
}

/* the arena offset of a copy of s[0..len) */
static int arena_add(struct kmod_index *ix, const uint8_t *s, size_t len, uint32_t *off)
{
	if (ix->alen + len > UINT32_MAX)
		return -1;
	if (ix->alen + len > ix->acap) {
		size_t c = ix->acap ? ix->acap : 4096;
		uint8_t *na;

		while (c < ix->alen + len)
			c *= 2;
		na = realloc(ix->arena, c);
		if (!na)
			return -1;
		ix->arena = na;
		ix->acap = c;
	}
	memcpy(ix->arena + ix->alen, s, len);
	*off = (uint32_t)ix->alen;
	ix->alen += len;
	return 0;
}

/* a new empty node's number, 0 on error (node 0 is the root, never new) */
static uint32_t node_new(struct kmod_index *ix)
{
	if (ix->nnodes == UINT32_MAX)
		return 0;
	if (grow((void **)&ix->nodes, &ix->capnodes, ix->nnodes + 1, sizeof(*ix->nodes)) < 0)
		return 0;
	memset(&ix->nodes[ix->nnodes], 0, sizeof(*ix->nodes));
	return ix->nnodes++;
}

static uint8_t *kids_alloc(uint16_t cap)
{
	return malloc((size_t)cap * 5);
}

/* child ch -> node number c at position pos of n's sorted children */
static int kid_insert(struct ix_node *n, unsigned pos, uint8_t ch, uint32_t c)
{
	uint32_t *nodes;

	if (n->nkids == n->cap) {
		uint16_t cap = n->cap ? n->cap * 2 : KIDS_MIN;
		uint8_t *k = kids_alloc(cap);

		if (!k)
			return -1;
		if (n->nkids) {
			memcpy(k, n->kids, n->nkids);
			memcpy(k + cap, kid_nodes(n), (size_t)n->nkids * 4);
		}
		free(n->kids);
		n->kids = k;
		n->cap = cap;
	}
	nodes = kid_nodes(n);
	memmove(n->kids + pos + 1, n->kids + pos, n->nkids - pos);
	memmove(nodes + pos + 1, nodes + pos, (size_t)(n->nkids - pos) * 4);
	n->kids[pos] = ch;
	nodes[pos] = c;
	n->nkids++;
	return 0;
}

/* --- index_insert() ------------------------------------------------------------------- */

/* index_insert()'s split: node n keeps prefix[0..j), a new child at prefix[j] the rest */
static int node_split(struct kmod_index *ix, uint32_t n, uint32_t j)
{
	uint8_t *k = kids_alloc(KIDS_MIN);
	struct ix_node *node, *child;
	uint32_t c;

	if (!k)
		return -1;
	c = node_new(ix);
	if (!c) {
		free(k);
		return -1;
	}
	node = &ix->nodes[n];
	child = &ix->nodes[c];
	child->prefix = node->prefix + j + 1;
	child->plen = node->plen - j - 1;
	child->values = node->values;
	child->nvalues = node->nvalues;
	child->kids = node->kids;
	child->nkids = node->nkids;
	child->cap = node->cap;
	k[0] = ix->arena[node->prefix + j];
	node->kids = k;
	node->cap = KIDS_MIN;
	node->nkids = 1;
	kid_nodes(node)[0] = c;
	node->plen = j;
	node->values = 0;
	node->nvalues = 0;
	return 0;
}

/* index_add_value(): before the first value of equal or higher priority; 1 when the
 * same value was already there */
static int add_value(struct kmod_index *ix, uint32_t n, const uint8_t *v, size_t vlen, uint32_t prio)
{
	uint32_t *link = &ix->nodes[n].values, i, str, nv;
	int dup = 0;

	for (i = *link; i; i = ix->vals[i].next)
		if (ix->vals[i].len == vlen && !memcmp(ix->arena + ix->vals[i].str, v, vlen)) {
			dup = 1;
			break;
		}
	if (ix->nvals == UINT32_MAX)
		return -1;
	if (arena_add(ix, v, vlen, &str) < 0)
		return -1;
	if (grow((void **)&ix->vals, &ix->capvals, ix->nvals + 1, sizeof(*ix->vals)) < 0)
		return -1;
	nv = ix->nvals++;
	ix->vals[nv].prio = prio;
	ix->vals[nv].str = str;
	ix->vals[nv].len = (uint32_t)vlen;
	link = &ix->nodes[n].values;
	while (*link && ix->vals[*link].prio < prio)
		link = &ix->vals[*link].next;
	ix->vals[nv].next = *link;
	*link = nv;
	ix->nodes[n].nvalues++;
	return dup;
}

int kix_insert(struct kmod_index *ix, const uint8_t *k, size_t klen, const uint8_t *v,
	       size_t vlen, uint32_t prio)
{
	uint32_t n = 0, c, off;
	size_t i = 0;

	for (;;) {
		struct ix_node *node = &ix->nodes[n];
		const uint8_t *p = ix->arena + node->prefix;
		uint32_t j = 0;
		unsigned pos;

		while (j < node->plen && i + j < klen && p[j] == k[i + j])
			j++;
		if (j < node->plen && node_split(ix, n, j) < 0)
			return -1;
		i += j;
		if (i == klen)
			return add_value(ix, n, v, vlen, prio);
		node = &ix->nodes[n];
		for (pos = 0; pos < node->nkids && node->kids[pos] < k[i]; pos++)
			;
		if (pos < node->nkids && node->kids[pos] == k[i]) {
			n = kid_nodes(node)[pos];
			i++;
			continue;
		}
		if (arena_add(ix, k + i + 1, klen - i - 1, &off) < 0)
			return -1;
		c = node_new(ix);
		if (!c)
			return -1;
		ix->nodes[c].prefix = off;
		ix->nodes[c].plen = (uint32_t)(klen - i - 1);
		if (kid_insert(&ix->nodes[n], pos, k[i], c) < 0)
			return -1;
		return add_value(ix, c, v, vlen, prio);
	}
}

static inline uint32_t node_flags(const struct ix_node *n)
{
	return (n->plen ? NODE_PREFIX : 0) | (n->nkids ? NODE_CHILDS : 0) |
	       (n->nvalues ? NODE_VALUES : 0);
}

static inline uint8_t *put32(uint8_t *p, uint32_t x)
{
	p[0] = x >> 24;
	p[1] = x >> 16;
	p[2] = x >> 8;
	p[3] = x;
	return p + 4;
}

/* the bytes one node takes: prefix and NUL, first, last and a slot per character in
 * first..last, the value count and per value its priority, string and NUL */
static uint64_t own_size(const struct kmod_index *ix, const struct ix_node *n)
{
	uint64_t size = n->plen ? n->plen + 1 : 0;
	uint32_t i;

	if (n->nkids)
		size += 2 + 4 * (uint64_t)(n->kids[n->nkids - 1] - n->kids[0] + 1);
	if (n->nvalues)
		size += 4;
	for (i = n->values; i; i = ix->vals[i].next)
		size += 4 + (uint64_t)ix->vals[i].len + 1;
	return size;
}

int kix_layout(const struct kmod_index *ix, int version, uint32_t *off, uint64_t *total)
{
	uint32_t nn = ix->nnodes, *stack, *order, sp = 0, no = 0, i, j;

	stack = malloc((size_t)nn * 2 * sizeof(uint32_t));
	if (!stack)
		return -1;
	order = stack + nn;
	/* the order nodes are written in; each node is pushed once */
	stack[sp++] = 0;
	while (sp) {
		const struct ix_node *n = &ix->nodes[stack[sp - 1]];
		const uint32_t *kn = kid_nodes(n);

		order[no++] = stack[--sp];
		if (version == 30) {
			/* node, children last to first: reversed, index_write__node()'s order */
			for (j = 0; j < n->nkids; j++)
				stack[sp++] = kn[j];
		} else {
			for (j = n->nkids; j--;)
				stack[sp++] = kn[j];
		}
	}
	if (version == 30)
		for (i = 0, j = no - 1; i < j; i++, j--) {
			uint32_t t = order[i];

			order[i] = order[j];
			order[j] = t;
		}
	*total = 12;
	for (i = 0; i < no; i++) {
		off[order[i]] = (uint32_t)*total;
		*total += own_size(ix, &ix->nodes[order[i]]);
		if (*total > NODE_MASK) {
			free(stack);
			return -2;
		}
	}
	free(stack);
	return 0;
}

void kix_write(const struct kmod_index *ix, const uint32_t *off, uint8_t *buf)
{
	uint32_t nn = ix->nnodes, i, j;

	put32(buf, INDEX_MAGIC);
	put32(buf + 4, INDEX_VERSION);
	put32(buf + 8, off[0] | node_flags(&ix->nodes[0]));
	for (i = 0; i < nn; i++) {
		const struct ix_node *n = &ix->nodes[i];
		uint8_t *p = buf + off[i];

		if (n->plen) {
			memcpy(p, ix->arena + n->prefix, n->plen);
			p += n->plen;
			*p++ = 0;
		}
		if (n->nkids) {
			const uint32_t *kn = kid_nodes(n);
			uint8_t first = n->kids[0], last = n->kids[n->nkids - 1];

			*p++ = first;
			*p++ = last;
			memset(p, 0, 4 * (size_t)(last - first + 1));
			for (j = 0; j < n->nkids; j++)
				put32(p + 4 * (n->kids[j] - first),
				      off[kn[j]] | node_flags(&ix->nodes[kn[j]]));
			p += 4 * (size_t)(last - first + 1);
		}
		if (n->nvalues) {
			p = put32(p, n->nvalues);
			for (j = n->values; j; j = ix->vals[j].next) {
				p = put32(p, ix->vals[j].prio);
				memcpy(p, ix->arena + ix->vals[j].str, ix->vals[j].len);
				p += ix->vals[j].len;
				*p++ = 0;
			}
		}
	}
}

int kix_init(struct kmod_index *ix)
{
	memset(ix, 0, sizeof(*ix));
	ix->nvals = 1;		/* vals[0] stands for "none" */
	if (grow((void **)&ix->vals, &ix->capvals, 1, sizeof(*ix->vals)) < 0 ||
	    grow((void **)&ix->nodes, &ix->capnodes, 1, sizeof(*ix->nodes)) < 0)
		return -1;
	memset(&ix->nodes[0], 0, sizeof(*ix->nodes));
	ix->nnodes = 1;
	return 0;
}

void kix_free(struct kmod_index *ix)
{
	uint32_t i;

	for (i = 0; i < ix->nnodes; i++)
		free(ix->nodes[i].kids);
	free(ix->nodes);
	free(ix->vals);
	free(ix->arena);
	memset(ix, 0, sizeof(*ix));
}

/* --- depmod's hash order -------------------------------------------------------------- */

/* SuperFastHash as kmod's shared/hash.c computes it: little-endian 16-bit loads, a signed
 * char in the tail, 32-bit arithmetic */
uint32_t kix_superfast(const uint8_t *key, size_t len)
{
	uint32_t h = (uint32_t)len, tmp;
	size_t rem = len & 3, i;

	for (i = len >> 2; i; i--, key += 4) {
		h += key[0] | (uint32_t)key[1] << 8;
		tmp = ((key[2] | (uint32_t)key[3] << 8) << 11) ^ h;
		h = (h << 16) ^ tmp;
		h += h >> 11;
	}
	switch (rem) {
	case 3:
		h += key[0] | (uint32_t)key[1] << 8;
		h ^= h << 16;
		h ^= (uint32_t)(int32_t)(int8_t)key[2] << 18;
		h += h >> 11;
		break;
	case 2:
		h += key[0] | (uint32_t)key[1] << 8;
		h ^= h << 11;
		h += h >> 17;
		break;
	case 1:
		h += (uint32_t)(int32_t)(int8_t)key[0];
		h ^= h << 10;
		h += h >> 1;
		break;
	}
	h ^= h << 3;
	h += h >> 5;
	h ^= h << 4;
	h += h >> 17;
	h ^= h << 25;
	h += h >> 6;
	return h;
}

