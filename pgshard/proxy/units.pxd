# Cython declarations for units.py (pure-Python mode; ignored when it runs uncompiled): the
# pending extended-protocol operations compiled as extension types with C fields (all
# public: the extended pipeline, the pipeline runner and the fan-out read and set them), so
# a unit's ops cost what the tuples they replace did.

cdef class ParseOp:
    cdef public object st
    cdef public object raw
    cdef public object name


cdef class BindOp:
    cdef public object st
    cdef public object raw
    cdef public object bind
    cdef public object shard


cdef class DescribeStatementOp:
    cdef public object st


cdef class RawOp:
    cdef public object raw
    cdef public int expect


cdef class FakeOp:
    cdef public object reply


cdef class FlushOp:
    pass


cdef class SyncOp:
    pass
