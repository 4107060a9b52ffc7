"""Synthetic multi-centre FDG-PET/CT head-and-neck cohort (HECKTOR-like phantoms).

Each case is a crop of the head and neck (lower neck to the brain) built from smooth
shapes in physical LPS mm: skin, subcutaneous fat, muscle, a moving airway, mandible,
hyoid, teeth, cervical vertebrae with the spinal canal, thyroid, vessels, salivary
glands, tonsils, sinuses, orbits, skull and brain. The CT (int16 HU, about 1x1x3 mm)
gets a per-centre calibration (scale/offset), blur and correlated noise. The PET
(float32 SUVbw) is made on the CT grid, blurred by the centre's PSF (Gaussian FWHM
5-7 mm), resampled (linear) onto its own coarser grid (about 4x4x3 mm, origin a few
mm off the CT's, field of view inside the CT's) and given Poisson count noise.
Physiological uptake (brain, palatine/lingual tonsils, parotid and submandibular
glands, marrow, sometimes vocal cords) is there to fool naive models. The label
(uint8, 1 GTVp, 2 GTVn) lives on the CT grid; lesions never touch one another.

Generative model, in order (all draws from ``np.random.default_rng(seed)``):

1. Clinical covariates: Age ~ N(62, 9) clipped to 35-88; Gender M with p 0.82;
   tobacco ~ Bernoulli(0.55 if M else 0.40); alcohol ~ Bernoulli(0.25 + 0.35 tobacco);
   performance status 0-4 with p (0.48, 0.34, 0.12, 0.05, 0.01); M-stage M0/M1/Mx
   with p (0.93, 0.03, 0.04); treatment independent of outcome.
2. HPV (true status): logit P(HPV+) = 0.9 + a_centre - 0.045 (Age - 62)
   - 1.3 tobacco - 0.3 [female]; a_centre in [-0.5, 0.8] (about 55-65 % positive).
3. Imaging given HPV: the primary site is drawn given HPV (HPV+: tonsil 0.55,
   base of tongue 0.35, larynx/hypopharynx/oral cavity 0.10; HPV-: 0.25, 0.20,
   0.55). GTVp radius ~ lognormal (median 12 mm HPV+, 16 mm HPV-, clipped 8-25 mm),
   SUVmax ~ N(10, 3) HPV+ / N(13, 3.5) HPV- clipped 5-20, necrotic core with p 0.15
   HPV+ / 0.35 HPV-. Nodes: 0-3 with p (0.15, 0.35, 0.30, 0.20) HPV+ and
   (0.35, 0.35, 0.20, 0.10) HPV-; radius median 10 mm HPV+ / 7.5 mm HPV- (5-15 mm);
   cystic (cold core) p 0.45 HPV+ / 0.15 HPV-; SUVmax 3-12 (lower if HPV+).
   Empty cases (``empty=True``) have no lesion and a total tumour volume of 0.
4. Relapse-free survival, Weibull proportional hazards (shape k = 1.3, baseline scale
   lambda = 7.5 years): hazard h(t) = (k / lambda) (t / lambda)^(k-1) exp(lp) with
   lp = b_centre + 0.69 z_vol + 0.25 n_nodes - 0.92 HPV + 0.45 tobacco + 0.30 PS
   + 0.025 (Age - 62) + 1.2 [M1], where z_vol = (log(1 + V_mL) - 2.9) / 0.70 is the
   standardised log total tumour volume (GTVp + GTVn, from the label), so HR 2 per SD
   of log volume, HR 0.4 for HPV+, HR 1.57 for smoking, HR 1.35 per PS grade and
   b_centre in [-0.2, 0.25]. T = lambda (-log U / exp(lp))^(1/k).
   Censoring, independent of T: administrative end of follow-up ~ U(1.5, 6.5) years
   and loss to follow-up ~ Exponential(mean 12 years); RFS = min(T, C) in days
   (integer, at least 1), Relapse = [T <= C].
5. Missing at random, completely: 10 % NaN in Tobacco, Alcohol and Performance Status,
   15 % NaN in HPV Status (the hazard uses the true values).

The hidden truth (HPV, volumes, lp, event and censoring times) is written to
``phantom.json`` by :func:`write_cohort`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from napari_hecktor.data.clinical import HECKTOR2025_COLUMNS
from napari_hecktor.errors import HecktorInputError

PHANTOM_VERSION = "1.0"

CENTERS: tuple[str, ...] = ("CHUM", "CHUS", "HGJ", "HMR", "CHUP", "CHUV", "MDA", "USZ")

_DAYS_PER_YEAR = 365.25
_LOGV_MU = 2.9  # mean of log(1 + total tumour mL) over non-empty phantoms
_LOGV_SD = 0.70  # its standard deviation


@dataclass
class Lesion:
    """One lesion: label (1 GTVp, 2 GTVn), centre in physical LPS mm, true peak SUV."""

    label: int
    center_mm: tuple[float, float, float]
    radius_mm: float
    suv_max: float
    necrotic: bool


@dataclass
class PhantomCase:
    """A synthetic case: CT (int16 HU), PET (float32 SUV, own grid), label on the CT grid."""

    case_id: str
    center: str
    ct: sitk.Image
    pet: sitk.Image
    label: sitk.Image
    lesions: list[Lesion]
    clinical: dict[str, object]


@dataclass(frozen=True)
class _Scanner:
    ct_xy: float  # CT in-plane spacing (mm)
    ct_z: float  # CT slice spacing (mm)
    pet_xy: float
    pet_z: float
    psf_fwhm: float  # PET resolution (mm)
    ct_noise: float  # HU standard deviation
    hu_scale: float
    hu_offset: float
    pet_counts: float  # expected counts per SUV unit in a 4x4x3 mm voxel
    suv_scale: float
    pet_shift: tuple[float, float, float]  # PET origin minus CT origin (mm, >= 0)
    table_z: float  # CT origin z (mm)
    hpv_logit: float
    log_hazard: float


_SCANNERS: tuple[_Scanner, ...] = (
    _Scanner(0.9765625, 3.0, 4.0, 3.0, 6.0, 10.0, 1.00, 0.0, 30.0, 1.00, (3.1, 2.4, 4.0),
             -250.0, 0.2, 0.0),
    _Scanner(0.98, 3.27, 3.9, 3.27, 5.5, 14.0, 1.01, 12.0, 22.0, 0.96, (2.2, 4.6, 2.5),
             -231.0, -0.3, 0.15),
    _Scanner(1.0, 3.0, 4.07, 3.0, 6.5, 18.0, 0.99, -15.0, 18.0, 1.04, (5.0, 1.5, 6.0),
             -268.0, 0.0, -0.1),
    _Scanner(1.17, 3.27, 5.47, 3.27, 7.0, 12.0, 1.00, 8.0, 15.0, 0.98, (4.3, 3.3, 3.0),
             -212.0, -0.5, 0.25),
    _Scanner(1.0, 3.27, 4.0, 3.27, 5.0, 9.0, 1.02, -6.0, 40.0, 1.02, (2.0, 2.0, 5.2),
             -245.0, 0.1, -0.15),
    _Scanner(0.98, 3.0, 3.65, 3.0, 5.5, 15.0, 0.98, 18.0, 26.0, 1.00, (6.2, 3.9, 3.5),
             -290.0, 0.5, 0.1),
    _Scanner(1.17, 3.0, 4.3, 3.27, 6.5, 20.0, 1.00, -10.0, 20.0, 0.95, (3.6, 5.5, 4.4),
             -223.0, 0.8, -0.2),
    _Scanner(0.9765625, 3.27, 4.0, 3.0, 6.0, 11.0, 1.01, 4.0, 28.0, 1.05, (2.7, 2.9, 2.1),
             -256.0, 0.3, 0.05),
)  # fmt: skip

# Primary sites (anatomical mm: x lateral as |x| with a side sign, y anterior < 0, h up).
_SITES: dict[str, tuple[float, float, float]] = {
    "tonsil": (13.0, -10.0, 108.0),
    "base_of_tongue": (4.0, -24.0, 100.0),
    "larynx": (6.0, -20.0, 58.0),
    "hypopharynx": (12.0, -12.0, 76.0),
    "oral_cavity": (10.0, -40.0, 110.0),
}
_SITE_P_HPVPOS = (0.55, 0.35, 0.03, 0.02, 0.05)
_SITE_P_HPVNEG = (0.25, 0.20, 0.25, 0.15, 0.15)

# Neck node levels: (|x|, y, h) mean and standard deviation (mm).
_LEVELS: tuple[tuple[tuple[float, float, float], tuple[float, float, float], float], ...] = (
    ((24.0, -38.0, 90.0), (3.0, 3.0, 3.0), 0.10),  # Ib
    ((30.0, -2.0, 96.0), (3.0, 4.0, 7.0), 0.45),  # II
    ((30.0, -2.0, 70.0), (3.0, 3.0, 7.0), 0.25),  # III
    ((28.0, -6.0, 40.0), (3.0, 3.0, 8.0), 0.10),  # IV
    ((42.0, 24.0, 65.0), (3.0, 4.0, 14.0), 0.10),  # V
)


class _Grid:
    """Voxel-centre coordinates of an identity-direction grid, in anatomical mm.

    Anatomical coordinates are ``(physical - ref) / scale``; arrays are (z, y, x).
    """

    def __init__(self, origin, spacing, size, ref, scale: float = 1.0) -> None:
        nx, ny, nz = size
        self.shape = (nz, ny, nx)
        self.x = (origin[0] + spacing[0] * np.arange(nx) - ref[0]) / scale
        self.y = (origin[1] + spacing[1] * np.arange(ny) - ref[1]) / scale
        self.z = (origin[2] + spacing[2] * np.arange(nz) - ref[2]) / scale

    @staticmethod
    def _span(axis: np.ndarray, lo: float, hi: float) -> slice:
        return slice(
            int(np.searchsorted(axis, lo, "left")), int(np.searchsorted(axis, hi, "right"))
        )

    def box(self, center, half) -> tuple[slice, slice, slice]:
        """(z, y, x) slices of the voxels within ``center +- half``."""
        return (
            self._span(self.z, center[2] - half[2], center[2] + half[2]),
            self._span(self.y, center[1] - half[1], center[1] + half[1]),
            self._span(self.x, center[0] - half[0], center[0] + half[0]),
        )

    def zspan(self, lo: float, hi: float) -> tuple[slice, slice, slice]:
        return (self._span(self.z, lo, hi), slice(None), slice(None))

    def coords(self, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x, y, z coordinates of a box."""
        return (
            self.x[sl[2]][None, None, :],
            self.y[sl[1]][None, :, None],
            self.z[sl[0]][:, None, None],
        )


