/*
 * _native.c - the native lookup engine: replays a loading session over the layouts the
 * Python strategies build, counting what replay.py counts, and timing the lookups.
 *
 * The search is find_symbol()'s (kernel/module/main.c): vmlinux's tables, then each
 * loaded module's tables, newest module first; a GPL-only table is not searched for a
 * module without a GPL-compatible license, and an entry that is GPL-only by its
 * __kflagstab byte is not found in its table (find_exported_symbol_in_section()).
 *
 * Every lookup function is compiled twice, with a constant `count`: the counting pass
 * fills the counters of base.Counters and the results, the timed passes count nothing.
 *
 * The arrays come packed by native.py (its docstring describes them) and are checked
 * once before any pass so that a bad index cannot take us out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * The hashes, mixes and ranges are the patched kernel's, from the lookup core both
 * compile (ksymhash.h); its lookups take names from a plain array here.
 */
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#define KSYMHASH_NAME(ctx, i) (((const char *const *)(ctx))[i])
#define KSYMHASH_STRCMP(a, b) strcmp(a, b)
#include "ksymhash.h"

/* as the kernel's compiler_types.h; glibc's sys/cdefs.h may have it already */
#ifndef __always_inline
#if defined(__GNUC__)
#define __always_inline inline __attribute__((__always_inline__))
#else
#define __always_inline inline
#endif
#endif

enum { K_LINEAR, K_BSEARCH, K_SYSV, K_GNU, K_PERFECT, K_GLOBAL, K_NR };
enum { H_NONE, H_ELF, H_DJB };
enum { NOT_GPL_ONLY, GPL_ONLY, PER_ENTRY };
enum { EV_LOAD = 1, EV_UNLOAD = 2, EV_LOOKUP = 3 };

#define KSYM_FLAG_GPL_ONLY 1
#define SLOT_EMPTY 0xFFFFFFFFu
#define NOT_FOUND (-1L)

/* the fields of base.Counters, in its order */
struct counters {
	uint64_t lookups, found, tables_visited, strcmp, bytes_compared, hashes;
	uint64_t bucket_steps, chain_steps, bloom_rejections;
};

#define COUNT(c, field) do { if (count) (c)->field++; } while (0)

/* one export table, with its strategy's layout */
struct ktable {
	uint32_t first;			/* its first entry in the per-entry arrays */
	const uint32_t *name_off;	/* per entry: its name in strings[] */
	const uint8_t *flags;		/* per entry: __kflagstab byte */
	const uint32_t *layout;
	uint32_t num;
	uint32_t license;
};

/* a node of the global hash: {hash, next, entry} as a kernel would keep it (the entry
 * being its table and index here), one cache line per chain step */
struct gnode {
	uint32_t hash, next;
	int32_t table;			/* -1: a free node */
	uint32_t entry;
};

/* the global strategy's chained hash (space.GlobalSpace) */
struct ghash {
	uint32_t nbuckets;
	uint32_t *buckets;
	struct gnode *nodes;
	uint32_t nnodes;		/* nodes ever allocated, node 0 included */
	uint32_t *free;			/* LIFO of free nodes */
	uint32_t nfree;
	uint32_t count;
	uint32_t *ehash;		/* per entry: the hash of its name */
	uint32_t *owned;		/* per module slot: the nodes of its last load */
	uint32_t *owned_off;
	uint8_t *owned_valid;
	uint8_t *dying;
};

struct engine {
	int kind, hashkind, precomputed;
	const char *strings;
	const uint32_t *name_off;	/* per entry, all tables */
	struct ktable *tables;
	uint32_t ntables, nvmlinux, nentries;
	const uint32_t *mods;		/* per module slot: first table, number of tables */
	uint32_t nmods;
	const uint32_t *events;		/* per event: op, arg, gplok */
	uint32_t nevents, nlookups, nloads;
	const char *lnames;
	uint32_t *lhash;		/* per lookup: the precomputed hash */
	uint32_t *live;			/* loaded module slots, newest first */
	uint32_t nlive;
	struct ghash g;
	int32_t *res_table;
	uint32_t *res_index;
	uint64_t ns_lookup, ns_update;
};

/* --- names and hashes ------------------------------------------------------------- */

/* strcmp() of lib/string.c, counting the calls and the bytes it examines */
static __always_inline int kstrcmp(const char *cs, const char *ct, const int count,
				   struct counters *c)
{
	unsigned char c1, c2;

	COUNT(c, strcmp);
	while (1) {
		c1 = *cs++;
		c2 = *ct++;
		COUNT(c, bytes_compared);
		if (c1 != c2)
			return c1 < c2 ? -1 : 1;
		if (!c1)
			break;
	}
	return 0;
}




