"""Procedural outdoor scenes with exact cross-scene ground truth.

A scene is ``Layout x Style``.  The layout is a resolution-independent geometric description
(every coordinate is normalised: x in [0, 1] left to right, y in [0, 1] top to bottom) and
decides *what* is where; the style decides *how it looks* (class colours, textures, time of
day, season).  Because ``render`` is a pure function of ``(layout, style, h, w)``, the image of
"layout A in the style of scene B" is exactly ``render(layout_a, style_b, h, w)``: the ground
truth that real datasets lack for example-guided synthesis across scenes (docs/design.md sec. 6).

Style is more than a colour per class, in ways a model can predict from (target layout,
exemplar image + labels): a per-scene sun (side, elevation, colour, share of direct light)
gives sunlit and shaded sides of trees, rocks, buildings and mountain slopes, a horizontal
gradient across the ground and the sky, and shadows cast away from the sun; the ground darkens
toward the viewer and hazes toward the horizon; structured textures (grass stripes, sand
ripples, wave bands narrowing toward the horizon, rock strata, floor bands, roofs, road dashes,
snow caps above a snow line) take amplitudes and frequencies from the style; each tree,
building and rock instance gets a moderate colour jitter keyed by (style seed, its index).

Measured with ``python -m msca.data.scene_stats`` (first 100 test pairs of
``CrossScenePairs("test", 64)``, seed 0, as ``msca demo`` uses them), PSNR against the exact
ground truth, before -> after this lighting and texture model:
  exemplar's global mean colour everywhere          14.95 -> 15.67 dB
  exemplar's per-class mean colour on the layout    19.16 -> 18.44 dB
    (on target pixels whose class the exemplar has: 22.5 -> 20.9 dB)
  oracle: the exemplar's style without texture      39.74 -> 38.02 dB

Everything is vectorised numpy; value noise is a separable interpolation of small lattices,
so a 128x128 render costs about 8 ms of CPU (5 ms before the lighting model) and the noise does
not depend on the output resolution (a 128 and a 256 render of one scene agree up to sampling).
"""
from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES = ("sky", "cloud", "mountain", "hill", "tree", "grass", "sand", "sea", "snow",
               "rock", "road", "building")
NUM_CLASSES = len(CLASS_NAMES)
SKY, CLOUD, MOUNTAIN, HILL, TREE, GRASS, SAND, SEA, SNOW, ROCK, ROAD, BUILDING = range(NUM_CLASSES)

# Visualisation palette for label maps (not the rendering colours): distinct, loosely mnemonic.
LABEL_COLORS = np.array([
    [70, 130, 180],   # sky
    [220, 220, 240],  # cloud
    [120, 80, 160],   # mountain
    [150, 170, 60],   # hill
    [20, 100, 30],    # tree
    [110, 220, 90],   # grass
    [230, 200, 120],  # sand
    [20, 50, 160],    # sea
    [250, 250, 250],  # snow
    [120, 110, 100],  # rock
    [60, 60, 60],     # road
    [200, 70, 50],    # building
], dtype=np.uint8)

SPLITS = ("train", "val", "test")

Size = Union[int, Tuple[int, int]]


# --------------------------------------------------------------------------- geometry helpers
@dataclass(frozen=True)
class Profile:
    """A 1-D curve y(x) = base + slope*(x-0.5) + sum_k amp_k sin(2 pi freq_k x + phase_k),
    optionally lowered by triangular peaks (mountains).  Continuous in x, so it rasterises at
    any width."""
    base: float
    amps: Tuple[float, ...] = ()
    freqs: Tuple[float, ...] = ()
    phases: Tuple[float, ...] = ()
    slope: float = 0.0
    peaks: Tuple[Tuple[float, float, float], ...] = ()  # (x, y_top, steepness)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.full_like(x, self.base) + self.slope * (x - 0.5)
        for a, f, p in zip(self.amps, self.freqs, self.phases):
            y = y + a * np.sin(2 * np.pi * f * x + p)
        if self.peaks:
            env = np.min([py + s * np.abs(x - px) for px, py, s in self.peaks], axis=0)
            # Peaks only ever raise the ridge (smaller y = higher on screen).
            y = np.minimum(y, env + (y - self.base))
        return y


def _profile(rng, base, amp, nfreq, fmin=1.0, fmax=12.0, slope=0.0, peaks=()):
    """Random sine-sum profile with ~1/f amplitude falloff (rougher at high frequency)."""
    freqs = tuple(float(f) for f in np.sort(rng.uniform(fmin, fmax, nfreq)))
    amps = tuple(float(amp * rng.uniform(0.4, 1.0) * fmin / f) for f in freqs)
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, nfreq))
    return Profile(float(base), amps, freqs, phases, float(slope), tuple(peaks))


@dataclass(frozen=True)
class Blob:
    """A wobbly ellipse: inside if |(dx/rx, dy/ry)| < 1 + sum a_k sin(k theta + phi_k)."""
    cx: float
    cy: float
    rx: float
    ry: float
    wobble: Tuple[Tuple[int, float, float], ...] = ()  # (k, amp, phase)

    def bbox(self):
        m = 1.0 + sum(abs(a) for _, a, _ in self.wobble)
        return self.cx - self.rx * m, self.cy - self.ry * m, self.cx + self.rx * m, self.cy + self.ry * m


def _blob(rng, cx, cy, rx, ry, nwob=3, wamp=0.15):
    ks = rng.choice(np.arange(2, 9), size=nwob, replace=False)
    wob = tuple((int(k), float(rng.uniform(0, wamp)), float(rng.uniform(0, 2 * np.pi))) for k in ks)
    return Blob(float(cx), float(cy), float(rx), float(ry), wob)


@dataclass(frozen=True)
class Tree:
    x: float       # trunk centre
    base: float    # y of the trunk foot
    height: float  # total height (normalised to image height)
    width: float   # crown width (normalised to image width)
    conifer: bool
    crown: Blob    # used for broadleaf crowns


@dataclass(frozen=True)
class Road:
    vx: float        # x of the vanishing end at the horizon
    bottom_x: float  # x of the road centre at the bottom edge
    top_half: float  # half-width at the horizon
    bottom_half: float
    curve: float     # quadratic bend


