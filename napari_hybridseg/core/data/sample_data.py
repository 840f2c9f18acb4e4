"""A seeded synthetic demo collection that resembles the real modalities.

Two kinds of 256 x 256 images, both made from smooth random fields (no data
is fetched or copied):

* colonoscopy-like RGB frames: pink mucosa with folds, a dark lumen, an
  endoscope's dark corners and specular glints; polyps are domed, textured
  blobs of a distinctly redder, brighter colour (class ``polyp``);
* AS-OCT-like greyscale B-scans: speckle, a bright corneal arc and two iris
  bands; at each iridocorneal angle a small, very bright wedge marks the
  scleral-spur region (class ``scleral spur``), the kind of structure an
  annotator marks with one landmark click.

The objects are clearly visible so that a small network learns them in a few
hundred steps at 128 px. The demo project mixes every role: a few strong
masks, boxes (colonoscopy), landmark points (AS-OCT), tags, unlabeled
images, and six deliberately wrong weak labels (``corrupted=True``) so that
down-weighting is visible. Every non-strong image keeps its true mask as
``reference_mask`` for evaluation.

:func:`sample_project_path` returns the shipped project (``sample_data/`` at
the repository root); :func:`write_sample_project` regenerates it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_hybridseg.core.data.collection import ClassInfo, Collection, Point, Sample, TagImplies
from napari_hybridseg.core.data.synthetic import Drawn, Painter, Spec, strong, synthetic_collection, tagged

__all__ = [
    "GENERATOR_VERSION",
    "make_asoct_scan",
    "make_colonoscopy_frame",
    "cached_sample_dir",
    "make_sample_collection",
    "sample_project_path",
    "shipped_sample_dir",
    "write_sample_project",
]

#: bump when the generator's output changes, so a cached copy is regenerated
GENERATOR_VERSION = 1
POLYP, SPUR = 1, 2
SIZE = 256


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to zero mean, unit std."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _blob(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, r: float,
          ecc: float = 1.0, angle: float = 0.0, wobble: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A star-shaped blob with a wobbly border: (mask, normalised radius map where < 1 is inside)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64) + 0.5
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, (-sa * dx + ca * dy) * ecc
    theta = np.arctan2(v, u)
    radius = np.full_like(theta, r)
    for k in range(2, 6):  # a few low harmonics: lumpy, not polygonal
        radius += r * wobble / k * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(u, v) / radius
    return rho < 1.0, rho


def make_colonoscopy_frame(rng: np.random.Generator, n_polyps: int = 1,
                           size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One colonoscopy-like RGB frame (uint8) and its polyp mask (uint8, 0/1)."""
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    # mucosa: pink with smooth brightness changes and folds (ridges of a low-frequency field)
    light = 0.75 + 0.1 * _smooth_noise(rng, shape, size / 8)
    field = _smooth_noise(rng, shape, size / 14)
    folds = np.exp(-(field / 0.18) ** 2)  # thin bands along the zero crossings
    light = light - 0.18 * folds
    # the lumen: a dark hole, off-centre
    ly, lx = rng.uniform(0.25, 0.75, 2) * size
    lumen = np.exp(-(((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * (size * rng.uniform(0.08, 0.14)) ** 2)))
    light = light * (1 - 0.75 * lumen)
    # endoscope vignette: dark corners
    rad = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    light = light * np.clip(1.25 - 0.55 * rad**2, 0, 1)
    base = np.array([0.90, 0.52, 0.45])
    img = light[..., None] * base[None, None, :]
    img = img + 0.02 * _smooth_noise(rng, shape, 1.0)[..., None]

    mask = np.zeros(shape, np.uint8)
    for _ in range(n_polyps):
        for _try in range(50):  # keep polyps apart and inside the bright field of view
            r = rng.uniform(0.07, 0.16) * size
            cy, cx = rng.uniform(0.22, 0.78, 2) * size
            blob, rho = _blob(rng, shape, cy, cx, r, ecc=rng.uniform(0.75, 1.3), angle=rng.uniform(0, np.pi))
            if not (blob & (mask > 0)).any() and not (blob & (lumen > 0.5)).any():
                break
        dome = np.clip(1 - rho**2, 0, 1)  # brighter at the top of the dome
        texture = _smooth_noise(rng, shape, 2.0)
        colour = np.array([0.98, 0.30, 0.22])  # redder and more saturated than the mucosa
        shade = (0.62 + 0.38 * dome + 0.06 * texture)[..., None] * colour[None, None, :]
        edge = np.clip((rho - 0.85) / 0.15, 0, 1)[..., None]  # a soft rim blends into the mucosa
        inside = blob[..., None]
        img = np.where(inside, shade * (1 - 0.35 * edge) + img * 0.35 * edge, img)
        mask[blob] = 1
    # specular glints: small saturated white spots anywhere
    for _ in range(rng.integers(3, 8)):
        gy, gx = rng.uniform(0.1, 0.9, 2) * size
        g = np.exp(-(((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * rng.uniform(1.0, 2.5) ** 2)))
        img = img + g[..., None] * 0.9
    img = np.clip(img, 0, 1)
    return np.round(img * 255).astype(np.uint8), mask


def make_asoct_scan(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """One AS-OCT-like greyscale B-scan (uint8), its spur-region mask (0/2) and the two spur points (x, y)."""
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    img = 0.08 + 0.02 * _smooth_noise(rng, shape, size / 10)
    # cornea: a bright arc, apex near the top
    apex = rng.uniform(0.12, 0.2) * size
    curv = rng.uniform(1.6, 2.2) / size
    cx = size / 2 + rng.normal(0, size * 0.03)
    arc = apex + curv * (xx - cx) ** 2
    thick = size * 0.035
    cornea = np.exp(-((yy - arc) / thick) ** 2)
    img = img + 0.55 * cornea
    # the angles: where the cornea meets the iris plane, left and right
    iris_y = apex + rng.uniform(0.24, 0.32) * size  # keeps both angles well inside the frame
    half = np.sqrt(max(iris_y - apex, 1) / curv)
    spurs = []
    mask = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        sx = cx + side * half * rng.uniform(0.92, 1.0)
        sy = apex + curv * (sx - cx) ** 2
        # iris: a thick band from the angle toward the pupil
        t = np.clip((xx - sx) * -side / (size * 0.33), 0, 1)
        band_y = sy + size * 0.03 + t * size * 0.02
        iris = np.exp(-((yy - band_y) / (size * 0.025)) ** 2) * ((xx - sx) * -side > 0) * (t < 0.999)
        img = img + 0.35 * iris * (1 + 0.3 * _smooth_noise(rng, shape, 3.0))
        # the spur region: a very bright wedge just outside the angle
        blob, rho = _blob(rng, shape, sy, sx + side * size * 0.01, size * rng.uniform(0.035, 0.05),
                          ecc=rng.uniform(1.0, 1.6), angle=rng.uniform(-0.4, 0.4), wobble=0.1)
        img = np.where(blob, np.maximum(img, 0.8 + 0.15 * (1 - rho)), img)
        mask[blob] = SPUR
        spurs.append((float(sx + side * size * 0.01), float(sy)))
    # speckle: multiplicative, as in OCT
    speckle = rng.gamma(4.0, 0.25, shape)
    img = np.clip(img * speckle * 0.9 + 0.03 * rng.random(shape), 0, 1)
    return np.round(img * 255).astype(np.uint8), mask, spurs


def _colon_frame(n_polyps: int, size: int) -> Painter:
    def paint(rng: np.random.Generator) -> Drawn:
        return Drawn(*make_colonoscopy_frame(rng, n_polyps=n_polyps, size=size))

    return paint


def _asoct(size: int) -> Painter:
    def paint(rng: np.random.Generator) -> Drawn:
        img, mask, spurs = make_asoct_scan(rng, size=size)
        return Drawn(img, mask, points=spurs)

    return paint


def _boxes_from_mask(sample: Sample, drawn: Drawn) -> None:
    from napari_hybridseg.core.data.hybridize import boxes_from_mask

    sample.boxes = boxes_from_mask(drawn.mask, min_size=20, id_prefix=sample.id)


def _flipped_tag(sample: Sample, drawn: Drawn) -> None:
    sample.tags, sample.corrupted, sample.corruption = ["no polyp"], True, "flipped"
    sample.meta["clean_weak"] = {"boxes": [], "points": [], "tags": ["polyp"]}


def _spur_points(sample: Sample, drawn: Drawn) -> None:
    sample.points = [Point(x, y, label=SPUR, id=f"{sample.id}-p{k}") for k, (x, y) in enumerate(drawn.points)]
    sample.meta["simulated_points"] = True


def _wrong_boxes(kinds: dict[int, str]):
    """A step: replace the boxes of ``colon_<i>`` by a box made wrong in the way ``kinds[i]`` says."""

    def step(c: Collection, rng: np.random.Generator) -> None:
        from napari_hybridseg.core.data.hybridize import corrupt_boxes

        for i, kind in kinds.items():
            s = c[f"colon_{i:02d}"]
            new = corrupt_boxes(s.boxes, s.reference_mask, kind, rng)
            if new is None:  # cannot happen with the shipped settings: polyps are small and leave room
                raise RuntimeError(f"sample generator: could not make a {kind!r} box for {s.id}; try another seed")
            s.meta["clean_weak"] = {"boxes": [[b.x0, b.y0, b.x1, b.y1, b.label] for b in s.boxes], "points": [],
                                    "tags": []}
            s.boxes, s.corrupted, s.corruption = new, True, kind

    return step


def _moved_points(indices: tuple[int, ...]):
    """A step: move the spur points of ``oct_<i>`` outside the spur region."""

    def step(c: Collection, rng: np.random.Generator) -> None:
        from napari_hybridseg.core.data.hybridize import corrupt_points

        for i in indices:
            s = c[f"oct_{i:02d}"]
            new = corrupt_points(s.points, s.reference_mask, rng)
            if new is None:
                raise RuntimeError(f"sample generator: could not move the points of {s.id}; try another seed")
            s.meta["clean_weak"] = {"boxes": [], "points": [[p.x, p.y, p.label, p.positive] for p in s.points],
                                    "tags": []}
            s.points, s.corrupted, s.corruption = new, True, "moved_outside"

    return step


def _colon_label(i: int):
    if i < 4:
        return strong
    if i < 18:
        return _boxes_from_mask
    return {18: tagged("polyp"), 19: tagged("no polyp"), 20: _flipped_tag}.get(i)


def make_sample_collection(seed: int = 0, size: int = SIZE) -> Collection:
    """The demo collection, generated in memory (about 1 s).

    40 images: 24 colonoscopy-like frames (4 strong, 14 with boxes of which
    3 wrong, 3 tagged of which 1 wrong, 3 unlabeled) and 16 AS-OCT-like
    scans (3 strong, 10 with spur points of which 2 wrong, 3 unlabeled).
    Built by the one synthetic-collection factory (:mod:`.synthetic`).
    """
    colon_meta = {"modality": "colonoscopy", "synthetic": True}
    oct_meta = {"modality": "as-oct", "synthetic": True}
    items: list = [Spec(f"colon_{i:02d}", _colon_frame(0 if i in (19,) else (2 if i in (6, 11) else 1), size),
                        _colon_label(i), meta=colon_meta) for i in range(24)]
    items.append(_wrong_boxes({5: "shifted", 9: "inflated", 14: "background"}))
    items += [Spec(f"oct_{i:02d}", _asoct(size), strong if i < 3 else (_spur_points if i < 13 else None),
                   meta=oct_meta) for i in range(16)]
    items.append(_moved_points((4, 10)))
    return synthetic_collection(
        items, seed=seed,
        classes=[ClassInfo("polyp", POLYP, "#ff7f0e"), ClassInfo("scleral spur", SPUR, "#2ca02c")],
        tags=[("polyp", TagImplies.PRESENT, POLYP), ("no polyp", TagImplies.ABSENT, POLYP)],
        meta={"name": "napari-hybridseg synthetic demo",
              "generator": {"module": __name__, "seed": seed, "version": GENERATOR_VERSION, "size": size}},
    )


def shipped_sample_dir() -> Path:
    """Where the shipped demo project lives: ``sample_data/`` at the repository root."""
    return Path(__file__).resolve().parents[3] / "sample_data"


def cached_sample_dir() -> Path:
    """Where an installed package (no shipped folder) keeps its generated demo project."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-hybridseg" / f"sample_data-v{GENERATOR_VERSION}"


def write_sample_project(out: str | Path, seed: int = 0) -> Path:
    """Generate the demo collection and save it as a project in ``out`` (images inside the project)."""
    from napari_hybridseg.core.data.store import save_project

    out = Path(out)
    collection = make_sample_collection(seed=seed)
    save_project(collection, out)
    readme = out / "README.md"
    readme.write_text(
        "# napari-hybridseg demo project (synthetic)\n\n"
        "Generated by `hybridseg sample-data` (napari_hybridseg.core.data.sample_data, seed "
        f"{seed}): 24 colonoscopy-like frames and 16 AS-OCT-like B-scans, no real patient data. "
        "Open it with `napari_hybridseg.core.data.store.load_project`; the format is described in "
        "docs/project-format.md.\n",
        encoding="utf-8",
    )
    return out


def sample_project_path() -> Path:
    """The demo project folder: the shipped ``sample_data/``, or a generated cached copy.

    A source checkout ships the project in ``sample_data/``; an installed
    wheel does not, so it is generated once (deterministically, about 1 s)
    into ``~/.cache/napari-hybridseg/``.
    """
    shipped = shipped_sample_dir()
    if (shipped / "project.json").is_file():
        return shipped
    cache = cached_sample_dir()
    if not (cache / "project.json").is_file():
        write_sample_project(cache)
    return cache
