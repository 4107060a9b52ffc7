"""CRF dock widget: dense-CRF refinement of the prediction, shown as a change layer to accept."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, PushButton, SpinBox

from ..display import labels_layer
from ..errors import HecktorInputError
from ..pipeline import refine_case_iter
from ..segment.crf import CRFParams
from ._common import (
    JobPanel,
    case_from_viewer,
    model_prediction,
    preload,
    set_labels,
)

if TYPE_CHECKING:
    import napari

#: Colours of the change layer: voxels the CRF adds (green) and removes (magenta).
ADDED, REMOVED = 1, 2
CHANGE_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), ADDED: (0.1, 0.9, 0.2, 1.0),
                 REMOVED: (1.0, 0.0, 1.0, 1.0)}


class CRFWidget(Container):
    """Refine the model's prediction with the 3D dense CRF; Accept (one undo step) or Revert."""

    def __init__(self, viewer: napari.viewer.Viewer):
        preload("pydensecrf.densecrf", "pydensecrf.utils")
        self.viewer = viewer
        self.params: dict[str, Any] = {}
        for f in dataclasses.fields(CRFParams):
            if f.type in (int, "int"):
                widget = SpinBox(label=f.name.replace("_", " "), value=f.default, min=1, max=50)
            else:
                widget = FloatSpinBox(label=f.name.replace("_", " "), value=f.default,
                                      min=0.0, max=1000.0, step=0.1)
            self.params[f.name] = widget
        self.job = JobPanel("Run CRF")
        self.accept = PushButton(text="Accept", enabled=False)
        self.revert = PushButton(text="Revert", enabled=False)
        super().__init__(widgets=[*self.params.values(), self.job, self.accept, self.revert])
        self.job.run_button.changed.connect(self.run)
        self.accept.changed.connect(self.accept_result)
        self.revert.changed.connect(self.revert_result)
        self.result = None
        self.refined = ""  # the prediction layer the last run refined

    def crf_params(self) -> CRFParams:
        return CRFParams(**{name: w.value for name, w in self.params.items()})

    def run(self, *_: Any) -> Any:
        case = case_from_viewer(self.viewer)
        prediction = model_prediction(self.viewer)
        if prediction is None:
            raise HecktorInputError("no model prediction with its probabilities: run Segment "
                                    "first")
        probabilities = prediction.metadata["hecktor"]["probabilities"]
        labels = np.asarray(prediction.data)
        self.refined = prediction.name  # Accept writes into this layer, not the topmost one
        params = self.crf_params()

        def job():
            return (yield from refine_case_iter(case, probabilities, labels.copy(), params))

        return self.job.start(job, lambda result: self.display_result(case, labels, result))

    def display_result(self, case: Any, before: np.ndarray, result: Any) -> None:
        """Show what the CRF would change; nothing is applied until Accept."""
        self.result = result
        change = np.zeros(before.shape, np.uint8)
        change[(result.labels > 0) & (before == 0)] = ADDED
        change[(result.labels == 0) & (before > 0)] = REMOVED
        data, kwargs, _ = labels_layer(case, change, name=f"{case.case_id} CRF change",
                                       role="crf_change")
        kwargs["colormap"] = _change_colormap()
        set_labels(self.viewer, (data, kwargs, "labels"))
        self.accept.enabled = self.revert.enabled = True
        self.job.status.value = f"added {result.added}, removed {result.removed} voxels"

    def accept_result(self, *_: Any) -> None:
        """Write the CRF labels into the prediction (one Ctrl+Z undoes it)."""
        if self.result is None:
            return
        set_labels(self.viewer, (self.result.labels,
                                 {"name": self.refined, "metadata": {}}, "labels"))
        self._finish("CRF accepted")

    def revert_result(self, *_: Any) -> None:
        self._finish("CRF reverted: prediction unchanged")

    def _finish(self, message: str) -> None:
        for layer in [la for la in self.viewer.layers
                      if la.metadata.get("hecktor", {}).get("role") == "crf_change"]:
            self.viewer.layers.remove(layer)
        self.result = None
        self.accept.enabled = self.revert.enabled = False
        self.job.status.value = message


def _change_colormap() -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=CHANGE_COLORS)