@dataclass(frozen=True)
class Building:
    x0: float
    x1: float
    top: float
    bottom: float
    roof: float  # >0: gable roof height; 0: flat


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Resolution-independent scene structure.  ``label_map(h, w)`` rasterises it."""
    biome: str
    horizon: float
    ground: int                         # class of the main ground
    foreground: Optional[Tuple[int, Profile]] = None  # (class, boundary) nearer band
    clouds: Tuple[Blob, ...] = ()
    mountain: Optional[Profile] = None
    snowline: Optional[Profile] = None
    far_mountain: Optional[Profile] = None
    hill: Optional[Profile] = None
    treeline: Optional[Profile] = None
    sea_shore: Optional[Profile] = None  # sea between horizon and this curve
    beach: Optional[Profile] = None      # sand between the shore and this curve
    rocks: Tuple[Blob, ...] = ()
    snow_patches: Tuple[Blob, ...] = ()
    road: Optional[Road] = None
    buildings: Tuple[Building, ...] = ()
    trees: Tuple[Tree, ...] = ()

    def label_map(self, h: int, w: int) -> np.ndarray:
        return self.rasterise(h, w)[0]

    def rasterise(self, h: int, w: int, instances: bool = False):
        """(label map, instances or None).  ``instances`` adds the 1-based index (in this
        layout's tuples) of the cloud / building / rock / tree visible at each pixel, 0 where
        none: painted with the same masks as the labels, so the two agree exactly."""
        if h < 1 or w < 1:
            raise ValueError(f"label_map: expected h, w >= 1, got {(h, w)}")
        xs = ((np.arange(w) + 0.5) / w).astype(np.float64)
        ys = ((np.arange(h) + 0.5) / h).astype(np.float64)[:, None]
        lab = np.full((h, w), SKY, np.uint8)
        inst = Instances(*(np.zeros((h, w), np.int16) for _ in range(4))) if instances else None
        get = (lambda name: getattr(inst, name)) if instances else (lambda name: None)

        for i, c in enumerate(self.clouds):  # clouds only ever cover sky; later layers occlude
            _paint_blob(lab, c, CLOUD, xs, ys, only=SKY, inst=get("cloud"), idx=i + 1)
        if self.far_mountain is not None:
            lab[ys >= self.far_mountain(xs)[None, :]] = MOUNTAIN
        if self.mountain is not None:
            m = ys >= self.mountain(xs)[None, :]
            lab[m] = MOUNTAIN
            if self.snowline is not None:
                lab[m & (ys < self.snowline(xs)[None, :])] = SNOW
        if self.hill is not None:
            lab[ys >= self.hill(xs)[None, :]] = HILL
        if self.treeline is not None:
            lab[ys >= self.treeline(xs)[None, :]] = TREE
        for i, b in enumerate(self.buildings):
            _paint_building(lab, b, xs, ys, inst=get("building"), idx=i + 1)

        below = np.broadcast_to(ys >= self.horizon, lab.shape)
        lab[below] = self.ground
        if self.foreground is not None:
            cls, prof = self.foreground
            lab[below & (ys >= prof(xs)[None, :])] = cls
        if self.sea_shore is not None:
            shore = self.sea_shore(xs)[None, :]
            if self.beach is not None:
                lab[below & (ys < self.beach(xs)[None, :])] = SAND
            lab[below & (ys < shore)] = SEA
        for s in self.snow_patches:
            _paint_blob(lab, s, SNOW, xs, ys, only=self.ground)
        for i, r in enumerate(self.rocks):
            _paint_blob(lab, r, ROCK, xs, ys, min_y=self.horizon, inst=get("rock"), idx=i + 1)
        if self.road is not None:
            _paint_road(lab, self.road, self.horizon, xs, ys)
        for i in sorted(range(len(self.trees)), key=lambda i: self.trees[i].base):  # far to near
            _paint_tree(lab, self.trees[i], xs, ys, inst=get("tree"), idx=i + 1)
        if instances:  # later layers (ground, sea, ...) painted over some instances
            for m, cls in ((inst.tree, TREE), (inst.building, BUILDING), (inst.rock, ROCK),
                           (inst.cloud, CLOUD)):
                m[lab != cls] = 0
        return lab, inst


@dataclass
class Instances:
    """Per-pixel 1-based instance index of each kind (0: none); see Layout.rasterise."""
    tree: np.ndarray
    building: np.ndarray
    rock: np.ndarray
    cloud: np.ndarray


def _span(lo, hi, n):
    """Pixel index range [i0, i1) whose centres fall in [lo, hi] of the normalised axis."""
    i0 = max(0, int(math.floor(lo * n - 0.5)))
    i1 = min(n, int(math.ceil(hi * n + 0.5)))
    return i0, i1


def _blob_mask(b: Blob, xs, ys):
    x0, y0, x1, y1 = b.bbox()
    j0, j1 = _span(x0, x1, xs.shape[0])
    i0, i1 = _span(y0, y1, ys.shape[0])
    if j0 >= j1 or i0 >= i1:
        return None
    dx = (xs[None, j0:j1] - b.cx) / b.rx
    dy = (ys[i0:i1] - b.cy) / b.ry
    r2 = dx * dx + dy * dy
    lim = np.ones_like(r2)
    if b.wobble:
        th = np.arctan2(dy, dx)
        for k, a, p in b.wobble:
            lim = lim + a * np.sin(k * th + p)
    return (slice(i0, i1), slice(j0, j1)), r2 < lim * lim


def _paint_blob(lab, b, cls, xs, ys, only=None, min_y=None, inst=None, idx=0):
    res = _blob_mask(b, xs, ys)
    if res is None:
        return
    (si, sj), m = res
    sub = lab[si, sj]
    if only is not None:
        m = m & (sub == only)
    if min_y is not None:
        m = m & (ys[si] >= min_y)
    sub[m] = cls
    if inst is not None:
        inst[si, sj][m] = idx


def _paint_building(lab, b, xs, ys, inst=None, idx=0):
    j0, j1 = _span(b.x0, b.x1, xs.shape[0])
    sel = (xs[j0:j1] >= b.x0) & (xs[j0:j1] <= b.x1)
    top = np.full(j1 - j0, b.top)
    if b.roof > 0:  # gable: top rises linearly to the middle
        mid, half = 0.5 * (b.x0 + b.x1), 0.5 * (b.x1 - b.x0)
        top = b.top - b.roof * (1 - np.abs(xs[j0:j1] - mid) / half)
    m = sel[None, :] & (ys >= top[None, :]) & (ys <= b.bottom)
    lab[:, j0:j1][m] = BUILDING
    if inst is not None:
        inst[:, j0:j1][m] = idx


def _paint_road(lab, r: Road, horizon, xs, ys):
    t = np.clip((ys - horizon) / max(1e-6, 1 - horizon), 0, 1)
    centre = r.vx + (r.bottom_x - r.vx) * t + r.curve * t * (1 - t)
    half = r.top_half + (r.bottom_half - r.top_half) * t
    m = (ys >= horizon) & (np.abs(xs[None, :] - centre) <= half)
    lab[m] = ROAD


def _paint_tree(lab, t: Tree, xs, ys, inst=None, idx=0):
    h, w = lab.shape
    trunk_h = t.height * (0.12 if t.conifer else 0.35)
    crown_bottom = t.base - trunk_h
    tw = max(t.width * 0.09, 0.6 / w)  # keep the trunk at least ~1 px wide
    j0, j1 = _span(t.x - tw, t.x + tw, w)
    i0, i1 = _span(crown_bottom, t.base, h)
    m = (np.abs(xs[None, j0:j1] - t.x) <= tw) & (ys[i0:i1] >= crown_bottom - 0.01) & (ys[i0:i1] <= t.base)
    lab[i0:i1, j0:j1][m] = TREE
    if inst is not None:
        inst[i0:i1, j0:j1][m] = idx
    if t.conifer:
        top = t.base - t.height
        j0, j1 = _span(t.x - t.width / 2, t.x + t.width / 2, w)
        i0, i1 = _span(top, crown_bottom, h)
        dy = (ys[i0:i1] - top) / max(1e-6, crown_bottom - top)  # 0 at tip, 1 at crown bottom
        # Saw-tooth edge gives the layered look of a fir.
        saw = 0.75 + 0.25 * ((dy * 4) % 1.0)
        half = 0.5 * t.width * dy * saw
        m = (np.abs(xs[None, j0:j1] - t.x) <= half) & (dy >= 0) & (dy <= 1)
        lab[i0:i1, j0:j1][m] = TREE
        if inst is not None:
            inst[i0:i1, j0:j1][m] = idx
    else:
        _paint_blob(lab, t.crown, TREE, xs, ys, inst=inst, idx=idx)


def sample_layout(rng: np.random.Generator) -> Layout:
    """Sample a random outdoor layout.  Biomes bias which classes occur, but every optional
    element is also toggled at random so that two layouts rarely share the same class set."""
    biome = str(rng.choice(["coast", "mountains", "countryside", "city", "desert", "snowfield",
                            "lake"], p=[0.18, 0.18, 0.18, 0.14, 0.1, 0.1, 0.12]))
    u = rng.uniform
    horizon = float(u(0.35, 0.68))
    kw = {}

    ground = {"coast": GRASS, "mountains": GRASS, "countryside": GRASS, "city": GRASS,
              "desert": SAND, "snowfield": SNOW, "lake": GRASS}[biome]
    if biome in ("mountains", "countryside") and u() < 0.2:
        ground = ROCK if u() < 0.5 else SNOW
    kw["ground"] = ground

    # clouds: clusters of a few blobs
    clouds = []
    for _ in range(int(rng.integers(0, 6)) if u() < 0.8 else 0):
        cx, cy = u(0, 1), u(0.04, horizon * 0.75)
        sx, sy = u(0.05, 0.18), u(0.02, 0.06)
        for _ in range(int(rng.integers(2, 6))):
            clouds.append(_blob(rng, cx + u(-1, 1) * sx, cy + u(-0.5, 0.5) * sy,
                                sx * u(0.4, 0.9), sy * u(0.6, 1.2), wamp=0.12))
    kw["clouds"] = tuple(clouds)

    p_mount = {"mountains": 1.0, "snowfield": 0.8, "desert": 0.5, "lake": 0.7}.get(biome, 0.3)
    if u() < p_mount:
        top = horizon - u(0.12, min(0.45, horizon - 0.05))
        peaks = tuple((float(u(-0.1, 1.1)), float(top + u(0, 0.12)), float(u(0.5, 2.5)))
                      for _ in range(int(rng.integers(1, 5))))
        kw["mountain"] = _profile(rng, horizon - u(0.0, 0.08), 0.03, 6, 2, 30, peaks=peaks)
        if u() < (0.9 if biome in ("snowfield", "mountains") else 0.35):
            kw["snowline"] = _profile(rng, top + u(0.04, 0.15), 0.015, 4, 3, 25)
        if u() < 0.4:
            fpeaks = tuple((float(u(0, 1)), float(top - u(0, 0.06)), float(u(0.6, 1.5)))
                           for _ in range(int(rng.integers(1, 3))))
            kw["far_mountain"] = _profile(rng, horizon - 0.05, 0.02, 4, 2, 20, peaks=fpeaks)
    p_hill = {"countryside": 0.85, "lake": 0.5, "city": 0.2}.get(biome, 0.35)
    if u() < p_hill:
        kw["hill"] = _profile(rng, horizon - u(0.04, 0.16), 0.05, 3, 0.5, 3, slope=u(-0.1, 0.1))
    if u() < {"countryside": 0.6, "lake": 0.6, "mountains": 0.4}.get(biome, 0.1) and ground != SAND:
        # a distant forest edge: sharp bumps just above the horizon
        kw["treeline"] = _profile(rng, horizon - u(0.015, 0.05), 0.012, 5, 15, 60)

    if biome in ("coast", "lake") or (biome == "desert" and u() < 0.3):
        depth = u(0.05, 0.3) * (1 - horizon)
        slope = u(-1, 1) * (1 - horizon) * (0.6 if biome == "coast" else 0.3)
        kw["sea_shore"] = _profile(rng, horizon + depth + abs(slope) / 2, 0.02, 3, 1, 6, slope=slope)
        if u() < (0.85 if biome == "coast" else 0.4):
            kw["beach"] = _profile(rng, horizon + depth + abs(slope) / 2 + u(0.04, 0.15), 0.02,
                                   3, 1, 6, slope=slope)
    if u() < 0.35:
        cls = int(rng.choice([GRASS, SAND, ROCK, SNOW]))
        if cls != ground:
            kw["foreground"] = (cls, _profile(rng, horizon + u(0.3, 0.8) * (1 - horizon), 0.04,
                                              3, 0.5, 4, slope=u(-0.3, 0.3)))
    if ground in (GRASS, ROCK) and u() < 0.25:
        kw["snow_patches"] = tuple(
            _blob(rng, u(0, 1), u(horizon, 1), u(0.04, 0.15), u(0.01, 0.05)) for _ in range(int(rng.integers(1, 5))))
    rocks = []
    for _ in range(int(rng.integers(0, 5)) if u() < {"desert": 0.8, "mountains": 0.7}.get(biome, 0.35) else 0):
        y = u(horizon + 0.02, 1.0)
        s = (y - horizon + 0.02) / (1 - horizon)  # nearer rocks are bigger
        rocks.append(_blob(rng, u(0, 1), y, s * u(0.03, 0.12), s * u(0.02, 0.07), wamp=0.2))
    kw["rocks"] = tuple(rocks)

    if u() < {"city": 0.95, "countryside": 0.45, "desert": 0.35}.get(biome, 0.2):
        vx = u(0.2, 0.8)
        kw["road"] = Road(float(vx), float(vx + u(-0.35, 0.35)), float(u(0.003, 0.02)),
                          float(u(0.2, 0.5)), float(u(-0.2, 0.2)))

    buildings = []
    if biome == "city":
        x = u(-0.05, 0.1)
        while x < 1.0:
            wdt = u(0.05, 0.2)
            if u() < 0.85:
                buildings.append(Building(float(x), float(x + wdt), float(horizon - u(0.08, horizon * 0.85)),
                                          float(horizon + u(0.0, 0.03)), float(u(0, 0.05)) if u() < 0.2 else 0.0))
            x += wdt + (u(0, 0.04) if u() < 0.6 else u(0.05, 0.2))
    elif u() < 0.25:
        for _ in range(int(rng.integers(1, 4))):
            x0, wdt = u(0, 0.9), u(0.04, 0.12)
            buildings.append(Building(float(x0), float(x0 + wdt), float(horizon - u(0.04, 0.12)),
                                      float(horizon + u(0.0, 0.02)), float(u(0.02, 0.06)) if u() < 0.7 else 0.0))
    kw["buildings"] = tuple(buildings)

    trees = []
    p_tree = {"countryside": 0.85, "lake": 0.7, "mountains": 0.6, "city": 0.5, "coast": 0.35,
              "snowfield": 0.4, "desert": 0.08}[biome]
    if u() < p_tree:
        conifer_p = {"mountains": 0.8, "snowfield": 0.9}.get(biome, 0.3)
        for _ in range(int(rng.integers(1, 12))):
            base = u(horizon + 0.01, 1.05)
            s = (base - horizon) / (1 - horizon)  # perspective: near trees are larger
            height = (0.08 + 0.55 * s) * u(0.6, 1.3)
            width = height * (u(0.35, 0.55) if u() < conifer_p else u(0.6, 1.0))
            conifer = bool(width < height * 0.58)
            x = u(-0.05, 1.05)
            crown_h = height * 0.72
            crown = _blob(rng, x, base - height + crown_h / 2, width / 2, crown_h / 2, nwob=4, wamp=0.12)
            trees.append(Tree(float(x), float(base), float(height), float(width), conifer, crown))
    kw["trees"] = tuple(trees)
    return Layout(biome=biome, horizon=horizon, **kw)


# --------------------------------------------------------------------------- style
TIMES = ("day", "sunset", "dusk", "night")
SEASONS = ("spring", "summer", "autumn", "winter")

# Class base-colour palettes (RGB in [0, 1]); one entry is drawn then jittered.
_PALETTES = {
    CLOUD: [(0.97, 0.97, 0.98), (0.85, 0.86, 0.9), (0.7, 0.72, 0.78)],
    MOUNTAIN: [(0.42, 0.42, 0.48), (0.5, 0.45, 0.4), (0.35, 0.38, 0.45), (0.55, 0.42, 0.35)],
    ROCK: [(0.45, 0.43, 0.4), (0.55, 0.5, 0.45), (0.35, 0.34, 0.36), (0.6, 0.45, 0.35)],
    SAND: [(0.87, 0.78, 0.58), (0.8, 0.66, 0.45), (0.92, 0.85, 0.7), (0.75, 0.55, 0.35)],
    SEA: [(0.1, 0.3, 0.5), (0.05, 0.4, 0.5), (0.15, 0.25, 0.4), (0.1, 0.45, 0.6)],
    SNOW: [(0.95, 0.96, 0.98), (0.9, 0.93, 0.98), (0.96, 0.95, 0.92)],
    ROAD: [(0.3, 0.3, 0.32), (0.4, 0.39, 0.37), (0.55, 0.48, 0.4)],
    BUILDING: [(0.7, 0.65, 0.58), (0.55, 0.5, 0.5), (0.8, 0.75, 0.7), (0.6, 0.35, 0.3),
               (0.45, 0.5, 0.55)],
}
_ROOFS = [(0.55, 0.2, 0.15), (0.3, 0.3, 0.33), (0.45, 0.3, 0.22), (0.25, 0.35, 0.3)]
_VEGETATION = {  # season -> (tree, grass, hill) palettes
    "spring": ([(0.3, 0.55, 0.2), (0.4, 0.6, 0.25)], [(0.45, 0.7, 0.3), (0.5, 0.75, 0.35)],
               [(0.4, 0.6, 0.3)]),
    "summer": ([(0.13, 0.35, 0.12), (0.18, 0.42, 0.15)], [(0.3, 0.55, 0.2), (0.4, 0.6, 0.2)],
               [(0.3, 0.5, 0.22), (0.35, 0.45, 0.2)]),
    "autumn": ([(0.75, 0.4, 0.1), (0.65, 0.25, 0.1), (0.8, 0.6, 0.15)],
               [(0.6, 0.55, 0.3), (0.55, 0.45, 0.25)], [(0.55, 0.4, 0.2), (0.6, 0.5, 0.25)]),
    "winter": ([(0.25, 0.3, 0.25), (0.35, 0.3, 0.25)], [(0.55, 0.53, 0.45), (0.5, 0.5, 0.4)],
               [(0.5, 0.48, 0.42)]),
}
_SKY = {  # time -> list of (zenith, horizon) colours; the last "day" entry is overcast
    "day": [((0.2, 0.42, 0.8), (0.65, 0.8, 0.95)), ((0.3, 0.5, 0.85), (0.8, 0.87, 0.95)),
            ((0.45, 0.55, 0.7), (0.75, 0.78, 0.8))],
    "sunset": [((0.25, 0.3, 0.6), (1.0, 0.6, 0.3)), ((0.4, 0.3, 0.55), (1.0, 0.5, 0.35)),
               ((0.3, 0.4, 0.7), (1.0, 0.75, 0.4))],
    "dusk": [((0.12, 0.12, 0.3), (0.6, 0.4, 0.55)), ((0.1, 0.15, 0.35), (0.5, 0.45, 0.6))],
    "night": [((0.02, 0.04, 0.12), (0.15, 0.18, 0.32)), ((0.03, 0.03, 0.08), (0.2, 0.2, 0.28))],
}
# time -> (ambient sky-light colour, direct light colour, direct share range, sun elevation
# range, exposure range).  The direct light is the sun (the moon at night); a low sun gives
# strong sunlit/shaded sides and long shadows.
_LIGHT = {
    "day": ((0.72, 0.82, 1.05), (1.15, 1.07, 0.94), (0.55, 0.8), (0.3, 0.95), (1.0, 1.12)),
    "sunset": ((0.72, 0.66, 0.85), (1.45, 0.9, 0.52), (0.55, 0.8), (0.03, 0.2), (0.8, 0.95)),
    "dusk": ((0.72, 0.66, 0.95), (1.0, 0.65, 0.65), (0.15, 0.35), (0.0, 0.1), (0.6, 0.75)),
    "night": ((0.5, 0.6, 0.95), (0.75, 0.85, 1.1), (0.1, 0.3), (0.3, 0.8), (0.38, 0.52)),
}


@dataclass(frozen=True)
class Style:
    """Appearance of a scene, independent of its layout: colours, light and texture.  Every
    effect that depends on where things are (lit sides, shadows, gradients, wave bands) is
    computed by ``render`` from these numbers and the layout, so it transfers across scenes."""
    seed: int                     # seeds all texture noise and instance colours in ``render``
    time: str
    season: str
    colors: np.ndarray            # (NUM_CLASSES, 3) base colours in [0, 1]
    sky_top: np.ndarray           # (3,)
    sky_horizon: np.ndarray       # (3,)
    tint: np.ndarray              # (3,) ambient (sky) light colour: lights shaded surfaces
    brightness: float             # exposure of everything but the sky dome
    haze: float                   # how much distance fades things into the horizon colour
    tex_amp: np.ndarray           # (NUM_CLASSES,) noise texture contrast
    tex_freq: np.ndarray          # (NUM_CLASSES,) in [0, 1]: 0 coarse blotches, 1 fine grain
    sun_x: float                  # sun position in the sky, normalised x: light comes from there
    window_grid: Tuple[float, float]  # building window rows/cols per unit of image size
    sun_elev: float = 0.6         # 0: on the horizon (long shadows), 1: overhead
    sun_color: np.ndarray = field(default_factory=lambda: np.ones(3))  # (3,) direct light
    sun_share: float = 0.5        # share of direct light in the total (0: overcast)
    near_shade: float = 0.2       # ground darkening toward the viewer
    near_warm: float = 0.0        # ground warming toward the viewer (red up, blue down)
    instance_jitter: float = 0.0  # colour spread of tree / building / rock instances
    stripes: Tuple[float, float, float] = (0.0, 3.0, 0.0)  # grass (amplitude, freq, angle)
    ripples: Tuple[float, float] = (0.0, 1.0)   # sand ripples (amplitude, frequency)
    waves: Tuple[float, float] = (0.0, 0.5)     # sea wave bands (amplitude, frequency)
    strata: Tuple[float, float, float] = (0.0, 10.0, 0.0)  # rock/mountain (amp, freq, tilt)
    courses: float = 0.0          # building floor bands (amplitude)
    snow_alt: float = 2.0         # mountain snow caps above this share of the sky height
    roof_color: np.ndarray = field(default_factory=lambda: np.full(3, 0.4))  # gable roofs
    road_mark: float = 0.0        # brightness of the road's centre dashes (0: none)

    def __eq__(self, other):  # ndarray fields break the dataclass __eq__
        if not isinstance(other, Style):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f))
                   for f in self.__dataclass_fields__)

    __hash__ = None


def untextured(style: Style) -> Style:
    """``style`` with every texture amplitude zero (noise, stripes, ripples, waves, strata,
    floor bands); light, gradients, shadows and instance colours are kept.  Rendering a
    layout in it gives the predictable part of the scene (the baselines' oracle)."""
    return replace(style, tex_amp=np.zeros_like(style.tex_amp), stripes=(0.0,) + style.stripes[1:],
                   ripples=(0.0, style.ripples[1]), waves=(0.0, style.waves[1]),
                   strata=(0.0,) + style.strata[1:], courses=0.0)


def _pick(rng, pal, jitter=0.025):
    # Mostly a brightness jitter; the per-channel part stays small so greys stay grey.
    c = np.asarray(pal[int(rng.integers(len(pal)))], np.float64)
    return np.clip(c * rng.uniform(0.85, 1.15) + rng.normal(0, jitter, 3), 0, 1)


def sample_style(rng: np.random.Generator) -> Style:
    time = str(rng.choice(TIMES, p=[0.55, 0.2, 0.13, 0.12]))
    season = str(rng.choice(SEASONS))
    colors = np.zeros((NUM_CLASSES, 3))
    for c, pal in _PALETTES.items():
        colors[c] = _pick(rng, pal)
    tree, grass, hill = _VEGETATION[season]
    colors[TREE] = _pick(rng, tree)
    colors[GRASS] = _pick(rng, grass)
    colors[HILL] = _pick(rng, hill)
    sky_i = int(rng.integers(len(_SKY[time])))
    zen, hor = _SKY[time][sky_i]
    sky_top = np.clip(np.asarray(zen) + rng.normal(0, 0.04, 3), 0, 1)
    sky_hor = np.clip(np.asarray(hor) + rng.normal(0, 0.04, 3), 0, 1)
    colors[SKY] = sky_hor
    if time in ("sunset", "dusk"):  # clouds catch the warm light
        colors[CLOUD] = 0.5 * colors[CLOUD] + 0.5 * sky_hor * 1.1
    amb, sun, share, elev, expo = _LIGHT[time]
    sun_share = float(rng.uniform(*share))
    if time == "day" and sky_i == len(_SKY["day"]) - 1:  # overcast: little direct light
        sun_share *= 0.35
    tex_amp = np.array([0.03, 0.12, 0.18, 0.15, 0.3, 0.2, 0.12, 0.15, 0.06, 0.3, 0.08, 0.12])
    tex_amp = tex_amp * rng.uniform(0.6, 1.6, NUM_CLASSES)
    tex_freq = np.clip(np.array([0.1, 0.3, 0.5, 0.4, 0.85, 0.75, 0.6, 0.7, 0.4, 0.6, 0.9, 0.5])
                       + rng.normal(0, 0.15, NUM_CLASSES), 0, 1)
    # A snow line on the mountains: low in winter, sometimes high otherwise, often none.
    snow_alt = (float(rng.uniform(0.15, 0.55)) if season == "winter" else
                float(rng.uniform(0.45, 0.85)) if rng.uniform() < 0.3 else 2.0)
    return Style(seed=int(rng.integers(2 ** 31)), time=time, season=season, colors=colors,
                 sky_top=sky_top, sky_horizon=sky_hor,
                 tint=np.clip(np.asarray(amb) + rng.normal(0, 0.03, 3), 0.1, 1.3),
                 brightness=float(rng.uniform(*expo)), haze=float(rng.uniform(0.2, 0.6)),
                 tex_amp=tex_amp, tex_freq=tex_freq, sun_x=float(rng.uniform(0.05, 0.95)),
                 window_grid=(float(rng.uniform(20, 45)), float(rng.uniform(25, 60))),
                 sun_elev=float(rng.uniform(*elev)),
                 sun_color=np.clip(np.asarray(sun) + rng.normal(0, 0.04, 3), 0.1, 1.6),
                 sun_share=sun_share, near_shade=float(rng.uniform(0.25, 0.6)),
                 near_warm=float(rng.uniform(-0.05, 0.2)),
                 instance_jitter=float(rng.uniform(0.03, 0.08)),
                 stripes=(float(rng.uniform(0.04, 0.18)) if rng.uniform() < 0.6 else 0.0,
                          float(rng.uniform(1.5, 5.0)), float(rng.uniform(-0.5, 0.5) * np.pi)),
                 ripples=(float(rng.uniform(0.03, 0.12)), float(rng.uniform(0.6, 2.0))),
                 waves=(float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.4, 1.5))),
                 strata=(float(rng.uniform(0.05, 0.2)), float(rng.uniform(6.0, 16.0)),
                         float(rng.uniform(-0.6, 0.6))),
                 courses=float(rng.uniform(0.0, 0.15)), snow_alt=snow_alt,
                 roof_color=_pick(rng, _ROOFS),
                 road_mark=float(rng.uniform(0.3, 0.8)) if rng.uniform() < 0.7 else 0.0)


