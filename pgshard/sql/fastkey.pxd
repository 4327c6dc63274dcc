# Cython declarations for fastkey.py (pure-Python mode; ignored when it runs uncompiled):
# the normalizing pass over a statement's characters on C offsets and characters.
cimport cython


@cython.locals(n=Py_ssize_t, k=Py_ssize_t, s=Py_ssize_t, last=Py_ssize_t, base=Py_ssize_t,
               p=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, c=Py_UCS4,
               minus=bint, integer=bint, backslash=bint, parts=list, consts=list)
cpdef tuple normalize(str sql)

cdef bint _word_char(Py_UCS4 c)
