/*
 * scan_core.c: what depmod reads of one module image, in one pass of C (scan_core.h).
 * Plain C over a byte buffer, or a file read section by section; no Python here.
 */
#include <elf.h>   /* SHT_*, SHN_*, STB_*, STT_*, ET_*, EM_*: the ELF constants */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scan_core.h"

#define MODULE_NAME_LEN 64   /* include/linux/module.h */

static uint16_t rd16(const scan_t *e, const uint8_t *p)
{
	return e->little ? (uint16_t)(p[0] | p[1] << 8) : (uint16_t)(p[1] | p[0] << 8);
}

static uint32_t rd32(const scan_t *e, const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return e->little ? v : __builtin_bswap32(v);
}

static uint64_t rd64(const scan_t *e, const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return e->little ? v : __builtin_bswap64(v);
}

static uint64_t rdword(const scan_t *e, const uint8_t *p)
{
	return e->is64 ? rd64(e, p) : rd32(e, p);
}

static int list_push(list_t *l, const char *p, size_t len, uint32_t crc, uint8_t flag)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		str_t *s = realloc(l->s, cap * sizeof(*s));
		if (!s)
			return -1;
		l->s = s;
		uint32_t *c = realloc(l->crc, cap * sizeof(*c));
		if (!c)
			return -1;
		l->crc = c;
		uint8_t *f = realloc(l->flag, cap);
		if (!f)
			return -1;
		l->flag = f;
		l->cap = cap;
	}
	l->s[l->n] = (str_t){p, len};
	l->crc[l->n] = crc;
	l->flag[l->n] = flag;
	l->n++;
	return 0;
}

static void list_free(list_t *l)
{
	free(l->s);
	free(l->crc);
	free(l->flag);
	*l = (list_t){0};
}

/* cstring() of elf/reader.py: up to a NUL or the end of the buffer */
static str_t cstr(const uint8_t *base, size_t len, size_t at)
{
	const uint8_t *z = memchr(base + at, 0, len - at);
	return (str_t){(const char *)base + at, z ? (size_t)(z - base) - at : len - at};
}

/* make bytes [off, off + len) of the file present in the image (bounds checked by the
 * caller against the file size) */
static void load(scan_t *e, uint64_t off, uint64_t len)
{
	if (e->fd < 0 || e->failed)
		return;
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(e->fd, e->wbuf + off + got, len - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			e->failed = 1;   /* the file changed under us or cannot be read */
			return;
		}
		got += (size_t)r;
	}
}

static void load_section(scan_t *e, const shdr_t *s)
{
	size_t i = (size_t)(s - e->sh);
	if (e->fd < 0 || e->loaded[i] || s->type == SHT_NOBITS)
		return;
	e->loaded[i] = 1;
	load(e, s->offset, s->size);
}

static const uint8_t *sec_data(scan_t *e, const shdr_t *s, size_t *len)
{
	load_section(e, s);
	if (s->type == SHT_NOBITS) {
		*len = 0;
		return e->d;
	}
	*len = s->size;
	return e->d + s->offset;
}

/* ElfFile.section(): the first section called name */
static const shdr_t *section(const scan_t *e, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < e->shnum; i++) {
		const shdr_t *s = &e->sh[i];
		if (!s->name)
			continue;
		size_t room = e->shstr_len - s->name;
		if (room > n && !memcmp(e->shstr + s->name, name, n + 1))
			return s;
		if (room == n && !memcmp(e->shstr + s->name, name, n))
			return s;   /* unterminated at the end of the string table */
	}
	return NULL;
}

