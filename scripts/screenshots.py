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
    viewer.window.add_plugin_dock_widget("napari-hecktor", "Case")
    centre_on_label(viewer, layers[-1])
    viewer.reset_view()
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "sample_case.png"), canvas_only=False)
    print(f"wrote {OUT / 'sample_case.png'}")
    widget_screenshots(viewer)
    viewer.close()
    return 0


def wait_for(widget) -> None:
    """Let a widget's background job finish while the Qt event loop runs."""
    import time

    while widget.job.running:
        QApplication.processEvents()
        time.sleep(0.01)
    for _ in range(20):
        QApplication.processEvents()


def dock_shot(viewer: napari.Viewer, name: str, filename: str):
    """Dock one widget, take a screenshot of the window, return the widget."""
    for widget in list(viewer.window.dock_widgets.values()):
        viewer.window.remove_dock_widget(getattr(widget, "native", widget))
    _, widget = viewer.window.add_plugin_dock_widget("napari-hecktor", name)
    return widget, lambda: _save(viewer, filename)


def _save(viewer: napari.Viewer, filename: str) -> None:
    QApplication.processEvents()
    viewer.screenshot(str(OUT / filename), canvas_only=False)
    print(f"wrote {OUT / filename}")


def widget_screenshots(viewer: napari.Viewer) -> None:
    """Segment -> CRF -> Correct -> Results -> Save, then Case, each docked in turn."""
    from napari_hecktor.models.card import bundled_models

    if "mmpl_demo" not in bundled_models():
        print("no bundled model: widget screenshots skipped")
        return
    segment, shot = dock_shot(viewer, "Segment", "widget_segment.png")
    segment.run()
    wait_for(segment)
    shot()
    crf, shot = dock_shot(viewer, "CRF", "widget_crf.png")
    crf.run()
    wait_for(crf)
    shot()
    crf.revert_result()
    correct, shot = dock_shot(viewer, "Correct", "widget_correct.png")
    correct.compare.value = True
    correct.refresh()
    shot()
    results, shot = dock_shot(viewer, "Results", "widget_results.png")
    results.run()
    wait_for(results)
    shot()
    save, shot = dock_shot(viewer, "Save", "widget_save.png")
    save.target.value = "SAMPLE-001 prediction"
    shot()
    case, shot = dock_shot(viewer, "Case", "widget_case.png")
    shot()


if __name__ == "__main__":
    sys.exit(main())