def _ellipsoid(g: _Grid, c, r) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Box slices and boolean mask of an axis-aligned ellipsoid."""
    sl = g.box(c, r)
    x, y, z = g.coords(sl)
    d2 = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
    return sl, d2 < 1.0


def _d2(x, y, z, c, r) -> np.ndarray:
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


def _slabs(g: _Grid, h_lo: float, h_hi: float, cx, cy, ax, ay, sl=None):
    """Mask of per-slice ellipses (centre/axes are functions of h) for h in [h_lo, h_hi]."""
    sl = g.zspan(h_lo, h_hi) if sl is None else sl
    z = g.z[sl[0]]
    x, y, _ = g.coords(sl)
    args = [(v(z) if callable(v) else np.full(z.shape, v))[:, None, None] for v in (cx, cy, ax, ay)]
    return sl, ((x - args[0]) / args[2]) ** 2 + ((y - args[1]) / args[3]) ** 2 < 1.0


def _interp(hs, vals) -> Callable[[np.ndarray], np.ndarray]:
    return lambda h: np.interp(h, hs, vals)


def _smooth_field(ref: sitk.Image, rng: np.random.Generator, cell_mm: float) -> np.ndarray:
    """Smooth random field (about unit std) on the grid of ``ref``, from a coarse grid."""
    size = ref.GetSize()
    spacing = ref.GetSpacing()
    n = [int(math.ceil(s * sp / cell_mm)) + 3 for s, sp in zip(size, spacing, strict=True)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(n[::-1]), 0.7)
    coarse /= coarse.std() + 1e-9
    img = sitk.GetImageFromArray(coarse.astype(np.float32))
    img.SetSpacing((cell_mm,) * 3)
    img.SetOrigin(tuple(o - cell_mm for o in ref.GetOrigin()))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


# ----------------------------------------------------------------------------- anatomy


def _anatomy(g: _Grid, rng: np.random.Generator, tex: np.ndarray):
    """Normal anatomy: HU and true SUV volumes, plus body and soft-tissue masks."""
    hu = np.full(g.shape, -1000.0, dtype=np.float32)
    suv = np.zeros(g.shape, dtype=np.float32)
    u = rng.uniform
    bg = u(0.65, 1.0)  # muscle SUV
    brain_suv = u(7.0, 11.0)  # grey matter; measured about 6-10 after the PSF
    fat = u(4.0, 10.0)

    # Body outline: neck -> face -> head, per-slice ellipses.
    hs = [0, 30, 60, 85, 95, 115, 130, 150, 175, 260]
    bax = _interp(hs, [72, 64, 61, 60, 62, 66, 68, 70, 68, 60])
    bay = _interp(hs, [52, 50, 50, 60, 70, 75, 78, 80, 72, 60])
    bcy = _interp(hs, [8, 7, 6, -2, -10, -10, -10, -8, -2, 0])
    tf = _interp([0, 100, 140, 160], [fat, fat, 4.0, 3.0])
    full = (slice(None),) * 3
    _, body = _slabs(g, 0, 0, 0.0, bcy, bax, bay, sl=full)
    _, inner = _slabs(g, 0, 0, 0.0, bcy, lambda h: bax(h) - 2.0, lambda h: bay(h) - 2.0, sl=full)
    # muscle core: fat thickness tf at the front and sides, 1.4 tf at the back
    _, core = _slabs(
        g,
        0,
        0,
        0.0,
        lambda h: bcy(h) - 0.2 * tf(h),
        lambda h: bax(h) - 2.0 - tf(h),
        lambda h: bay(h) - 2.0 - 1.2 * tf(h),
        sl=full,
    )
    # nose
    sl, m = _ellipsoid(g, (0, -86, 142), (10, 13, 17))
    body[sl] |= m
    inner[sl] |= m
    hu[body] = 30.0
    suv[body] = 0.8
    hu[inner] = -100.0
    suv[inner] = 0.3
    hu[core] = 45.0
    suv[core] = bg

    # Head: brain (B), cerebellum (C); skull and scalp as inflated shells.
    bc, br = (0.0, 8.0, 200.0), np.array([62.0, 78.0, 55.0])
    cc, cr = (0.0, 42.0, 160.0), np.array([45.0, 25.0, 20.0])
    sl = g.zspan(120.0, 1e9)
    x, y, z = g.coords(sl)
    dB = {t: _d2(x, y, z, bc, br + t) < 1.0 for t in (-5.0, 0.0, 1.5, 7.0, 12.0)}
    dC = {t: _d2(x, y, z, cc, cr + t) < 1.0 for t in (0.0, 1.5, 7.0, 12.0)}
    scalp = dB[12.0] | dC[12.0]
    skull = dB[7.0] | dC[7.0]
    csf = dB[1.5] | dC[1.5]
    brain = dB[0.0] | dC[0.0]
    h_sl, s_sl = hu[sl], suv[sl]
    m = scalp & ~skull & (h_sl < -500)
    h_sl[m], s_sl[m] = 30.0, 0.7
    body[sl] |= scalp
    m = skull & ~csf
    h_sl[m], s_sl[m] = 1150.0, 0.6
    m = csf & ~brain
    h_sl[m], s_sl[m] = 8.0, 0.2
    h_sl[brain], s_sl[brain] = 38.0, brain_suv  # cortex
    m = dB[-5.0]
    h_sl[m], s_sl[m] = 28.0, 0.45 * brain_suv  # white matter
    h_sl[dC[0.0]], s_sl[dC[0.0]] = 36.0, 0.8 * brain_suv  # cerebellum
    for side in (-1, 1):
        sl2, m = _ellipsoid(g, (side * 14, 5, 200), (9, 14, 10))  # basal ganglia/thalamus
        hu[sl2][m], suv[sl2][m] = 36.0, 0.9 * brain_suv

    # Face: orbits, eyes, maxillary sinuses, nasal cavity, nasopharynx connection.
    for side in (-1, 1):
        sl2, m = _ellipsoid(g, (side * 30, -58, 165), (16, 16, 14))
        hu[sl2][m], suv[sl2][m] = -80.0, 0.3
        sl2, m = _ellipsoid(g, (side * 32, -62, 165), (12, 12, 12))
        hu[sl2][m], suv[sl2][m] = 15.0, 0.5
        sl2, m = _ellipsoid(g, (side * 24, -45, 138), (12, 15, 13))
        hu[sl2][m], suv[sl2][m] = -1000.0, 0.0
    sl2, m = _ellipsoid(g, (0, -55, 140), (8, 22, 14))
    x, _, _ = g.coords(sl2)
    m &= np.abs(x) > 1.2  # septum
    hu[sl2][m], suv[sl2][m] = -1000.0, 0.0
    sl2, m = _ellipsoid(g, (0, -22, 135), (9, 14, 5))
    hu[sl2][m], suv[sl2][m] = -1000.0, 0.0

    # Cervical spine: bodies with discs, canal with cord, arches, spinous processes.
    sl = g.zspan(-1e9, 138.0)
    x, y, z = g.coords(sl)
    yvb = np.interp(z, [0, 80, 120, 140], [10, 8, 8, 6])
    rvb = np.interp(z, [0, 80, 120, 140], [11, 10, 9, 8])
    phase = u(0, 17)
    disc = (((z + phase) % 17.0) < 4.0) & (z < 118)
    r_vb = np.sqrt(x**2 + (y - yvb) ** 2)
    ycan = yvb + rvb + 6.0
    r_can = np.sqrt(x**2 + (y - ycan) ** 2)
    h_sl, s_sl = hu[sl], suv[sl]
    vb = r_vb < rvb
    bone = (r_can >= 6.5) & (r_can < 9.0)
    bone |= (np.abs(x) < 2.0) & (y > ycan + 8) & (y < ycan + 16)
    bone |= ((np.abs(x) - rvb - 5) / 5.0) ** 2 + ((y - yvb - 3) / 4.0) ** 2 < 1.0
    bone &= ~disc
    h_sl[bone], s_sl[bone] = 800.0, 1.0
    m = vb & disc
    h_sl[m], s_sl[m] = 80.0, 0.8
    m = vb & ~disc
    h_sl[m], s_sl[m] = 800.0, 1.2
    m = (r_vb < rvb - 1.5) & ~disc
    h_sl[m], s_sl[m] = 300.0, u(1.3, 1.9)  # marrow
    m = r_can < 6.5
    h_sl[m], s_sl[m] = 10.0, 0.3
    m = r_can < 4.0
    h_sl[m], s_sl[m] = 35.0, 1.1

    # Neck muscles and fat planes: sternocleidomastoids, carotid sheaths.
    sl = g.zspan(15.0, 95.0)
    for side in (-1, 1):
        scx = _interp([15.0, 95.0], [side * 30.0, side * 45.0])  # runs obliquely
        scy = _interp([15.0, 95.0], [-22.0, 8.0])
        _, m = _slabs(g, 0, 0, scx, scy, 10.0, 14.0, sl=sl)
        m &= core[sl]
        hu[sl][m], suv[sl][m] = -90.0, 0.3
        _, m = _slabs(g, 0, 0, scx, scy, 7.0, 11.0, sl=sl)
        hu[sl][m], suv[sl][m] = 45.0, bg
    sl = g.zspan(-1e9, 125.0)
    for side in (-1, 1):
        _, m = _slabs(g, 0, 0, side * 22.0, -6.0, 10.0, 7.5, sl=sl)
        hu[sl][m & core[sl]], suv[sl][m & core[sl]] = -90.0, 0.3

    # Vessels (carotids, jugulars): blood pool.
    sl = g.zspan(-1e9, 128.0)
    for side in (-1, 1):
        _, m = _slabs(g, 0, 0, side * 18.0, -8.0, 3.5, 3.5, sl=sl)
        hu[sl][m], suv[sl][m] = 40.0, 1.6
        _, m = _slabs(g, 0, 0, side * 26.0, -4.0, 5.0, 5.0, sl=sl)
        hu[sl][m], suv[sl][m] = 40.0, 1.6

    # Thyroid.
    for side in (-1, 1):
        sl2, m = _ellipsoid(g, (side * 17, -18, 22), (7, 8, 18))
        hu[sl2][m], suv[sl2][m] = 100.0, 1.3
    sl2, m = _ellipsoid(g, (0, -34, 15), (10, 3.5, 5))
    hu[sl2][m], suv[sl2][m] = 100.0, 1.3

    # Airway, moving slightly from slice to slice.
    amp, period, ph = u(1.0, 3.0), u(60.0, 120.0), u(0, 2 * np.pi)
    hs = [0, 40, 55, 60, 75, 88, 100, 118, 132, 142]

    def acx(h: np.ndarray) -> np.ndarray:
        return amp * np.sin(2 * np.pi * h / period + ph)

    acy = _interp(hs, [-24, -23, -20, -20, -17, -12, -11, -10, -10, -12])
    aax = _interp(hs, [9, 9, 4, 9, 10, 13, 12, 11, 12, 8])
    aay = _interp(hs, [8, 8, 8, 8, 8, 7, 6, 6, 6, 5])
    # laryngeal and tracheal cartilage around the air column, then the air
    sl, m = _slabs(g, -1e9, 78.0, acx, acy, lambda h: aax(h) + 3.5, lambda h: aay(h) + 3.5)
    _, y, z = g.coords(sl)
    m &= (y < acy(z) + 2.0) | (z < 40)
    hu[sl][m] = np.broadcast_to(np.where(z < 40, 130.0, 260.0), m.shape)[m]
    suv[sl][m] = 0.8
    sl, m = _slabs(g, -1e9, 140.0, acx, acy, aax, aay)
    hu[sl][m], suv[sl][m] = -1000.0, 0.0
    # a thin air layer in the mouth, sometimes
    if u() < 0.6:
        sl2, m = _ellipsoid(g, (0, -42, 121), (18, 22, 2.5))
        hu[sl2][m], suv[sl2][m] = -1000.0, 0.0

    # Salivary glands, tonsils, tongue, vocal cords (physiological uptake).
    sal = u(2.0, 3.0)
    ton = u(3.0, 6.0)
    for side in (-1, 1):
        k = u(0.9, 1.1)
        sl2, m = _ellipsoid(g, (side * 46, 18, 124), (10, 14, 18))
        hu[sl2][m], suv[sl2][m] = -15.0, sal * k
        sl2, m = _ellipsoid(g, (side * 30, -32, 93), (9, 10, 8))
        hu[sl2][m], suv[sl2][m] = 45.0, sal * k * u(0.9, 1.1)
    sl2, m = _ellipsoid(g, (0, -36, 110), (24, 24, 9))  # tongue
    hu[sl2][m], suv[sl2][m] = 45.0, bg * u(1.2, 2.0)
    sl2, m = _ellipsoid(g, (0, -24, 100), (12, 5, 7))  # lingual tonsil
    hu[sl2][m], suv[sl2][m] = 48.0, u(2.0, 3.5)
    for side in (-1, 1):
        sl2, m = _ellipsoid(g, (side * 13, -10, 108), (6, 7, 10))  # palatine tonsils
        hu[sl2][m], suv[sl2][m] = 50.0, ton * u(0.85, 1.15)
    sl2, m = _ellipsoid(g, (0, -7, 136), (10, 4.5, 6))  # adenoids
    hu[sl2][m], suv[sl2][m] = 48.0, u(1.5, 3.0)
    if u() < 0.4:
        for side in (-1, 1):
            sl2, m = _ellipsoid(g, (side * 5, -20, 55), (3, 5, 4))
            suv[sl2][m] = u(2.0, 3.0)

    # Bones of the face: mandible (U), rami, hyoid, teeth, hard palate.
    sl = g.zspan(82.0, 145.0)
    x, y, z = g.coords(sl)
    h_sl, s_sl = hu[sl], suv[sl]
    r = np.sqrt((x / 44.0) ** 2 + ((y + 20.0) / 46.0) ** 2)
    dist = np.abs(r - 1.0) * 45.0
    mb = (dist < 4.0) & (y < -8.0) & (z > 96) & (z < 118)
    ramus = (
        (((np.abs(x) - 45.0) / 4.0) ** 2 + ((y - 2.0) / 12.0) ** 2 < 1.0) & (z > 100) & (z < 142)
    )
    mand = mb | ramus
    h_sl[mand], s_sl[mand] = 1250.0, 0.5
    m = mb & (dist < 1.8)
    h_sl[m], s_sl[m] = 450.0, 1.2
    rh = np.sqrt((x / 18.0) ** 2 + ((y + 22.0) / 14.0) ** 2)
    m = (np.abs(rh - 1.0) * 16 < 1.5) & (y < -22) & (z > 84) & (z < 88)
    h_sl[m] = 900.0
    rt = np.sqrt((x / 40.0) ** 2 + ((y + 20.0) / 42.0) ** 2)
    teeth = (
        (np.abs(rt - 1.0) * 41 < 3.5) & (y < -12) & (z > 116) & (z < 132) & (np.abs(z - 124) > 1)
    )
    h_sl[teeth], s_sl[teeth] = 2200.0, 0.3
    m = (x / 28.0) ** 2 + ((y + 35.0) / 30.0) ** 2 + ((z - 128.5) / 2.5) ** 2 < 1.0
    h_sl[m], s_sl[m] = 900.0, 0.5

    # Texture: a smooth field modulating soft tissue.
    soft = (hu > -200) & (hu < 150)
    hu[soft] += 6.0 * tex[soft]
    suv *= 1.0 + 0.08 * tex
    np.maximum(suv, 0.0, out=suv)
    return hu, suv, inner


# ----------------------------------------------------------------------------- lesions


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _lesion_shape(g: _Grid, rng: np.random.Generator, c, radius: float, elong, n_lobes: int):
    """Irregular blob: perturbed ellipsoid plus lobes. Returns box, mask, normalised distance."""
    semi = radius * np.asarray(elong)
    half = 1.9 * radius + 2.0
    sl = g.box(c, (half, half, half))
    x, y, z = g.coords(sl)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    dn = np.sqrt((dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2)
    norm = np.sqrt(dx**2 + dy**2 + dz**2) + 1e-6
    pert = np.zeros_like(dn)
    for _ in range(3):
        v = _unit(rng)
        a, w, p = rng.uniform(0.05, 0.12), rng.uniform(2.0, 4.0), rng.uniform(0, 2 * np.pi)
        pert += a * np.cos(w * (dx * v[0] + dy * v[1] + dz * v[2]) / norm + p)
    field = dn - pert
    for _ in range(n_lobes):
        off = radius * rng.uniform(0.45, 0.7) * _unit(rng)
        rl = radius * rng.uniform(0.45, 0.7)
        dl = np.sqrt((dx - off[0]) ** 2 + (dy - off[1]) ** 2 + (dz - off[2]) ** 2) / rl
        field = np.minimum(field, dl)
    return sl, field < 1.0, dn


def _keep_seeded(mask: np.ndarray, seed_idx: tuple[int, int, int]) -> np.ndarray:
    """Keep the 6-connected component of ``mask`` that contains ``seed_idx``."""
    mask = mask.copy()
    mask[seed_idx] = True
    lab, _ = ndimage.label(mask)
    return lab == lab[seed_idx]


def _place(
    g: _Grid, rng, c, radius, elong, n_lobes, occupied, inside, spacing
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Lesion mask in its box if it lies in ``inside`` and keeps 2 voxels off ``occupied``."""
    sl, m, dn = _lesion_shape(g, rng, c, radius, elong, n_lobes)
    idx = tuple(
        int(np.floor((c[k] - a[0]) / spacing[k] + 0.5))
        for k, a in zip((2, 1, 0), (g.z, g.y, g.x), strict=True)
    )
    local = tuple(i - s.start for i, s in zip(idx, sl, strict=True))
    shape = m.shape
    if any(li < 0 or li >= n for li, n in zip(local, shape, strict=True)) or not m.any():
        return None
    m = _keep_seeded(m, local)
    if not inside[sl][m].all():
        return None
    grown = ndimage.binary_dilation(m, np.ones((3, 3, 3), bool), iterations=2)
    if (occupied[sl] & grown).any():
        return None
    # the box must not clip the lesion's dilation at the volume border
    if any(s.start == 0 or s.stop == n for s, n in zip(sl, g.shape, strict=True)):
        return None
    return sl, m, dn


