# Cython declarations for ring.py (pure-Python mode; ignored when it runs uncompiled): the
# owner lookup's binary search on C integers.
cimport cython


@cython.locals(t=cython.longlong, v=cython.longlong, lo=Py_ssize_t, hi=Py_ssize_t, mid=Py_ssize_t)
cdef Py_ssize_t _first_at_or_above(tuple tokens, object token) except -1