static int read_sections(scan_t *e)
{
	const uint8_t *d = e->d;
	size_t size = e->size;
	if (size < 16 || memcmp(d, "\177ELF", 4))
		return -1;
	if (d[4] != 1 && d[4] != 2)
		return -1;
	if (d[5] != 1 && d[5] != 2)
		return -1;
	e->is64 = d[4] == 2;
	e->little = d[5] == 1;
	size_t ehsize = e->is64 ? 64 : 52, shentsize_want = e->is64 ? 64 : 40;
	if (size < ehsize)
		return -1;
	e->e_type = rd16(e, d + 16);
	e->machine = rd16(e, d + 18);
	uint64_t shoff = e->is64 ? rd64(e, d + 40) : rd32(e, d + 32);
	size_t o = e->is64 ? 58 : 46;
	uint16_t shentsize = rd16(e, d + o), shnum16 = rd16(e, d + o + 2);
	uint32_t shstrndx = rd16(e, d + o + 4);
	if (e->e_type != ET_REL)
		return -1;
	if (shoff == 0)
		return 0;
	if (shentsize != shentsize_want || shoff > size || shoff + shentsize > size)
		return -1;
	load(e, shoff, shentsize);
	uint64_t shnum = shnum16;
	const uint8_t *h0 = d + shoff;
	if (shnum16 == 0 || shstrndx == SHN_XINDEX) {
		if (shnum16 == 0)
			shnum = e->is64 ? rd64(e, h0 + 32) : rd32(e, h0 + 20);
		if (shstrndx == SHN_XINDEX)
			shstrndx = rd32(e, h0 + (e->is64 ? 40 : 24));
	}
	if (shnum > (size - shoff) / shentsize)
		return -1;
	load(e, shoff, shnum * shentsize);
	if (e->fd >= 0 && !(e->loaded = calloc(shnum ? shnum : 1, 1)))
		return -1;
	e->shnum = shnum;
	e->sh = malloc((shnum ? shnum : 1) * sizeof(shdr_t));
	if (!e->sh)
		return -1;
	for (size_t i = 0; i < shnum; i++) {
		const uint8_t *h = d + shoff + i * shentsize;
		shdr_t *s = &e->sh[i];
		s->name = rd32(e, h);
		s->type = rd32(e, h + 4);
		if (e->is64) {
			s->offset = rd64(e, h + 24);
			s->size = rd64(e, h + 32);
			s->link = rd32(e, h + 40);
			s->info = rd32(e, h + 44);
		} else {
			s->offset = rd32(e, h + 16);
			s->size = rd32(e, h + 20);
			s->link = rd32(e, h + 24);
			s->info = rd32(e, h + 28);
		}
		if (s->type != SHT_NOBITS && (s->offset > size || s->size > size - s->offset))
			return -1;
	}
	e->shstr_len = 0;
	e->shstr = d;
	if (shstrndx > 0 && shstrndx < shnum) {
		if (e->sh[shstrndx].type == SHT_NOBITS)
			return -1;   /* the reference reads its file bytes anyway: leave it that */
		e->shstr = sec_data(e, &e->sh[shstrndx], &e->shstr_len);
	}
	for (size_t i = 0; i < shnum; i++)
		if (e->sh[i].name && e->sh[i].name >= e->shstr_len)
			return -1;
	return 0;
}

static int read_symbols(scan_t *e)
{
	const shdr_t *st = NULL;
	for (size_t i = 0; i < e->shnum; i++)
		if (e->sh[i].type == SHT_SYMTAB) {
			st = &e->sh[i];
			break;
		}
	if (!st)
		return 0;
	size_t es = e->is64 ? 24 : 16;
	if (st->size % es || st->link >= e->shnum)
		return -1;
	e->strtab = sec_data(e, &e->sh[st->link], &e->strtab_len);
	e->nsyms = st->size / es;
	e->syms = malloc((e->nsyms ? e->nsyms : 1) * sizeof(sym_t));
	if (!e->syms)
		return -1;
	load_section(e, st);
	const uint8_t *p = e->d + st->offset;
	size_t bound = e->strtab_len ? e->strtab_len : 1;
	for (size_t i = 0; i < e->nsyms; i++, p += es) {
		sym_t *s = &e->syms[i];
		s->name = rd32(e, p);
		if (e->is64) {
			s->info = p[4];
			s->shndx = rd16(e, p + 6);
			s->value = rd64(e, p + 8);
		} else {
			s->value = rd32(e, p + 4);
			s->info = p[12];
			s->shndx = rd16(e, p + 14);
		}
		if (s->name >= bound)
			return -1;
	}
	return 0;
}