# --------------------------------------------------------------------------- rendering
@lru_cache(maxsize=64)
def _interp_coeffs(n_out: int, cells: int, nodes: bool = False):
    """Lattice index and smoothstep weight of each of n_out samples on a lattice of ``cells``
    cells: pixel centres by default, or, with ``nodes``, the nodes of a finer lattice."""
    if nodes:
        t = np.arange(n_out) / (n_out - 1) * cells
    else:
        t = (np.arange(n_out) + 0.5) / n_out * cells
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = (f * f * (3 - 2 * f)).astype(np.float32)
    i.setflags(write=False)  # cached and shared between calls
    f.setflags(write=False)
    return i, f


def _resample(g: np.ndarray, ny: int, nx: int, nodes: bool = False) -> np.ndarray:
    """Separable smoothstep interpolation of lattice ``g`` to (ny, nx) samples.  Gathers, not
    matmuls: each output touches two lattice values per axis, and BLAS threading costs more
    than it saves on a shared machine."""
    iy, fy = _interp_coeffs(ny, g.shape[0] - 1, nodes)
    ix, fx = _interp_coeffs(nx, g.shape[1] - 1, nodes)
    rows = g[iy] * (1 - fy)[:, None] + g[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _fbm(rng, h, w, cy, cx, octaves=3):
    """Fractal value noise, roughly in [-1, 1].  The octaves are summed on the finest lattice
    (coarse lattices interpolated onto its nodes, cheap) and only that lattice is resampled to
    pixels, so the per-pixel cost does not grow with the octave count.  Lattice sizes depend
    only on (cy, cx), never on (h, w): the pattern is resolution independent."""
    fy, fx = cy * 2 ** (octaves - 1), cx * 2 ** (octaves - 1)
    lat = np.zeros((fy + 1, fx + 1), np.float32)
    amp, tot = 1.0, 0.0
    for _ in range(octaves):
        g = rng.uniform(-1, 1, (cy + 1, cx + 1)).astype(np.float32)
        lat += amp * (g if cy == fy else _resample(g, fy + 1, fx + 1, nodes=True))
        tot += amp
        amp *= 0.5
        cy, cx = cy * 2, cx * 2
    return _resample(lat / tot, h, w)


def _table(values, ids):
    """Per-pixel lookup of a per-instance value (index 0: no instance)."""
    return np.asarray([0.0] + list(values), np.float32)[ids]


def _ridge_facing(prof: Profile, xs: np.ndarray, gain: float) -> np.ndarray:
    """Horizontal facing in [-1, 1] of the slope under each column of a ridge: +1 faces right
    (the ridge descends to the right; y grows downward).  From the continuous profile, so it
    does not depend on the resolution."""
    e = 0.004
    return np.tanh(gain * (prof(xs + e) - prof(xs - e)) / (2 * e)).astype(np.float32)


def _ellipse(shadow, cx, cy, rx, ry, xs, ys):
    """shadow = max(shadow, soft ellipse) inside the ellipse's bounding box."""
    h, w = shadow.shape
    j0, j1 = _span(cx - rx, cx + rx, w)
    i0, i1 = _span(cy - ry, cy + ry, h)
    if j0 >= j1 or i0 >= i1:
        return
    r2 = ((xs[:, j0:j1] - cx) / rx) ** 2 + ((ys[i0:i1] - cy) / ry) ** 2
    np.maximum(shadow[i0:i1, j0:j1], np.clip((1 - r2) * 3, 0, 1), out=shadow[i0:i1, j0:j1])


def _cast_shadows(layout: Layout, style: Style, side: float, reach: float, h, w, xs, ys):
    """(h, w) in [0, 1]: shadows cast on the ground by trees, buildings and rocks, on the side
    away from the sun, longer when the sun is low.  ``side``: +1 sun on the right."""
    shadow = np.zeros((h, w), np.float32)
    if reach <= 0:
        return shadow
    for t in layout.trees:
        length = t.height * reach
        _ellipse(shadow, t.x - side * length / 2, t.base - 0.003, length / 2 + t.width * 0.25,
                 max(0.004, 0.07 * t.height), xs, ys)
    for b in layout.buildings:
        length = (b.bottom - b.top) * reach
        edge = b.x0 if side > 0 else b.x1
        _ellipse(shadow, edge - side * length / 2, b.bottom, length / 2 + 0.02,
                 max(0.004, 0.04 * (b.bottom - b.top)), xs, ys)
    for r in layout.rocks:
        _ellipse(shadow, r.cx - side * r.rx * (0.5 + reach), r.cy + 0.5 * r.ry,
                 r.rx * (1 + reach * 0.6), r.ry * 0.6, xs, ys)
    return shadow


def _jitter(style: Style, kind: int, n: int) -> np.ndarray:
    """(n + 1, 3) albedo multipliers of instances 1..n of one kind (row 0: none).  Keyed by
    (style seed, kind, instance index) only, so render stays a pure function."""
    if n == 0:
        return np.ones((1, 3), np.float32)
    r = np.random.default_rng((style.seed, 17, kind)).normal(0, 1, (n, 4))
    j = 1 + style.instance_jitter * (0.7 * r[:, :1] + 0.35 * r[:, 1:])
    return np.concatenate([np.ones((1, 3)), j]).astype(np.float32)


_GROUND_LIKE = np.zeros(NUM_CLASSES, bool)
_GROUND_LIKE[[GRASS, SAND, SNOW, ROCK, ROAD]] = True


def render(layout: Layout, style: Style, h: int, w: int) -> np.ndarray:
    """Image (h, w, 3) uint8 of ``layout`` painted in ``style``.  Pure and deterministic.

    albedo (class colour x noise x structured texture x instance jitter) x light, where light
    = exposure x (ambient x (1 - sun share) + sun colour x sun share x direct), and ``direct``
    carries the sun direction: sunlit and shaded sides of trees, rocks, buildings and mountain
    slopes, a horizontal gradient across the ground, cast shadows.  Then haze with distance,
    the sky dome, clouds, the sea's reflection and glitter, lit windows at night."""
    lab, inst = layout.rasterise(h, w, instances=True)
    rng = np.random.default_rng(style.seed)  # texture noise comes from the style only
    coarse = _fbm(rng, h, w, 3, 3)
    fine = _fbm(rng, h, w, 24, 24)
    streak = _fbm(rng, h, w, 40, 3, octaves=2)  # horizontal streaks for water and clouds
    xs1 = (np.arange(w) + 0.5) / w
    ys = ((np.arange(h) + 0.5) / h).astype(np.float32)[:, None]
    xs = xs1.astype(np.float32)[None, :]
    hz = max(layout.horizon, 0.05)
    below = ys >= layout.horizon
    # ground-plane coordinates: dz in (0, 1] from the horizon to the bottom edge, and the
    # distance-like Z = 1/dz, so bands evenly spaced on the ground narrow toward the horizon
    dz = np.clip((ys - layout.horizon) / max(1e-3, 1 - layout.horizon), 0.0, 1.0)
    zz = 1.0 / np.maximum(dz, 0.02)
    near = np.clip((dz - 0.03) * 5, 0, 1)  # fades plane textures out before they alias

    # --- albedo: class colour, noise texture, structured textures, instance jitter
    f = style.tex_freq.astype(np.float32)[lab]
    tex = ((1 - f) * coarse + f * fine) * style.tex_amp.astype(np.float32)[lab]
    water = lab == SEA
    tex = np.where(water, style.tex_amp[SEA] * (0.4 * streak + 0.6 * fine), tex)
    amp, freq, ang = style.stripes
    if amp > 0 and (lab == GRASS).any():  # mown stripes on the ground plane
        u = (xs - 0.5) * zz * math.cos(ang) + zz * math.sin(ang) * 0.5
        tex = np.where(lab == GRASS, tex + amp * near * np.tanh(3 * np.sin(2 * np.pi * freq * u)), tex)
    amp, freq = style.ripples
    if amp > 0 and (lab == SAND).any():  # wind ripples parallel to the horizon
        tex = np.where(lab == SAND, tex + amp * near * np.sin(2 * np.pi * freq * zz + 2 * fine), tex)
    amp, freq = style.waves
    if amp > 0 and water.any():  # wave bands, evenly spaced on the water, so narrowing
        tex = np.where(water, tex + amp * near * np.sin(2 * np.pi * freq * zz + 1.5 * streak), tex)
    amp, freq, tilt = style.strata
    rocky = (lab == ROCK) | (lab == MOUNTAIN)
    if amp > 0 and rocky.any():
        tex = np.where(rocky, tex + amp * np.sin(2 * np.pi * freq * (ys + tilt * (xs - 0.5)) + 2 * coarse), tex)
    bld = lab == BUILDING
    if style.courses > 0 and bld.any():  # floor bands in step with the window rows
        tex = np.where(bld, tex - style.courses * (np.sin(2 * np.pi * style.window_grid[0] * ys) > 0.5), tex)
    img = style.colors.astype(np.float32)[lab] * (1 + tex)[..., None]
    for kind, (ids, items) in enumerate(((inst.tree, layout.trees), (inst.building, layout.buildings),
                                         (inst.rock, layout.rocks))):
        if items:
            m = ids > 0
            img[m] *= _jitter(style, kind, len(items))[ids[m]]

    # mountain snow caps: above the style's snow line (a share of the sky height), ragged edge
    alt = (layout.horizon - ys) / hz
    cap = (lab == MOUNTAIN) & (alt + 0.06 * fine + 0.03 * coarse > style.snow_alt)
    if cap.any():
        img[cap] = (style.colors[SNOW].astype(np.float32) * (1 + 0.5 * style.tex_amp[SNOW] * fine)[..., None])[cap]

    # gable roofs take the roof colour
    roof = np.zeros((h, w), bool)
    if bld.any():
        top = _table([b.top for b in layout.buildings], inst.building)
        roof = bld & (ys < top) & (_table([b.roof for b in layout.buildings], inst.building) > 0)
        img[roof] = (style.roof_color.astype(np.float32) * (1 + 0.5 * tex)[..., None])[roof]

    # --- direct light: the sun's horizontal reach ``sdir`` (signed: + from the right) grows as
    # the sun goes down; flat ground gets less direct light when the sun is low
    side = 1.0 if style.sun_x >= 0.5 else -1.0
    low = 1.0 - style.sun_elev
    sdir = float(np.clip((style.sun_x - 0.5) * 3, -1, 1)) * (0.35 + 0.65 * low)
    flat = 0.45 + 0.55 * style.sun_elev
    direct = np.broadcast_to(flat * (1 + 0.8 * sdir * (xs - 0.5) * 2), (h, w)).copy()

    def vertical(face):  # direct light on a surface whose horizontal facing is ``face``
        return np.clip(0.6 + 0.85 * face * sdir, 0.08, 1.6)

    face = np.zeros((h, w), np.float32)
    slopes = ((layout.far_mountain, (MOUNTAIN, SNOW), 0.6, 1.5), (layout.mountain, (MOUNTAIN, SNOW), 1.0, 1.5),
              (layout.hill, (HILL,), 0.8, 4.0), (layout.treeline, (TREE,), 0.4, 0.5))
    for prof, classes, weight, gain in slopes:  # later (nearer) ridges override
        if prof is None:
            continue
        ridge = prof(xs1).astype(np.float32)[None, :]
        m = (ys >= ridge) & np.isin(lab, classes) & ~below
        if classes == (TREE,):
            m &= inst.tree == 0
        fc = weight * _ridge_facing(prof, xs1, gain)[None, :] * np.exp(-(ys - ridge) / 0.3)
        face = np.where(m, fc, face)
    ridged = (face != 0)
    trees = inst.tree > 0
    if trees.any():
        tx = _table([t.x for t in layout.trees], inst.tree)
        tw = _table([t.width for t in layout.trees], inst.tree)
        face = np.where(trees, np.clip((xs - tx) / np.maximum(tw * 0.5, 1e-3), -1, 1), face)
    rocks = inst.rock > 0
    if rocks.any():
        rx = _table([r.cx for r in layout.rocks], inst.rock)
        rr = _table([r.rx for r in layout.rocks], inst.rock)
        face = np.where(rocks, np.clip((xs - rx) / np.maximum(rr, 1e-3), -1, 1), face)
    if bld.any():  # the side wall seen beside the facade is the one toward the image centre
        x0 = _table([b.x0 for b in layout.buildings], inst.building)
        x1 = _table([b.x1 for b in layout.buildings], inst.building)
        cx = 0.5 * (x0 + x1)
        wall = np.where(cx < 0.5, 1.0, -1.0).astype(np.float32)
        share = 0.2 + 0.5 * np.abs(cx - 0.5)
        on_wall = bld & ~roof & np.where(wall > 0, xs > x1 - share * (x1 - x0), xs < x0 + share * (x1 - x0))
        face = np.where(on_wall, wall, face)
        direct = np.where(bld & ~on_wall, flat * 0.5 + 0.45, direct)  # facades face the viewer
    objects = ridged | trees | rocks | (bld & (face != 0))
    direct = np.where(objects, vertical(face), direct)
    if trees.any():  # self-shadowing: crowns darker toward the bottom, fir tiers
        base = _table([t.base for t in layout.trees], inst.tree)
        height = _table([t.height for t in layout.trees], inst.tree)
        rel = np.clip((base - ys) / np.maximum(height, 1e-3), 0, 1)  # 0 at the foot, 1 at the tip
        conifer = _table([float(t.conifer) for t in layout.trees], inst.tree) > 0
        tier = np.where(conifer, ((1 - rel) * 4 / 0.88) % 1.0, 0.5)
        direct = np.where(trees, direct * (0.7 + 0.3 * rel) * (1.1 - 0.3 * tier), direct)
    ground = below & _GROUND_LIKE[lab]
    shadow = _cast_shadows(layout, style, side, (0.3 + 2.2 * low ** 2) * min(1.0, abs(sdir) * 2 + 0.15),
                           h, w, xs, ys)
    direct = np.where(ground, direct * (1 - 0.85 * shadow), direct)

    light = (style.tint.astype(np.float32) * (1 - style.sun_share)
             + style.sun_color.astype(np.float32) * style.sun_share * direct[..., None])
    img *= light * np.float32(style.brightness)

    # Below, the effects that touch few pixels work on those pixels' indices only (speed).
    # ground: darker (and warmer) toward the viewer
    g = below & ~water
    near_mult = (1 - style.near_shade * dz[..., None]
                 + style.near_warm * 0.3 * dz[..., None] * np.array([1.0, 0.2, -1.0], np.float32))
    gi = np.nonzero(g)
    img[gi] *= near_mult[gi[0], 0]

    # --- water: the sky's reflection (stronger toward the horizon) and the sun's glitter path
    hor = style.sky_horizon.astype(np.float32)
    if water.any():
        wi = np.nonzero(water)
        wy, wx, wdz, wzz = ys[wi[0], 0], xs[0, wi[1]], dz[wi[0], 0], zz[wi[0], 0]
        refl = (np.clip(1 - (wy - layout.horizon) * 2, 0, 1) * 0.5)[:, None]
        glint = np.exp(-((wx - style.sun_x) / (0.02 + 0.1 * wdz)) ** 2) * (0.5 + 0.5 * np.sin(
            2 * np.pi * style.waves[1] * wzz * 2 + 2 * streak[wi])) * style.sun_share * (0.4 + 0.6 * low)
        img[wi] = (img[wi] * (1 - refl) + refl * hor
                   + glint[:, None] * style.sun_color.astype(np.float32) * 0.5 * style.brightness)

    # --- aerial perspective: distant things fade into the horizon colour
    for cls, amount in ((MOUNTAIN, style.haze), (SNOW, style.haze * 0.6), (HILL, style.haze * 0.45)):
        mi = np.nonzero((lab == cls) & ~below)
        if mi[0].size:  # higher up the mountain (smaller y) means farther away: fade more
            k = (amount * (0.7 + 0.3 * (1 - ys[mi[0], 0] / hz)))[:, None]
            img[mi] = img[mi] * (1 - k) + k * hor
    far = np.broadcast_to(style.haze * 0.6 * (1 - dz) ** 4, (h, w))  # ground near the horizon
    if trees.any():  # trees by the distance of their foot
        tdz = np.clip((base - layout.horizon) / max(1e-3, 1 - layout.horizon), 0, 1)
        far = np.where(trees, style.haze * 0.5 * (1 - tdz) ** 4, far)
    fi = np.nonzero(g | trees | bld)
    k = far[fi][:, None]
    img[fi] = img[fi] * (1 - k) + k * hor

    # --- lit windows at night, dark glass by day
    if bld.any():
        ry, rx = style.window_grid
        win = (((ys * ry) % 1.0) > 0.45) & (((xs * rx) % 1.0) > 0.4) & bld & ~roof
        if style.time in ("dusk", "night"):
            lit = win & (coarse + fine * 0.5 > -0.1)
            img[lit] = np.array([1.0, 0.85, 0.45], np.float32) * 2.5  # survives the dim light
            img[win & ~lit] *= 0.4
        else:
            img[win] = img[win] * 0.45 + 0.15 * style.sky_horizon.astype(np.float32) * style.brightness
    if style.road_mark > 0 and (lab == ROAD).any():  # dashed centre line, dashes even on the road
        r = layout.road
        t = dz
        centre = r.vx + (r.bottom_x - r.vx) * t + r.curve * t * (1 - t)
        half = r.top_half + (r.bottom_half - r.top_half) * t
        dash = (np.abs(xs - centre) < half * 0.06) & (np.sin(2 * np.pi * 0.8 * zz) > 0) & (lab == ROAD)
        dash &= dz > 0.05
        img[dash] = img[dash] * (1 - style.road_mark) + style.road_mark * 0.85 * light[dash] * style.brightness

    # --- sky: gradient zenith -> horizon, the sun's glow (and disc), stars at night; computed
    # on the rows down to the lowest sky or cloud pixel only
    is_sky, cloud = lab == SKY, lab == CLOUD
    rows = np.nonzero((is_sky | cloud).any(axis=1))[0]
    if rows.size:
        r1 = int(rows[-1]) + 1
        sy_, coarse_, fine_, streak_ = ys[:r1], coarse[:r1], fine[:r1], streak[:r1]
        t = np.clip(sy_ / hz, 0, 1) ** 0.8
        sky = (1 - t)[..., None] * style.sky_top.astype(np.float32) + t[..., None] * hor
        # the sky is brighter on the sun's side, most near the horizon
        toward = np.clip(0.5 + (xs - 0.5) * np.sign(sdir), 0, 1) * abs(sdir) * t
        sky = sky * (0.75 + 0.5 * toward)[..., None]
        sun_y = hz * (1 - 0.9 * style.sun_elev)
        d = np.sqrt(((xs - style.sun_x) * 1.5) ** 2 + (sy_ - sun_y) ** 2)
        if style.time in ("sunset", "dusk"):
            sky += (np.exp(-d * 6)[..., None] * np.array([0.35, 0.2, 0.05], np.float32))
        elif style.time == "day":
            sky += (np.exp(-d * 10)[..., None] * np.float32(0.25 * style.sun_share)
                    * style.sun_color.astype(np.float32))
        if style.time == "night":  # stars: fixed normalised positions, one pixel each
            sy, sx = rng.uniform(0, 1, 120), rng.uniform(0, 1, 120)
            iy = np.minimum((sy * hz * h).astype(np.int64), h - 1)
            ix = np.minimum((sx * w).astype(np.int64), w - 1)
            gain = (0.35 + 0.5 * rng.uniform(0, 1, 120) * (1 - sy))[:, None].astype(np.float32)
            keep = iy < r1
            sky[iy[keep], ix[keep]] += gain[keep]
        sky *= (1 + style.tex_amp[SKY] * coarse_)[..., None]
        top = img[:r1]
        m = is_sky[:r1]
        top[m] = sky[m]
        m = cloud[:r1]
        if m.any():  # clouds: brighter on top and toward the sun, take the sky colour beneath
            cx = _table([c.cx for c in layout.clouds], inst.cloud[:r1])
            crx = _table([c.rx for c in layout.clouds], inst.cloud[:r1])
            lit_side = np.clip((xs - cx) / np.maximum(crx, 1e-3), -1, 1) * sdir
            shade = np.clip(1.1 - 0.25 * (streak_ + 1) - 0.2 * fine_ + 0.25 * lit_side, 0.5, 1.3)
            # clouds are lit like the ground but less (they scatter sky light): sqrt of the light
            lum = np.sqrt((style.tint * (1 - style.sun_share) + style.sun_color * style.sun_share)
                          * style.brightness).astype(np.float32)
            cl = 0.75 * style.colors[CLOUD].astype(np.float32) * lum * shade[..., None] + 0.25 * sky
            top[m] = cl[m]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- datasets
def _size(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size: expected positive ints, got {size}")
    return h, w


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def scene_seed(seed: int, split: str, index: int, kind: int) -> int:
    """Seed of one generator stream.  An injective encoding of (seed, split, index, kind) so
    that different splits (or items, or layout vs style) can never share a seed."""
    if not 0 <= index < 2 ** 40 or not 0 <= kind < 4 or seed < 0:
        raise ValueError(f"scene_seed: bad arguments {(seed, split, index, kind)}")
    return ((seed * 2 ** 40 + index) * len(SPLITS) + _split_id(split)) * 4 + kind


def layout_from_seed(s: int) -> Layout:
    return sample_layout(np.random.default_rng(s))


def style_from_seed(s: int) -> Style:
    return sample_style(np.random.default_rng(s))


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, h, w) float32 in [-1, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def label_to_tensor(lab: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(lab.astype(np.int64))


class ProceduralScenes(Dataset):
    """``length`` random scenes of one split.  Item i is fully determined by (seed, split, i)."""

    def __init__(self, split: str = "train", size: Size = 256, length: int = 1000, seed: int = 0,
                 transform=None):
        _split_id(split)
        self.split, self.size, self.length, self.seed = split, _size(size), int(length), int(seed)
        self.transform = transform
        self.num_classes = NUM_CLASSES

    def __len__(self):
        return self.length

    def seeds(self, i: int) -> Tuple[int, int]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for length {self.length}")
        return (scene_seed(self.seed, self.split, i, 0), scene_seed(self.seed, self.split, i, 1))

    def __getitem__(self, i: int):
        ls, ss = self.seeds(i)
        layout, style = layout_from_seed(ls), style_from_seed(ss)
        h, w = self.size
        item = {"image": image_to_tensor(render(layout, style, h, w)),
                "label": label_to_tensor(layout.label_map(h, w)),
                "layout_seed": ls, "style_seed": ss}
        return self.transform(item) if self.transform is not None else item


def cross_scene_item(layout_a: Layout, style_a: Style, layout_b: Layout, style_b: Style,
                     h: int, w: int, with_source: bool = False) -> dict:
    """The cross-scene triple: A's label, B as the exemplar, and the exact ground truth
    ``render(layout_a, style_b)``; ``with_source`` adds A's own image as ``image``."""
    item = {"label": label_to_tensor(layout_a.label_map(h, w)),
            "exemplar": image_to_tensor(render(layout_b, style_b, h, w)),
            "exemplar_label": label_to_tensor(layout_b.label_map(h, w)),
            "target": image_to_tensor(render(layout_a, style_b, h, w))}
    if with_source:
        item["image"] = image_to_tensor(render(layout_a, style_a, h, w))
    return item


class CrossScenePairs(Dataset):
    """Pairs of unrelated scenes A, B with the exact ground truth of A's layout in B's style."""

    def __init__(self, split: str = "val", size: Size = 256, length: int = 100, seed: int = 0,
                 with_source: bool = False):
        _split_id(split)
        self.split, self.size, self.length, self.seed = split, _size(size), int(length), int(seed)
        self.with_source = with_source
        self.num_classes = NUM_CLASSES

    def __len__(self):
        return self.length

    def seeds(self, i: int) -> Tuple[int, int, int, int]:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for length {self.length}")
        # kinds 0,1 = scene A (the same scene as ProceduralScenes item i with this seed and
        # split); kinds 2,3 = scene B, so A and B never share a layout or a style seed.
        return tuple(scene_seed(self.seed, self.split, i, k) for k in range(4))

    def __getitem__(self, i: int):
        la, sa, lb, sb = self.seeds(i)
        h, w = self.size
        item = cross_scene_item(layout_from_seed(la), style_from_seed(sa), layout_from_seed(lb),
                                style_from_seed(sb), h, w, self.with_source)
        item.update(layout_seed_a=la, style_seed_a=sa, layout_seed_b=lb, style_seed_b=sb)
        return item
