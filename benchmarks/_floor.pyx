# cython: language_level=3, boundscheck=False, wraparound=False
"""The least any engine's Python binding must do per key in compare.py's workloads,
with no storage at all: read the caller's key and value objects, make the result
objects.  benchmarks/floor.py times the workloads with these in an engine's place."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

cdef unsigned long sink = 0            # what the touches read, so they cannot be dropped
cdef char VALUE[100]                   # the "stored" value every read returns a copy of
cdef char KEY[16]


cdef inline unsigned long touch(object b):
    # the first and the last byte: an engine copies or hashes all of them
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    return p[0] + p[n - 1] if n else 0


def put(table, key, value):
    """One put call: reads its key and its value."""
    global sink
    sink += touch(key) + touch(value)


def put_many(table, items):
    """One batch call over a list of (key, value) tuples."""
    global sink
    for key, value in items:
        sink += touch(key) + touch(value)


def get(table, key):
    """One get call: reads its key, returns a new 100-byte value."""
    global sink
    sink += touch(key)
    return PyBytes_FromStringAndSize(VALUE, 100)


def get_many(table, keys):
    """One batch call: reads every key, returns a list of new 100-byte values in order."""
    global sink
    cdef Py_ssize_t i, n = len(keys)
    cdef list out = PyList_New(n)
    for i in range(n):
        sink += touch(keys[i])
        value = PyBytes_FromStringAndSize(VALUE, 100)
        Py_INCREF(value)
        PyList_SET_ITEM(out, i, value)
    return out


cdef class scan:
    """An iterator of n (key, value) tuples, each of two new objects (16 + 100 bytes)."""
    cdef Py_ssize_t left

    def __init__(self, Py_ssize_t n):
        self.left = n

    def __iter__(self):
        return self

    def __next__(self):
        if self.left <= 0:
            raise StopIteration
        self.left -= 1
        return (PyBytes_FromStringAndSize(KEY, 16), PyBytes_FromStringAndSize(VALUE, 100))