def _lognormal(rng, median: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(median * np.exp(sigma * rng.standard_normal()), lo, hi))


def _elong(rng, z_stretch: float = 1.0) -> np.ndarray:
    e = rng.uniform(0.8, 1.2, 3) * np.array([1.0, 1.0, z_stretch])
    return e / np.prod(e) ** (1.0 / 3.0)


# The lesion samplers below are public: outcome/synthetic.py draws image-free patients
# with them. Each consumes the random generator exactly as the image phantom does.
def primary_radius_mm(rng: np.random.Generator, hpv: int) -> float:
    """GTVp radius (mm): log-normal, median 12 mm (HPV+) or 16 mm (HPV-), 8-25 mm."""
    return _lognormal(rng, 12.0 if hpv else 16.0, 0.3, 8.0, 25.0)


def primary_suvmax(rng: np.random.Generator, hpv: int) -> float:
    """True GTVp peak SUV: normal 10 +- 3 (HPV+) or 13 +- 3.5 (HPV-), clipped to 5-20."""
    return float(np.clip(rng.normal(10.0, 3.0) if hpv else rng.normal(13.0, 3.5), 5.0, 20.0))


def node_count(rng: np.random.Generator, hpv: int) -> int:
    """Number of nodes (0-3); HPV+ patients have more."""
    return int(rng.choice(4, p=(0.15, 0.35, 0.30, 0.20) if hpv else (0.35, 0.35, 0.20, 0.10)))


