"""Autosave of corrected masks (no Qt): versioned NIfTI files on the CT grid.

The correction widget calls :meth:`Autosaver.save` (debounced) after edits; a crash or a
closed viewer then loses at most a few seconds of work, and :meth:`Autosaver.restore`
brings back the last version. Files are ``<case_id>_<UTC time stamp>.nii.gz`` in a sidecar
folder (``~/.cache/napari-hecktor/autosave/<case_id>/`` by default, ``$XDG_CACHE_HOME``
respected, or the folder given, e.g. next to the outputs); the newest ``keep`` versions are
kept. The autosave folder may never be, or lie inside, a folder of the case's inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from .geometry import Geometry
from .volumes import write_image

logger = logging.getLogger(__name__)

#: Versions kept per case by default.
DEFAULT_KEEP = 10
_SUFFIX = ".nii.gz"
_STAMP = "%Y%m%dT%H%M%S_%fZ"


def default_autosave_root() -> Path:
    """``$XDG_CACHE_HOME/napari-hecktor/autosave`` (``~/.cache/...`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "napari-hecktor" / "autosave"


def safe_case_id(case_id: str) -> str:
    """``case_id`` usable as a file and folder name (other characters become ``_``)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(case_id).strip()).strip("._")
    return text or "case"


def input_folders(sources: Mapping[str, Any] | Iterable[str | Path] | Any | None) -> list[Path]:
    """Folders holding a case's inputs: a folder source itself, else a file's parent.

    ``sources`` is a case (its ``sources``), a ``sources`` mapping or a list of paths.
    """
    if sources is None:
        return []
    if hasattr(sources, "sources") and hasattr(sources, "layout"):
        sources = sources.sources
    values = sources.values() if isinstance(sources, Mapping) else sources
    if isinstance(values, (str, os.PathLike)):
        values = [values]
    folders = []
    for value in values:
        if not value:
            continue
        path = Path(str(value)).expanduser().resolve()
        if path.is_dir() or (not path.exists() and not path.suffix):
            folders.append(path)
        else:
            folders.append(path.parent)
    return list(dict.fromkeys(folders))


class Autosaver:
    """Versioned autosave of one case's GTVp/GTVn mask on its CT grid.

    ``geometry`` is the CT grid (a :class:`Geometry` or an image on it); ``folder`` the
    folder to write into (default: the per-case cache folder); ``keep`` the number of
    versions kept; ``sources`` the case (or its ``sources``) whose input folders must never
    receive autosaves. Saving the same labels twice writes one file only. Thread-safe.
    """

    def __init__(
        self,
        case_id: str,
        geometry: Geometry | sitk.Image,
        folder: str | Path | None = None,
        *,
        keep: int = DEFAULT_KEEP,
        sources: Mapping[str, Any] | Iterable[str | Path] | Any | None = None,
    ) -> None:
        if isinstance(geometry, sitk.Image):
            geometry = Geometry.of(geometry)
        if int(keep) < 1:
            raise HecktorInputError(f"autosave must keep at least one version, not {keep}.")
        self.case_id = str(case_id)
        self.geometry = geometry
        self.keep = int(keep)
        self._name = safe_case_id(case_id)
        root = Path(folder).expanduser() if folder is not None else None
        self.folder = (root or default_autosave_root() / self._name).resolve()
        self._inputs = input_folders(sources)
        self._check_folder()
        self._pattern = re.compile(
            rf"^{re.escape(self._name)}_(\d{{8}}T\d{{6}}_\d{{6}}Z)(?:-(\d+))?{re.escape(_SUFFIX)}$"
        )
        self._lock = threading.Lock()
        self._last_hash: str | None = None
        self._last_path: Path | None = None

    # ----------------------------------------------------------------------- public

    def save(self, labels: np.ndarray) -> Path:
        """Write ``labels`` (z, y, x) as a new version; skip if unchanged since the last one.

        Returns the path of the new version, or of the last one when nothing changed.
        """
        array = self._checked(labels)
        digest = _digest(array)
        with self._lock:
            if digest == self._last_hash and self._last_path is not None:
                if self._last_path.exists():
                    return self._last_path
            self._check_folder()
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._next_path()
            image = self.geometry.image_from_array(array)
            write_image(image, path, protected=self._protected_files())
            self._last_hash, self._last_path = digest, path
            self._rotate()
            return path

    def versions(self) -> list[Path]:
        """The saved versions of this case, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = self._pattern.match(path.name)
            if match and path.is_file():
                found.append(((match.group(1), int(match.group(2) or 0)), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The newest saved version, or None."""
        versions = self.versions()
        return versions[-1] if versions else None

    def restore(self) -> np.ndarray | None:
        """The newest saved version as a (z, y, x) uint8 array, or None if there is none.

        Raises :class:`HecktorInputError` if that file is not on this case's CT grid.
        """
        with self._lock:
            path = self.latest()
            if path is None:
                return None
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as error:
                raise HecktorInputError(f"cannot read the autosaved mask {path}.") from error
            if not Geometry.of(image).matches(self.geometry):
                raise HecktorInputError(
                    f"the autosaved mask {path.name} is not on this case's CT grid "
                    f"({Geometry.of(image).describe()} vs {self.geometry.describe()})."
                )
            array = sitk.GetArrayFromImage(image).astype(np.uint8, copy=False)
            self._last_hash, self._last_path = _digest(array), path
            return array

    # ----------------------------------------------------------------------- helpers

    def _check_folder(self) -> None:
        """Refuse an autosave folder that is, or lies inside, an input folder."""
        for folder in self._inputs:
            if self.folder == folder or self.folder.is_relative_to(folder):
                raise HecktorInputError(
                    f"autosave folder {self.folder} is inside the input folder {folder}; "
                    "choose a folder outside the case's inputs."
                )

    def _protected_files(self) -> list[Path]:
        return [p for p in self._inputs if p.is_file()]

    def _checked(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` as uint8 on the CT grid (any integer labels 0..255 are kept)."""
        array = np.asarray(labels)
        if array.shape != self.geometry.shape:
            raise HecktorInputError(
                f"cannot autosave a mask of shape {array.shape}: the CT grid is "
                f"{self.geometry.shape} (z, y, x)."
            )
        if array.dtype == bool:
            return array.astype(np.uint8)
        if not np.issubdtype(array.dtype, np.integer):
            raise HecktorInputError(f"cannot autosave a mask of {array.dtype} values.")
        if array.dtype != np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
            raise HecktorInputError("cannot autosave a mask with labels outside 0..255.")
        return np.ascontiguousarray(array, dtype=np.uint8)

    def _next_path(self) -> Path:
        """A new file name that sorts after every existing version."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime(_STAMP)
        key = (stamp, 0)
        latest = self.latest()
        if latest is not None:
            match = self._pattern.match(latest.name)
            last = (match.group(1), int(match.group(2) or 0))
            if key <= last:  # same microsecond, or the clock went back
                key = (last[0], last[1] + 1)
        counter = f"-{key[1]}" if key[1] else ""
        return self.folder / f"{self._name}_{key[0]}{counter}{_SUFFIX}"

    def _rotate(self) -> None:
        """Delete the oldest versions beyond ``keep``."""
        for path in self.versions()[: -self.keep]:
            try:
                path.unlink()
            except OSError as error:  # a locked or vanished file: keep going
                logger.warning("could not delete old autosave %s: %s", path, error)


def _digest(array: np.ndarray) -> str:
    """A content hash of a uint8 (z, y, x) array (shape included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(array.shape).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()