/*
 * x % d without a division, from m = 2^64 / d + 1 (Lemire's fastmod; the kernel's
 * reciprocal_div serves the same purpose): the hash tables' bucket counts are not
 * powers of two, and a division per table visited would dominate the cheap paths.
 */
static __always_inline uint32_t fastmod(uint32_t x, const uint32_t *m, uint32_t d)
{
	uint64_t low = (((uint64_t)m[1] << 32) | m[0]) * x;

	return (uint32_t)(((unsigned __int128)low * d) >> 64);
}

/* the i-th u16 of an array packed two to a u32 word, the first in the low half */
static __always_inline uint32_t load16(const uint32_t *base, uint32_t i)
{
	return (base[i >> 1] >> ((i & 1) * 16)) & 0xFFFF;
}

/* a 64-bit Bloom word stored as its low and high u32 */
static __always_inline uint64_t load64(const uint32_t *p)
{
	return ((uint64_t)p[1] << 32) | p[0];
}


/* what a lookup computes once from the name's hash, for every table it visits */
struct lkey {
	uint32_t h;
	uint32_t mixed;			/* perfect: ksymhash_mix32(h), the pilot bucket's key */
	uint32_t bloom_a;		/* perfect: its Bloom word's key */
	uint64_t bloom_bits;		/* perfect: its two Bloom bits */
};

static __always_inline void make_key(struct lkey *k, uint32_t h, const int kind)
{
	uint32_t b;

	k->h = h;
	if (kind == K_PERFECT) {
		k->mixed = ksymhash_mix32(h);
		k->bloom_a = ksymhash_mix32(h ^ 0xA5A5A5A5u);
		b = ksymhash_mix32(k->bloom_a);
		k->bloom_bits = (1ULL << (b & 63)) | (1ULL << ((b >> 6) & 63));
	}
}

static inline const char *entry_name(const struct engine *e, const struct ktable *t,
				     uint32_t i)
{
	return e->strings + t->name_off[i];
}

/* Table.visible(): may a module with (gplok) or without a GPL license use entry i? */
static __always_inline int visible(const struct ktable *t, uint32_t i, int gplok)
{
	if (gplok)
		return 1;
	if (t->license == PER_ENTRY)
		return !(t->flags[i] & KSYM_FLAG_GPL_ONLY);
	return t->license != GPL_ONLY;
}

/* --- per-table lookups: entry index or NOT_FOUND ------------------------------------ */

/* layout: none */
static __always_inline long find_linear(const struct engine *e, const struct ktable *t,
					const char *name, const int count, struct counters *c)
{
	uint32_t i;

	for (i = 0; i < t->num; i++)
		if (kstrcmp(name, entry_name(e, t, i), count, c) == 0)
			return i;
	return NOT_FOUND;
}

/* bsearch() of lib/bsearch.c; layout: has_order, order[num] when has_order */
static __always_inline long find_bsearch(const struct engine *e, const struct ktable *t,
					 const uint32_t *lay, const char *name,
					 const int count, struct counters *c)
{
	const uint32_t *order = lay[0] ? lay + 1 : NULL;
	uint32_t base = 0, num = t->num, pivot, i;
	int r;

	while (num > 0) {
		pivot = base + (num >> 1);
		i = order ? order[pivot] : pivot;
		r = kstrcmp(name, entry_name(e, t, i), count, c);
		if (r == 0)
			return i;
		if (r > 0) {
			base = pivot + 1;
			num--;
		}
		num >>= 1;
	}
	return NOT_FOUND;
}

/*
 * a SysV .hash; layout: nbucket, its reciprocal (2 words), bucket[nbucket], then per
 * entry {chain link, hash}: the hash stored beside each export, so a walk reads one
 * cache line per step
 */
static __always_inline long find_sysv(const struct engine *e, const struct ktable *t,
				      const char *name, uint32_t h, const int count,
				      struct counters *c)
{
	const uint32_t *lay = t->layout;
	uint32_t nbucket = lay[0];
	const uint32_t *bucket = lay + 3;
	const uint32_t *ent = bucket + nbucket;
	uint32_t j, i;

	COUNT(c, bucket_steps);
	for (j = bucket[fastmod(h, lay + 1, nbucket)]; j; j = ent[2 * i]) {
		COUNT(c, chain_steps);
		i = j - 1;
		if (ent[2 * i + 1] == h && kstrcmp(name, entry_name(e, t, i), count, c) == 0)
			return i;
	}
	return NOT_FOUND;
}

/*
 * DT_GNU_HASH; layout: maskwords, shift2, nbuckets, bloom offset, buckets[nbuckets]
 * (chain position + 1, 0 empty), chain[num] (hash, low bit ends a run), index[num]
 * (chain position -> entry); the Bloom words are in bloom[].
 */
