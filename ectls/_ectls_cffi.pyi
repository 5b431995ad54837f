# Type stub for the module that cdef/build_ffi.py generates with cffi.
from typing import Any

ffi: Any
lib: Any
