"""Case dock widget: open a file pair, a HECKTOR folder or a DICOM folder, browse patients.

Reading runs in a thread worker (the viewer stays responsive); the previous case's
predicted masks are autosaved before its layers leave the viewer, so moving to the next
patient never loses corrections. Display settings (CT window, PET range and colour map,
fusion, ground truth) sit below, in the :class:`DisplayWidget` shared with the old
"PET/CT display" entry.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from ..display import case_layers
from ..errors import HecktorInputError
from ..io.case import Case, load_case, load_case_files
from ..io.dataset import CaseFiles, discover
from ..progress import Progress
from ._common import autosaver_for, layers_with_role, role_of
from .display import DisplayWidget

if TYPE_CHECKING:
    import napari

#: Layer roles that belong to one case and leave the viewer with it.
CASE_ROLES = ("ct", "pet", "label", "prediction", "probability", "uncertainty", "crf_change",
              "comparison")


def _chosen_file(edit: FileEdit) -> Path | None:
    """The file picked in ``edit``, or None while it is empty (magicgui shows '.')."""
    value = edit.value
    if value is None or str(value) in ("", "."):
        return None
    return Path(value)


class CaseWidget(Container):
    """Open cases and step through a dataset's patients; display settings below."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.ct_file = FileEdit(label="CT file", mode="r")
        self.pet_file = FileEdit(label="PET file (SUV)", mode="r")
        self.label_file = FileEdit(label="Ground truth (optional)", mode="r")
        self.open_pair = PushButton(text="Open CT/PET pair")
        self.folder = FileEdit(label="Folder", mode="d",
                               tooltip="a HECKTOR dataset, one case's folder or a DICOM study")
        self.open_folder = PushButton(text="Open folder")
        self.cases: list[CaseFiles] = []
        # choices from a callable: napari re-reads them (reset_choices) when layers change
        self.patient = ComboBox(label="Patient", choices=self._patient_ids)
        self.previous = PushButton(text="< Previous")
        self.next = PushButton(text="Next >")
        self.status = Label(value="")
        self.display = DisplayWidget(viewer)
        browse = Container(widgets=[self.previous, self.next], layout="horizontal", labels=False)
        super().__init__(widgets=[
            self.ct_file, self.pet_file, self.label_file, self.open_pair, self.folder,
            self.open_folder, self.patient, browse, self.status, self.display,
        ])
        self.worker: Any = None
        self._quiet = False
        self.open_pair.changed.connect(self.open_files)
        self.open_folder.changed.connect(lambda *_: self.open_dataset(self.folder.value))
        self.patient.changed.connect(self._patient_chosen)
        self.previous.changed.connect(lambda *_: self.step(-1))
        self.next.changed.connect(lambda *_: self.step(+1))
        viewer.layers.events.inserted.connect(self._adopt_dataset)
        self._adopt_dataset()
        self._update_buttons()

    # --- what the user asks for --------------------------------------------------------------
    def open_files(self, *_: Any) -> Any:
        """Open the CT/PET (and optional ground truth) files picked above."""
        ct, pet, label = (_chosen_file(e) for e in (self.ct_file, self.pet_file, self.label_file))
        if ct is None or pet is None:
            self._fail("choose a CT file and a PET file first")
            return None
        self._set_cases([])
        return self._load(lambda: load_case(ct, pet, label), f"{ct.name} + {pet.name}")

    def open_dataset(self, folder: str | Path) -> Any:
        """List the cases of a HECKTOR dataset, case folder or DICOM study; open the first."""
        try:
            cases = discover(Path(folder))
        except HecktorInputError as exc:
            self._fail(str(exc))
            return None
        self._set_cases(cases)
        return self.show_case(0)

    def show_case(self, index: int) -> Any:
        """Load the dataset's case number ``index`` (replaces the current case's layers)."""
        files = self.cases[index]
        self._set_patient(files.case_id)
        self._update_buttons()
        return self._load(lambda: load_case_files(files), files.case_id)

    def step(self, delta: int) -> Any:
        """Previous (-1) or next (+1) patient of the dataset."""
        index = self._index() + delta
        if self.running or not 0 <= index < len(self.cases):
            return None
        return self.show_case(index)

    @property
    def running(self) -> bool:
        return self.worker is not None

    # --- loading -------------------------------------------------------------------------------
    def _load(self, read: Callable[[], Case], what: str) -> Any:
        if self.running:
            return self.worker
        pending = self._pending_masks()
        self.worker = create_worker(_load_job, read, pending, what, _start_thread=False,
                                    _ignore_errors=True)  # shown by _fail
        self.worker.yielded.connect(lambda p: setattr(self.status, "value", p.message))
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(lambda exc: self._fail(str(exc)))
        self.worker.finished.connect(self._finished)
        self._update_buttons(loading=True)
        self.worker.start()
        return self.worker

    def _pending_masks(self) -> list[tuple[Any, np.ndarray]]:
        """(autosaver, labels copy) of each predicted mask of the case on screen."""
        pending = []
        for layer in layers_with_role(self.viewer, "prediction"):
            case = layer.metadata["hecktor"].get("case")
            if case is not None:
                pending.append((autosaver_for(case), np.array(layer.data, dtype=np.uint8)))
        return pending

    def _show(self, result: tuple[Case, list[Path]]) -> None:
        case, saved = result
        for layer in [la for la in self.viewer.layers if role_of(la) in CASE_ROLES]:
            self.viewer.layers.remove(layer)
        for data, kwargs, kind in case_layers(case):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.viewer.reset_view()
        where = f"; previous masks autosaved to {saved[0].parent}" if saved else ""
        self.status.value = f"{case.case_id} open{where}"

    def _finished(self) -> None:
        self.worker = None
        self._update_buttons()

    def _fail(self, message: str) -> None:
        self.status.value = f"error: {message}"
        show_error(message)

    # --- patient list ----------------------------------------------------------------------------
    def _set_cases(self, cases: list[CaseFiles]) -> None:
        self.cases = list(cases)
        self._quiet = True  # filling the list is not the user choosing a patient
        try:
            self.patient.reset_choices()
        finally:
            self._quiet = False
        self._update_buttons()

    def _patient_ids(self, *_: Any) -> list[str]:
        return [c.case_id for c in self.cases]

    def _set_patient(self, case_id: str) -> None:
        self._quiet = True
        try:
            self.patient.value = case_id
        finally:
            self._quiet = False

    def _index(self) -> int:
        ids = [c.case_id for c in self.cases]
        return ids.index(self.patient.value) if self.patient.value in ids else 0

    def _patient_chosen(self, *_: Any) -> None:
        if self.cases and not self.running and not self._quiet:
            self.show_case(self._index())

    def _adopt_dataset(self, *_: Any) -> None:
        """Offer the patient list of a dataset opened through File > Open as well."""
        if self.cases:
            return
        for layer in layers_with_role(self.viewer, "ct"):
            dataset = layer.metadata["hecktor"].get("dataset")
            if dataset:
                self._set_cases(dataset.get("cases") or discover(Path(dataset["root"])))
                self._set_patient(layer.metadata["hecktor"]["case_id"])
                self._update_buttons()
                return

    def _update_buttons(self, loading: bool = False) -> None:
        index = self._index()
        self.previous.enabled = not loading and bool(self.cases) and index > 0
        self.next.enabled = not loading and bool(self.cases) and index < len(self.cases) - 1
        self.patient.enabled = not loading and bool(self.cases)
        self.open_pair.enabled = self.open_folder.enabled = not loading


def _load_job(
    read: Callable[[], Case], pending: list[tuple[Any, np.ndarray]], what: str
) -> Generator[Progress, None, tuple[Case, list[Path]]]:
    """Autosave the outgoing masks, then read the new case (runs in a worker thread)."""
    saved = []
    for i, (saver, labels) in enumerate(pending):
        yield Progress(i, len(pending) + 1, "autosaving the previous case's mask...")
        saved.append(saver.save(labels))
    yield Progress(len(pending), len(pending) + 1, f"reading {what}...")
    return read(), saved
