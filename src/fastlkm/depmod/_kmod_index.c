/*
 * _kmod_index.c - the Python glue of kmod_index_core.c: kmod's binary index
 * (modules.*.bin) byte for byte as the reference in kmod_index.py (whose docstring
 * describes the file), and the hash order of depmod's hash tables (compute.py's
 * hash_superfast() and hash_order()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmod_index_core.h"

typedef struct {
	PyObject_HEAD
	struct kmod_index ix;
	PyObject *error;	/* raised for a key or value that is not 7-bit ASCII */
} IndexObject;

/* --- the Python type ------------------------------------------------------------------ */

static int nargs_ok(const char *name, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max)
{
	if (nargs >= min && nargs <= max)
		return 1;
	PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", name, min,
		     max, nargs);
	return 0;
}

/* the key and value as ASCII bytes, or the reference's error: encoding first (a lone
 * surrogate raises UnicodeEncodeError), then ix->error for any byte >= 128 */
static int ascii_args(IndexObject *ix, PyObject *key, PyObject *value,
		      const uint8_t **k, Py_ssize_t *klen, const uint8_t **v, Py_ssize_t *vlen)
{
	PyObject *msg;

	if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) {
		PyErr_SetString(PyExc_TypeError, "index key and value must be str");
		return -1;
	}
	if (PyUnicode_IS_ASCII(key) && PyUnicode_IS_ASCII(value)) {
		*k = PyUnicode_1BYTE_DATA(key);
		*klen = PyUnicode_GET_LENGTH(key);
		*v = PyUnicode_1BYTE_DATA(value);
		*vlen = PyUnicode_GET_LENGTH(value);
		return 0;
	}
	if (!PyUnicode_AsUTF8AndSize(key, NULL) || !PyUnicode_AsUTF8AndSize(value, NULL))
		return -1;
	msg = PyUnicode_FromFormat("index key or value is not 7-bit ASCII: %R %R", key, value);
	if (msg) {
		PyErr_SetObject(ix->error, msg);
		Py_DECREF(msg);
	}
	return -1;
}

static int u32_arg(PyObject *o, uint32_t *out)
{
	unsigned long long x = PyLong_AsUnsignedLongLong(o);

	if (x == (unsigned long long)-1 && PyErr_Occurred())
		return -1;
	if (x > UINT32_MAX) {
		PyErr_SetString(PyExc_OverflowError, "index priority does not fit in 32 bits");
		return -1;
	}
	*out = (uint32_t)x;
	return 0;
}

static int insert_one(IndexObject *ix, PyObject *key, PyObject *value, PyObject *priority)
{
	const uint8_t *k, *v;
	Py_ssize_t klen, vlen;
	uint32_t prio;

	if (ascii_args(ix, key, value, &k, &klen, &v, &vlen) < 0 || u32_arg(priority, &prio) < 0)
		return -1;
	int r = kix_insert(&ix->ix, k, (size_t)klen, v, (size_t)vlen, prio);

	if (r < 0)
		PyErr_NoMemory();
	return r;
}

static PyObject *Index_insert(IndexObject *ix, PyObject *const *args, Py_ssize_t nargs)
{
	int r;

	if (!nargs_ok("insert", nargs, 3, 3))
		return NULL;
	r = insert_one(ix, args[0], args[1], args[2]);
	if (r < 0)
		return NULL;
	return PyBool_FromLong(r);
}

