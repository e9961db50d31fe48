/*
 * scan_core.h: what depmod reads of one module image, in plain C (no Python): the
 * parsing core of fastlkm.depmod._scan (_scan.c binds it).  The facts are those of
 * kmod_module_get_symbols(), kmod_module_get_dependency_symbols() and .modinfo; a parse
 * gives up (-1) on anything the Python reference decoder would reject or that is outside
 * the common shape.
 */
#ifndef FASTLKM_SCAN_CORE_H
#define FASTLKM_SCAN_CORE_H

#include <stddef.h>
#include <stdint.h>

#define DEP_WEAK 1           /* fastlkm.depmod.scan.DEP_WEAK */
#define DEP_DOTTED 2         /* fastlkm.depmod.scan.DEP_DOTTED */

typedef struct {
	uint32_t name, type, link, info;
	uint64_t offset, size;
} shdr_t;

typedef struct {
	uint32_t name;
	uint8_t info;
	uint16_t shndx;
	uint64_t value;
} sym_t;

typedef struct {
	const char *p;
	size_t len;
} str_t;

typedef struct {
	uint32_t sym;
	int64_t addend;
} reloc_t;

/* a growable array of str_t with one u32 and one byte beside each */
typedef struct {
	str_t *s;
	uint32_t *crc;
	uint8_t *flag;
	size_t n, cap;
} list_t;

typedef struct {
	const uint8_t *d;
	size_t size;
	/* reading from a file (scan_files()): the image is a buffer of the file's size of
	 * which only what the parse touches is read, section by section (load()) */
	int fd;                /* -1: the whole image is in memory */
	uint8_t *wbuf;         /* d, writable */
	uint8_t *loaded;       /* per section: read already */
	int failed;            /* a read failed: the result is void */
	int is64, little;
	uint16_t e_type, machine;
	size_t shnum;
	shdr_t *sh;
	const uint8_t *shstr;
	size_t shstr_len;
	/* symbol table */
	sym_t *syms;
	size_t nsyms;
	const uint8_t *strtab;
	size_t strtab_len;
	/* results */
	list_t exports, kmod, deps;
	list_t info[3];   /* MODINFO_KEYS' values */
} scan_t;

/* --- many files at once, on threads ------------------------------------------------------ */

enum { FILE_PENDING, FILE_OK, FILE_OTHER };

typedef struct {
	const char *path;
	int status;
	scan_t e;
	char *arena;   /* the strings the results point at, the file itself freed */
} job_t;

typedef struct {
	job_t *jobs;
	size_t n;
	size_t next;   /* claimed with __atomic builtins */
	size_t limit;
} pool_t;


/* MODINFO_KEYS, in scan_t.info's order */
extern const char *const MODINFO_KEYS[3];

uint32_t fnv1a(str_t s);       /* FNV-1a of a name (name sets, interned strings) */
int scan_image(scan_t *e);       /* the facts of e->d (e->fd: read as needed); 0 or -1 */
void parse_free(scan_t *e);      /* what only the parse needs */
void scan_free(scan_t *e);       /* everything */
void scan_job(job_t *j, size_t limit);   /* read and scan j->path (FILE_OK or FILE_OTHER) */
void *scan_worker(void *pool);   /* scan_job() the jobs of a pool_t until none is left */

#endif
