"""Segment dock widget: model(s), device, TTA, thresholds; Run with progress and Cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, Select

from ..display import labels_layer
from ..errors import HecktorInputError
from ..io.case import Case
from ..models.card import bundled_models, models_in
from ..pipeline import DEFAULT_MODEL, segment_case_iter, warm_up
from ._common import (
    JobPanel,
    case_from_viewer,
    model_prediction,
    plugin_setting,
    preload,
    role_of,
    set_image,
    set_labels,
    start_warm_up,
)

#: The roles of the on-demand map layers (see :func:`map_layers`).
MAP_ROLES = ("probability", "uncertainty")

#: Imported when the widget opens so that the worker thread never imports them mid-job.
HEAVY_MODULES = ("torch", "monai.data.utils", "safetensors.torch",
                 "napari_hecktor.models.registry", "napari_hecktor.segment.inference")

if TYPE_CHECKING:
    import napari


def result_layers(case: Case, seg: Any) -> dict[str, tuple]:
    """The prediction (Labels) layer on the CT geometry.

    Its metadata keeps the GTVp/GTVn probabilities and the uncertainty, which the CRF and
    Correct widgets read and :func:`map_layers` shows on demand.
    """
    pred = labels_layer(case, seg.labels, name=f"{case.case_id} prediction", role="prediction")
    pred[1]["metadata"]["hecktor"].update(
        components=[c.as_dict() for c in seg.components],
        models=seg.models,
        device=seg.device,
        settings=seg.settings,
        probabilities=seg.probabilities,
        uncertainty=seg.uncertainty,
    )
    return {"prediction": pred}


def map_layers(prediction: Any) -> dict[str, tuple]:
    """Probability (max of GTVp, GTVn) and uncertainty Image layers of a prediction layer.

    On the prediction's case and CT geometry; hidden and additive (they do not cover the CT).
    """
    meta = prediction.metadata["hecktor"]
    base = meta["case"].geometry.napari_transform()
    stem = meta["case_id"]

    def image(data: np.ndarray, what: str, colormap: str) -> tuple:
        return (data, {**base, "name": f"{stem} {what}", "colormap": colormap,
                       "contrast_limits": (0.0, 1.0), "visible": False, "blending": "additive",
                       "metadata": {"hecktor": {**meta, "role": what}}}, "image")

    return {"probability": image(meta["probabilities"].max(axis=0), "probability", "viridis"),
            "uncertainty": image(meta["uncertainty"], "uncertainty", "magma")}


class SegmentWidget(Container):
    """Run the GTVp/GTVn models on the open case; results land on the CT geometry."""

    def __init__(self, viewer: napari.viewer.Viewer):
        preload(*HEAVY_MODULES)
        self.viewer = viewer
        bundled = bundled_models() + models_in(plugin_setting("folders", "weights_folder", ""))
        self.models = Select(
            label="Models",
            choices=bundled,
            value=[DEFAULT_MODEL] if DEFAULT_MODEL in bundled else bundled[:1],
        )
        self.folder = FileEdit(label="or model folder", mode="d", value="")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"],
                               value=plugin_setting("compute", "device", "auto"))
        self.tta = CheckBox(label="Flip TTA", value=False)
        self.threshold_p = FloatSpinBox(label="GTVp threshold", value=0.5, min=0.05, max=0.95,
                                        step=0.05)
        self.threshold_n = FloatSpinBox(label="GTVn threshold", value=0.5, min=0.05, max=0.95,
                                        step=0.05)
        # off by default: each new napari layer costs the GUI thread ~0.2 s to create
        self.maps = CheckBox(label="Probability and uncertainty maps", value=False)
        self.used = Label(label="Used", value="")
        self.job = JobPanel("Segment")
        super().__init__(widgets=[self.models, self.folder, self.device, self.tta,
                                  self.threshold_p, self.threshold_n, self.maps, self.job,
                                  self.used])
        self.job.run_button.changed.connect(self.run)
        self.maps.changed.connect(self.update_maps)
        self.models.changed.connect(self.use_model_thresholds)
        self.folder.changed.connect(self.use_model_thresholds)
        self.use_model_thresholds()
        # load the chosen models and set torch up now, in the background, not in the first job
        self.warming = start_warm_up(warm_up, self.model_names(), self._device())

    def _device(self) -> str:
        from ..segment.inference import resolve_device

        try:
            return str(resolve_device(self.device.value))
        except HecktorInputError:  # e.g. cuda asked for, none here: said when Segment runs
            return "cpu"

    def use_model_thresholds(self, *_: Any) -> None:
        """Show the first chosen model's tuned thresholds (from its card); the user may edit."""
        from ..models.card import read_card

        names = self.model_names()
        try:
            card = read_card(names[0]) if names else None
        except HecktorInputError:  # not a model folder: said when Segment runs
            return
        thresholds = (card.inference if card else {}).get("thresholds", (0.5, 0.5))
        self.threshold_p.value, self.threshold_n.value = (float(t) for t in thresholds)

    def model_names(self) -> list[str]:
        folder = str(self.folder.value or "").strip()
        names = list(self.models.value)
        if folder and folder != ".":
            names.append(folder)
        return names

    def run(self, *_: Any) -> Any:
        """Start segmentation in the background; returns the worker."""
        case = case_from_viewer(self.viewer)
        names = self.model_names()
        settings = {
            "device": self.device.value,
            "tta": self.tta.value,
            "thresholds": (self.threshold_p.value, self.threshold_n.value),
        }

        def job():
            return (yield from segment_case_iter(case, names, **settings))

        return self.job.start(job, lambda seg: self.display_result(case, seg))

    def display_result(self, case: Case, seg: Any) -> None:
        """Put a finished segmentation into the viewer (one undo step for the mask)."""
        set_labels(self.viewer, result_layers(case, seg)["prediction"])
        self.update_maps()
        flagged = sum(c.likely_false_positive for c in seg.components)
        self.used.value = f"{seg.device}; {', '.join(seg.models)}"
        self.job.status.value = (
            f"{len(seg.components)} lesion(s), {flagged} flagged; {seg.seconds:.1f} s"
        )

    def update_maps(self, *_: Any) -> None:
        """Show (or update) the latest prediction's probability and uncertainty maps, or
        remove them when the box is unticked (they are rebuilt from the prediction layer)."""
        if not self.maps.value:
            for layer in [la for la in self.viewer.layers if role_of(la) in MAP_ROLES]:
                self.viewer.layers.remove(layer)
            return
        prediction = model_prediction(self.viewer)
        if prediction is None:
            self.job.status.value = "no model prediction yet: press Segment"
            return
        for layer_tuple in map_layers(prediction).values():
            set_image(self.viewer, layer_tuple)