static __always_inline long find_gnu(const struct engine *e, const struct ktable *t,
				     const char *name, uint32_t h, const int count,
				     struct counters *c)
{
	const uint32_t *lay = t->layout;
	uint32_t maskwords = lay[0], shift2 = lay[1], nbuckets = lay[2];
	const uint32_t *bloom = lay + 6;
	const uint32_t *buckets = bloom + 2 * maskwords;
	const uint32_t *chain = buckets + nbuckets;
	const uint32_t *index = chain + t->num;
	uint64_t word;
	uint32_t j, pos, v, i;

	COUNT(c, bucket_steps);
	word = load64(bloom + 2 * ((h / 64) & (maskwords - 1)));
	if (!((word >> (h % 64)) & (word >> ((h >> shift2) % 64)) & 1)) {
		COUNT(c, bloom_rejections);
		return NOT_FOUND;
	}
	COUNT(c, bucket_steps);
	j = buckets[fastmod(h, lay + 4, nbuckets)];
	if (!j)
		return NOT_FOUND;
	for (pos = j - 1;; pos++) {
		COUNT(c, chain_steps);
		v = chain[pos];
		if (!((v ^ h) >> 1)) {
			i = index[pos];
			if (kstrcmp(name, entry_name(e, t, i), count, c) == 0)
				return i;
		}
		if (v & 1)
			return NOT_FOUND;
	}
}

/*
 * A Bloom filter and a PTHash-style perfect hash, one block per table: fallback, then the
 * bsearch layout when fallback is set, else nbuckets, nslots, seed, slot width, nwords,
 * the Bloom words, the u16 pilots, the slots (u16 or u32; all ones: empty); buckets,
 * slots and words are found by ksymhash_range() of mixes computed once per lookup.
 */
static __always_inline long find_perfect(const struct engine *e, const struct ktable *t,
					 const char *name, const struct lkey *k, const int count,
					 struct counters *c)
{
	const uint32_t *lay = t->layout;
	const uint32_t *bloom, *pilots, *slots;
	uint32_t nbuckets, nslots, seed, nwords, p, i, pos;

	if (lay[0])
		return find_bsearch(e, t, lay + 1, name, count, c);
	nbuckets = lay[1];
	nslots = lay[2];
	seed = lay[3];
	nwords = lay[5];
	bloom = lay + 6;
	COUNT(c, bucket_steps);
	if ((load64(bloom + 2 * ksymhash_range(k->bloom_a, nwords)) & k->bloom_bits) != k->bloom_bits) {
		COUNT(c, bloom_rejections);
		return NOT_FOUND;
	}
	pilots = bloom + 2 * nwords;
	slots = pilots + (nbuckets + 1) / 2;
	COUNT(c, bucket_steps);
	p = load16(pilots, ksymhash_range(k->mixed, nbuckets));
	COUNT(c, chain_steps);
	pos = ksymhash_range(ksymhash_mix32(k->h ^ ksymhash_mix32(p + seed)), nslots);
	if (lay[4] == 2) {
		i = load16(slots, pos);
		if (i == 0xFFFF)
			return NOT_FOUND;
	} else {
		i = slots[pos];
		if (i == SLOT_EMPTY)
			return NOT_FOUND;
	}
	return kstrcmp(name, entry_name(e, t, i), count, c) == 0 ? (long)i : NOT_FOUND;
}

static __always_inline long find_in_table(const struct engine *e, const struct ktable *t,
					  const char *name, const struct lkey *k,
					  const int count, const int kind, struct counters *c)
{
	COUNT(c, tables_visited);
	switch (kind) {
	case K_LINEAR:
		return find_linear(e, t, name, count, c);
	case K_BSEARCH:
		return find_bsearch(e, t, t->layout, name, count, c);
	case K_SYSV:
		return find_sysv(e, t, name, k->h, count, c);
	case K_GNU:
		return find_gnu(e, t, name, k->h, count, c);
	default:
		return find_perfect(e, t, name, k, count, c);
	}
}

/* one table of find_symbol()'s walk; 1 when the name was found in it */
static __always_inline int search_table(const struct engine *e, uint32_t tid,
					const char *name, const struct lkey *k, int gplok,
					const int count, const int kind, struct counters *c,
					long *index)
{
	const struct ktable *t = &e->tables[tid];
	long i;

	if (!gplok && t->license == GPL_ONLY)
		return 0;
	i = find_in_table(e, t, name, k, count, kind, c);
	if (i == NOT_FOUND || !visible(t, (uint32_t)i, gplok))
		return 0;
	*index = i;
	return 1;
}

