/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Lookup tables of export tables, as fastlkm writes them
 *
 * One source for both hosts: the kernel's module loader includes this
 * header, from the fastlkm patch series, and so does fastlkm's user-space
 * engine, from its lookup package; the two copies are the same bytes,
 * which fastlkm's tests check.
 *
 * A lookup table indexes one export table (__ksymtab, __ksymtab_gpl, ...)
 * of n entries.  It is a record: a 16-byte header, then a payload.
 *
 *	0  magic "FLKH"
 *	4  u8  version (1)
 *	5  u8  layout: KSYMHASH_BSEARCH, _SYSV, _GNU, _PERFECT, _HASHES
 *	6  u8  hash function: KSYMHASH_HASH_NONE, _ELF (gABI), _DJB
 *	7  u8  width of index arrays into the table: 2 or 4 bytes
 *	8  u32 entries of the export table indexed (hashes: hashes stored)
 *	12 u32 payload bytes that follow
 *
 * A section "__ksymtab<suffix>.htable" holds one record or several (one
 * per strategy), each starting at a multiple of 8 bytes.  Integers are in
 * the byte order of the file that holds them, the host's.  The payloads
 * are described in fastlkm's docs/lookup.md ("Embedded sections").
 *
 * ksymhash_parse() checks a record against its size without reading a
 * name: every count, offset and index in bounds, every SysV chain ending.
 * The lookups then never leave the record nor loop.  Whether a table
 * finds what it indexes is for the includer to check (ksymhash_find()
 * of each name at its own position), as the names are the includer's.
 *
 * The includer defines, before including this file:
 *	KSYMHASH_NAME(ctx, i)	the name of entry i of the export table ctx
 *	KSYMHASH_STRCMP(a, b)	strcmp(a, b), counted as it wishes
 * and in user space provides u8, u16, u32, u64, memcmp() and memset().
 */
#ifndef KSYMHASH_H
#define KSYMHASH_H

#define KSYMHASH_MAGIC		"FLKH"
#define KSYMHASH_VERSION	1
#define KSYMHASH_HDR_SIZE	16
#define KSYMHASH_ALIGN		8

enum ksymhash_layout {
	KSYMHASH_BSEARCH = 1,
	KSYMHASH_SYSV = 2,
	KSYMHASH_GNU = 3,
	KSYMHASH_PERFECT = 4,
	KSYMHASH_HASHES = 5,
};

enum ksymhash_hash {
	KSYMHASH_HASH_NONE = 0,
	KSYMHASH_HASH_ELF = 1,
	KSYMHASH_HASH_DJB = 2,
	KSYMHASH_NR_HASHES = 3,
};

#define KSYMHASH_PERFECT_WIDE		1
#define KSYMHASH_PERFECT_SEED_STEP	0x9E3779B9u
#define KSYMHASH_NOT_FOUND		(-1L)

/* what a lookup counted, beside the includer's strcmp calls */
struct ksymhash_counts {
	u64 chain_steps;
	u64 bloom_rejections;
};

/* a record, checked and decoded by ksymhash_parse() */
struct ksymhash_table {
	u8 layout, hash, width;
	u32 n;
	u32 size;				/* payload bytes */
	const u8 *payload;
	/* bsearch: order[n] or NULL (the table is sorted) */
	const void *order;
	/* sysv */
	u32 nbucket;
	const u32 *bucket, *chain, *hashes;
	/* gnu */
	u32 nbuckets, maskwords, shift2;
	const u64 *bloom;
	const u32 *buckets, *gchain;
	const void *index;
	/* perfect: nbuckets, bloom, index (the slots) as above */
	u32 nslots, nwords, seed;
	const u16 *pilots;
	/* 2^64 / nbucket (sysv) or nbuckets (gnu) + 1: x % d by multiplying */
	u64 recip;
};

/* the gABI ELF hash */
static inline u32 ksymhash_elf(const char *name)
{
	const unsigned char *s = (const unsigned char *)name;
	u32 h = 0, g;

	while (*s) {
		h = (h << 4) + *s++;
		g = h & 0xF0000000u;
		if (g)
			h ^= g >> 24;
		h &= ~g;
	}
	return h;
}

/* Bernstein's h * 33 + c from 5381, as .gnu.hash */
static inline u32 ksymhash_djb(const char *name)
{
	const unsigned char *s = (const unsigned char *)name;
	u32 h = 5381;

	while (*s)
		h = h * 33 + *s++;
	return h;
}

static inline u32 ksymhash_hash(int hash, const char *name)
{
	return hash == KSYMHASH_HASH_ELF ? ksymhash_elf(name) : ksymhash_djb(name);
}

