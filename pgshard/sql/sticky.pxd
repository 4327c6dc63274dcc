# Cython declarations for sticky.py (pure-Python mode; ignored when it runs uncompiled):
# maybe_dml, the test every plain statement of the classifier's fast paths pays, on a typed
# string.
cimport cython


@cython.locals(low=str, word=str)
cpdef bint maybe_dml(str sql)