/* find_symbol() over per-table indexes: table id or -1, and the entry in *index */
static __always_inline int32_t find_symbol(const struct engine *e, const char *name,
					   uint32_t h, int gplok, const int count,
					   const int kind, struct counters *c, long *index)
{
	uint32_t tid, m, slot, end;
	struct lkey k;

	make_key(&k, h, kind);
	for (tid = 0; tid < e->nvmlinux; tid++)
		if (search_table(e, tid, name, &k, gplok, count, kind, c, index))
			return (int32_t)tid;
	for (m = 0; m < e->nlive; m++) {
		slot = e->live[m];
		end = e->mods[2 * slot] + e->mods[2 * slot + 1];
		for (tid = e->mods[2 * slot]; tid < end; tid++)
			if (search_table(e, tid, name, &k, gplok, count, kind, c, index))
				return (int32_t)tid;
	}
	return -1;
}

/* --- global: one chained hash over every loaded export ----------------------------- */

static __always_inline int32_t find_global(const struct engine *e, const char *name,
					   uint32_t h, int gplok, const int count,
					   struct counters *c, long *index)
{
	const struct ghash *g = &e->g;
	const struct ktable *t;
	uint32_t k, i;

	COUNT(c, tables_visited);
	COUNT(c, bucket_steps);
	for (k = g->buckets[h & (g->nbuckets - 1)]; k; k = g->nodes[k].next) {
		COUNT(c, chain_steps);
		if (g->nodes[k].hash != h)
			continue;
		t = &e->tables[g->nodes[k].table];
		i = g->nodes[k].entry;
		if (kstrcmp(name, entry_name(e, t, i), count, c) == 0 && visible(t, i, gplok)) {
			*index = i;
			return g->nodes[k].table;
		}
	}
	return -1;
}

/* enough buckets for `need` nodes, rehashing the live nodes oldest first */
static void ghash_grow(struct ghash *g, uint32_t need)
{
	uint32_t nb = g->nbuckets, k, b;

	while (nb < need)
		nb *= 2;
	if (nb == g->nbuckets)
		return;
	g->nbuckets = nb;
	memset(g->buckets, 0, (size_t)nb * sizeof(*g->buckets));
	for (k = 1; k < g->nnodes; k++) {
		if (g->nodes[k].table < 0)
			continue;
		b = g->nodes[k].hash & (nb - 1);
		g->nodes[k].next = g->buckets[b];
		g->buckets[b] = k;
	}
}

/* insert a table's entries at the heads of their chains; their nodes go to *keys */
static void ghash_insert(struct engine *e, uint32_t tid, uint32_t *keys)
{
	struct ghash *g = &e->g;
	const struct ktable *t = &e->tables[tid];
	const uint32_t *hs = g->ehash + t->first;
	uint32_t i, k, b;

	ghash_grow(g, g->count + t->num);
	for (i = 0; i < t->num; i++) {
		k = g->nfree ? g->free[--g->nfree] : g->nnodes++;
		g->nodes[k].hash = hs[i];
		g->nodes[k].table = (int32_t)tid;
		g->nodes[k].entry = i;
		b = hs[i] & (g->nbuckets - 1);
		g->nodes[k].next = g->buckets[b];
		g->buckets[b] = k;
		keys[i] = k;
	}
	g->count += t->num;
}

static void ghash_add(struct engine *e, uint32_t slot)
{
	struct ghash *g = &e->g;
	uint32_t *keys = g->owned + g->owned_off[slot];
	uint32_t tid, end = e->mods[2 * slot] + e->mods[2 * slot + 1];

	for (tid = e->mods[2 * slot]; tid < end; tid++) {
		ghash_insert(e, tid, keys);
		keys += e->tables[tid].num;
	}
	g->owned_valid[slot] = 1;
}

/* unlink the nodes of the module's last load, scanning every bucket in order */
static void ghash_remove(struct engine *e, uint32_t slot)
{
	struct ghash *g = &e->g;
	uint32_t n = g->owned_off[slot + 1] - g->owned_off[slot];
	const uint32_t *keys = g->owned + g->owned_off[slot];
	uint32_t i, b, prev, k, next;

	if (!g->owned_valid[slot])
		return;
	g->owned_valid[slot] = 0;
	for (i = 0; i < n; i++)
		g->dying[keys[i]] = 1;
	for (b = 0; b < g->nbuckets; b++) {
		prev = 0;
		for (k = g->buckets[b]; k; k = next) {
			next = g->nodes[k].next;
			if (!g->dying[k]) {
				prev = k;
				continue;
			}
			if (prev)
				g->nodes[prev].next = next;
			else
				g->buckets[b] = next;
			g->nodes[k].table = -1;
			g->dying[k] = 0;
			g->free[g->nfree++] = k;
		}
	}
	g->count -= n;
}

