"""Take the README screenshots from the running app (run under Xvfb: see README).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def centre_on_label(viewer: napari.Viewer, labels_layer, value: int = 1) -> None:
    """Move the axial slice to the centre of a label, in world (mm) coordinates."""
    idx = np.argwhere(np.asarray(labels_layer.data) == value)
    if idx.size:
        world = labels_layer.data_to_world(idx.mean(axis=0))
        viewer.dims.set_point(0, world[0])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-hecktor")
    viewer.window.resize(1500, 950)
    layers = viewer.open_sample("napari-hecktor", "synthetic_case")
    viewer.window.add_plugin_dock_widget("napari-hecktor", "PET/CT display")
    centre_on_label(viewer, layers[-1])
    viewer.reset_view()
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "sample_case.png"), canvas_only=False)
    print(f"wrote {OUT / 'sample_case.png'}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
