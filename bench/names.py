"""Names a user may mistype, and the one way bench says which it meant: ``"; did you mean a, b?"``, for every
registry (model sources, attacks, defenses, data sources and their datasets, a factory file's functions)."""

from __future__ import annotations

import difflib
from typing import Iterable


def closest(name: object, pool: Iterable[object], n: int = 4, cutoff: float = 0.5) -> str:
    """``"; did you mean a, b?"`` with the names of ``pool`` nearest ``name`` (case-insensitive, as spelled in the
    pool), or an empty string when none is near."""
    spelled = {str(p).lower(): str(p) for p in pool}
    near = difflib.get_close_matches(str(name).lower(), list(spelled), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(spelled[x] for x in near)}?" if near else ""
