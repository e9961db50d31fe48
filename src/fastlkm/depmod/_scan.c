/*
 * fastlkm.depmod._scan: what depmod reads of one module image, in one pass of C; the
 * Python glue of the parsing core in scan_core.c (scan_core.h).
 *
 * The reference decoder is Python (elf/reader.py, kernel/ksymtab.py, kernel/modversions.py,
 * kernel/module.py); this is its fast path for depmod's cold run and must give the same
 * facts.  It gives up (returns None) on anything the reference would reject or that is
 * outside the common shape, and the caller then runs the reference, which reports the
 * problem in its own words.  Tests compare both on every module of the corpus trees and
 * on mutated modules.
 *
 * scan(image) -> None or
 *   (exports, crcs, kmod_symbols, deps, flags, dep_crcs, aliases, softdeps, weakdeps)
 *   exports       names of every export, table by table in find_symbol()'s order
 *   crcs          their CRCs (0 without one)
 *   kmod_symbols  the names as kmod_elf_get_symbols() reads them
 *   deps          kmod_elf_get_dependency_symbols(): undefined symbols in symbol-table
 *                 order, then __versions entries that no undefined symbol named
 *   flags         one byte per dep: DEP_WEAK for a weak undefined symbol, DEP_DOTTED
 *                 for a name with a leading '.' (which depmod strips)
 *   dep_crcs      the CRC each dep expects (first __versions entry of its name), or 0:
 *                 u32 little-endian each, in bytes (only depmod -e looks at them)
 *   aliases, softdeps, weakdeps
 *                 the values of these .modinfo keys, in file order (get_next_modinfo():
 *                 NUL-separated key=value strings)
 *
 * The parse runs without the GIL: the image is a read-only buffer held for the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "scan_core.h"

/*
 * One str object per distinct name of a batch: most modules need the same few hundred
 * symbols, and a str made once also keeps its hash for every dict lookup after.
 */
typedef struct {
	str_t key;
	uint32_t hash;
	PyObject *obj;   /* owned: released by intern_free() */
} interned_t;

typedef struct {
	interned_t *slot;
	size_t mask, n;
} interns_t;

static void intern_free(interns_t *t)
{
	if (t->slot)
		for (size_t i = 0; i <= t->mask; i++)
			Py_XDECREF(t->slot[i].obj);
	free(t->slot);
	*t = (interns_t){0};
}

static int intern_grow(interns_t *t)
{
	size_t cap = t->slot ? 2 * (t->mask + 1) : 1024;
	interned_t *slot = calloc(cap, sizeof(*slot));
	if (!slot)
		return -1;
	if (t->slot)
		for (size_t i = 0; i <= t->mask; i++) {
			interned_t *x = &t->slot[i];
			if (!x->obj)
				continue;
			size_t j = x->hash & (cap - 1);
			while (slot[j].obj)
				j = (j + 1) & (cap - 1);
			slot[j] = *x;
		}
	free(t->slot);
	t->slot = slot;
	t->mask = cap - 1;
	return 0;
}

/* a new reference to the str of s (UTF-8, invalid bytes replaced) */
static PyObject *intern_str(interns_t *t, str_t s)
{
	if (2 * (t->n + 1) > (t->slot ? t->mask + 1 : 0) && intern_grow(t))
		return PyErr_NoMemory();
	uint32_t h = fnv1a(s);
	size_t i = h & t->mask;
	for (;; i = (i + 1) & t->mask) {
		interned_t *x = &t->slot[i];
		if (!x->obj)
			break;
		if (x->hash == h && x->key.len == s.len && !memcmp(x->key.p, s.p, s.len))
			return Py_NewRef(x->obj);
	}
	PyObject *o = PyUnicode_DecodeUTF8(s.p, (Py_ssize_t)s.len, "replace");
	if (!o)
		return NULL;
	t->slot[i] = (interned_t){s, h, Py_NewRef(o)};
	t->n++;
	return o;
}

typedef PyObject *(*item_fn)(const list_t *l, size_t i, interns_t *t);

static PyObject *name_item(const list_t *l, size_t i, interns_t *t)
{
	return intern_str(t, l->s[i]);
}

static PyObject *crc_item(const list_t *l, size_t i, interns_t *t)
{
	(void)t;
	return PyLong_FromUnsignedLong(l->crc[i]);
}

/* a tuple of item(l, i) for every entry of l */
static PyObject *list_tuple(const list_t *l, item_fn item, interns_t *t)
{
	PyObject *tup = PyTuple_New((Py_ssize_t)l->n);
	if (!tup)
		return NULL;
	for (size_t i = 0; i < l->n; i++) {
		PyObject *x = item(l, i, t);
		if (!x) {
			Py_DECREF(tup);
			return NULL;
		}
		PyTuple_SET_ITEM(tup, (Py_ssize_t)i, x);
	}
	return tup;
}

