"""JSON copies, in the user's cache, of documents that are slow to build and never change for
the same input: the CRD files' schemas (libyaml takes 0.1-0.2 s for the five CRDs) and the
OpenAPI walk of the Kubernetes client's models (0.5 s of CPU). The file name carries what the
document is built from (a content digest, a version), so a stale copy is never read.

Best effort both ways: a copy that cannot be read is rebuilt, one that cannot be written
(read-only home, a relative XDG_CACHE_HOME, which the XDG spec says to ignore) is skipped,
and a copy is written whole or not at all, so a concurrent mesh never reads half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cache_file(folder: str, name: str) -> Path | None:
    """``<XDG_CACHE_HOME or ~/.cache>/meshchaos/<folder>/<name>``; None without an absolute
    cache root."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "meshchaos" / folder / name if os.path.isabs(root) else None


def cached_json(path: Path | None, build: Callable[[], T]) -> T:
    """The document kept at ``path``, or ``build()``'s, then kept there for the next start."""
    if path is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded: T = json.loads(path.read_bytes())
            return loaded
    doc = build()
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(path)
    return doc