static PyObject *Index_insert_many(IndexObject *ix, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *keys = NULL, *values = NULL, *prios = NULL, *out = NULL;
	Py_ssize_t n, i;

	if (!nargs_ok("insert_many", nargs, 3, 3))
		return NULL;
	keys = PySequence_Fast(args[0], "keys must be a sequence");
	values = keys ? PySequence_Fast(args[1], "values must be a sequence") : NULL;
	prios = values ? PySequence_Fast(args[2], "priorities must be a sequence") : NULL;
	if (!prios)
		goto out;
	n = PySequence_Fast_GET_SIZE(keys);
	if (PySequence_Fast_GET_SIZE(values) != n || PySequence_Fast_GET_SIZE(prios) != n) {
		PyErr_SetString(PyExc_ValueError, "keys, values and priorities differ in length");
		goto out;
	}
	out = PyList_New(n);
	if (!out)
		goto out;
	for (i = 0; i < n; i++) {
		int r = insert_one(ix, PySequence_Fast_GET_ITEM(keys, i),
				   PySequence_Fast_GET_ITEM(values, i),
				   PySequence_Fast_GET_ITEM(prios, i));

		if (r < 0) {
			Py_CLEAR(out);
			goto out;
		}
		PyList_SET_ITEM(out, i, PyBool_FromLong(r));
	}
out:
	Py_XDECREF(keys);
	Py_XDECREF(values);
	Py_XDECREF(prios);
	return out;
}

static PyObject *Index_write(IndexObject *ix, PyObject *const *args, Py_ssize_t nargs)
{
	long version = 34;
	uint64_t total;
	uint32_t *off;
	PyObject *out = NULL;
	int r;

	if (!nargs_ok("write", nargs, 0, 1))
		return NULL;
	if (nargs && (version = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred())
		return NULL;
	off = PyMem_Malloc((size_t)ix->ix.nnodes * sizeof(uint32_t));
	if (!off)
		return PyErr_NoMemory();
	r = kix_layout(&ix->ix, (int)version, off, &total);
	if (r == -2)
		PyErr_SetString(ix->error, "index too large for kmod's 28-bit node offsets");
	else if (r < 0)
		PyErr_NoMemory();
	else if ((out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total)))
		kix_write(&ix->ix, off, (uint8_t *)PyBytes_AS_STRING(out));
	PyMem_Free(off);
	return out;
}

static PyObject *Index_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	IndexObject *ix = (IndexObject *)type->tp_alloc(type, 0);

	if (!ix)
		return NULL;
	if (kix_init(&ix->ix) < 0) {
		Py_DECREF(ix);
		return PyErr_NoMemory();
	}
	ix->error = Py_NewRef(PyExc_ValueError);
	return (PyObject *)ix;
}

static int Index_init(IndexObject *ix, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"error", NULL};
	PyObject *error = PyExc_ValueError;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:Index", kwlist, &error))
		return -1;
	if (!PyExceptionClass_Check(error)) {
		PyErr_SetString(PyExc_TypeError, "error must be an exception class");
		return -1;
	}
	Py_SETREF(ix->error, Py_NewRef(error));
	return 0;
}

static void Index_dealloc(IndexObject *ix)
{
	kix_free(&ix->ix);
	Py_XDECREF(ix->error);
	Py_TYPE(ix)->tp_free((PyObject *)ix);
}

