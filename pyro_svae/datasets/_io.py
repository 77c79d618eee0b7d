"""Reading a screen's h5ad file, with errors that name the file and what it lacks."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import anndata

__all__ = []


def read_h5ad(path, backed: Optional[str] = None) -> anndata.AnnData:
    """Read ``path``; a missing file raises ``FileNotFoundError`` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No h5ad file at {str(path)!r} (resolved to {str(path.resolve())!r}).")
    return anndata.read_h5ad(path, backed=backed)


def require_columns(frame, columns: Iterable[str], where: str, path, why: str) -> None:
    """Raise ``KeyError`` naming the columns of ``frame`` that are missing and listing those present."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{str(path)!r}: {where} lacks column(s) {missing}, needed {why}; "
                       f"columns present: {list(frame.columns)}.")