static str_t sym_name(const scan_t *e, const sym_t *s)
{
	if (!e->strtab_len)
		return (str_t){"", 0};
	return cstr(e->strtab, e->strtab_len, s->name);
}

/* names are compared as bytes here but as decoded text by the reference: equal only
 * while they are ASCII */
static int is_ascii(str_t s)
{
	for (size_t i = 0; i < s.len; i++)
		if ((uint8_t)s.p[i] >= 0x80)
			return 0;
	return 1;
}

static int has_prefix(str_t s, const char *prefix, size_t n)
{
	return s.len >= n && !memcmp(s.p, prefix, n);
}

/*
 * ElfFile.relocations_for(): slot[off / 4] = 1 + index of the last relocation at off, for
 * 4-aligned offsets inside the section (the only ones asked for); every relocation is
 * checked as the reference checks it.
 */
static int relocations_for(scan_t *e, size_t target, reloc_t **out, uint32_t **slot,
			   size_t *nslots)
{
	const shdr_t *t = &e->sh[target];
	size_t tlen;
	const uint8_t *tdata = sec_data(e, t, &tlen);
	size_t n = 0, cap = 0;
	reloc_t *r = NULL;
	if (t->type == SHT_NOBITS)
		return -1;
	*nslots = t->size / 4 + 1;
	uint32_t *sl = calloc(*nslots, sizeof(uint32_t));
	if (!sl)
		return -1;
	int mips64 = e->is64 && e->machine == EM_MIPS;
	for (size_t i = 0; i < e->shnum; i++) {
		const shdr_t *rs = &e->sh[i];
		if ((rs->type != SHT_REL && rs->type != SHT_RELA) || rs->info != target)
			continue;
		int rela = rs->type == SHT_RELA;
		size_t es = e->is64 ? (rela ? 24 : 16) : (rela ? 12 : 8);
		if (rs->size % es)
			goto fail;
		load_section(e, rs);
		const uint8_t *p = e->d + rs->offset;
		for (size_t k = 0; k < rs->size / es; k++, p += es) {
			uint64_t off = e->is64 ? rd64(e, p) : rd32(e, p);
			uint64_t info = e->is64 ? rd64(e, p + 8) : rd32(e, p + 4);
			uint64_t sym;
			if (mips64)
				sym = e->little ? (info & 0xffffffffu) : info >> 32;
			else
				sym = e->is64 ? info >> 32 : info >> 8;
			if (sym >= e->nsyms)
				goto fail;
			int64_t addend;
			if (rela) {
				addend = e->is64 ? (int64_t)rd64(e, p + 16) : (int32_t)rd32(e, p + 8);
			} else {
				if (off > tlen || tlen - off < 4)
					goto fail;
				addend = (int32_t)rd32(e, tdata + off);
			}
			if (n == cap) {
				cap = cap ? 2 * cap : 64;
				reloc_t *nr = realloc(r, cap * sizeof(*r));
				if (!nr)
					goto fail;
				r = nr;
			}
			r[n] = (reloc_t){(uint32_t)sym, addend};
			if (off % 4 == 0 && off / 4 < *nslots)
				sl[off / 4] = (uint32_t)(n + 1);
			n++;
			if (n >= UINT32_MAX)
				goto fail;
		}
	}
	*out = r;
	*slot = sl;
	return 0;
fail:
	free(r);
	free(sl);
	return -1;
}

static const reloc_t *reloc_at(const reloc_t *r, const uint32_t *slot, size_t nslots,
			       uint64_t off)
{
	if (off % 4 || off / 4 >= nslots || !slot[off / 4])
		return NULL;
	return &r[slot[off / 4] - 1];
}

