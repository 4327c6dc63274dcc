# Cython declarations for messages.py (pure-Python mode; ignored when it runs uncompiled):
# the message body cursor compiled as an extension type with C fields (the same attributes,
# all public) and its bounds check a C call from its own methods (cpdef: still a method).
cdef class _Reader:
    cdef public object data
    cdef public Py_ssize_t pos
    cdef public object error

    cpdef int _need(self, Py_ssize_t n) except -1
