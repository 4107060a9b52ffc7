"""What the dock widgets share: finding a case's layers, adding results, running jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from ..errors import HecktorInputError
from ..io.case import Case
from ..io.geometry import Geometry
from ..progress import Progress

if TYPE_CHECKING:
    import napari


def preload(*modules: str) -> None:
    """Import heavy modules now, on the GUI thread, when a widget opens.

    Imported later inside a worker thread they hold the import lock (and, during C
    extension start-up, the GIL) for up to seconds, which freezes the viewer mid-job.
    """
    import importlib

    for name in modules:
        importlib.import_module(name)


def start_warm_up(work: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
    """Run a widget's first-call set-up (``work``) in a background daemon thread, so that
    the first job does not pay for it; the thread is returned (``is_alive()`` = still
    warming up). Errors are left for the real job to report."""
    thread = threading.Thread(target=work, args=args, kwargs=kwargs, daemon=True,
                              name=f"warm-up {getattr(work, '__module__', '')}")
    thread.start()
    return thread


def plugin_setting(section: str, key: str, default: Any) -> Any:
    """A value of the plugin's settings (napari Preferences > Plugins > napari-hecktor)."""
    from napari.settings import get_plugin_settings

    try:
        return getattr(getattr(get_plugin_settings("napari-hecktor"), section), key)
    except (AttributeError, KeyError, ValueError):
        return default


def fill_table(table: Any, rows: list, columns: list[str], index: list | None = None) -> None:
    """Replace a magicgui Table's contents (its ``value`` setter wants a DataFrame)."""
    import pandas as pd

    table.value = pd.DataFrame(rows, columns=columns, index=index)


class RowsTable:
    """A read-only table for many rows (Qt model/view): filling it costs the same for 10 or
    10,000 rows, because only the rows in view are drawn. ``native`` is the QTableView."""

    def __init__(self, columns: list[str]) -> None:
        from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
        from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableView

        table = self

        class _Model(QAbstractTableModel):
            def rowCount(self, parent=QModelIndex()):  # noqa: B008
                return 0 if parent.isValid() else len(table.rows)

            def columnCount(self, parent=QModelIndex()):  # noqa: B008
                return 0 if parent.isValid() else len(table.columns)

            def data(self, index, role=Qt.ItemDataRole.DisplayRole):
                if role == Qt.ItemDataRole.DisplayRole and index.isValid():
                    return str(table.rows[index.row()][index.column()])
                return None

            def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
                if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
                    return table.columns[section]
                return None

        self.columns = list(columns)
        self.rows: list[Any] = []
        self.model = _Model()
        self.native = QTableView()
        self.native.setModel(self.model)
        self.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.native.verticalHeader().setVisible(False)
        self.native.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.native.setMinimumHeight(160)

    def set_rows(self, rows: list[Any]) -> None:
        """Show ``rows`` (sequences, one value per column; kept, not copied)."""
        self.model.beginResetModel()
        self.rows = rows
        self.model.endResetModel()


def mask_layer_names(viewer: napari.viewer.Viewer) -> list[str]:
    """Names of the GTVp/GTVn masks a widget can work on: predictions, then ground truth."""
    masks = layers_with_role(viewer, "prediction") + layers_with_role(viewer, "label")
    return [layer.name for layer in masks]


class MaskWidget(Container):
    """A dock widget bound to one mask layer, chosen in its ``target`` combo box.

    It follows the chosen layer: ``_mask_edited`` runs after each edit of it, and
    ``_attach(layer)`` / ``_detach(layer)`` when the choice changes (override as needed).
    Subclasses call :meth:`_follow_target` at the end of ``__init__``.
    """

    _connected: Any = None

    def _mask_choices(self, *_: Any) -> list[str]:
        return mask_layer_names(self.viewer)

    def _follow_target(self) -> None:
        self.target.changed.connect(self._connect_layer)
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self._connect_layer()

    def _layers_changed(self, *_: Any) -> None:
        try:
            self.target.reset_choices()
        except RuntimeError:  # the dock was closed: its Qt widgets are gone
            return
        self._connect_layer()

    def _connect_layer(self, *_: Any) -> None:
        name = self.target.value
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is self._connected:
            return
        if self._connected is not None:
            self._connected.events.labels_update.disconnect(self._mask_edited)
            self._detach(self._connected)
        self._connected = layer
        if layer is not None:
            layer.events.labels_update.connect(self._mask_edited)
        self._attach(layer)

    def _mask_edited(self, *_: Any) -> None:
        raise NotImplementedError

    def _attach(self, layer: Any) -> None:
        """The chosen mask layer is now ``layer`` (None: no mask)."""

    def _detach(self, layer: Any) -> None:
        """``layer`` is no longer the chosen mask."""


