"""Reading triton's TTIR (used by aot_check; importable without a GPU or a compiler)."""
from __future__ import annotations

import re

_ADDPTR_I32 = re.compile(r"tt\.addptr\b[^:]*:[^,]*,\s*(?:tensor<[^>]*xi32>|i32)"
                         r"(?:\s+loc\(.*\))?\s*$", re.M)


def offsets_32bit(ttir: str) -> list[str]:
    """The tt.addptr operations of a kernel's TTIR whose offset is 32-bit (reported, not a
    failure). The compiler splits `ptr + big + small` into one addptr per term, so a 32-bit
    addptr is correct when its term is small (positions within one map) and the batch and
    channel terms before it are 64-bit; telling the two apart needs the def-use chains, which
    this count does not follow."""
    return [m.group(0).strip() for m in _ADDPTR_I32.finditer(ttir)]