def node_radius_mm(rng: np.random.Generator, hpv: int) -> float:
    """GTVn radius (mm): log-normal, median 10 mm (HPV+) or 7.5 mm (HPV-), 5-15 mm."""
    return _lognormal(rng, 10.0 if hpv else 7.5, 0.3, 5.0, 15.0)


def _add_lesions(g, rng, hu, suv, label, body, scale, spacing, ref, hpv, tex):
    """Draw GTVp and GTVn into the volumes; return the Lesion list and site name."""
    occupied = np.zeros(g.shape, dtype=bool)
    inside = body.copy()
    lesions: list[Lesion] = []
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    sites = list(_SITES)
    site = sites[rng.choice(len(sites), p=_SITE_P_HPVPOS if hpv else _SITE_P_HPVNEG)]
    base = np.array(_SITES[site]) * np.array([side, 1.0, 1.0])

    # GTVp
    placed = None
    for _ in range(40):
        radius = primary_radius_mm(rng, hpv)
        c = base * scale + rng.normal(0.0, 3.0, 3)
        placed = _place(
            g, rng, c, radius, _elong(rng), int(rng.integers(1, 4)), occupied, inside, spacing
        )
        if placed is not None:
            break
    if placed is None:  # pragma: no cover - the oropharynx always has room
        raise RuntimeError("could not place the primary tumour")
    smax = primary_suvmax(rng, hpv)
    necrotic = bool(rng.uniform() < (0.15 if hpv else 0.35))
    p_sl, p_m, p_dn = placed
    occupied[p_sl] |= p_m
    gtvp = (p_sl, p_m, p_dn, smax, necrotic, float(rng.uniform(10.0, 20.0)))
    lesions.append(Lesion(1, tuple(float(v) for v in ref + c), radius, smax, necrotic))

    # GTVn
    n_nodes = node_count(rng, hpv)
    nodes = []
    for j in range(n_nodes):
        for _ in range(30):
            k = int(rng.choice(len(_LEVELS), p=[lv[2] for lv in _LEVELS]))
            mean, sd, _p = _LEVELS[k]
            nside = side if (j == 0 or rng.uniform() < 0.75) else -side
            c = (np.array(mean) + rng.normal(0.0, 1.0, 3) * np.array(sd)) * scale
            c[0] *= nside
            radius = node_radius_mm(rng, hpv)
            placed = _place(g, rng, c, radius, _elong(rng, 1.3), 0, occupied, inside, spacing)
            if placed is not None:
                break
        if placed is None:
            continue
        n_sl, n_m, n_dn = placed
        occupied[n_sl] |= n_m
        cystic = bool(rng.uniform() < (0.45 if hpv else 0.15))
        nmax = float(np.clip(rng.normal(6.0, 2.0) if hpv else rng.normal(8.0, 2.5), 3.0, 12.0))
        nodes.append((n_sl, n_m, n_dn, nmax, cystic, float(rng.uniform(8.0, 18.0))))
        lesions.append(Lesion(2, tuple(float(v) for v in ref + c), radius, nmax, cystic))

    # Paint nodes first, the tumour last (it wins, although they never touch).
    for lab, (sl, m, dn, smax_, nec, dhu) in [(2, n) for n in nodes] + [(1, gtvp)]:
        t = tex[sl][m]
        d = dn[m]
        if nec:
            core_r = rng.uniform(0.4, 0.6)
            act = smax_ * (0.5 + 0.5 * np.exp(-(((d - 0.8) / 0.25) ** 2)))
            hv = np.full(d.shape, 45.0 + dhu, dtype=np.float32)
            cold = d < core_r
            act[cold] = rng.uniform(0.8, 1.5)
            hv[cold] = 20.0
        else:
            act = smax_ * (0.55 + 0.45 * np.exp(-((d / 0.55) ** 2)))
            hv = np.full(d.shape, 45.0 + dhu, dtype=np.float32)
        hu[sl][m] = hv + 6.0 * t
        suv[sl][m] = act * (1.0 + 0.06 * t)
        label[sl][m] = lab
    return lesions, site