static void ghash_reset(struct engine *e)
{
	struct ghash *g = &e->g;
	uint32_t tid, nvm = 0, off = 0;

	g->nbuckets = 1;
	g->buckets[0] = 0;
	g->nnodes = 1;
	g->nfree = 0;
	g->count = 0;
	memset(g->owned_valid, 0, e->nmods);
	for (tid = 0; tid < e->nvmlinux; tid++)
		nvm += e->tables[tid].num;
	ghash_grow(g, nvm);
	for (tid = 0; tid < e->nvmlinux; tid++) {
		/* vmlinux never unloads: its keys are not kept */
		ghash_insert(e, tid, g->owned + g->owned_off[e->nmods] + off);
		off += e->tables[tid].num;
	}
}

/* --- the session ------------------------------------------------------------------ */

static void module_add(struct engine *e, uint32_t slot)
{
	memmove(e->live + 1, e->live, (size_t)e->nlive * sizeof(*e->live));
	e->live[0] = slot;
	e->nlive++;
}

static void module_remove(struct engine *e, uint32_t slot)
{
	uint32_t m, n = 0;

	for (m = 0; m < e->nlive; m++)
		if (e->live[m] != slot)
			e->live[n++] = e->live[m];
	e->nlive = n;
}

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* one pass over the events from a fresh state; timed when not counting */
static __always_inline void replay_events(struct engine *e, struct counters *c,
					  const int count, const int kind)
{
	const uint32_t *ev;
	const char *name;
	uint32_t n, lk = 0, h;
	uint64_t t0 = 0, t1;
	int in_lookups = 0, gplok;
	int32_t tid;
	long index = 0;

	e->nlive = 0;
	if (!count)
		t0 = now_ns();
	if (kind == K_GLOBAL)
		ghash_reset(e);
	for (n = 0; n < e->nevents; n++) {
		ev = e->events + 3 * n;
		if (ev[0] == EV_LOOKUP) {
			if (!count && !in_lookups) {
				t1 = now_ns();
				e->ns_update += t1 - t0;
				t0 = t1;
				in_lookups = 1;
			}
			name = e->lnames + ev[1];
			gplok = ev[2] != 0;
			if (e->precomputed) {
				h = e->lhash[lk];
			} else if (e->hashkind != H_NONE) {
				COUNT(c, hashes);
				h = ksymhash_hash(e->hashkind, name);
			} else {
				h = 0;
			}
			COUNT(c, lookups);
			if (kind == K_GLOBAL)
				tid = find_global(e, name, h, gplok, count, c, &index);
			else
				tid = find_symbol(e, name, h, gplok, count, kind, c, &index);
			if (tid >= 0)
				COUNT(c, found);
			e->res_table[lk] = tid;
			e->res_index[lk] = tid >= 0 ? (uint32_t)index : 0;
			lk++;
			continue;
		}
		if (!count && in_lookups) {
			t1 = now_ns();
			e->ns_lookup += t1 - t0;
			t0 = t1;
			in_lookups = 0;
		}
		if (kind == K_GLOBAL) {
			if (ev[0] == EV_LOAD)
				ghash_add(e, ev[1]);
			else
				ghash_remove(e, ev[1]);
		} else {
			if (ev[0] == EV_LOAD)
				module_add(e, ev[1]);
			else
				module_remove(e, ev[1]);
		}
	}
	if (!count) {
		t1 = now_ns();
		if (in_lookups)
			e->ns_lookup += t1 - t0;
		else
			e->ns_update += t1 - t0;
	}
}

#define PASS(k) case k:							\
	if (count)							\
		replay_events(e, c, 1, k);				\
	else								\
		replay_events(e, c, 0, k);				\
	break

static void replay_pass(struct engine *e, struct counters *c, int count)
{
	switch (e->kind) {
	PASS(K_LINEAR);
	PASS(K_BSEARCH);
	PASS(K_SYSV);
	PASS(K_GNU);
	PASS(K_PERFECT);
	PASS(K_GLOBAL);
	}
}

/* --- checking and setting up the packed arrays -------------------------------------- */

/* the buffers of a call, in argument order */
enum {
	B_TABLES, B_STRINGS, B_NAME_OFF, B_FLAGS, B_LAYOUT, B_MODS,
	B_EVENTS, B_LNAMES, B_RES_TABLE, B_RES_INDEX, NBUF
};

static int bad(const char *what)
{
	PyErr_Format(PyExc_ValueError, "_native.replay: bad %s", what);
	return -1;
}

static int is_cstrings(const Py_buffer *b)
{
	return b->len == 0 || ((const char *)b->buf)[b->len - 1] == '\0';
}

static int check_bsearch(const struct ktable *t, const uint32_t *lay, uint64_t room)
{
	uint32_t i;

	if (room < 1 || (lay[0] && room < 1 + (uint64_t)t->num))
		return -1;
	if (lay[0])
		for (i = 0; i < t->num; i++)
			if (lay[1 + i] >= t->num)
				return -1;
	return 0;
}