/* value + addend as an offset into a buffer of len bytes, or -1 */
static int64_t place(uint64_t value, int64_t addend, size_t len)
{
	if (addend >= 0) {
		if (value >= len || (uint64_t)addend >= len - value)
			return -1;
		return (int64_t)(value + (uint64_t)addend);
	}
	uint64_t neg = (uint64_t)(-(addend + 1)) + 1;
	if (value < neg || value - neg >= len)
		return -1;
	return (int64_t)(value - neg);
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* _entry_size_from_symbols(): the gcd of the gaps between __ksymtab_<name> labels */
static int table_stride(const scan_t *e, size_t secidx, uint64_t *stride)
{
	size_t n = 0;
	uint64_t *v = malloc((e->nsyms ? e->nsyms : 1) * sizeof(uint64_t));
	if (!v)
		return -1;
	for (size_t i = 1; i < e->nsyms; i++) {
		const sym_t *s = &e->syms[i];
		if (s->shndx == secidx && has_prefix(sym_name(e, s), "__ksymtab_", 10))
			v[n++] = s->value;
	}
	qsort(v, n, sizeof(*v), cmp_u64);
	uint64_t g = 0;
	size_t uniq = n ? 1 : 0;
	for (size_t i = 1; i < n; i++)
		if (v[i] != v[i - 1]) {
			g = gcd64(g, v[i] - v[i - 1]);
			uniq++;
		}
	free(v);
	*stride = uniq < 2 ? 0 : g;
	return 0;
}

typedef struct {
	const reloc_t *r;
	const uint32_t *slot;
	size_t nslots;
	size_t strings_idx;
	const uint8_t *sdata;
	size_t slen;
} target_ctx;

/* target() in _read_relocatable(): the string a field's relocation points at */
static int field_target(scan_t *e, const target_ctx *c, uint64_t off, str_t *out)
{
	const reloc_t *r = reloc_at(c->r, c->slot, c->nslots, off);
	if (!r)
		return 0;
	const sym_t *s = &e->syms[r->sym];
	if (s->shndx != c->strings_idx)
		return 0;
	int64_t at = place(s->value, r->addend, c->slen);
	if (at < 0)
		return 0;
	*out = cstr(c->sdata, c->slen, (size_t)at);
	return 1;
}

/* _read_crcs(): the __kcrctab<suffix> values, relocated __crc_ symbols included */
static int read_crcs(scan_t *e, const char *name, size_t first, size_t count)
{
	const shdr_t *cs = section(e, name);
	uint32_t *crc = e->exports.crc + first;
	uint8_t *has = e->exports.flag + first;
	if (!cs)
		return 0;
	size_t len;
	const uint8_t *data = sec_data(e, cs, &len);
	size_t width = e->is64 && count && len == 8 * count ? 8 : 4;
	if (len / width < count)
		return -1;
	for (size_t i = 0; i < count; i++) {
		crc[i] = (uint32_t)(width == 8 ? rd64(e, data + 8 * i) : rd32(e, data + 4 * i));
		has[i] = 1;
	}
	reloc_t *r;
	uint32_t *slot;
	size_t nslots;
	if (relocations_for(e, (size_t)(cs - e->sh), &r, &slot, &nslots))
		return -1;
	for (size_t i = 0; i < count; i++) {
		const reloc_t *x = reloc_at(r, slot, nslots, i * width);
		if (!x)
			continue;
		const sym_t *s = &e->syms[x->sym];
		if (s->shndx == SHN_ABS || s->shndx == SHN_UNDEF)
			crc[i] = (uint32_t)(s->value + (uint64_t)x->addend);
	}
	free(r);
	free(slot);
	return 0;
}

static const char *const TABLES[] = {"", "_gpl", "_gpl_future", "_unused", "_unused_gpl"};

/* read_exports() for a relocatable module */
static int read_exports(scan_t *e)
{
	const shdr_t *strings = section(e, "__ksymtab_strings");
	size_t p = e->is64 ? 8 : 4;
	size_t layouts[4][2] = {{4, 3}, {4, 2}, {p, 3}, {p, 2}};
	size_t nlayouts = p == 4 ? 2 : 4;
	char name[64];
	for (size_t t = 0; t < 5; t++) {
		snprintf(name, sizeof(name), "__ksymtab%s", TABLES[t]);
		const shdr_t *sec = section(e, name);
		if (!sec || sec->size == 0)
			continue;
		if (!strings)
			return -1;
		size_t secidx = (size_t)(sec - e->sh);
		target_ctx c = {.strings_idx = (size_t)(strings - e->sh)};
		c.sdata = sec_data(e, strings, &c.slen);
		reloc_t *r;
		uint32_t *slot;
		if (relocations_for(e, secidx, &r, &slot, &c.nslots))
			return -1;
		c.r = r;
		c.slot = slot;
		uint64_t stride;
		if (table_stride(e, secidx, &stride)) {
			free(r);
			free(slot);
			return -1;
		}
		size_t first = e->exports.n;
		int found = 0;
		for (size_t l = 0; l < nlayouts && !found; l++) {
			size_t fsize = layouts[l][0], nfields = layouts[l][1], es = fsize * nfields;
			if (sec->size % es || (stride && stride != es))
				continue;
			e->exports.n = first;
			found = 1;
			for (uint64_t base = 0; base < sec->size; base += es) {
				str_t nm, ns;
				if (!field_target(e, &c, base + fsize, &nm) ||
				    !reloc_at(r, slot, c.nslots, base)) {
					found = 0;
					break;
				}
				if (nfields == 3 && !field_target(e, &c, base + 2 * fsize, &ns) &&
				    reloc_at(r, slot, c.nslots, base + 2 * fsize)) {
					found = 0;
					break;
				}
				if (list_push(&e->exports, nm.p, nm.len, 0, 0)) {
					free(r);
					free(slot);
					return -1;
				}
			}
		}
		free(r);
		free(slot);
		if (!found)
			return -1;
		snprintf(name, sizeof(name), "__kcrctab%s", TABLES[t]);
		if (read_crcs(e, name, first, e->exports.n - first))
			return -1;
		if (t == 0) {
			/* _read_flags(): only checked, depmod has no use for the flags */
			const shdr_t *fl = section(e, "__kflagstab");
			size_t flen;
			if (fl) {
				sec_data(e, fl, &flen);
				if (flen < e->exports.n - first)
					return -1;
			}
		}
	}
	return 0;
}

/* kmod_symbols(): __crc_<name> symbols, else every string of __ksymtab_strings */
static int read_kmod_symbols(scan_t *e)
{
	for (size_t i = 1; i < e->nsyms; i++) {
		str_t n = sym_name(e, &e->syms[i]);
		if (has_prefix(n, "__crc_", 6) && list_push(&e->kmod, n.p + 6, n.len - 6, 0, 0))
			return -1;
	}
	if (e->kmod.n)
		return 0;
	const shdr_t *s = section(e, "__ksymtab_strings");
	if (!s)
		return 0;
	size_t len;
	const uint8_t *d = sec_data(e, s, &len);
	size_t at = 0;
	while (at < len) {
		str_t x = cstr(d, len, at);
		if (x.len && list_push(&e->kmod, x.p, x.len, 0, 0))
			return -1;
		at += x.len + 1;
	}
	return 0;
}

/* a set of names by index into an array of str_t: open addressing, FNV-1a */
typedef struct {
	uint32_t *slot;   /* index + 1, 0 for empty */
	size_t mask;
	const str_t *names;
} nameset_t;

uint32_t fnv1a(str_t s)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < s.len; i++)
		h = (h ^ (uint8_t)s.p[i]) * 16777619u;
	return h;
}