# ----------------------------------------------------------------------------- clinical


def sample_covariates(rng: np.random.Generator, center: int) -> dict[str, object]:
    """Steps 1-2 of the model: a patient's clinical covariates and HPV status at a centre."""
    return _clinical_covariates(rng, _SCANNERS[center])


def sample_survival(
    rng: np.random.Generator, covariates: dict, center: int, volume_ml: float, n_nodes: int
) -> dict:
    """Step 4: Weibull relapse-free survival with censoring (and its linear predictor)."""
    return _survival(rng, covariates, _SCANNERS[center], volume_ml, n_nodes)


def clinical_row(
    rng: np.random.Generator, case_id: str, center: int, covariates: dict, survival: dict
) -> dict[str, object]:
    """Step 5: the HECKTOR 2025 clinical row, with missing values."""
    return _clinical_row(rng, case_id, center, covariates, survival)


def _clinical_covariates(rng: np.random.Generator, scanner: _Scanner) -> dict[str, object]:
    age = int(np.clip(round(rng.normal(62.0, 9.0)), 35, 88))
    female = bool(rng.uniform() < 0.18)
    tobacco = int(rng.uniform() < (0.40 if female else 0.55))
    alcohol = int(rng.uniform() < 0.25 + 0.35 * tobacco)
    ps = int(rng.choice(5, p=(0.48, 0.34, 0.12, 0.05, 0.01)))
    mstage = str(rng.choice(["M0", "M1", "Mx"], p=(0.93, 0.03, 0.04)))
    treatment = str(
        rng.choice(
            ["Chemoradiotherapy", "Radiotherapy", "Surgery+Radiotherapy"], p=(0.65, 0.2, 0.15)
        )
    )
    logit = 0.9 + scanner.hpv_logit - 0.045 * (age - 62) - 1.3 * tobacco - 0.3 * female
    hpv = int(rng.uniform() < 1.0 / (1.0 + math.exp(-logit)))
    return {
        "age": age, "female": female, "tobacco": tobacco, "alcohol": alcohol, "ps": ps,
        "mstage": mstage, "treatment": treatment, "hpv": hpv,
    }  # fmt: skip