/* do the table's layout indexes stay in bounds, and do its chains end? */
static int check_layout(const struct engine *e, const struct ktable *t, uint64_t room)
{
	const uint32_t *lay = t->layout;
	uint64_t n = t->num, w;
	uint32_t i, nb, ns;

	switch (e->kind) {
	case K_LINEAR:
	case K_GLOBAL:
		return 0;
	case K_BSEARCH:
		return check_bsearch(t, lay, room);
	case K_SYSV:
		if (room < 3 || (nb = lay[0]) == 0 || room < 3 + nb + 2 * n)
			return -1;
		for (i = 0; i < nb; i++)
			if (lay[3 + i] > n)
				return -1;
		for (i = 0; i < n; i++)	/* chains run to lower entries: they end */
			if (lay[3 + nb + 2 * i] > i)
				return -1;
		return 0;
	case K_GNU:
		if (room < 6)
			return -1;
		nb = lay[2];
		if (lay[0] == 0 || lay[0] > (1u << 24) || (lay[0] & (lay[0] - 1)) ||
		    lay[1] >= 32 || nb == 0)
			return -1;
		w = 6 + 2 * (uint64_t)lay[0];	/* the buckets start here */
		if (room < w + nb + 2 * n)
			return -1;
		for (i = 0; i < nb; i++)
			if (lay[w + i] > n)
				return -1;
		if (n && !(lay[w + nb + n - 1] & 1))	/* the last run ends */
			return -1;
		for (i = 0; i < n; i++)
			if (lay[w + nb + n + i] >= n)
				return -1;
		return 0;
	case K_PERFECT:
		if (room < 1)
			return -1;
		if (lay[0])
			return check_bsearch(t, lay + 1, room - 1);
		if (room < 6)
			return -1;
		nb = lay[1];
		ns = lay[2];
		if (nb == 0 || ns == 0 || lay[5] == 0 || (lay[4] != 2 && lay[4] != 4))
			return -1;
		/* the slots start here, after the Bloom words and the pilots */
		w = 6 + 2 * (uint64_t)lay[5] + (nb + 1) / 2;
		if (room < w + (lay[4] == 2 ? (ns + 1) / 2 : (uint64_t)ns))
			return -1;
		for (i = 0; i < ns; i++) {
			uint32_t v = lay[4] == 2 ? load16(lay + w, i) : lay[w + i];

			if (v != (lay[4] == 2 ? 0xFFFFu : SLOT_EMPTY) && v >= n)
				return -1;
		}
		return 0;
	}
	return -1;
}

static int setup_tables(struct engine *e, Py_buffer *b)
{
	const uint32_t *tab = b[B_TABLES].buf;
	const uint32_t *layout = b[B_LAYOUT].buf;
	uint64_t nlayout = (uint64_t)b[B_LAYOUT].len / 4, first, num, off, i;
	uint32_t tid;

	if (b[B_TABLES].len % 16 || b[B_NAME_OFF].len % 4 || b[B_LAYOUT].len % 4 ||
	    b[B_NAME_OFF].len / 4 > UINT32_MAX ||
	    b[B_TABLES].len / 16 > INT32_MAX)
		return bad("array size");
	e->ntables = (uint32_t)(b[B_TABLES].len / 16);
	e->nentries = (uint32_t)(b[B_NAME_OFF].len / 4);
	if (e->nvmlinux > e->ntables || b[B_FLAGS].len != (Py_ssize_t)e->nentries ||
	    !is_cstrings(&b[B_STRINGS]))
		return bad("tables");
	for (i = 0; i < e->nentries; i++)
		if (e->name_off[i] >= (uint64_t)b[B_STRINGS].len)
			return bad("name offset");
	e->tables = PyMem_Calloc(e->ntables + 1, sizeof(*e->tables));
	if (!e->tables) {
		PyErr_NoMemory();
		return -1;
	}
	for (tid = 0; tid < e->ntables; tid++) {
		struct ktable *t = &e->tables[tid];

		first = tab[4 * tid];
		num = tab[4 * tid + 1];
		off = tab[4 * tid + 3];
		if (first + num > e->nentries || tab[4 * tid + 2] > PER_ENTRY || off > nlayout)
			return bad("table");
		t->first = (uint32_t)first;
		t->name_off = e->name_off + first;
		t->flags = (const uint8_t *)b[B_FLAGS].buf + first;
		t->layout = layout + off;
		t->num = (uint32_t)num;
		t->license = tab[4 * tid + 2];
		if (check_layout(e, t, nlayout - off))
			return bad("layout");
	}
	return 0;
}

