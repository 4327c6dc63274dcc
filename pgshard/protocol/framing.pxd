# Cython declarations for framing.py (pure-Python mode; ignored when it runs uncompiled):
# FrameBuffer compiled as an extension type, its fields C slots instead of __slots__
# descriptors (the same attributes: max_size and allowed stay public), the per-frame
# check a C call, the frame walk on C integers.
cimport cython

ctypedef const unsigned char* ubytes   # a header read in place: bytes or bytearray


cdef class FrameBuffer:
    cdef bytearray _buf
    cdef Py_ssize_t _pos
    cdef bytes _ext
    cdef Py_ssize_t _epos
    cdef public Py_ssize_t max_size
    cdef public object allowed

    @cython.locals(ext=bytes, pos=Py_ssize_t, avail=Py_ssize_t, end=Py_ssize_t,
                   length=Py_ssize_t, mtype=int, p=ubytes, buf=bytearray)
    cpdef tuple next_frame(self)

    @cython.locals(end=Py_ssize_t, pos=Py_ssize_t, nxt=Py_ssize_t, length=Py_ssize_t,
                   mtype=int, p=ubytes)
    cdef tuple _frames(self, data, Py_ssize_t start)

    cdef int _check(self, int mtype, Py_ssize_t length) except -1