/* murmur3's 32-bit finaliser */
static inline u32 ksymhash_mix32(u32 h)
{
	h ^= h >> 16;
	h *= 0x85EBCA6Bu;
	h ^= h >> 13;
	h *= 0xC2B2AE35u;
	h ^= h >> 16;
	return h;
}

/* x scaled into [0, d) by one multiplication (Lemire's fastrange) */
static inline u32 ksymhash_range(u32 x, u32 d)
{
	return (u32)(((u64)x * d) >> 32);
}

/* x % d from recip = 2^64 / d + 1, without a division (Lemire's fastmod) */
static inline u32 ksymhash_mod(u32 x, u64 recip, u32 d)
{
#ifdef __KERNEL__
	return (u32)mul_u64_u64_shr(recip * x, d, 64);
#else
	return (u32)(((__uint128_t)(recip * x) * d) >> 64);
#endif
}

static inline u64 ksymhash_recip(u32 d)
{
	return ~(u64)0 / d + 1;
}

static inline u32 ksymhash_idx(const void *a, int width, u32 i)
{
	return width == 2 ? ((const u16 *)a)[i] : ((const u32 *)a)[i];
}

/* what a lookup computes once from a name's DJB hash for every perfect table */
struct ksymhash_key {
	u32 h;
	u32 mixed;
	u32 bloom_a;
	u64 bloom_bits;
};

static inline void ksymhash_key_init(struct ksymhash_key *k, u32 h)
{
	u32 b;

	k->h = h;
	k->mixed = ksymhash_mix32(h);
	k->bloom_a = ksymhash_mix32(h ^ 0xA5A5A5A5u);
	b = ksymhash_mix32(k->bloom_a);
	k->bloom_bits = (1ULL << (b & 63)) | (1ULL << ((b >> 6) & 63));
}

/* --- checking a record ----------------------------------------------------- */

/* take size bytes at *pos of the payload; NULL when they do not fit */
static inline const void *ksymhash_take(const struct ksymhash_table *t,
					u64 *pos, u64 size)
{
	const void *p = t->payload + *pos;

	if (size > t->size - *pos)
		return NULL;
	*pos += size;
	return p;
}

static inline int ksymhash_index_ok(const void *a, int width, u32 count,
				    u32 n, int allow_empty)
{
	u32 i, v, empty = width == 2 ? 0xFFFF : 0xFFFFFFFFu;

	for (i = 0; i < count; i++) {
		v = ksymhash_idx(a, width, i);
		if (v >= n && !(allow_empty && v == empty))
			return 0;
	}
	return 1;
}

static inline const char *ksymhash_parse_sysv(struct ksymhash_table *t)
{
	u64 pos = 0, steps = 0;
	const u32 *w = ksymhash_take(t, &pos, 8);
	u32 b, j;

	if (!w || w[0] == 0 || w[1] != t->n)
		return "bad sysv nbucket or nchain";
	t->nbucket = w[0];
	t->bucket = ksymhash_take(t, &pos, 4ULL * t->nbucket);
	t->chain = ksymhash_take(t, &pos, 4ULL * t->n);
	t->hashes = ksymhash_take(t, &pos, 4ULL * t->n);
	if (!t->bucket || !t->chain || !t->hashes || pos != t->size)
		return "sysv arrays do not fit the payload";
	/* every chain ends: n steps in all walk every entry once */
	for (b = 0; b < t->nbucket; b++) {
		for (j = t->bucket[b]; j; j = t->chain[j - 1]) {
			if (j > t->n || ++steps > t->n)
				return "sysv chain loops or leaves the table";
		}
	}
	t->recip = ksymhash_recip(t->nbucket);
	return NULL;
}

static inline const char *ksymhash_parse_gnu(struct ksymhash_table *t)
{
	u64 pos = 0;
	const u32 *w = ksymhash_take(t, &pos, 16);
	u32 i;

	if (!w || w[0] == 0 || w[1] != 1 || w[2] == 0 || (w[2] & (w[2] - 1)) ||
	    w[3] >= 32)
		return "bad gnu header";
	t->nbuckets = w[0];
	t->maskwords = w[2];
	t->shift2 = w[3];
	t->bloom = ksymhash_take(t, &pos, 8ULL * t->maskwords);
	t->buckets = ksymhash_take(t, &pos, 4ULL * t->nbuckets);
	t->gchain = ksymhash_take(t, &pos, 4ULL * t->n);
	t->index = ksymhash_take(t, &pos, (u64)t->width * t->n);
	if (!t->bloom || !t->buckets || !t->gchain || !t->index ||
	    pos != t->size)
		return "gnu arrays do not fit the payload";
	for (i = 0; i < t->nbuckets; i++)
		if (t->buckets[i] > t->n)
			return "gnu bucket beyond the chain";
	/* a run ends by its low bit: the last one must, or a walk runs off */
	if (t->n && !(t->gchain[t->n - 1] & 1))
		return "gnu chain does not end";
	if (!ksymhash_index_ok(t->index, t->width, t->n, t->n, 0))
		return "gnu index beyond the table";
	t->recip = ksymhash_recip(t->nbuckets);
	return NULL;
}