static int setup_session(struct engine *e, Py_buffer *b)
{
	const uint32_t *ev;
	uint32_t n, k;

	if (b[B_MODS].len % 8 || b[B_EVENTS].len % 12 || !is_cstrings(&b[B_LNAMES]) ||
	    b[B_EVENTS].len / 12 > UINT32_MAX / 2)
		return bad("session");
	e->nmods = (uint32_t)(b[B_MODS].len / 8);
	for (k = 0; k < e->nmods; k++)
		if (e->mods[2 * k] < e->nvmlinux ||
		    (uint64_t)e->mods[2 * k] + e->mods[2 * k + 1] > e->ntables)
			return bad("module");
	e->nevents = (uint32_t)(b[B_EVENTS].len / 12);
	for (n = 0; n < e->nevents; n++) {
		ev = e->events + 3 * n;
		if (ev[0] == EV_LOOKUP) {
			if (ev[1] >= (uint64_t)b[B_LNAMES].len)
				return bad("lookup name");
			e->nlookups++;
		} else if (ev[0] == EV_LOAD || ev[0] == EV_UNLOAD) {
			if (ev[1] >= e->nmods)
				return bad("module slot");
			e->nloads += ev[0] == EV_LOAD;
		} else {
			return bad("event");
		}
	}
	if (b[B_RES_TABLE].len < 4 * (Py_ssize_t)e->nlookups ||
	    b[B_RES_INDEX].len < 4 * (Py_ssize_t)e->nlookups)
		return bad("results");
	e->live = PyMem_Malloc(((size_t)e->nloads + 1) * sizeof(*e->live));
	e->lhash = PyMem_Calloc((size_t)e->nlookups + 1, sizeof(*e->lhash));
	if (!e->live || !e->lhash) {
		PyErr_NoMemory();
		return -1;
	}
	if (e->precomputed && e->hashkind != H_NONE)	/* build time: .undef.hash */
		for (n = 0, k = 0; n < e->nevents; n++)
			if (e->events[3 * n] == EV_LOOKUP)
				e->lhash[k++] = ksymhash_hash(e->hashkind,
							  e->lnames + e->events[3 * n + 1]);
	return 0;
}

static int setup_global(struct engine *e)
{
	struct ghash *g = &e->g;
	uint64_t nodes = 1, nb = 1, num;
	uint32_t n, i, k, nvm = 0;

	for (i = 0; i < e->nvmlinux; i++)
		nvm += e->tables[i].num;
	nodes += nvm;
	g->owned_off = PyMem_Malloc(((size_t)e->nmods + 1) * sizeof(*g->owned_off));
	if (!g->owned_off)
		goto nomem;
	g->owned_off[0] = 0;
	for (k = 0; k < e->nmods; k++) {
		num = 0;
		for (i = 0; i < e->mods[2 * k + 1]; i++)
			num += e->tables[e->mods[2 * k] + i].num;
		if (g->owned_off[k] + num > UINT32_MAX / 2)
			return bad("session size");
		g->owned_off[k + 1] = g->owned_off[k] + (uint32_t)num;
	}
	for (n = 0; n < e->nevents; n++) {
		k = e->events[3 * n + 1];
		if (e->events[3 * n] == EV_LOAD)
			nodes += g->owned_off[k + 1] - g->owned_off[k];
	}
	if (nodes > UINT32_MAX / 4)
		return bad("session size");
	while (nb < nodes)	/* the most buckets any count can need */
		nb *= 2;
	g->buckets = PyMem_Malloc(nb * sizeof(*g->buckets));
	g->nodes = PyMem_Malloc(nodes * sizeof(*g->nodes));
	g->free = PyMem_Malloc(nodes * sizeof(*g->free));
	g->dying = PyMem_Calloc(nodes, 1);
	g->owned = PyMem_Malloc(((size_t)g->owned_off[e->nmods] + nvm + 1) *
				sizeof(*g->owned));
	g->owned_valid = PyMem_Malloc((size_t)e->nmods + 1);
	g->ehash = PyMem_Malloc(((size_t)e->nentries + 1) * sizeof(*g->ehash));
	if (!g->buckets || !g->nodes ||
	    !g->free || !g->dying || !g->owned || !g->owned_valid || !g->ehash)
		goto nomem;
	/* each export's hash, as its module's build would store it */
	for (i = 0; i < e->nentries; i++)
		g->ehash[i] = ksymhash_hash(e->hashkind, e->strings + e->name_off[i]);
	return 0;
nomem:
	PyErr_NoMemory();
	return -1;
}

static void engine_free(struct engine *e)
{
	struct ghash *g = &e->g;

	PyMem_Free(e->tables);
	PyMem_Free(e->live);
	PyMem_Free(e->lhash);
	PyMem_Free(g->buckets);
	PyMem_Free(g->nodes);
	PyMem_Free(g->free);
	PyMem_Free(g->dying);
	PyMem_Free(g->owned);
	PyMem_Free(g->owned_off);
	PyMem_Free(g->owned_valid);
	PyMem_Free(g->ehash);
}

