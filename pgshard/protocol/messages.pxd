# Cython declarations for messages.py (pure-Python mode; ignored when it runs uncompiled):
# the message body cursor compiled as an extension type with C fields (the same attributes,
# all public), its bounds check, string and count reads C calls from this module (cpdef: still
# methods), and the per-message decoders of the extended protocol typed.
cimport cython

ctypedef const unsigned char* ubytes   # a body read in place


cdef class _Reader:
    cdef public object data
    cdef public Py_ssize_t pos
    cdef public object error

    cpdef int _need(self, Py_ssize_t n) except -1
    @cython.locals(data=bytes, p=ubytes, n=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t,
                   hi=int)
    cpdef str cstr(self)
    cpdef object u16(self)
    cpdef object end(self)


@cython.locals(r=_Reader, n=Py_ssize_t)
cpdef object decode_parse(object body)

@cython.locals(r=_Reader, p=ubytes, n=Py_ssize_t, a=Py_ssize_t, e=Py_ssize_t, hi=int)
cpdef tuple bind_statement_name(object body)

@cython.locals(r=_Reader)
cpdef tuple decode_target(object body, object what=*)

cpdef str decode_cstr(object body)

@cython.locals(end=Py_ssize_t)
cpdef str query_text(object raw)

@cython.locals(start=Py_ssize_t, old_len=Py_ssize_t, new=bytes)
cpdef bytes renamed_bind(object raw, Py_ssize_t at, str old, str new_name)

@cython.locals(r=_Reader, p=ubytes, pos=Py_ssize_t, n=Py_ssize_t, nf=Py_ssize_t,
               np_=Py_ssize_t, size=Py_ssize_t, params=list)
cpdef object decode_bind(object body)

@cython.locals(i=Py_ssize_t, count=Py_ssize_t)
cdef tuple _int16s(ubytes p, Py_ssize_t pos, Py_ssize_t n)
