"""Correct dock widget: brush/eraser in mm, 3D sphere, fill holes, lesion table, GT comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    Table,
)
from qtpy.QtCore import QTimer

from ..display import labels_layer
from ..segment import edit
from ..segment.components import score_components
from ._common import MaskWidget, case_from_viewer, fill_table, layers_with_role, model_prediction

if TYPE_CHECKING:
    import napari

PAINT_LABELS = {"GTVp": 1, "GTVn": 2, "eraser": 0}
COMPARISON_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), edit.TP: (0.1, 0.9, 0.2, 0.8),
                     edit.FP: (1.0, 0.5, 0.0, 0.9), edit.FN: (1.0, 1.0, 0.0, 0.9)}
TABLE_COLUMNS = ["label", "volume mL", "SUVmax", "mean p", "uncertainty", "likely FP", "reason"]
DEBOUNCE_MS = 300


class CorrectWidget(MaskWidget):
    """Hand correction of a GTVp/GTVn mask, with a live lesion table and GT comparison."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.target = ComboBox(label="Mask", choices=self._mask_choices)
        self.paint_label = ComboBox(label="Paint", choices=list(PAINT_LABELS), value="GTVp")
        self.radius = FloatSpinBox(label="Brush radius (mm)", value=3.0, min=0.5, max=50.0,
                                   step=0.5)
        self.sphere = CheckBox(label="3D sphere brush (click)", value=False)
        self.fill = PushButton(text="Fill holes")
        self.undo = PushButton(text="Undo")
        self.redo = PushButton(text="Redo")
        self.table = Table(value={"data": [], "columns": TABLE_COLUMNS})
        self.delete = PushButton(text="Delete lesion")
        self.to_gtvp = PushButton(text="Make GTVp")
        self.to_gtvn = PushButton(text="Make GTVn")
        self.compare = CheckBox(label="Compare with ground truth", value=False)
        self.metrics = Label(value="")
        super().__init__(widgets=[
            self.target, self.paint_label, self.radius, self.sphere, self.fill,
            Container(widgets=[self.undo, self.redo], layout="horizontal", labels=False),
            self.table,
            Container(widgets=[self.delete, self.to_gtvp, self.to_gtvn], layout="horizontal",
                      labels=False),
            self.compare, self.metrics,
        ])
        self.components: list = []
        self._timer = QTimer(self.native)  # dies with the widget: no late timeouts
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.refresh)
        self.paint_label.changed.connect(self._apply_brush)
        self.radius.changed.connect(self._apply_brush)
        self.fill.changed.connect(self.fill_holes)
        self.undo.changed.connect(lambda *_: self.layer and self.layer.undo())
        self.redo.changed.connect(lambda *_: self.layer and self.layer.redo())
        self.delete.changed.connect(lambda *_: self.edit_selected(None))
        self.to_gtvp.changed.connect(lambda *_: self.edit_selected(1))
        self.to_gtvn.changed.connect(lambda *_: self.edit_selected(2))
        self.compare.changed.connect(lambda *_: self.refresh())
        self.table.native.cellClicked.connect(lambda row, _col: self.centre_on(row))
        self._follow_target()

    # --- which mask -----------------------------------------------------------------

    @property
    def layer(self) -> Any:
        name = self.target.value
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _mask_edited(self, *_: Any) -> None:
        self.schedule_refresh()

    def _detach(self, layer: Any) -> None:
        if self._on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_click)

    def _attach(self, layer: Any) -> None:
        if layer is not None:
            layer.mouse_drag_callbacks.append(self._on_click)
            self._apply_brush()
        self.schedule_refresh()

    def _spacing_zyx(self) -> tuple[float, ...]:
        return tuple(case_from_viewer(self.viewer).geometry.spacing[::-1])

    # --- painting -----------------------------------------------------------------
    def _apply_brush(self, *_: Any) -> None:
        layer = self.layer
        if layer is None or not layers_with_role(self.viewer, "ct"):
            return
        layer.brush_size = edit.brush_size_pixels(self.radius.value, self._spacing_zyx())
        value = PAINT_LABELS[self.paint_label.value]
        if value:
            layer.selected_label = value
        layer.mode = "paint" if value else "erase"
        layer.n_edit_dimensions = 2

    def _on_click(self, layer: Any, event: Any) -> None:
        if not self.sphere.value:
            return
        index = np.round(layer.world_to_data(event.position)).astype(int)
        if np.any(index < 0) or np.any(index >= np.asarray(layer.data.shape)):
            return
        self.paint_sphere(index)

    def paint_sphere(self, index_zyx: Any) -> None:
        """Paint (or erase) a 3D ball of the brush radius in mm around a voxel: one undo step."""
        value = PAINT_LABELS[self.paint_label.value]
        change = edit.paint_sphere(np.asarray(self.layer.data), index_zyx, self.radius.value,
                                   self._spacing_zyx(), value)
        self._apply(change)

    def fill_holes(self, *_: Any) -> None:
        self._apply(edit.fill_holes(np.asarray(self.layer.data)))

    def _apply(self, change: edit.Change) -> None:
        indices, values = change
        if indices[0].size:
            with self.layer.block_history():
                self.layer.data_setitem(indices, values)

    # --- lesion table -----------------------------------------------------------------
    def schedule_refresh(self, *_: Any) -> None:
        self._timer.start()

    def refresh(self, *_: Any) -> None:
        """Recompute the lesion table (and the GT comparison) from the current mask."""
        layer = self.layer
        if layer is None or not layers_with_role(self.viewer, "ct"):
            self.components = []
            fill_table(self.table, [], TABLE_COLUMNS)
            return
        case = case_from_viewer(self.viewer)
        model = model_prediction(self.viewer)
        prob = model.metadata["hecktor"]["probabilities"] if model else None
        unc = model.metadata["hecktor"]["uncertainty"] if model else None
        labels = np.asarray(layer.data)
        self.components = score_components(labels, case.geometry, pet=case.pet_array(),
                                           prob=prob, uncertainty=unc)
        rows = [[{1: "GTVp", 2: "GTVn"}[c.label], f"{c.volume_ml:.2f}", f"{c.suv_max:.1f}",
                 f"{c.mean_probability:.2f}", f"{c.mean_uncertainty:.2f}",
                 "yes" if c.likely_false_positive else "", "; ".join(c.reasons)]
                for c in self.components]
        fill_table(self.table, rows, TABLE_COLUMNS)
        self._refresh_comparison(case, labels)

    def selected_row(self) -> int | None:
        rows = sorted({i.row() for i in self.table.native.selectedIndexes()})
        return rows[0] if rows else None

    def centre_on(self, row: int) -> None:
        """Move the view to a lesion (its centroid, in mm)."""
        component = self.components[row]
        world = self.layer.data_to_world(component.centroid_index)
        self.viewer.dims.set_point(0, world[0])
        self.viewer.camera.center = tuple(world)

    def edit_selected(self, new_label: int | None) -> None:
        """Delete (None) or relabel (1/2) the lesion of the selected table row."""
        row = self.selected_row()
        if row is None or row >= len(self.components):
            return
        seed = self.components[row].centroid_index
        labels = np.asarray(self.layer.data)
        if new_label is None:
            change = edit.delete_component(labels, seed)
        else:
            change = edit.relabel_component(labels, seed, new_label)
        self._apply(change)

    # --- ground-truth comparison ---------------------------------------------------------
    def _refresh_comparison(self, case: Any, labels: np.ndarray) -> None:
        truth_layers = [la for la in layers_with_role(self.viewer, "label") if la is not self.layer]
        name = f"{case.case_id} vs ground truth"
        if not self.compare.value or not truth_layers:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.metrics.value = "" if not self.compare.value else "no ground truth loaded"
            return
        truth = np.asarray(truth_layers[-1].data)
        overlay = edit.comparison_overlay(labels, truth)
        if name in self.viewer.layers:
            self.viewer.layers[name].data = overlay
        else:
            data, kwargs, _ = labels_layer(case, overlay, name=name, role="comparison")
            from napari.utils.colormaps import DirectLabelColormap

            kwargs["colormap"] = DirectLabelColormap(color_dict=COMPARISON_COLORS)
            self.viewer.add_labels(data, **kwargs)
        m = edit.live_metrics(labels, truth, self._spacing_zyx())
        self.metrics.value = (
            f"Dice GTVp {m['Dice_GTVp']:.3f}  GTVn {m['Dice_GTVn']:.3f}\n"
            f"HD95 GTVp {m['HD95_GTVp']:.1f} mm  GTVn {m['HD95_GTVn']:.1f} mm\n"
            f"GTVn F1 {m['F1_GTVn']:.2f} (TP {m['TP_GTVn']}, FP {m['FP_GTVn']}, "
            f"FN {m['FN_GTVn']})  |  green TP, orange FP, yellow FN"
        )