static PyObject *counters_tuple(const struct counters *c)
{
	return Py_BuildValue("(KKKKKKKKK)", (unsigned long long)c->lookups,
			     (unsigned long long)c->found,
			     (unsigned long long)c->tables_visited,
			     (unsigned long long)c->strcmp,
			     (unsigned long long)c->bytes_compared,
			     (unsigned long long)c->hashes,
			     (unsigned long long)c->bucket_steps,
			     (unsigned long long)c->chain_steps,
			     (unsigned long long)c->bloom_rejections);
}

static PyObject *ns_list(const uint64_t *runs, int n, int which)
{
	PyObject *list = PyList_New(n), *v;
	int i;

	if (!list)
		return NULL;
	for (i = 0; i < n; i++) {
		v = PyLong_FromUnsignedLongLong(runs[2 * i + which]);
		if (!v) {
			Py_DECREF(list);
			return NULL;
		}
		PyList_SET_ITEM(list, i, v);
	}
	return list;
}

PyDoc_STRVAR(replay_doc,
"replay(kind, hashkind, precomputed, repeats, nvmlinux, tables, strings, name_off,\n"
"       flags, layout, bloom, pilots, modules, events, lnames, res_table, res_index)\n"
"--\n\n"
"Replay a packed session (see fastlkm.lookup.native) once counting, filling res_table\n"
"and res_index, then `repeats` times timed.  Returns (counters, ns of the lookups of\n"
"each repeat, ns of its LOAD/UNLOAD work).");

static PyObject *native_replay(PyObject *self, PyObject *args)
{
	struct engine e;
	struct counters c;
	Py_buffer b[NBUF];
	Py_ssize_t nvmlinux;
	PyObject *ret = NULL;
	uint64_t *runs = NULL;
	int repeats, count, i;

	(void)self;
	memset(&e, 0, sizeof(e));
	memset(&c, 0, sizeof(c));
	memset(b, 0, sizeof(b));
	if (!PyArg_ParseTuple(args, "iippiny*y*y*y*y*y*y*y*w*w*:replay", &e.kind,
			      &e.hashkind, &e.precomputed, &count, &repeats, &nvmlinux,
			      &b[B_TABLES], &b[B_STRINGS], &b[B_NAME_OFF], &b[B_FLAGS],
			      &b[B_LAYOUT], &b[B_MODS],
			      &b[B_EVENTS], &b[B_LNAMES], &b[B_RES_TABLE], &b[B_RES_INDEX]))
		goto out;
	if (e.kind < 0 || e.kind >= K_NR || e.hashkind < H_NONE || e.hashkind > H_DJB ||
	    (e.hashkind == H_NONE && e.kind >= K_SYSV) || repeats < 0 || nvmlinux < 0 ||
	    nvmlinux > INT32_MAX) {
		bad("arguments");
		goto out;
	}
	e.nvmlinux = (uint32_t)nvmlinux;
	e.strings = b[B_STRINGS].buf;
	e.name_off = b[B_NAME_OFF].buf;
	e.mods = b[B_MODS].buf;
	e.events = b[B_EVENTS].buf;
	e.lnames = b[B_LNAMES].buf;
	e.res_table = b[B_RES_TABLE].buf;
	e.res_index = b[B_RES_INDEX].buf;
	if (setup_tables(&e, b) || setup_session(&e, b) ||
	    (e.kind == K_GLOBAL && setup_global(&e)))
		goto out;
	runs = PyMem_Calloc(2 * (size_t)repeats + 1, sizeof(*runs));
	if (!runs) {
		PyErr_NoMemory();
		goto out;
	}

	Py_BEGIN_ALLOW_THREADS
	if (count)
		replay_pass(&e, &c, 1);
	for (i = 0; i < repeats; i++) {
		e.ns_lookup = e.ns_update = 0;
		replay_pass(&e, NULL, 0);
		runs[2 * i] = e.ns_lookup;
		runs[2 * i + 1] = e.ns_update;
	}
	Py_END_ALLOW_THREADS

	ret = Py_BuildValue("(NNN)", counters_tuple(&c), ns_list(runs, repeats, 0),
			    ns_list(runs, repeats, 1));
out:
	PyMem_Free(runs);
	engine_free(&e);
	for (i = 0; i < NBUF; i++)
		if (b[i].obj)
			PyBuffer_Release(&b[i]);
	return ret;
}

static PyMethodDef native_methods[] = {
	{"replay", native_replay, METH_VARARGS, replay_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "fastlkm.lookup._native",
	.m_doc = "The native lookup engine of fastlkm (see fastlkm.lookup.native).",
	.m_size = -1,
	.m_methods = native_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
	return PyModule_Create(&native_module);
}