/* u32 little-endian each: the dependencies' CRCs matter only to depmod -e */
static PyObject *crcs_bytes(const list_t *l)
{
	PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * l->n));
	if (!b)
		return NULL;
	uint8_t *p = (uint8_t *)PyBytes_AS_STRING(b);
	for (size_t i = 0; i < l->n; i++, p += 4) {
		uint32_t c = l->crc[i];
		p[0] = (uint8_t)c;
		p[1] = (uint8_t)(c >> 8);
		p[2] = (uint8_t)(c >> 16);
		p[3] = (uint8_t)(c >> 24);
	}
	return b;
}

static int same_names(const list_t *a, const list_t *b)
{
	if (a->n != b->n)
		return 0;
	for (size_t i = 0; i < a->n; i++)
		if (a->s[i].len != b->s[i].len || memcmp(a->s[i].p, b->s[i].p, a->s[i].len))
			return 0;
	return 1;
}

static PyObject *result(const scan_t *e, interns_t *t)
{
	PyObject *flags = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)e->deps.n);
	if (flags && e->deps.n)
		memcpy(PyBytes_AS_STRING(flags), e->deps.flag, e->deps.n);
	PyObject *exports = list_tuple(&e->exports, name_item, t);
	PyObject *kmod = exports && same_names(&e->exports, &e->kmod)
				 ? Py_NewRef(exports) : list_tuple(&e->kmod, name_item, t);
	return Py_BuildValue("(NNNNNNNNN)", exports, list_tuple(&e->exports, crc_item, t), kmod,
			     list_tuple(&e->deps, name_item, t), flags, crcs_bytes(&e->deps),
			     list_tuple(&e->info[0], name_item, t),
			     list_tuple(&e->info[1], name_item, t),
			     list_tuple(&e->info[2], name_item, t));
}

static PyObject *scan(PyObject *self, PyObject *arg)
{
	(void)self;
	Py_buffer buf;
	if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE))
		return NULL;
	scan_t e = {.d = buf.buf, .size = (size_t)buf.len, .fd = -1};
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = scan_image(&e);
	Py_END_ALLOW_THREADS
	interns_t t = {0};
	PyObject *res = rc ? Py_NewRef(Py_None) : result(&e, &t);
	intern_free(&t);
	scan_free(&e);
	PyBuffer_Release(&buf);
	return res;
}

/*
 * scan_files(paths, jobs, limit) -> list: per path the facts of scan(), or None when the
 * file is compressed, unreadable or declined (the caller reads those itself).
 */
static PyObject *scan_files(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *seq;
	int nthreads;
	unsigned long long limit;
	if (!PyArg_ParseTuple(args, "OiK", &seq, &nthreads, &limit))
		return NULL;
	PyObject *fast = PySequence_Fast(seq, "paths must be a sequence of bytes");
	if (!fast)
		return NULL;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
	pool_t pool = {.jobs = calloc(n ? (size_t)n : 1, sizeof(job_t)), .n = (size_t)n,
		       .limit = (size_t)limit};
	PyObject *out = NULL;
	interns_t interns = {0};
	if (!pool.jobs) {
		PyErr_NoMemory();
		goto done;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *p = PySequence_Fast_GET_ITEM(fast, i);
		if (!PyBytes_Check(p)) {
			PyErr_SetString(PyExc_TypeError, "paths must be bytes");
			goto done;
		}
		pool.jobs[i].path = PyBytes_AS_STRING(p);
	}
	if (nthreads < 1)
		nthreads = 1;
	if (nthreads > 64)
		nthreads = 64;
	pthread_t tids[64];
	int started = 0;
	Py_BEGIN_ALLOW_THREADS
	for (int t = 1; t < nthreads && (size_t)t < pool.n; t++) {
		if (pthread_create(&tids[started], NULL, scan_worker, &pool))
			break;
		started++;
	}
	scan_worker(&pool);
	for (int t = 0; t < started; t++)
		pthread_join(tids[t], NULL);
	Py_END_ALLOW_THREADS
	out = PyList_New(n);
	if (!out)
		goto done;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *r = pool.jobs[i].status == FILE_OK ? result(&pool.jobs[i].e, &interns)
							      : Py_NewRef(Py_None);
		if (!r) {
			Py_CLEAR(out);
			goto done;
		}
		PyList_SET_ITEM(out, i, r);
	}
done:
	intern_free(&interns);   /* before the arenas its keys point into */
	if (pool.jobs)
		for (Py_ssize_t i = 0; i < n; i++) {
			scan_free(&pool.jobs[i].e);
			free(pool.jobs[i].arena);
		}
	free(pool.jobs);
	Py_DECREF(fast);
	return out;
}

static PyMethodDef methods[] = {
	{"scan", scan, METH_O, "What depmod reads of one module image, or None."},
	{"scan_files", scan_files, METH_VARARGS,
	 "scan() of many files (paths as bytes) on threads; None where the caller must read."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_scan", "Native scan of module images for depmod.", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
	return PyModule_Create(&module);
}
