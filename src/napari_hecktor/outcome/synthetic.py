"""A fast, image-free synthetic outcome cohort that follows the phantom's generative model.

:func:`napari_hecktor.data.phantom.write_cohort` builds PET/CT volumes (about 1-2 s per
case), too slow for the hundreds of patients an outcome test needs. This module
draws the same patients without images: it calls the phantom's own samplers for the
clinical covariates and HPV status (step 1-2 of the phantom's documented model), the
Weibull relapse-free survival with its censoring (step 4) and the missing values
(step 5), so those parts are identical in distribution; only the lesions (step 3) are
summarised instead of drawn: the GTVp radius, node count, node radii and SUVmax follow
the documented HPV-dependent distributions, and volumes are those of spheres instead of
voxel counts (primary times U(0.85, 1.15) for its lobes and irregular outline, nodes
times 0.8; factors chosen so that mean and median volumes match a 200-case
``write_cohort`` cohort within 5 %). The hazard uses these volumes exactly as the
phantom uses its label volumes.

Image-derived columns, named as the features module names them (with measurement
noise): ``GTVp_volume_ml``, ``GTVn_volume_ml``, ``GTVall_volume_ml``, ``GTVp_SUVmax``
(0.80 x the true peak: partial volume). The node count enters the hazard but is not a
column (the features module does not report it).
The hidden truth (``true_hpv``, ``true_lp``) is returned in ``attrs``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: Same names as :func:`napari_hecktor.features.pet_metrics.pet_metrics` (and the demo models).
PET_COLUMNS = ("GTVp_volume_ml", "GTVn_volume_ml", "GTVall_volume_ml", "GTVp_SUVmax")


def synthetic_outcome_table(n: int, *, seed: int = 0, centers: int = 3) -> pd.DataFrame:
    """HECKTOR 2025 clinical columns + PET columns for ``n`` synthetic patients."""
    from napari_hecktor.data import phantom as ph
    from napari_hecktor.data.clinical import HECKTOR2025_COLUMNS

    rows = []
    true_hpv, true_lp = [], []
    for i in range(n):
        c = i % centers
        rng = np.random.default_rng(np.random.SeedSequence([seed, i, 7]))
        cov = ph.sample_covariates(rng, c)
        hpv = cov["hpv"]
        r = ph.primary_radius_mm(rng, hpv)
        gtvp = 4.0 / 3.0 * math.pi * r**3 / 1000.0 * rng.uniform(0.85, 1.15)
        smax = ph.primary_suvmax(rng, hpv)
        n_nodes = ph.node_count(rng, hpv)
        gtvn = 0.0
        for _ in range(n_nodes):
            rn = ph.node_radius_mm(rng, hpv)
            gtvn += 0.8 * 4.0 / 3.0 * math.pi * rn**3 / 1000.0
        surv = ph.sample_survival(rng, cov, c, gtvp + gtvn, n_nodes)
        case_id = f"{ph.CENTERS[c]}-{i // centers + 1:03d}"
        row = ph.clinical_row(rng, case_id, c, cov, surv)
        vp = gtvp * float(np.exp(rng.normal(0.0, 0.05)))
        vn = gtvn * float(np.exp(rng.normal(0.0, 0.08)))
        row.update(
            {
                "GTVp_volume_ml": round(vp, 3),
                "GTVn_volume_ml": round(vn, 3),
                "GTVall_volume_ml": round(vp + vn, 3),
                "GTVp_SUVmax": round(0.80 * smax * float(np.exp(rng.normal(0.0, 0.08))), 3),
            }
        )
        rows.append(row)
        true_hpv.append(hpv)
        true_lp.append(surv["linear_predictor"])
    df = pd.DataFrame(rows, columns=list(HECKTOR2025_COLUMNS) + list(PET_COLUMNS))
    df.attrs["true_hpv"] = np.asarray(true_hpv)
    df.attrs["true_lp"] = np.asarray(true_lp)
    return df