static PyMethodDef Index_methods[] = {
	{"insert", (PyCFunction)(void (*)(void))Index_insert, METH_FASTCALL,
	 "insert(key, value, priority) -> bool: index_insert(); True when the same value "
	 "was already there."},
	{"insert_many", (PyCFunction)(void (*)(void))Index_insert_many, METH_FASTCALL,
	 "insert_many(keys, values, priorities) -> list[bool]: insert() for each triple."},
	{"write", (PyCFunction)(void (*)(void))Index_write, METH_FASTCALL,
	 "write(version=34) -> bytes: the index file as kmod 30 or 34 writes it."},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject IndexType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "fastlkm.depmod._kmod_index.Index",
	.tp_doc = "Index(error=ValueError): an in-memory index as depmod builds one; error is "
		  "raised for a key or value that is not 7-bit ASCII.",
	.tp_basicsize = sizeof(IndexObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
	.tp_new = Index_new,
	.tp_init = (initproc)Index_init,
	.tp_dealloc = (destructor)Index_dealloc,
	.tp_methods = Index_methods,
};

/* --- depmod's hash order -------------------------------------------------------------- */

static PyObject *kix_hash_superfast(PyObject *mod, PyObject *arg)
{
	Py_buffer b;
	uint32_t h;

	if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
		return NULL;
	h = kix_superfast(b.buf, (size_t)b.len);
	PyBuffer_Release(&b);
	return PyLong_FromUnsignedLong(h);
}

struct hash_entry {
	uint32_t bucket;
	uint64_t head;		/* the first 8 bytes, big-endian, 0-padded: most compares end here */
	Py_ssize_t len;
	const char *s;
	PyObject *name;
};

static int entry_cmp(const void *a, const void *b)
{
	const struct hash_entry *x = a, *y = b;
	int c;

	if (x->bucket != y->bucket)
		return x->bucket < y->bucket ? -1 : 1;
	if (x->head != y->head)
		return x->head < y->head ? -1 : 1;
	c = memcmp(x->s, y->s, (size_t)(x->len < y->len ? x->len : y->len));
	if (c)
		return c;
	return (x->len > y->len) - (x->len < y->len);
}

/* the order kmod's hash_iter visits names in: by bucket, then by UTF-8 bytes */
static PyObject *kix_hash_order(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *seq, *out = NULL;
	struct hash_entry *e = NULL;
	Py_ssize_t n, i, j, buckets;
	uint32_t mask;

	if (!nargs_ok("hash_order", nargs, 2, 2))
		return NULL;
	buckets = PyLong_AsSsize_t(args[1]);
	if (buckets == -1 && PyErr_Occurred())
		return NULL;
	mask = (uint32_t)(size_t)(buckets - 1);
	seq = PySequence_Fast(args[0], "names must be a sequence");
	if (!seq)
		return NULL;
	n = PySequence_Fast_GET_SIZE(seq);
	e = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(*e));
	if (!e) {
		PyErr_NoMemory();
		goto out;
	}
	for (i = 0; i < n; i++) {
		PyObject *name = PySequence_Fast_GET_ITEM(seq, i);

		if (!PyUnicode_Check(name)) {
			PyErr_SetString(PyExc_TypeError, "names must be str");
			goto out;
		}
		e[i].s = PyUnicode_AsUTF8AndSize(name, &e[i].len);
		if (!e[i].s)
			goto out;
		e[i].bucket = kix_superfast((const uint8_t *)e[i].s, (size_t)e[i].len) & mask;
		e[i].head = 0;
		for (j = 0; j < 8; j++)
			e[i].head = e[i].head << 8 | (j < e[i].len ? (uint8_t)e[i].s[j] : 0);
		e[i].name = name;
	}
	qsort(e, (size_t)n, sizeof(*e), entry_cmp);
	out = PyList_New(n);
	if (!out)
		goto out;
	for (i = 0; i < n; i++)
		PyList_SET_ITEM(out, i, Py_NewRef(e[i].name));
out:
	PyMem_Free(e);
	Py_DECREF(seq);
	return out;
}

static PyMethodDef kix_methods[] = {
	{"hash_superfast", kix_hash_superfast, METH_O,
	 "hash_superfast(key: bytes) -> int: kmod's SuperFastHash."},
	{"hash_order", (PyCFunction)(void (*)(void))kix_hash_order, METH_FASTCALL,
	 "hash_order(names, buckets) -> list[str]: the order kmod's hash_iter visits names in."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef kix_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "fastlkm.depmod._kmod_index",
	.m_doc = "kmod's binary index and depmod's hash order in C (see fastlkm.depmod.kmod_index).",
	.m_size = -1,
	.m_methods = kix_methods,
};

PyMODINIT_FUNC PyInit__kmod_index(void)
{
	PyObject *m;

	if (PyType_Ready(&IndexType) < 0)
		return NULL;
	m = PyModule_Create(&kix_module);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "Index", (PyObject *)&IndexType) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