def autosaver_for(case: Case) -> Any:
    """The case's :class:`~napari_hecktor.io.autosave.Autosaver` (cache folder from settings)."""
    from pathlib import Path

    from ..io.autosave import Autosaver

    cache = plugin_setting("folders", "cache_folder", "") or None
    folder = Path(cache) / "autosave" / case.case_id if cache else None
    return Autosaver(case.case_id, case.geometry, folder, sources=list(case.sources.values()))


def role_of(layer: Any) -> str | None:
    return layer.metadata.get("hecktor", {}).get("role")


def layers_with_role(viewer: napari.viewer.Viewer, role: str) -> list:
    """The viewer's HECKTOR layers of one role (ct, pet, label, prediction, ...)."""
    return [layer for layer in viewer.layers if role_of(layer) == role]


def layer_with_role(viewer: napari.viewer.Viewer, role: str) -> Any:
    """The last (topmost) layer of ``role``, or a clear error."""
    found = layers_with_role(viewer, role)
    if not found:
        raise HecktorInputError(f"no {role.upper()} layer: open a case first")
    return found[-1]


def model_prediction(viewer: napari.viewer.Viewer) -> Any | None:
    """The topmost prediction layer made by Segment (its metadata holds the model's
    probabilities and uncertainty), or None."""
    found = [layer for layer in layers_with_role(viewer, "prediction")
             if "probabilities" in layer.metadata["hecktor"]]
    return found[-1] if found else None


def case_from_viewer(viewer: napari.viewer.Viewer) -> Case:
    """The case behind the viewer's CT layer (the one the reader loaded)."""
    ct = layer_with_role(viewer, "ct")
    case = ct.metadata["hecktor"].get("case")
    if case is None:  # a CT layer from elsewhere: rebuild from the layer itself
        geometry = Geometry.from_dict(ct.metadata["hecktor"]["geometry"])
        case = Case(ct.metadata["hecktor"].get("case_id", ct.name),
                    ct=geometry.image_from_array(np.asarray(ct.data)))
    return case


def set_labels(viewer: napari.viewer.Viewer, layer_tuple: tuple) -> Any:
    """Add a Labels layer, or write into the existing one of that name as ONE undo step."""
    data, kwargs, _ = layer_tuple
    name = kwargs["name"]
    if name in viewer.layers and viewer.layers[name].data.shape == data.shape:
        layer = viewer.layers[name]
        changed = np.asarray(layer.data) != data
        if changed.any():
            with layer.block_history():
                layer.data_setitem(np.nonzero(changed), data[changed])
        layer.metadata.update(kwargs["metadata"])
        return layer
    return viewer.add_labels(data, **kwargs)


def set_image(viewer: napari.viewer.Viewer, layer_tuple: tuple) -> Any:
    """Add an Image layer or replace the data of the existing one of that name."""
    data, kwargs, _ = layer_tuple
    name = kwargs["name"]
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        layer.metadata.update(kwargs["metadata"])
        return layer
    return viewer.add_image(data, **kwargs)


class JobPanel(Container):
    """Run / Cancel buttons, a progress bar and a status line for one long job.

    ``start(make_job, on_done)`` runs the progress generator ``make_job()`` in a napari
    thread worker, so the viewer stays responsive; Cancel quits it between two steps.
    """

    def __init__(self, run_text: str = "Run"):
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100, label="Progress")
        self.status = Label(value="")
        super().__init__(
            widgets=[self.run_button, self.cancel_button, self.progress, self.status],
            labels=False,
        )
        self.worker = None
        self.returned_at: float | None = None  # the result arrived on the GUI thread
        self.shown_at: float | None = None  # ... and on_done had shown it
        self.cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        make_job: Callable[[], Generator[Progress, None, Any]],
        on_done: Callable[[Any], None],
    ) -> Any:
        """Start the job; ``on_done(result)`` runs on the GUI thread when it finishes."""
        if self.running:
            return self.worker
        worker = create_worker(make_job, _start_thread=False, _ignore_errors=True)  # _on_error
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._mark_returned)
        worker.returned.connect(on_done)
        worker.returned.connect(self._mark_shown)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.returned_at = self.shown_at = None
        self.status.value = "starting..."
        worker.start()
        return worker

    def _mark_returned(self, *_: Any) -> None:
        self.returned_at = time.perf_counter()

    def _mark_shown(self, *_: Any) -> None:
        self.shown_at = time.perf_counter()

    def cancel(self, *_: Any) -> None:
        if self.worker is not None:
            self.status.value = "cancelling..."
            self.worker.quit()

    def _on_progress(self, progress: Progress) -> None:
        self.progress.value = int(100 * progress.fraction)
        self.status.value = progress.message

    def _on_error(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, HecktorInputError) else f"{type(exc).__name__}: {exc}"
        self.status.value = f"error: {message}"
        show_error(message)

    def _on_finished(self) -> None:
        if self.worker is not None and self.worker.abort_requested:
            self.status.value = "cancelled"
            show_info("cancelled: nothing was changed")
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