static int nameset_init(nameset_t *t, const str_t *names, size_t n)
{
	size_t cap = 16;
	while (cap < 2 * n)
		cap *= 2;
	t->slot = calloc(cap, sizeof(uint32_t));
	t->mask = cap - 1;
	t->names = names;
	return t->slot ? 0 : -1;
}

/* the slot of name: where it is, or the empty slot where it would go */
static uint32_t *nameset_slot(const nameset_t *t, str_t name)
{
	for (size_t i = fnv1a(name) & t->mask;; i = (i + 1) & t->mask) {
		uint32_t *sl = &t->slot[i];
		if (!*sl)
			return sl;
		str_t x = t->names[*sl - 1];
		if (x.len == name.len && !memcmp(x.p, name.p, name.len))
			return sl;
	}
}

/* add names[i] unless an equal name is there: the first one stays */
static void nameset_add(nameset_t *t, size_t i)
{
	uint32_t *sl = nameset_slot(t, t->names[i]);
	if (!*sl)
		*sl = (uint32_t)(i + 1);
}

/* the index of name, or -1 */
static ssize_t nameset_find(const nameset_t *t, str_t name)
{
	uint32_t sl = *nameset_slot(t, name);
	return sl ? (ssize_t)sl - 1 : -1;
}

/* read_versions() then the dependency symbols of kmod's depmod */
static int read_deps(scan_t *e)
{
	list_t ver = {0};
	int rc = -1;
	nameset_t vs = {0}, is = {0};
	const shdr_t *v = section(e, "__versions");
	if (v) {
		size_t len;
		const uint8_t *d = sec_data(e, v, &len);
		size_t w = e->is64 ? 8 : 4;
		if (len % MODULE_NAME_LEN)
			goto out;
		for (size_t off = 0; off < len; off += MODULE_NAME_LEN) {
			str_t n = cstr(d + off + w, MODULE_NAME_LEN - w, 0);
			if (!is_ascii(n))
				goto out;
			if (list_push(&ver, n.p, n.len, (uint32_t)rdword(e, d + off), 0))
				goto out;
		}
	}
	const shdr_t *xc = section(e, "__version_ext_crcs");
	const shdr_t *xn = section(e, "__version_ext_names");
	if (xc && xn) {
		size_t clen, nlen;
		const uint8_t *cd = sec_data(e, xc, &clen);
		const uint8_t *nd = sec_data(e, xn, &nlen);
		size_t n = clen / 4, at = 0, got = 0;
		while (got < n && at < nlen) {
			str_t x = cstr(nd, nlen, at);
			at += x.len + 1;
			if (!x.len)
				continue;
			if (!is_ascii(x))
				goto out;
			if (list_push(&ver, x.p, x.len, rd32(e, cd + 4 * got), 0))
				goto out;
			got++;
		}
		if (got < n)
			goto out;
	}
	int sparc = e->machine == EM_SPARC || e->machine == EM_SPARCV9;
	for (size_t i = 1; i < e->nsyms; i++) {
		const sym_t *s = &e->syms[i];
		if (s->shndx != SHN_UNDEF)
			continue;
		str_t n = sym_name(e, s);
		if (!n.len || (sparc && (s->info & 0xf) == STT_SPARC_REGISTER))
			continue;
		if (!is_ascii(n))
			goto out;
		uint8_t flags = ((s->info >> 4) == STB_WEAK ? DEP_WEAK : 0) |
				(n.p[0] == '.' ? DEP_DOTTED : 0);
		if (list_push(&e->deps, n.p, n.len, 0, flags))
			goto out;
	}
	size_t nimp = e->deps.n;
	if (ver.n) {
		if (nameset_init(&vs, ver.s, ver.n) || nameset_init(&is, e->deps.s, nimp))
			goto out;
		for (size_t i = 0; i < ver.n; i++)
			nameset_add(&vs, i);
		for (size_t i = 0; i < nimp; i++) {
			ssize_t k = nameset_find(&vs, e->deps.s[i]);
			if (k >= 0)
				e->deps.crc[i] = ver.crc[k];
			nameset_add(&is, i);
		}
		/* (is.names is e->deps.s: decide first, push after, so no realloc moves it) */
		uint8_t *unnamed = malloc(ver.n);
		if (!unnamed)
			goto out;
		for (size_t i = 0; i < ver.n; i++)
			unnamed[i] = nameset_find(&is, ver.s[i]) < 0;
		for (size_t i = 0; i < ver.n; i++)
			if (unnamed[i] &&
			    list_push(&e->deps, ver.s[i].p, ver.s[i].len, ver.crc[i],
				      ver.s[i].len && ver.s[i].p[0] == '.' ? DEP_DOTTED : 0)) {
				free(unnamed);
				goto out;
			}
		free(unnamed);
	}
	rc = 0;
out:
	free(vs.slot);
	free(is.slot);
	list_free(&ver);
	return rc;
}

