"""napari sample data: a synthetic head-and-neck FDG-PET/CT case (no patient data)."""

from __future__ import annotations

from .display import case_layers
from .io.case import Case

#: The seed of the sample case: chosen to show a GTVp, nodes and physiological uptake.
SAMPLE_SEED = 4


def sample_case() -> list[tuple]:
    """CT, PET and GTVp/GTVn layers of the synthetic sample case."""
    return case_layers(make_sample_case())


def make_sample_case() -> Case:
    """The sample case as a :class:`Case` (used by the CLI and tests too)."""
    from .data.phantom import make_case

    phantom = make_case(SAMPLE_SEED, center=0, case_id="SAMPLE-001")
    return Case(
        case_id=phantom.case_id,
        ct=phantom.ct,
        pet=phantom.pet,
        label=phantom.label,
        sources={},
        layout="synthetic",
    )
