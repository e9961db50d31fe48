/*
 * _kmod_index.c - kmod's binary index (modules.*.bin) built and written in C, byte for
 * byte as the reference in kmod_index.py (whose docstring describes the file), and the
 * hash order of depmod's hash tables (depmod.py's hash_superfast() and hash_order()).
 *
 * The trie grows as depmod's index_insert() grows it: a node splits where its prefix and
 * the key differ, a value goes before the first one of equal or higher priority
 * (index_add_value()).  Nodes live in one array and refer to each other by number; the
 * prefixes and values are slices of one byte arena, so a split copies nothing.  Writing
 * walks the trie with an explicit stack (a key of any length cannot exhaust the C stack):
 * children first for kmod 30 (index_write__node()), each node before its children for
 * kmod 34.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct {
	PyObject_HEAD
	struct ix_node *nodes;
	uint32_t nnodes, capnodes;
	struct ix_value *vals;
	uint32_t nvals, capvals;
	uint8_t *arena;
	size_t alen, acap;
	PyObject *error;	/* raised for a key or value that is not 7-bit ASCII */
} IndexObject;

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
	np = PyMem_Realloc(*p, (size_t)c * size);
	if (!np)
		goto nomem;
	*p = np;
	*cap = c;
	return 0;
nomem:
	PyErr_NoMemory();
	return -1;
}

/* the arena offset of a copy of s[0..len) */
static int arena_add(IndexObject *ix, const uint8_t *s, size_t len, uint32_t *off)
{
	if (ix->alen + len > UINT32_MAX) {
		PyErr_NoMemory();
		return -1;
	}
	if (ix->alen + len > ix->acap) {
		size_t c = ix->acap ? ix->acap : 4096;
		uint8_t *na;

		while (c < ix->alen + len)
			c *= 2;
		na = PyMem_Realloc(ix->arena, c);
		if (!na) {
			PyErr_NoMemory();
			return -1;
		}
		ix->arena = na;
		ix->acap = c;
	}
	memcpy(ix->arena + ix->alen, s, len);
	*off = (uint32_t)ix->alen;
	ix->alen += len;
	return 0;
}

/* a new empty node's number, 0 on error (node 0 is the root, never new) */
static uint32_t node_new(IndexObject *ix)
{
	if (ix->nnodes == UINT32_MAX) {
		PyErr_NoMemory();
		return 0;
	}
	if (grow((void **)&ix->nodes, &ix->capnodes, ix->nnodes + 1, sizeof(*ix->nodes)) < 0)
		return 0;
	memset(&ix->nodes[ix->nnodes], 0, sizeof(*ix->nodes));
	return ix->nnodes++;
}

static uint8_t *kids_alloc(uint16_t cap)
{
	uint8_t *k = PyMem_Malloc((size_t)cap * 5);

	if (!k)
		PyErr_NoMemory();
	return k;
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
		PyMem_Free(n->kids);
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
static int node_split(IndexObject *ix, uint32_t n, uint32_t j)
{
	uint8_t *k = kids_alloc(KIDS_MIN);
	struct ix_node *node, *child;
	uint32_t c;

	if (!k)
		return -1;
	c = node_new(ix);
	if (!c) {
		PyMem_Free(k);
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
static int add_value(IndexObject *ix, uint32_t n, const uint8_t *v, size_t vlen, uint32_t prio)
{
	uint32_t *link = &ix->nodes[n].values, i, str, nv;
	int dup = 0;

	for (i = *link; i; i = ix->vals[i].next)
		if (ix->vals[i].len == vlen && !memcmp(ix->arena + ix->vals[i].str, v, vlen)) {
			dup = 1;
			break;
		}
	if (ix->nvals == UINT32_MAX) {
		PyErr_NoMemory();
		return -1;
	}
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

static int ix_insert(IndexObject *ix, const uint8_t *k, size_t klen, const uint8_t *v,
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
	return ix_insert(ix, k, (size_t)klen, v, (size_t)vlen, prio);
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
static uint64_t own_size(const IndexObject *ix, const struct ix_node *n)
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

static PyObject *Index_write(IndexObject *ix, PyObject *const *args, Py_ssize_t nargs)
{
	uint32_t nn = ix->nnodes, *stack, *order, *off, sp = 0, no = 0, i, j;
	long version = 34;
	uint64_t total = 12;
	PyObject *out = NULL;
	uint8_t *buf;

	if (!nargs_ok("write", nargs, 0, 1))
		return NULL;
	if (nargs && (version = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred())
		return NULL;
	stack = PyMem_Malloc((size_t)nn * 3 * sizeof(uint32_t));
	if (!stack)
		return PyErr_NoMemory();
	order = stack + nn;
	off = order + nn;
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
	for (i = 0; i < no; i++) {
		off[order[i]] = (uint32_t)total;
		total += own_size(ix, &ix->nodes[order[i]]);
		if (total > NODE_MASK) {
			PyErr_SetString(ix->error, "index too large for kmod's 28-bit node offsets");
			goto out;
		}
	}
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
	if (!out)
		goto out;
	buf = (uint8_t *)PyBytes_AS_STRING(out);
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
out:
	PyMem_Free(stack);
	return out;
}

static PyObject *Index_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	IndexObject *ix = (IndexObject *)type->tp_alloc(type, 0);

	if (!ix)
		return NULL;
	ix->nvals = 1;		/* vals[0] stands for "none" */
	if (grow((void **)&ix->vals, &ix->capvals, 1, sizeof(*ix->vals)) < 0 ||
	    grow((void **)&ix->nodes, &ix->capnodes, 1, sizeof(*ix->nodes)) < 0) {
		Py_DECREF(ix);
		return NULL;
	}
	memset(&ix->nodes[0], 0, sizeof(*ix->nodes));
	ix->nnodes = 1;
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
	uint32_t i;

	for (i = 0; i < ix->nnodes; i++)
		PyMem_Free(ix->nodes[i].kids);
	PyMem_Free(ix->nodes);
	PyMem_Free(ix->vals);
	PyMem_Free(ix->arena);
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

/* SuperFastHash as kmod's shared/hash.c computes it: little-endian 16-bit loads, a signed
 * char in the tail, 32-bit arithmetic */
static uint32_t superfast(const uint8_t *key, size_t len)
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

static PyObject *kix_hash_superfast(PyObject *mod, PyObject *arg)
{
	Py_buffer b;
	uint32_t h;

	if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
		return NULL;
	h = superfast(b.buf, (size_t)b.len);
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
		e[i].bucket = superfast((const uint8_t *)e[i].s, (size_t)e[i].len) & mask;
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