static inline const char *ksymhash_parse_perfect(struct ksymhash_table *t)
{
	u64 pos = 0;
	const u8 *p = ksymhash_take(t, &pos, 2);
	const u16 *h16;
	const u32 *h32;

	if (!p || (p[1] & ~KSYMHASH_PERFECT_WIDE))
		return "bad perfect header";
	t->seed = p[0] * KSYMHASH_PERFECT_SEED_STEP;
	if (p[1] & KSYMHASH_PERFECT_WIDE) {
		if (!ksymhash_take(t, &pos, 2))
			return "bad perfect header";
		h32 = ksymhash_take(t, &pos, 12);
		if (!h32)
			return "bad perfect header";
		t->nbuckets = h32[0];
		t->nslots = h32[1];
		t->nwords = h32[2];
	} else {
		h16 = ksymhash_take(t, &pos, 6);
		if (!h16)
			return "bad perfect header";
		t->nbuckets = h16[0];
		t->nslots = h16[1];
		t->nwords = h16[2];
	}
	if (!t->nbuckets || t->nslots < t->n || !t->nwords)
		return "bad perfect counts";
	t->bloom = ksymhash_take(t, &pos, 8ULL * t->nwords);
	t->index = ksymhash_take(t, &pos, (u64)t->width * t->nslots);
	t->pilots = ksymhash_take(t, &pos, 2ULL * t->nbuckets);
	if (!t->bloom || !t->index || !t->pilots || pos != t->size)
		return "perfect arrays do not fit the payload";
	if (!ksymhash_index_ok(t->index, t->width, t->nslots, t->n, 1))
		return "perfect slot beyond the table";
	return NULL;
}

/*
 * Check and decode the record at rec, of at most avail bytes, for a table
 * of n entries (n is not checked for KSYMHASH_HASHES).  Returns NULL, or
 * why the record cannot be used.  The record must be 8-byte aligned.
 */
static inline const char *ksymhash_parse(struct ksymhash_table *t,
					 const void *rec, u64 avail,
					 u32 n)
{
	const u8 *h = rec;
	const u32 *w = rec;

	memset(t, 0, sizeof(*t));
	if (avail < KSYMHASH_HDR_SIZE || ((unsigned long)rec & (KSYMHASH_ALIGN - 1)))
		return "truncated header";
	if (memcmp(h, KSYMHASH_MAGIC, 4))
		return "bad magic";
	if (h[4] != KSYMHASH_VERSION)
		return "unknown version";
	t->layout = h[5];
	t->hash = h[6];
	t->width = h[7];
	t->n = w[2];
	t->size = w[3];
	t->payload = h + KSYMHASH_HDR_SIZE;
	if (t->size > avail - KSYMHASH_HDR_SIZE)
		return "payload beyond the section";
	if (t->hash >= KSYMHASH_NR_HASHES ||
	    (t->hash == KSYMHASH_HASH_NONE && t->layout != KSYMHASH_BSEARCH))
		return "bad hash function";
	if (t->width != 2 && t->width != 4)
		return "bad index width";
	if (t->layout == KSYMHASH_HASHES) {
		if (t->size != 4ULL * t->n)
			return "hashes do not fit the payload";
		t->hashes = (const u32 *)t->payload;
		return NULL;
	}
	if (t->n != n)
		return "entries differ from the export table";
	switch (t->layout) {
	case KSYMHASH_BSEARCH:
		if (!t->size)
			return NULL;
		if (t->size != (u64)t->width * n)
			return "bsearch order does not fit the payload";
		t->order = t->payload;
		return ksymhash_index_ok(t->order, t->width, n, n, 0) ?
			NULL : "bsearch order beyond the table";
	case KSYMHASH_SYSV:
		return ksymhash_parse_sysv(t);
	case KSYMHASH_GNU:
		return ksymhash_parse_gnu(t);
	case KSYMHASH_PERFECT:
		return ksymhash_parse_perfect(t);
	}
	return "unknown layout";
}

/* the offset of the record after the one at off, 8-byte aligned */
static inline u64 ksymhash_next(const void *rec, u64 off)
{
	const u32 *w = rec;

	return (off + KSYMHASH_HDR_SIZE + w[3] + KSYMHASH_ALIGN - 1) &
		~(u64)(KSYMHASH_ALIGN - 1);
}

/* --- lookups: the entry of the table, or KSYMHASH_NOT_FOUND ----------------- */

