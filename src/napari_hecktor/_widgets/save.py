"""Save dock widget: mask as NIfTI on the CT grid, DICOM-SEG / RTSTRUCT, PNG, and autosave."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, LineEdit, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..errors import HecktorInputError
from ..io.autosave import Autosaver
from ._common import MaskWidget, autosaver_for, case_from_viewer, layers_with_role

if TYPE_CHECKING:
    import napari

AUTOSAVE_MS = 3000


class SaveWidget(MaskWidget):
    """Save the corrected mask (never over an input file) and keep autosaved versions."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.target = ComboBox(label="Mask", choices=self._mask_choices)
        self.folder = FileEdit(label="Folder", mode="d", value=str(Path.home()))
        self.stem = LineEdit(label="File name", value="")
        self.nifti = PushButton(text="Save NIfTI (.nii.gz)")
        self.seg = PushButton(text="Save DICOM-SEG")
        self.rtstruct = PushButton(text="Save RTSTRUCT")
        self.snapshot = PushButton(text="Save PNG snapshot")
        self.autosave = CheckBox(label="Autosave while editing", value=True)
        self.status = Label(value="")
        super().__init__(widgets=[self.target, self.folder, self.stem, self.nifti, self.seg,
                                  self.rtstruct, self.snapshot, self.autosave, self.status])
        self.nifti.changed.connect(lambda *_: self._guarded(self.save_nifti))
        self.seg.changed.connect(lambda *_: self._guarded(self.save_dicom_seg))
        self.rtstruct.changed.connect(lambda *_: self._guarded(self.save_rtstruct))
        self.snapshot.changed.connect(lambda *_: self._guarded(self.save_snapshot))
        self._timer = QTimer(self.native)  # dies with the widget: no late timeouts
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.autosave_now)
        self._autosaver: Autosaver | None = None
        self._follow_target()

    # --- which mask -----------------------------------------------------------------------
    def _attach(self, layer: Any) -> None:
        self._autosaver = None
        if layer is not None and layers_with_role(self.viewer, "ct"):
            case = case_from_viewer(self.viewer)
            self.stem.value = self.stem.value or f"{case.case_id}_corrected"
            self.seg.enabled = self.rtstruct.enabled = case.layout == "dicom"

    def _mask_array(self) -> np.ndarray:
        return np.asarray(self.viewer.layers[self.target.value].data, dtype=np.uint8)

    def _path(self, suffix: str) -> Path:
        name = self.stem.value.strip() or "mask"
        return Path(self.folder.value) / f"{name}{suffix}"

    def _guarded(self, action: Any) -> Any:
        try:
            path = action()
        except HecktorInputError as exc:
            self.status.value = f"error: {exc}"
            show_error(str(exc))
            return None
        self.status.value = f"saved {path}"
        show_info(f"saved {path}")
        return path

    # --- saving -----------------------------------------------------------------------------
    def save_nifti(self) -> Path:
        """The mask on the CT's native grid; input files are refused."""
        from ..io.volumes import write_image

        case = case_from_viewer(self.viewer)
        image = case.geometry.image_from_array(self._mask_array())
        return write_image(image, self._path(".nii.gz"), protected=case.sources.values())

    def save_dicom_seg(self) -> Path:
        from ..io.export import write_dicom_seg

        case = case_from_viewer(self.viewer)
        return write_dicom_seg(self._mask_array(), case, self._path("_seg.dcm"), corrected=True)

    def save_rtstruct(self) -> Path:
        from ..io.export import write_rtstruct

        case = case_from_viewer(self.viewer)
        return write_rtstruct(self._mask_array(), case, self._path("_rtstruct.dcm"), corrected=True)

    def save_snapshot(self) -> Path:
        path = self._path(".png")
        self.viewer.screenshot(str(path), canvas_only=False)
        return path

    # --- autosave ---------------------------------------------------------------------------
    def _mask_edited(self, *_: Any) -> None:
        if self.autosave.value:
            self._timer.start()

    def autosaver(self) -> Autosaver:
        if self._autosaver is None:
            self._autosaver = autosaver_for(case_from_viewer(self.viewer))
        return self._autosaver

    def autosave_now(self) -> Any:
        """Write the current mask to the sidecar folder in the background."""
        saver, labels = self.autosaver(), self._mask_array().copy()
        worker = create_worker(saver.save, labels, _start_thread=False)
        worker.returned.connect(
            lambda path: setattr(self.status, "value",
                                 f"autosaved {time.strftime('%H:%M:%S')}: {path}"))
        worker.start()
        return worker
