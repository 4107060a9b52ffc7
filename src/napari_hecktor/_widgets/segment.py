"""Segment dock widget: model(s), device, TTA, thresholds; Run with progress and Cancel."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, Select

from ..display import labels_layer
from ..errors import HecktorInputError
from ..io.case import Case
from ..models.card import bundled_models, models_in
from ..pipeline import DEFAULT_MODEL, segment_case_iter, warm_up
from ._common import (
    JobPanel,
    case_from_viewer,
    plugin_setting,
    preload,
    set_image,
    set_labels,
)

#: Imported when the widget opens so that the worker thread never imports them mid-job.
HEAVY_MODULES = ("torch", "monai.data.utils", "safetensors.torch",
                 "napari_hecktor.models.registry", "napari_hecktor.segment.inference")

if TYPE_CHECKING:
    import napari


def result_layers(case: Case, seg: Any) -> dict[str, tuple]:
    """Prediction (Labels), probability and uncertainty (Image) layers on the CT geometry."""
    pred = labels_layer(case, seg.labels, name=f"{case.case_id} prediction", role="prediction")
    pred[1]["metadata"]["hecktor"].update(
        components=[c.as_dict() for c in seg.components],
        models=seg.models,
        device=seg.device,
        settings=seg.settings,
    )
    base = {k: v for k, v in pred[1].items() if k in ("scale", "translate", "affine", "units")}
    meta = pred[1]["metadata"]["hecktor"]
    prob = (
        seg.probabilities.max(axis=0),
        {**base, "name": f"{case.case_id} probability", "colormap": "viridis",
         "contrast_limits": (0.0, 1.0), "visible": False, "blending": "additive",
         "metadata": {"hecktor": {**meta, "role": "probability",
                                  "probabilities": seg.probabilities}}},
        "image",
    )
    unc = (
        seg.uncertainty,
        {**base, "name": f"{case.case_id} uncertainty", "colormap": "magma",
         "contrast_limits": (0.0, 1.0), "visible": False, "blending": "additive",
         "metadata": {"hecktor": {**meta, "role": "uncertainty"}}},
        "image",
    )
    return {"prediction": pred, "probability": prob, "uncertainty": unc}


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
        self.used = Label(label="Used", value="")
        self.job = JobPanel("Segment")
        super().__init__(widgets=[self.models, self.folder, self.device, self.tta,
                                  self.threshold_p, self.threshold_n, self.job, self.used])
        self.job.run_button.changed.connect(self.run)
        self.models.changed.connect(self.use_model_thresholds)
        self.folder.changed.connect(self.use_model_thresholds)
        self.use_model_thresholds()
        # load the chosen models and set torch up now, in the background, not in the first job
        threading.Thread(target=warm_up, args=(self.model_names(), self._device()),
                         daemon=True).start()

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
        layers = result_layers(case, seg)
        set_image(self.viewer, layers["probability"])
        set_image(self.viewer, layers["uncertainty"])
        set_labels(self.viewer, layers["prediction"])
        flagged = sum(c.likely_false_positive for c in seg.components)
        self.used.value = f"{seg.device}; {', '.join(seg.models)}"
        self.job.status.value = (
            f"{len(seg.components)} lesion(s), {flagged} flagged; {seg.seconds:.1f} s"
        )
