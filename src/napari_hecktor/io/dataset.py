"""Discovery of cases in HECKTOR dataset layouts (read-only: nothing is ever written there).

Recognised layouts (see DESIGN.md):

* ``hecktor2022``: ``imagesTr/<ID>__CT.nii.gz``, ``imagesTr/<ID>__PT.nii.gz``,
  ``labelsTr/<ID>.nii.gz`` (also ``imagesTs``/``labelsTs``).
* ``hecktor2025``: one folder per patient, ``<ID>/<ID>__CT.nii.gz``, ``__PT``, ``<ID>.nii.gz``.
* ``hecktor2021``: ``<ID>_ct.nii.gz``, ``<ID>_pt.nii.gz``, ``<ID>_gtvt.nii.gz`` (binary GTVt,
  read as label 1 = GTVp).
* ``dicom``: a folder holding CT and PET DICOM series (one case).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HecktorInputError
from .volumes import strip_suffix, volume_suffix

_PATTERNS = (
    # (regex on the file name without its ending, role, layout)
    (re.compile(r"^(?P<id>.+)__CT$"), "ct", None),
    (re.compile(r"^(?P<id>.+)__PT$"), "pet", None),
    (re.compile(r"^(?P<id>.+)_ct$", re.IGNORECASE), "ct", "hecktor2021"),
    (re.compile(r"^(?P<id>.+)_pt$", re.IGNORECASE), "pet", "hecktor2021"),
    (re.compile(r"^(?P<id>.+)_gtvt$", re.IGNORECASE), "label", "hecktor2021"),
)


@dataclass(frozen=True)
class CaseFiles:
    """Where the files of one case are. ``pet`` and ``label`` may be missing."""

    case_id: str
    ct: Path
    pet: Path | None = None
    label: Path | None = None
    layout: str = "files"

    @property
    def label_is_gtvt(self) -> bool:
        """HECKTOR 2021 labels are a binary GTVt (primary tumour only)."""
        return self.layout == "hecktor2021"


def classify_file(path: Path) -> tuple[str, str, str | None] | None:
    """(case ID, role, layout or None) from a HECKTOR file name, or None if not one."""
    stem = strip_suffix(path)
    for regex, role, layout in _PATTERNS:
        m = regex.match(stem)
        if m:
            return m.group("id"), role, layout
    return None


def _find_label(case_id: str, ct: Path) -> tuple[Path | None, str]:
    """The label file of a 2022 (``labelsTr``) or 2025 (same folder) case, and the layout."""
    folder = ct.parent
    if folder.name.lower().startswith("images"):
        labels_dir = folder.parent / ("labels" + folder.name[len("images") :])
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
            candidate = labels_dir / f"{case_id}{suffix}"
            if candidate.exists():
                return candidate, "hecktor2022"
        return None, "hecktor2022"
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        candidate = folder / f"{case_id}{suffix}"
        if candidate.exists():
            return candidate, "hecktor2025"
    return None, "hecktor2025" if folder.name == case_id else "files"


def _volume_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and volume_suffix(p))


def discover(path: str | Path) -> list[CaseFiles]:
    """All cases under ``path`` (a dataset root, a case folder or one file of a case), by ID."""
    path = Path(path)
    if not path.exists():
        raise HecktorInputError(f"not found: {path}")
    if path.is_file():
        return [case_of_file(path)]
    files = _volume_files(path)
    found: dict[str, dict[str, Path]] = {}
    layouts: dict[str, str] = {}
    for f in files:
        hit = classify_file(f)
        if hit is None:
            continue
        case_id, role, layout = hit
        found.setdefault(case_id, {})[role] = f
        if layout:
            layouts[case_id] = layout
    cases = []
    for case_id in sorted(found):
        roles = found[case_id]
        if "ct" not in roles:
            continue
        label, layout = roles.get("label"), layouts.get(case_id)
        if layout is None:
            label, layout = _find_label(case_id, roles["ct"])
        cases.append(CaseFiles(case_id, roles["ct"], roles.get("pet"), label, layout))
    if cases:
        return cases
    if _has_dicom(path):
        return [CaseFiles(path.name, path, path, None, "dicom")]
    if not any(path.iterdir()):
        raise HecktorInputError(f"the folder {path} is empty")
    raise HecktorInputError(
        f"no HECKTOR case found in {path}: expected <ID>__CT.nii.gz / <ID>__PT.nii.gz files "
        "(HECKTOR 2022/2025), <ID>_ct / <ID>_pt files (2021) or a DICOM folder"
    )


def case_of_file(path: str | Path) -> CaseFiles:
    """The case that one file belongs to: its CT, PET and label partners by naming convention.

    A loose file with no recognised name is returned as a CT-only case; the caller decides
    from its values whether it is really PET (see :func:`~napari_hecktor.io.case.load_case`).
    """
    path = Path(path)
    hit = classify_file(path)
    if hit is None:
        # A 2022 label (labelsTr/<ID>.nii.gz): find the CT in the sibling images folder.
        if path.parent.name.lower().startswith("labels"):
            images = path.parent.parent / ("images" + path.parent.name[len("labels") :])
            case_id = strip_suffix(path)
            found = discover(images) if images.is_dir() else []
            siblings = [c for c in found if c.case_id == case_id]
            if siblings:
                return siblings[0]
        return CaseFiles(strip_suffix(path), path, None, None, "files")
    case_id = hit[0]
    siblings = [c for c in discover(path.parent) if c.case_id == case_id]
    if not siblings:
        raise HecktorInputError(f"no CT file found for case {case_id} next to {path.name}")
    return siblings[0]


def _has_dicom(folder: Path) -> bool:
    for f in folder.rglob("*"):
        if f.is_file():
            try:
                with open(f, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False
