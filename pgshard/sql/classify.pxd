# Cython declarations for classify.py (pure-Python mode; ignored when it runs uncompiled):
# the classifier's fast paths (a plain statement, one comment) on typed strings and C
# offsets, still callable from Python (cpdef).
cimport cython


@cython.locals(head=str, body=str, p=object)
cpdef object plan(str sql)

@cython.locals(i=Py_ssize_t, j=Py_ssize_t, semi=Py_ssize_t, code=str, first=str, head=str,
               word=str)
cpdef object _one_comment(str sql)

@cython.locals(b=str, name=str, k=Py_ssize_t, rest=str, v=str, end=Py_ssize_t)
cpdef tuple _hint(object body)

@cython.locals(kw=dict, v=str)
cpdef dict _hint_fields(dict hints)

cpdef object _hinted_plan(str word, object shard_key=*, object shard=*, object key_param=*,
                          object consistency=*)