def _survival(rng, cov: dict, scanner: _Scanner, volume_ml: float, n_nodes: int) -> dict:
    z_vol = (math.log1p(volume_ml) - _LOGV_MU) / _LOGV_SD
    lp = (
        scanner.log_hazard
        + 0.69 * z_vol
        + 0.25 * n_nodes
        - 0.92 * cov["hpv"]
        + 0.45 * cov["tobacco"]
        + 0.30 * cov["ps"]
        + 0.025 * (cov["age"] - 62)
        + 1.2 * (cov["mstage"] == "M1")
    )
    k, lam = 1.3, 7.5 * _DAYS_PER_YEAR
    t_event = lam * (-math.log(1.0 - rng.uniform()) / math.exp(lp)) ** (1.0 / k)
    t_admin = rng.uniform(1.5, 6.5) * _DAYS_PER_YEAR
    t_loss = rng.exponential(12.0 * _DAYS_PER_YEAR)
    t_cens = min(t_admin, t_loss)
    return {
        "linear_predictor": float(lp),
        "event_time_days": float(t_event),
        "censor_time_days": float(t_cens),
        "relapse": int(t_event <= t_cens),
        "rfs_days": max(1, int(round(min(t_event, t_cens)))),
    }


def _clinical_row(rng, case_id, center, cov, surv) -> dict[str, object]:
    def maybe(value, p: float) -> float:
        return float("nan") if rng.uniform() < p else float(value)

    return {
        "PatientID": case_id,
        "CenterID": center,
        "Age": cov["age"],
        "Gender": "F" if cov["female"] else "M",
        "Tobacco Consumption": maybe(cov["tobacco"], 0.10),
        "Alcohol Consumption": maybe(cov["alcohol"], 0.10),
        "Performance Status": maybe(cov["ps"], 0.10),
        "Treatment": cov["treatment"],
        "M-stage": cov["mstage"],
        "HPV Status": maybe(cov["hpv"], 0.15),
        "Relapse": surv["relapse"],
        "RFS": surv["rfs_days"],
    }


