/*
 * ksymhash_driver.c - src/fastlkm/lookup/ksymhash.h compiled for user space, as the
 * kernel compiles it, for tests/kbuild/test_ksymhash.py.
 *
 * Input (stdin): u32 n, u32 record bytes, u32 queries, then the n names of the export
 * table and the queries, each NUL-terminated, then the record (one or several, as a
 * section holds them).  Output, per record: "record LAYOUT HASH" or "reject WHY", then
 * per query "INDEX STRCMP CHAIN BLOOM" (INDEX -1: not found).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t nr_strcmp;

static int counted_strcmp(const char *a, const char *b)
{
	nr_strcmp++;
	return strcmp(a, b);
}

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define KSYMHASH_NAME(ctx, i) (((const char *const *)(ctx))[i])
#define KSYMHASH_STRCMP(a, b) counted_strcmp(a, b)
#include "ksymhash.h"

static void *read_all(size_t *len)
{
	size_t cap = 1 << 20, n = 0, got;
	char *buf = malloc(cap);

	while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
		n += got;
		if (n == cap)
			buf = realloc(buf, cap *= 2);
	}
	*len = n;
	return buf;
}

int main(void)
{
	size_t len, pos = 12;
	uint8_t *in = read_all(&len);
	uint32_t n, size, nq, i;
	const char **names, **queries;
	uint8_t *rec;
	uint64_t off = 0;

	if (!in || len < 12)
		return 2;
	memcpy(&n, in, 4);
	memcpy(&size, in + 4, 4);
	memcpy(&nq, in + 8, 4);
	names = calloc(n + 1, sizeof(*names));
	queries = calloc(nq + 1, sizeof(*queries));
	for (i = 0; i < n + nq; i++) {
		const char *s = (const char *)in + pos;

		if (pos >= len)
			return 2;
		if (i < n)
			names[i] = s;
		else
			queries[i - n] = s;
		pos += strlen(s) + 1;
	}
	if (len - pos != size)
		return 2;
	/* malloc() aligns to 16, and ASan flags a read one byte past size */
	rec = malloc(size ? size : 1);
	memcpy(rec, in + pos, size);
	if (size < KSYMHASH_HDR_SIZE)
		printf("reject shorter than a header\n");
	while (off < size && size - off >= KSYMHASH_HDR_SIZE) {
		struct ksymhash_table t;
		const char *why = ksymhash_parse(&t, rec + off, size - off, n);

		if (why) {
			printf("reject %s\n", why);
			break;
		}
		printf("record %u %u\n", t.layout, t.hash);
		for (i = 0; i < nq; i++) {
			struct ksymhash_counts c = { 0, 0 };
			struct ksymhash_key k;
			uint32_t h = ksymhash_hash(t.hash, queries[i]);
			long r;

			ksymhash_key_init(&k, h);
			nr_strcmp = 0;
			r = ksymhash_find(&t, names, queries[i], h, &k, &c);
			printf("%ld %llu %llu %llu\n", r, (unsigned long long)nr_strcmp,
			       (unsigned long long)c.chain_steps,
			       (unsigned long long)c.bloom_rejections);
		}
		off = ksymhash_next(rec + off, off);
	}
	free(rec);
	free(names);
	free(queries);
	free(in);
	return 0;
}