/* the .modinfo keys depmod's outputs take */
const char *const MODINFO_KEYS[3] = {"alias", "softdep", "weakdep"};

int scan_image(scan_t *e)
{
	if (read_sections(e) || read_symbols(e))
		return -1;
	if (read_exports(e) || read_kmod_symbols(e) || read_deps(e))
		return -1;
	const shdr_t *mi = section(e, ".modinfo");
	if (mi) {
		size_t len, at = 0;
		const uint8_t *d = sec_data(e, mi, &len);
		while (at < len) {
			str_t x = cstr(d, len, at);
			at += x.len + 1;
			const char *eq = memchr(x.p, '=', x.len);
			if (!eq)
				continue;
			size_t klen = (size_t)(eq - x.p);
			for (int k = 0; k < 3; k++)
				if (klen == strlen(MODINFO_KEYS[k]) && !memcmp(x.p, MODINFO_KEYS[k], klen) &&
				    list_push(&e->info[k], eq + 1, x.len - klen - 1, 0, 0))
					return -1;
		}
	}
	return e->failed ? -1 : 0;
}

/* what only the parse needs: the headers' copies */
void parse_free(scan_t *e)
{
	free(e->sh);
	free(e->syms);
	free(e->loaded);
	e->sh = NULL;
	e->syms = NULL;
	e->loaded = NULL;
}