# ----------------------------------------------------------------------------- cases


def _build_case(
    seed: int, center: int, empty: bool, case_id: str | None
) -> tuple[PhantomCase, dict[str, object]]:
    if not isinstance(center, (int, np.integer)) or not 0 <= center < len(CENTERS):
        raise HecktorInputError(f"center must be an index 0-{len(CENTERS) - 1}, got {center!r}.")
    if seed < 0:
        raise HecktorInputError(f"seed must be >= 0, got {seed}.")
    center = int(center)
    sc = _SCANNERS[center]
    rng = np.random.default_rng(seed)
    case_id = case_id or f"{CENTERS[center]}-{seed:03d}"
    cov = _clinical_covariates(rng, sc)

    # CT grid (x, y, z order for SimpleITK).
    sx = sc.ct_xy
    ct_sp = (sx, sx, sc.ct_z)
    n_xy = int(round(180.0 / sx))
    ct_size = (n_xy, n_xy, int(round(222.0 / sc.ct_z)))
    ct_origin = (
        -0.5 * n_xy * sx + rng.uniform(-3.0, 3.0),
        -0.5 * n_xy * sx + rng.uniform(-3.0, 3.0),
        sc.table_z + rng.uniform(-10.0, 10.0),
    )
    patient_scale = rng.uniform(0.93, 1.07)
    ref = np.array(
        [
            ct_origin[0] + 0.5 * n_xy * sx + rng.uniform(-4.0, 4.0),
            ct_origin[1] + 0.5 * n_xy * sx + rng.uniform(-3.0, 3.0) - 4.0,
            ct_origin[2] + rng.uniform(-8.0, 4.0),
        ]
    )
    ref_img = sitk.Image(ct_size, sitk.sitkFloat32)
    ref_img.SetSpacing(ct_sp)
    ref_img.SetOrigin(ct_origin)
    ga = _Grid(ct_origin, ct_sp, ct_size, ref, patient_scale)
    gp = _Grid(ct_origin, ct_sp, ct_size, ref, 1.0)

    tex = _smooth_field(ref_img, rng, 12.0)
    hu, act, body = _anatomy(ga, rng, tex)
    label = np.zeros(gp.shape, dtype=np.uint8)
    lesions: list[Lesion] = []
    site = None
    if not empty:
        lesions, site = _add_lesions(
            gp, rng, hu, act, label, body, patient_scale, ct_sp, ref, cov["hpv"], tex
        )

    # CT: scanner blur, calibration, correlated noise.
    hu = ndimage.gaussian_filter(hu, (0.4, 0.5 / sx, 0.5 / sx))
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape, dtype=np.float32), (0.3, 0.7, 0.7)
    )
    noise *= sc.ct_noise / (noise.std() + 1e-9)
    hu = hu * sc.hu_scale + sc.hu_offset * rng.uniform(0.8, 1.2) + noise
    ct_arr = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    # PET: PSF blur on the CT grid, resample to the PET grid, count noise.
    sigma_mm = sc.psf_fwhm * rng.uniform(0.95, 1.05) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    act = ndimage.gaussian_filter(act, (sigma_mm / ct_sp[2], sigma_mm / sx, sigma_mm / sx))
    act_img = sitk.GetImageFromArray(act)
    act_img.CopyInformation(ref_img)
    pet_sp = (sc.pet_xy, sc.pet_xy, sc.pet_z)
    pet_origin = tuple(
        o + s + rng.uniform(0.0, 1.5) for o, s in zip(ct_origin, sc.pet_shift, strict=True)
    )
    pet_size = tuple(
        int((n * sp - 2.0 * (po - o)) // psp)
        for n, sp, po, o, psp in zip(ct_size, ct_sp, pet_origin, ct_origin, pet_sp, strict=True)
    )
    pet_ref = sitk.Image(pet_size, sitk.sitkFloat32)
    pet_ref.SetSpacing(pet_sp)
    pet_ref.SetOrigin(pet_origin)
    pet_lin = sitk.Resample(
        act_img, pet_ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    lam = np.clip(sitk.GetArrayFromImage(pet_lin), 0.0, None)
    k_vox = sc.pet_counts * (pet_sp[0] * pet_sp[1] * pet_sp[2]) / 48.0
    counts = rng.poisson(lam * k_vox).astype(np.float32) / k_vox
    pet_arr = ndimage.gaussian_filter(counts, (0.35, 0.6, 0.6)) * sc.suv_scale
    pet = sitk.GetImageFromArray(pet_arr.astype(np.float32))
    pet.CopyInformation(pet_ref)

    ct = sitk.GetImageFromArray(ct_arr)
    ct.CopyInformation(ref_img)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(ref_img)

    vox_ml = ct_sp[0] * ct_sp[1] * ct_sp[2] / 1000.0
    gtvp_ml = float((label == 1).sum() * vox_ml)
    gtvn_ml = float((label == 2).sum() * vox_ml)
    n_nodes = sum(1 for les in lesions if les.label == 2)
    surv = _survival(rng, cov, sc, gtvp_ml + gtvn_ml, n_nodes)
    clinical = _clinical_row(rng, case_id, center, cov, surv)
    truth: dict[str, object] = {
        "hpv": cov["hpv"],
        "tobacco": cov["tobacco"],
        "alcohol": cov["alcohol"],
        "performance_status": cov["ps"],
        "primary_site": site,
        "gtvp_ml": round(gtvp_ml, 3),
        "gtvn_ml": round(gtvn_ml, 3),
        "n_nodes": n_nodes,
        **surv,
        "scanner": {
            "ct_spacing": list(ct_sp),
            "pet_spacing": list(pet_sp),
            "psf_fwhm_mm": round(2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma_mm, 3),
            "ct_noise_hu": sc.ct_noise,
            "hu_scale": sc.hu_scale,
            "suv_scale": sc.suv_scale,
        },
    }
    case = PhantomCase(case_id, CENTERS[center], ct, pet, lab, lesions, clinical)
    return case, truth


def make_case(
    seed: int, *, center: int = 0, empty: bool = False, case_id: str | None = None
) -> PhantomCase:
    """Build one synthetic PET/CT case; the same (seed, center, empty) gives the same case.

    ``center`` indexes :data:`CENTERS` (scanner parameters); ``empty=True`` draws no lesion.
    """
    return _build_case(seed, center, empty, case_id)[0]


def _cohort_ids(n_cases: int, n_empty: int, centers: int) -> list[tuple[str, int, bool]]:
    out = []
    for i in range(n_cases + n_empty):
        c = i % centers
        out.append((f"{CENTERS[c]}-{i // centers + 1:03d}", c, i >= n_cases))
    return out


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def write_cohort(
    out_dir: str | Path,
    n_cases: int,
    *,
    seed: int = 0,
    centers: int = 3,
    n_empty: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a cohort in the HECKTOR 2022 layout plus ``clinical.csv`` and ``phantom.json``.

    Cases go round-robin over the first ``centers`` centres (ids ``CHUM-001``...); the
    ``n_empty`` lesion-free cases come after the ``n_cases`` others. Case ``i`` uses the
    seed drawn from ``np.random.SeedSequence([seed, i])``. Refuses to overwrite files.
    """
    if n_cases < 0 or n_empty < 0 or n_cases + n_empty < 1:
        raise HecktorInputError("Ask for at least one case (n_cases + n_empty >= 1).")
    if not 1 <= centers <= len(CENTERS):
        raise HecktorInputError(f"centers must be between 1 and {len(CENTERS)}, got {centers}.")
    if seed < 0:
        raise HecktorInputError(f"seed must be >= 0, got {seed}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HecktorInputError(f"{out} is a file, not a folder; choose a new folder.")
    ids = _cohort_ids(n_cases, n_empty, centers)
    targets = [out / "clinical.csv", out / "phantom.json"]
    for cid, _c, _e in ids:
        targets += [
            out / "imagesTr" / f"{cid}__CT.nii.gz",
            out / "imagesTr" / f"{cid}__PT.nii.gz",
            out / "labelsTr" / f"{cid}.nii.gz",
        ]
    clash = [p for p in targets if p.exists()]
    if clash:
        raise HecktorInputError(
            f"{out} already holds a cohort ({clash[0].relative_to(out)} and "
            f"{len(clash) - 1} more files would be overwritten); choose an empty folder."
        )
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, object]] = []
    meta_cases: list[dict[str, object]] = []
    total = len(ids)
    for i, (cid, c, empty) in enumerate(ids):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        case, truth = _build_case(case_seed, c, empty, cid)
        sitk.WriteImage(case.ct, str(out / "imagesTr" / f"{cid}__CT.nii.gz"), useCompression=True)
        sitk.WriteImage(case.pet, str(out / "imagesTr" / f"{cid}__PT.nii.gz"), useCompression=True)
        sitk.WriteImage(case.label, str(out / "labelsTr" / f"{cid}.nii.gz"), useCompression=True)
        rows.append(case.clinical)
        meta_cases.append(
            {
                "id": cid,
                "center": case.center,
                "seed": case_seed,
                "empty": empty,
                "lesions": [asdict(les) for les in case.lesions],
                "truth": truth,
            }
        )
        if progress is not None:
            progress(i + 1, total)

    with open(out / "clinical.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HECKTOR2025_COLUMNS)
        for row in rows:
            writer.writerow([_csv_cell(row[col]) for col in HECKTOR2025_COLUMNS])
    meta = {
        "generator": "napari_hecktor.data.phantom",
        "version": PHANTOM_VERSION,
        "seed": seed,
        "n_cases": n_cases,
        "centers": centers,
        "n_empty": n_empty,
        "center_names": list(CENTERS[:centers]),
        "cases": meta_cases,
    }
    (out / "phantom.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out
