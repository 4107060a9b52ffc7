"""Display dock widget: CT window presets, PET SUV range and colour map, fusion, ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox

from ..display import (
    CT_WINDOWS,
    DEFAULT_CONTOUR,
    DEFAULT_CT_WINDOW,
    DEFAULT_PET_COLORMAP,
    DEFAULT_PET_OPACITY,
    DEFAULT_SUV_RANGE,
    PET_COLORMAPS,
    window_limits,
)

if TYPE_CHECKING:
    import napari


class DisplayWidget(Container):
    """Clinical display settings applied to every HECKTOR layer of the viewer."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self.viewer = viewer
        self.window = ComboBox(label="CT window", choices=list(CT_WINDOWS), value=DEFAULT_CT_WINDOW)
        self.pet_colormap = ComboBox(
            label="PET colour map", choices=list(PET_COLORMAPS), value=DEFAULT_PET_COLORMAP
        )
        self.suv_max = FloatSpinBox(
            label="SUV max", value=DEFAULT_SUV_RANGE[1], min=0.5, max=100.0, step=0.5
        )
        self.fusion = FloatSlider(label="PET fusion", value=DEFAULT_PET_OPACITY, min=0.0, max=1.0)
        self.show_truth = CheckBox(label="Show ground truth", value=True)
        self.outline_truth = CheckBox(label="Ground truth as outline", value=True)
        super().__init__(
            widgets=[self.window, self.pet_colormap, self.suv_max, self.fusion, self.show_truth,
                     self.outline_truth]
        )
        self.window.changed.connect(self.apply)
        self.pet_colormap.changed.connect(self.apply)
        self.suv_max.changed.connect(self.apply)
        self.fusion.changed.connect(self.apply)
        self.show_truth.changed.connect(self.apply)
        self.outline_truth.changed.connect(self.apply)
        viewer.layers.events.inserted.connect(self.apply)
        self.apply()

    def _layers(self, role: str) -> list:
        return [
            layer
            for layer in self.viewer.layers
            if layer.metadata.get("hecktor", {}).get("role") == role
        ]

    def apply(self, *_args: object) -> None:
        """Apply the current settings to the viewer's CT, PET and ground-truth layers."""
        for layer in self._layers("ct"):
            layer.contrast_limits = window_limits(self.window.value)
        for layer in self._layers("pet"):
            layer.colormap = PET_COLORMAPS[self.pet_colormap.value]
            layer.contrast_limits = (DEFAULT_SUV_RANGE[0], self.suv_max.value)
            layer.opacity = self.fusion.value
        for layer in self._layers("label"):
            layer.visible = self.show_truth.value
            layer.contour = DEFAULT_CONTOUR if self.outline_truth.value else 0
            layer.opacity = 1.0 if self.outline_truth.value else 0.6