/* the 2009 loop: strcmp each entry in order */
static inline long ksymhash_find_linear(const void *ctx, u32 n,
					const char *name)
{
	u32 i;

	for (i = 0; i < n; i++)
		if (KSYMHASH_STRCMP(name, KSYMHASH_NAME(ctx, i)) == 0)
			return i;
	return KSYMHASH_NOT_FOUND;
}

/* lib/bsearch.c's loop, through order[] when the table is not sorted */
static inline long ksymhash_find_bsearch(const struct ksymhash_table *t,
					 const void *ctx, u32 n,
					 const char *name)
{
	u32 base = 0, num = n, pivot, i;
	int r;

	while (num > 0) {
		pivot = base + (num >> 1);
		i = t && t->order ? ksymhash_idx(t->order, t->width, pivot) : pivot;
		r = KSYMHASH_STRCMP(name, KSYMHASH_NAME(ctx, i));
		if (r == 0)
			return i;
		if (r > 0) {
			base = pivot + 1;
			num--;
		}
		num >>= 1;
	}
	return KSYMHASH_NOT_FOUND;
}

/* a SysV ELF .hash with each entry's hash stored beside it (Amoroso) */
static inline long ksymhash_find_sysv(const struct ksymhash_table *t,
				      const void *ctx, const char *name,
				      u32 h, struct ksymhash_counts *c)
{
	u32 j, i;

	for (j = t->bucket[ksymhash_mod(h, t->recip, t->nbucket)]; j;
	     j = t->chain[i]) {
		c->chain_steps++;
		i = j - 1;
		if (t->hashes[i] == h &&
		    KSYMHASH_STRCMP(name, KSYMHASH_NAME(ctx, i)) == 0)
			return i;
	}
	return KSYMHASH_NOT_FOUND;
}

/* DT_GNU_HASH with its Bloom filter, symoffset 1 */
static inline long ksymhash_find_gnu(const struct ksymhash_table *t,
				     const void *ctx, const char *name,
				     u32 h, struct ksymhash_counts *c)
{
	u64 word = t->bloom[(h / 64) & (t->maskwords - 1)];
	u32 j, pos, v, i;

	if (!((word >> (h % 64)) & (word >> ((h >> t->shift2) % 64)) & 1)) {
		c->bloom_rejections++;
		return KSYMHASH_NOT_FOUND;
	}
	j = t->buckets[ksymhash_mod(h, t->recip, t->nbuckets)];
	if (!j)
		return KSYMHASH_NOT_FOUND;
	for (pos = j - 1; pos < t->n; pos++) {
		c->chain_steps++;
		v = t->gchain[pos];
		if (!((v ^ h) >> 1)) {
			i = ksymhash_idx(t->index, t->width, pos);
			if (KSYMHASH_STRCMP(name, KSYMHASH_NAME(ctx, i)) == 0)
				return i;
		}
		if (v & 1)
			break;
	}
	return KSYMHASH_NOT_FOUND;
}

/* a Bloom word, then one pilot and one slot (PTHash) */
static inline long ksymhash_find_perfect(const struct ksymhash_table *t,
					 const void *ctx, const char *name,
					 const struct ksymhash_key *k,
					 struct ksymhash_counts *c)
{
	u64 word = t->bloom[ksymhash_range(k->bloom_a, t->nwords)];
	u32 p, pos, i;

	if ((word & k->bloom_bits) != k->bloom_bits) {
		c->bloom_rejections++;
		return KSYMHASH_NOT_FOUND;
	}
	p = t->pilots[ksymhash_range(k->mixed, t->nbuckets)];
	c->chain_steps++;
	pos = ksymhash_range(ksymhash_mix32(k->h ^ ksymhash_mix32(p + t->seed)),
			     t->nslots);
	i = ksymhash_idx(t->index, t->width, pos);
	if (i >= t->n)
		return KSYMHASH_NOT_FOUND;
	return KSYMHASH_STRCMP(name, KSYMHASH_NAME(ctx, i)) == 0 ?
		(long)i : KSYMHASH_NOT_FOUND;
}

/*
 * Look name up in the export table ctx of t->n entries through record t;
 * h is the name's hash by t->hash, k its perfect key (from the DJB hash).
 */
static inline long ksymhash_find(const struct ksymhash_table *t,
				 const void *ctx, const char *name, u32 h,
				 const struct ksymhash_key *k,
				 struct ksymhash_counts *c)
{
	switch (t->layout) {
	case KSYMHASH_SYSV:
		return ksymhash_find_sysv(t, ctx, name, h, c);
	case KSYMHASH_GNU:
		return ksymhash_find_gnu(t, ctx, name, h, c);
	case KSYMHASH_PERFECT:
		return ksymhash_find_perfect(t, ctx, name, k, c);
	default:
		return ksymhash_find_bsearch(t, ctx, t->n, name);
	}
}

#endif /* KSYMHASH_H */
