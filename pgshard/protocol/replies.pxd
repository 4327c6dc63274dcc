# Cython declarations for replies.py (pure-Python mode; ignored when it runs uncompiled):
# ReplyMatcher compiled as an extension type with C fields (the same attributes, all
# public: the server connection, the pool and the session read them), its per-frame loop on
# C integers over the list of frames, the request kinds it compares with C constants, the
# skip-to-Sync helper a C call.
cimport cython

cdef int _PARSE, _BIND, _DESC_STMT, _DESC_PORTAL, _EXEC, _SYNC, _QUERY, _FAKE
cdef tuple _BYTE


cdef class ReplyMatcher:
    cdef public object expect
    cdef public object txn_status
    cdef public int unsynced
    cdef public bint unit_failed
    cdef public bint skipping
    cdef public list events
    cdef public Py_ssize_t rest

    cpdef object push(self, int kind, bint swallow=*, object fake=*, bint bare=*)

    @cython.locals(t=int, s=Py_ssize_t, e=Py_ssize_t, span=Py_ssize_t, end=Py_ssize_t,
                   i=Py_ssize_t, keep=bint,
                   at_idle=bint, popped=bint, kind=int, c=int, head=list, out=list,
                   events=list)
    cpdef tuple feed(self, list frames, data)

    cdef int _drop_until_sync(self) except -1

    cpdef reset(self)
