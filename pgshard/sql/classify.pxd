# Cython declarations for classify.py (pure-Python mode; ignored when it runs uncompiled):
# the classifier's fast paths (a plain statement, one comment) on typed strings and C
# offsets, still callable from Python (cpdef).
cimport cython
from pgshard.sql cimport sticky


@cython.locals(head=str, body=str, p=object)
cpdef object plan(str sql)

@cython.locals(i=Py_ssize_t, j=Py_ssize_t, n=Py_ssize_t, k=Py_ssize_t, first=Py_ssize_t,
               semi=bint, c=Py_UCS4, w=str, word=str, h=tuple, v=str)
cpdef object _one_comment(str sql)

@cython.locals(h=tuple)
cpdef tuple _hint(object body)

@cython.locals(b=str, name=str, k=Py_ssize_t, rest=str, v=str, end=Py_ssize_t)
cpdef tuple _general_hint(str body)

@cython.locals(n=Py_ssize_t, k=Py_ssize_t, s=Py_ssize_t, e=Py_ssize_t, vs=Py_ssize_t,
               ve=Py_ssize_t, c=Py_UCS4)
cpdef tuple _bare_hint(str b)

cdef Py_ssize_t _skip_space(str b, Py_ssize_t k, Py_ssize_t n)

@cython.locals(kw=dict, v=str)
cpdef dict _hint_fields(dict hints)

cpdef object _hinted_plan(str word, object shard_key=*, object shard=*, object key_param=*,
                          object consistency=*)