void scan_free(scan_t *e)
{
	parse_free(e);
	list_free(&e->exports);
	list_free(&e->kmod);
	list_free(&e->deps);
	for (int k = 0; k < 3; k++)
		list_free(&e->info[k]);
}

/* move what the results point at out of the file image into one block, so that no file
 * stays in memory until the results are built */
static int compact(job_t *j)
{
	scan_t *e = &j->e;
	list_t *lists[6] = {&e->exports, &e->kmod, &e->deps, &e->info[0], &e->info[1],
			    &e->info[2]};
	size_t total = 0;
	for (int k = 0; k < 6; k++)
		for (size_t i = 0; i < lists[k]->n; i++)
			total += lists[k]->s[i].len;
	char *arena = malloc(total ? total : 1), *at = arena;
	if (!arena)
		return -1;
	for (int k = 0; k < 6; k++)
		for (size_t i = 0; i < lists[k]->n; i++) {
			str_t *s = &lists[k]->s[i];
			memcpy(at, s->p, s->len);
			s->p = at;
			at += s->len;
		}
	parse_free(e);
	j->arena = arena;
	return 0;
}

/* open a regular file without blocking on a FIFO; its size, or -1 */
static int open_regular(const char *path, size_t limit, size_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > limit) {
		close(fd);
		return -1;
	}
	*size = (size_t)st.st_size;
	return fd;
}

void scan_job(job_t *j, size_t limit)
{
	size_t size;
	j->status = FILE_OTHER;
	int fd = open_regular(j->path, limit, &size);
	if (fd < 0)
		return;
	/* pages of the buffer that are never read are never touched */
	uint8_t *buf = size >= 64 ? malloc(size) : NULL;
	if (buf) {
		j->e = (scan_t){.d = buf, .size = size, .fd = fd, .wbuf = buf};
		load(&j->e, 0, 64);
		if (!j->e.failed && !memcmp(buf, "\177ELF", 4) && !scan_image(&j->e) &&
		    !compact(j))
			j->status = FILE_OK;
		else
			scan_free(&j->e);
		free(buf);
		j->e.d = NULL;
		j->e.wbuf = NULL;
	}
	close(fd);
}

void *scan_worker(void *arg)
{
	pool_t *p = arg;
	for (;;) {
		size_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
		if (i >= p->n)
			return NULL;
		scan_job(&p->jobs[i], p->limit);
	}
}
