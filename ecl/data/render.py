"""Drawing one synthetic face: the identity model (who a person is) and the renderer (one photo of them).

A face is a set of polygons (outline, ears, hair, brows, eyes, nose, mouth, optional beard and glasses)
defined in a canonical face frame; :func:`sample_identity` draws a person's parameters, and each image
moves the control points with its own geometry (translation, scale, in-plane rotation, yaw
foreshortening) before drawing directly at the output size with PIL. Part masks are drawn with the
same polygons into a label map, so masks and landmarks are exact. Photometric nuisances (clutter,
illumination gradient, colour cast, blur, sensor noise, JPEG) are cheap numpy/PIL operations.

:class:`ecl.data.FaceParts` is the dataset built on it (splits, seeds, caching).

Conventions: pixel ``(x, y)`` with pixel ``j`` covering ``[j, j + 1)`` (so a pixel centre is at
``j + 0.5``); "left"/"right" are image-left/image-right as in CelebA.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

# Bump whenever rendering changes, so stale caches are never reused.
RENDERER_VERSION = 5

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
PART_NAMES = ("left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth", "hair", "skin")
# Label-map codes: 0 is background (and anything covering the face, e.g. occluders, clothes).
_CODE = {name: i + 1 for i, name in enumerate(PART_NAMES)}
CHIMERA_PARTS = ("eyes", "brows", "nose", "mouth", "hair")
HAIR_STYLES = ("short", "fringe", "side_part", "long", "curly", "receding")

# Continuous identity parameters: (group, name) -> (mid, half-range), in face-frame units
# (1.0 = image size at scale 1). An identity draws z in [-1, 1] per parameter.
_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "face": {
        "width": (0.235, 0.03),  # half-width of the face outline
        "height": (0.31, 0.03),  # half-height
        "jaw": (0.32, 0.2),  # how much the lower face narrows towards the chin
        "tone": (0.5, 0.45),  # skin tone, light (0) to dark (1)
        "redness": (0.0, 1.0),
        "eye_line": (-0.035, 0.02),  # vertical position of the eyes
    },
    "eyes": {
        "spacing": (0.09, 0.014),  # half the distance between eye centres
        "size": (0.038, 0.007),  # half-width of an eye
        "aspect": (0.48, 0.12),  # eye height / width
        "tilt": (0.0, 0.15),  # radians, outer corner up when positive
        "iris": (0.62, 0.1),  # iris radius / eye half-width
        "iris_shade": (0.0, 1.0),
    },
    "brows": {
        "thickness": (0.013, 0.006),
        "angle": (0.08, 0.15),  # radians, outer end up when positive
        "gap": (0.048, 0.012),  # height of the brow above the eye centre
        "length": (0.05, 0.012),
        "arch": (0.006, 0.006),
        "shade": (0.0, 1.0),
    },
    "nose": {
        "length": (0.115, 0.025),  # eye line to nose tip
        "width": (0.03, 0.009),
        "nostril": (0.5, 0.2),
        "shade": (0.86, 0.05),  # how much darker the nose shading is than skin
    },
    "mouth": {
        "width": (0.058, 0.014),  # half-width
        "lips": (0.011, 0.005),
        "gap": (0.062, 0.012),  # nose tip to mouth line
        "redness": (0.0, 1.0),
    },
    "hair": {
        "volume": (0.0, 1.0),
        "hairline": (0.0, 1.0),
        "shade": (0.0, 1.0),
        "asym": (0.0, 1.0),
    },
}
_KEYS = [(g, k) for g, names in _PARAMS.items() for k in names]
_MIDS = np.array([_PARAMS[g][k][0] for g, k in _KEYS])
_HALVES = np.array([_PARAMS[g][k][1] for g, k in _KEYS])
_HAIR_COLOURS = np.array(
    [[25, 20, 18], [60, 40, 28], [105, 70, 40], [140, 60, 30], [200, 165, 100], [150, 145, 140]],
    dtype=np.float32,
)
_IRIS_COLOURS = np.array(
    [[70, 45, 25], [40, 28, 20], [70, 110, 160], [80, 120, 70], [110, 115, 120], [120, 90, 45]],
    dtype=np.float32,
)
_SKIN_LIGHT = np.array([240, 205, 180], dtype=np.float32)
_SKIN_DARK = np.array([105, 68, 45], dtype=np.float32)


@dataclass
class Identity:
    """The parameters of one synthetic person, grouped by face part.

    Attributes:
        z: group -> name -> latent value in [-1, 1] (scaled by the dataset's identity spread).
        hair_colour: index into the hair palette.
        iris_colour: index into the iris palette.
        hair_style: index into ``HAIR_STYLES``.
        glasses: whether this person usually wears glasses.
        beard: 0 none, 1 full, 2 goatee.
    """

    z: dict[str, dict[str, float]]
    hair_colour: int
    iris_colour: int
    hair_style: int
    glasses: bool
    beard: int
    brow_colour: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's parameters from ``rng``."""
    z = {g: {k: float(rng.uniform(-1.0, 1.0)) for k in names} for g, names in _PARAMS.items()}
    hair_colour = int(rng.integers(len(_HAIR_COLOURS)))
    return Identity(
        z=z,
        hair_colour=hair_colour,
        iris_colour=int(rng.integers(len(_IRIS_COLOURS))),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        glasses=bool(rng.random() < 0.25),
        beard=int(rng.choice(3, p=[0.75, 0.15, 0.10])),
        brow_colour=hair_colour,
    )


def chimera(a: Identity, b: Identity, part: str) -> Identity:
    """Identity ``a`` with part ``part`` (one of ``CHIMERA_PARTS``) taken from identity ``b``."""
    if part not in CHIMERA_PARTS:
        raise ValueError(f"part must be one of {CHIMERA_PARTS}, got {part!r}")
    out = copy.deepcopy(a)
    out.extra = {}  # drop cached derived values
    out.z[part] = dict(b.z[part])
    if part == "eyes":
        out.iris_colour = b.iris_colour
    elif part == "brows":
        out.brow_colour = b.brow_colour
    elif part == "hair":
        out.hair_colour, out.hair_style = b.hair_colour, b.hair_style
    return out


# ----------------------------------------------------------------------------- small helpers

_CACHE: dict[Any, Any] = {}


def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    key = ("circle", n)
    if key not in _CACHE:
        a = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
        _CACHE[key] = (np.cos(a), np.sin(a))
    return _CACHE[key]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> np.ndarray:
    """An axis-aligned ellipse as an (n, 2) polygon."""
    key = ("unit", n)
    unit = _CACHE.get(key)
    if unit is None:
        c, s = _circle(n)
        unit = _CACHE[key] = np.stack([c, s], axis=1)
    return unit * (rx, ry) + (cx, cy)


def _const(name: str, make: Any) -> Any:
    """A constant array computed once (sample positions along curves)."""
    value = _CACHE.get(name)
    if value is None:
        value = _CACHE[name] = make()
    return value


def _noise_bank(size: int) -> np.ndarray:
    """A fixed bank of unit Gaussian noise tiles (deterministic), reused for sensor noise."""
    key = ("noise", size)
    if key not in _CACHE:
        rng = np.random.default_rng(12345)
        _CACHE[key] = rng.standard_normal((16, size, size, 3), dtype=np.float32)
    return _CACHE[key]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y in [-1, 1] at pixel centres, as contiguous (S, S, 3) arrays."""
    key = ("grid", size)
    if key not in _CACHE:
        t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        gx = np.ascontiguousarray(np.broadcast_to(t[None, :, None], (size, size, 3)))
        gy = np.ascontiguousarray(np.broadcast_to(t[:, None, None], (size, size, 3)))
        _CACHE[key] = (gx, gy)
    return _CACHE[key]


def _xy(x: Any, y: Any) -> np.ndarray:
    """Column-stack two coordinate vectors (cheaper than np.stack for tiny arrays)."""
    out = np.empty((len(x) if hasattr(x, "__len__") else len(y), 2))
    out[:, 0] = x
    out[:, 1] = y
    return out


def _blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Separable 3-tap Gaussian-like blur, repeated for larger sigma (a 3-tap [w, 1-2w, w] pass has
    variance 2w)."""
    passes = int(np.ceil(sigma**2 / 0.6)) if sigma > 0.15 else 0
    if passes == 0:
        return arr
    w = min(0.3, sigma**2 / (2 * passes))
    for _ in range(passes):
        a = arr * (1 - 2 * w)
        a[1:] += w * arr[:-1]
        a[:-1] += w * arr[1:]
        a[0] += w * arr[0]
        a[-1] += w * arr[-1]
        b = a * (1 - 2 * w)
        b[:, 1:] += w * a[:, :-1]
        b[:, :-1] += w * a[:, 1:]
        b[:, 0] += w * a[:, 0]
        b[:, -1] += w * a[:, -1]
        arr = b
    return arr


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1].

    Converted in numpy: torch's multi-threaded elementwise ops are slow on one small image when
    their threads compete with other processes.
    """
    out = np.empty((3,) + image.shape[:2], dtype=np.float32)
    np.multiply(image.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out)
    return torch.from_numpy(out)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * rng.random())


# ----------------------------------------------------------------------------- face parts
# Each part adds its primitives to a _Shapes in the canonical face frame (y down, unit = image size,
# origin at the centre of the face outline); the renderer poses and draws them afterwards. The
# order of the calls is the drawing order (later parts on top) and, with the draws from ``rng``, fixes
# every image's bytes.

# hair volume above the head and hairline height, per hair style (fractions of the face size)
_HAIR_VOLUME = {"short": 0.07, "fringe": 0.1, "side_part": 0.1, "long": 0.12, "curly": 0.3, "receding": 0.03}
_HAIRLINE = {"short": 0.62, "fringe": 0.38, "side_part": 0.55, "long": 0.58, "curly": 0.55, "receding": 0.85}
# depth of each landmark (for yaw), in LANDMARK_NAMES order
_LANDMARK_DEPTH = np.array([0.07, 0.07, 0.15, 0.06, 0.06])


def _colour_cast(rng: np.random.Generator, n: float) -> Callable[[Any], tuple[int, int, int]]:
    """Draw a colour cast and brightness; returns the function that applies them to an RGB colour.

    Applied to every drawn colour: the same as scaling the channels of the image afterwards, and free.
    """
    c0, c1, c2 = ((1.0 + rng.uniform(-0.12, 0.12, 3) * n) * _u(rng, 1.0 - 0.25 * n, 1.0 + 0.15 * n)).tolist()

    def col(rgb: Any) -> tuple[int, int, int]:
        r, g, b = rgb.tolist() if isinstance(rgb, np.ndarray) else rgb
        return (min(255, max(0, int(r * c0))), min(255, max(0, int(g * c1))), min(255, max(0, int(b * c2))))

    return col


@dataclass
class _Face:
    """One image's face before posing: its parameters, colours, expression and key positions.

    Positions are in the canonical face frame; ``p`` is the per-image output of ``FaceRenderer._phys``.
    """

    p: dict[str, dict[str, float]]
    skin: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    iris: np.ndarray
    lip: np.ndarray
    openness: float  # eye opening, 1 = neutral
    smile: float
    mouth_open: float
    brow_raise: float
    gaze: tuple[float, float]
    fw: float  # face half-width
    fh: float  # face half-height
    ey: float  # eye line
    es: float  # half the distance between eye centres
    ew: float  # eye half-width
    eh: float  # eye half-height
    ytip: float  # nose tip
    ym: float  # mouth line
    mw: float  # mouth half-width


def _face(ident: Identity, p: dict[str, dict[str, float]], rng: np.random.Generator) -> _Face:
    """Colours, this image's expression (drawn from ``rng``) and the key positions of the face."""
    F, E, B, N, M, H = p["face"], p["eyes"], p["brows"], p["nose"], p["mouth"], p["hair"]
    tone = float(np.clip(F["tone"], 0.0, 1.0))
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone
    skin = skin + np.array([12.0, -4.0, -8.0]) * F["redness"]

    openness = _u(rng, 0.45, 0.75) if rng.random() < 0.2 else _u(rng, 0.85, 1.1)
    smile = _u(rng, 0.0, 1.0) if rng.random() < 0.5 else 0.0
    mouth_open = _u(rng, 0.2, 1.0) if rng.random() < 0.3 else 0.0
    brow_raise = _u(rng, -0.004, 0.01)
    gaze = (_u(rng, -0.25, 0.25), _u(rng, -0.1, 0.1))

    eh = E["size"] * E["aspect"]
    # keep extreme identities drawable: parts neither vanish nor collide
    B["thickness"] = max(B["thickness"], 0.006)
    B["gap"] = max(B["gap"], eh + B["thickness"] / 2 + 0.01)
    M["lips"] = max(M["lips"], 0.005)
    ytip = F["eye_line"] + N["length"]
    return _Face(
        p=p,
        skin=skin,
        hair=_HAIR_COLOURS[ident.hair_colour] * (1.0 + 0.18 * H["shade"]),
        brow=_HAIR_COLOURS[ident.brow_colour] * (0.75 + 0.15 * B["shade"]),
        iris=_IRIS_COLOURS[ident.iris_colour] * (1.0 + 0.2 * E["iris_shade"]),
        lip=skin * np.array([0.85, 0.6, 0.62]) + np.array([25.0, 0.0, 0.0]) * M["redness"],
        openness=openness,
        smile=smile,
        mouth_open=mouth_open,
        brow_raise=brow_raise,
        gaze=gaze,
        fw=F["width"],
        fh=F["height"],
        ey=F["eye_line"],
        es=E["spacing"],
        ew=E["size"],
        eh=eh,
        ytip=ytip,
        ym=min(ytip + M["gap"], 0.8 * F["height"] - M["lips"]),
        mw=M["width"],
    )


class _Shapes:
    """A face's primitives in the canonical frame, in drawing order (later ones on top)."""

    def __init__(self, col: Callable[[Any], tuple[int, int, int]]):
        self.col = col  # the image's colour cast
        self.prims: list[tuple[int, Any, int | None, str]] = []  # (number of points, fill, label code, kind)
        self.pts: list[np.ndarray] = []  # (n, 2) canonical x, y per primitive
        self.z: list[float] = []  # depth per point (for yaw)

    def add(self, pts: np.ndarray, z: Any, rgb: Any, code: int | None, kind: str = "poly") -> None:
        """Add a filled polygon ("poly"), a closed outline ("ring") or a polyline ("line").

        ``z`` is one depth or one per point, ``rgb`` the colour before the cast and ``code`` the label
        (None: not drawn into the label map).
        """
        m = len(pts)
        self.pts.append(pts)
        self.z.extend([z] * m if isinstance(z, float) else list(z))
        self.prims.append((m, self.col(rgb), code, kind))

    def rasterise(
        self,
        draw: ImageDraw.ImageDraw,
        dlab: ImageDraw.ImageDraw,
        to_px: Callable[[np.ndarray, np.ndarray], np.ndarray],
        width: int,
    ) -> None:
        """Draw every primitive into the image and, where it has a code, into the label map."""
        allpts = to_px(np.concatenate(self.pts), np.array(self.z))
        # PIL puts integer coordinates at pixel centres; our pixel j covers [j, j+1).
        pil = (allpts - 0.5).ravel().tolist()
        # PIL's drawing core directly (ImageDraw.polygon adds a Python layer per call; ~45 calls per image)
        core, core_lab = getattr(draw, "draw", None), getattr(dlab, "draw", None)
        fast = hasattr(core, "draw_polygon") and hasattr(core, "draw_ink")
        k = 0
        for m, fill, code, kind in self.prims:
            xy = pil[2 * k : 2 * (k + m)]
            k += m
            if kind == "poly":
                if fast:
                    core.draw_polygon(xy, core.draw_ink(fill), 1)
                    if code is not None:
                        core_lab.draw_polygon(xy, code, 1)
                else:  # pragma: no cover - other Pillow versions
                    draw.polygon(xy, fill=fill)
                    if code is not None:
                        dlab.polygon(xy, fill=code)
            elif kind == "ring":
                draw.line(xy + xy[:2], fill=fill, width=width)
            else:
                draw.line(xy, fill=fill, width=width)


def _add_head(shapes: _Shapes, f: _Face, style: str, rng: np.random.Generator) -> np.ndarray:
    """Clothes, the back of long hair, the neck, the ears and the face; returns the face outline."""
    fw, fh, skin = f.fw, f.fh, f.skin
    clothes = rng.integers(20, 235, 3).astype(np.float32)
    shoulders = [[-2.6, 3.2], [-2.4, 1.75], [-0.8, 1.3], [0.8, 1.3], [2.4, 1.75], [2.6, 3.2]]
    shapes.add(np.array([[x * fw, y * fh] for x, y in shoulders]), 0.0, clothes, None)
    if style == "long":
        back = [
            [-fw * 1.35, -fh * 0.5],
            [fw * 1.35, -fh * 0.5],
            [fw * 1.55, fh * 1.55],
            [-fw * 1.55, fh * 1.55],
        ]
        shapes.add(np.array(back), -0.1, f.hair * 0.85, _CODE["hair"])
    neck = [[-0.5 * fw, 0.5 * fh], [0.5 * fw, 0.5 * fh], [0.6 * fw, 1.45 * fh], [-0.6 * fw, 1.45 * fh]]
    shapes.add(np.array(neck), -0.05, skin * 0.82, _CODE["skin"])
    # ears (behind the face: the far ear disappears under yaw)
    for sx in (-1.0, 1.0):
        shapes.add(_ellipse(sx * fw * 0.97, f.ey + 0.035, 0.024, 0.045, 10), -0.08, skin * 0.9, _CODE["skin"])
    # face outline: an ellipse whose lower half narrows towards the chin
    c, s = _circle(28)
    x, y = fw * c, fh * s
    x = np.where(s > 0, x * (1.0 - f.p["face"]["jaw"] * s**2), x)
    outline = _xy(x, y)
    shapes.add(outline, 0.0, skin, _CODE["skin"])
    return outline


def _add_beard(shapes: _Shapes, f: _Face, beard: int, outline: np.ndarray) -> None:
    """A full beard (1) below the nose tip or a goatee (2); facial hair counts as skin in the masks."""
    colour = f.hair * 0.85
    if beard == 1:
        pts = outline[outline[:, 1] > f.ytip - 0.01] * np.array([0.98, 1.02])
        pts = pts[np.argsort(np.arctan2(pts[:, 1], pts[:, 0]))]
        shapes.add(pts, 0.02, colour, _CODE["skin"])
    elif beard == 2:
        lips = f.p["mouth"]["lips"]
        shapes.add(_ellipse(0.0, f.ym + 0.035, f.mw * 1.15, 0.05, 14), 0.05, colour, _CODE["skin"])
        shapes.add(_ellipse(0.0, f.ym - lips - 0.006, f.mw * 1.05, 0.009, 10), 0.06, colour, _CODE["skin"])


def _add_nose(shapes: _Shapes, f: _Face) -> None:
    """A shaded wedge plus nostrils; the tip is the landmark."""
    N, ey, ytip, skin = f.p["nose"], f.ey, f.ytip, f.skin
    nw = N["width"]
    wedge = [
        [-nw * 0.35, ey + 0.02],
        [nw * 0.35, ey + 0.02],
        [nw, ytip - 0.004],
        [nw * 0.6, ytip + 0.008],
        [-nw * 0.6, ytip + 0.008],
        [-nw, ytip - 0.004],
    ]
    depth = np.array([0.06, 0.06, 0.1, 0.12, 0.12, 0.1])
    shapes.add(np.array(wedge), depth, skin * N["shade"], _CODE["nose"])
    shapes.add(_ellipse(0.0, ytip - 0.002, nw * 0.45, nw * 0.3, 10), 0.15, skin * 1.05, _CODE["nose"])
    nr = 0.25 + 0.1 * N["nostril"]
    for sx in (-1.0, 1.0):
        nostril = _ellipse(sx * nw * 0.5, ytip + 0.002, nw * nr, nw * nr * 0.55, 8)
        shapes.add(nostril, 0.11, skin * 0.45, _CODE["nose"])


def _add_mouth(shapes: _Shapes, f: _Face) -> list[tuple[float, float]]:
    """Lips around a mouth line that bends up at the corners when smiling; the lips part when open.

    Returns the two mouth corners (the landmarks).
    """
    mw, lt, lip = f.mw, f.p["mouth"]["lips"], f.lip
    xs = mw * _const("mouth_cos", lambda: np.cos(np.linspace(np.pi, 0.0, 9)))
    taper = np.sqrt(np.clip(1 - (xs / mw) ** 2, 0, 1))
    line = f.ym - 0.02 * f.smile * (1 - (1 - (xs / mw) ** 2))
    gap = 0.022 * f.mouth_open * taper
    upper_top = line - lt * taper * (1.0 + 0.3 * np.abs(np.sin(np.pi * xs / mw)))
    lower_bot = line + gap + 1.3 * lt * taper
    outer = np.concatenate([_xy(xs, upper_top), _xy(xs[::-1], lower_bot[::-1])[1:-1]])
    shapes.add(outer, 0.06, lip, _CODE["mouth"])
    if f.mouth_open > 0:
        inner = np.concatenate([_xy(xs, line), _xy(xs[::-1], (line + gap)[::-1])[1:-1]])
        shapes.add(inner, 0.06, (60, 20, 25), _CODE["mouth"])
        teeth = np.concatenate(
            [_xy(xs[2:-2], line[2:-2]), _xy(xs[2:-2][::-1], (line + 0.35 * gap)[2:-2][::-1])]
        )
        shapes.add(teeth, 0.06, (235, 230, 220), _CODE["mouth"])
    else:
        shapes.add(_xy(xs, line), 0.06, lip * 0.6, None, "line")
    # the lip outline has no width at the corners: small corner dots keep the corner landmarks in the mask
    for cx, cy in ((xs[0], line[0]), (xs[-1], line[-1])):
        shapes.add(_ellipse(cx, cy, 0.011, 0.011, 8), 0.06, lip * 0.75, _CODE["mouth"])
    return [(-mw, line[0]), (mw, line[-1])]


def _add_eyes(shapes: _Shapes, f: _Face) -> list[tuple[float, float]]:
    """Almond-shaped openings with iris and pupil; returns the openings' centres (the landmarks)."""
    E, ey, ew, eh = f.p["eyes"], f.ey, f.ew, f.eh
    cos_t, sin_t = _const(
        "eye_t", lambda: (np.cos(np.linspace(0.0, np.pi, 9)), np.sin(np.linspace(0.0, np.pi, 9)))
    )
    centres = []
    for side, sx in (("left_eye", -1.0), ("right_eye", 1.0)):
        cx = sx * f.es
        h_up, h_lo = (
            max(eh * f.openness, 0.008),
            max(eh * 0.75 * f.openness, 0.006),
        )  # never thinner than ~1 px
        ex = ew * cos_t
        pts = np.concatenate([_xy(ex, -h_up * sin_t), _xy(ex[::-1], h_lo * sin_t)[1:-1]])
        ang = -sx * E["tilt"]
        ca, sa = np.cos(ang), np.sin(ang)
        pts = pts @ np.array([[ca, sa], [-sa, ca]]) + np.array([cx, ey])
        shapes.add(pts, 0.07, (238, 236, 230), _CODE[side])
        ir = ew * E["iris"]
        icx, icy = cx + f.gaze[0] * ew, ey + f.gaze[1] * eh
        shapes.add(_ellipse(icx, icy, ir * 0.95, min(ir, h_up * 0.95), 12), 0.075, f.iris, _CODE[side])
        pupil = _ellipse(icx, icy, ir * 0.42, min(ir * 0.42, h_up * 0.6), 8)
        shapes.add(pupil, 0.08, (15, 12, 12), _CODE[side])
        shapes.add(pts[:9], 0.07, f.skin * 0.35, None, "line")
        centres.append((cx, ey))
    return centres


def _add_brows(shapes: _Shapes, f: _Face) -> None:
    """Tapered bars above the eyes."""
    B = f.p["brows"]
    L, th = B["length"], B["thickness"]
    u = _const("brow_u", lambda: np.linspace(0.0, 1.0, 5))
    for side, sx in (("left_brow", -1.0), ("right_brow", 1.0)):
        bx = sx * (f.es - 0.6 * f.ew + u * (L + f.ew * 0.6))
        by = f.ey - B["gap"] - f.brow_raise - np.tan(B["angle"]) * u * L - B["arch"] * np.sin(np.pi * u)
        half = th * (1.0 - 0.45 * u) / 2
        pts = np.concatenate([_xy(bx, by - half), _xy(bx[::-1], (by + half)[::-1])])
        shapes.add(pts, 0.07, f.brow, _CODE[side])


def _add_hair(shapes: _Shapes, f: _Face, style: str) -> None:
    """The hair cap: an outer arc over the head and a hairline across the forehead."""
    H, fw, fh = f.p["hair"], f.fw, f.fh
    v = _HAIR_VOLUME[style] + 0.03 * H["volume"]
    hl = _HAIRLINE[style] + 0.05 * H["hairline"]
    asym = (0.25 if style == "side_part" else 0.0) + 0.05 * H["asym"]
    cos_a, sin_a = _const(
        "hair_arc",
        lambda: (np.cos(np.linspace(np.pi, 2 * np.pi, 13)), np.sin(np.linspace(np.pi, 2 * np.pi, 13))),
    )
    arc = _xy(fw * (1 + v) * cos_a, fh * (1 + 0.8 * v) * sin_a + 0.02)
    hx = np.linspace(fw * 1.0, -fw * 1.0, 9)
    hy = -fh * hl * (1.0 - 0.75 * (hx / fw) ** 2) - fh * 0.12 + asym * fh * 0.3 * (hx / fw)
    hy = np.minimum(hy, f.ey - f.p["brows"]["gap"] - 0.03)  # a fringe stops above the brows
    shapes.add(np.concatenate([arc, _xy(hx, hy)]), 0.0, f.hair, _CODE["hair"])


def _add_glasses(shapes: _Shapes, f: _Face, rng: np.random.Generator) -> None:
    """Two rims and a bridge, not in the label map (the pixels under the frames keep their part)."""
    frame = np.array([30, 25, 25]) if rng.random() < 0.7 else rng.integers(20, 200, 3)
    for sx in (-1.0, 1.0):
        rim = _ellipse(sx * f.es, f.ey + 0.003, f.ew * 1.55, f.ew * 1.15, 14)
        shapes.add(rim, 0.09, frame, None, "ring")
    bridge = np.array([[-f.es + f.ew * 1.5, f.ey], [f.es - f.ew * 1.5, f.ey]])
    shapes.add(bridge, 0.09, frame, None, "line")


# ----------------------------------------------------------------------------- the renderer


@dataclass(frozen=True)
class RenderConfig:
    """How images vary. Geometry ranges are wide: faces are NOT aligned.

    ``difficulty`` in [0, 1] is the one knob to calibrate: it shrinks the between-identity parameter
    spread, grows the within-identity variation and scales every photometric nuisance; the geometry
    (shift, scale, rotation, yaw) does not depend on it. Calibration (configs/faceparts-quick.yaml:
    resnet10t, 32 x 16 training images at 64 px, 96 steps; verification on 50 new test identities x
    10 images, 1,000 pairs, 10 folds, one run each): baseline (no explainability loss) 85.0% at 0.25
    (the default), about 78% near 0.48 and 59.1% at 1.0; ECLoss 85.4% at 0.25.
    """

    image_size: int = 112
    difficulty: float = 0.25
    max_shift: float = 0.15  # fraction of the image
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_rotation: float = 20.0  # degrees
    max_yaw: float = 25.0  # degrees (horizontal foreshortening)
    occlusion_prob: float = 0.1
    jpeg_prob: float = 0.5


class FaceRenderer:
    """Draws the images, label maps and landmarks of one :class:`RenderConfig` (see the module docstring)."""

    def __init__(self, cfg: RenderConfig):
        self.cfg = cfg
        d = float(np.clip(cfg.difficulty, 0.0, 1.0))
        # Affine in d, anchored at the default 0.25 (calibrated: the faceparts-quick preset's baseline
        # reaches about 85% verification accuracy there) and at d = 1 (hard: about 59%).
        self.spread = 2.2 - 1.6 * d  # between-identity spread of the latents (x the half-ranges)
        self.within = max(0.005, 0.02 + 0.24 * (d - 0.25))  # within-identity std of the latents, per image
        self.nuisance = max(
            0.1, 0.25 + 1.8 * (d - 0.25)
        )  # photometric nuisance (noise, blur, cast, light, JPEG)

    # -- identity parameters -> physical values, with per-image jitter
    def _phys(self, ident: Identity, rng: np.random.Generator) -> dict[str, dict[str, float]]:
        zvec = ident.extra.get("_zvec")
        if zvec is None:  # flattened once per identity: per-image cost is one vector op
            zvec = ident.extra["_zvec"] = np.array([ident.z[g][k] for g, k in _KEYS])
        z = np.clip(zvec * self.spread + rng.standard_normal(len(_KEYS)) * self.within, -2.0, 2.0)
        vals = (_MIDS + _HALVES * z).tolist()
        out: dict[str, dict[str, float]] = {g: {} for g in _PARAMS}
        for (g, k), v in zip(_KEYS, vals, strict=True):
            out[g][k] = v
        return out

    def render(
        self, ident: Identity, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Draw one image.

        The face is built in the canonical frame part by part, then posed and drawn over a cluttered
        background, maybe occluded, and degraded. The order of the steps is the order of the draws
        from ``rng``, which fixes every image's bytes: keep it.

        Returns:
            image uint8 (S, S, 3), label map uint8 (S, S) (codes 1..len(PART_NAMES), 0 = none),
            landmarks float32 (5, 2) pixel (x, y), and whether an occluder was drawn.
        """
        S = self.cfg.image_size
        p = self._phys(ident, rng)
        col = _colour_cast(rng, self.nuisance)
        f = _face(ident, p, rng)

        shapes = _Shapes(col)
        style = HAIR_STYLES[ident.hair_style]
        outline = _add_head(shapes, f, style, rng)
        _add_beard(shapes, f, ident.beard, outline)
        _add_nose(shapes, f)
        mouth_corners = _add_mouth(shapes, f)
        eye_centres = _add_eyes(shapes, f)
        _add_brows(shapes, f)
        _add_hair(shapes, f, style)
        # glasses: worn on most (not all) images of a glasses wearer
        if ident.glasses and rng.random() < 0.85:
            _add_glasses(shapes, f, rng)

        to_px = self._pose(rng)
        landmarks = to_px(np.array([*eye_centres, (0.0, f.ytip), *mouth_corners]), _LANDMARK_DEPTH)
        landmarks = landmarks.astype(np.float32)

        img = Image.new("RGB", (S, S), col(rng.integers(0, 256, 3)))
        lab = Image.new("L", (S, S), 0)
        draw, dlab = ImageDraw.Draw(img), ImageDraw.Draw(lab)
        self._clutter(draw, rng, S, col)
        shapes.rasterise(draw, dlab, to_px, width=max(1, int(round(S / 112))))
        occluded = bool(rng.random() < self.cfg.occlusion_prob)
        if occluded:
            self._occluder(draw, dlab, rng, S, landmarks, col)
        out = self._photometric(np.asarray(img, dtype=np.float32), rng)
        return out, np.asarray(lab), landmarks, occluded

    def _pose(self, rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Draw this image's yaw, scale, rotation and translation.

        Returns the map from canonical points (n, 2) and their depths (n,) to pixel (x, y).
        """
        cfg, S = self.cfg, self.cfg.image_size
        yaw = np.deg2rad(_u(rng, -cfg.max_yaw, cfg.max_yaw))
        lo, hi = cfg.scale_range
        scale = float(np.exp(_u(rng, np.log(lo), np.log(hi))))
        rot = np.deg2rad(_u(rng, -cfg.max_rotation, cfg.max_rotation))
        tx, ty = _u(rng, -cfg.max_shift, cfg.max_shift) * S, _u(rng, -cfg.max_shift, cfg.max_shift) * S
        cy, sy = np.cos(yaw), np.sin(yaw)
        cr, sr = np.cos(rot), np.sin(rot)
        A = S * scale * np.array([[cr, -sr], [sr, cr]])
        centre = np.array([S / 2 + tx, S / 2 + ty + 0.03 * S * scale])

        def to_px(xy: np.ndarray, z: np.ndarray) -> np.ndarray:
            xy = _xy(xy[:, 0] * cy + z * sy, xy[:, 1])
            return xy @ A.T + centre

        return to_px

    def _photometric(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blur, an illumination gradient, sensor noise and JPEG on a float32 (S, S, 3) image; returns
        uint8."""
        n, S = self.nuisance, self.cfg.image_size
        if rng.random() < 0.5:
            arr = _blur(arr, _u(rng, 0.0, 0.9 * n))
        # illumination gradient: a plane over the image (grids pre-broadcast to (S, S, 3): numpy is slow
        # when the innermost broadcast axis has length 3)
        gx, gy = _grid(S)
        g = 0.3 * n
        arr *= 1.0 + np.float32(_u(rng, -g, g)) * gx + np.float32(_u(rng, -g, g)) * gy
        sigma = _u(rng, 0.0, 7.0 * n)
        if sigma > 0.5:
            noise = _noise_bank(S)[rng.integers(16)]
            if rng.random() < 0.5:
                noise = noise[::-1]
            if rng.random() < 0.5:
                noise = noise[:, ::-1]
            arr += np.float32(sigma) * noise
        out = np.clip(arr, 0, 255, out=arr).astype(np.uint8)
        if rng.random() < self.cfg.jpeg_prob:
            q = int(_u(rng, max(10.0, 95 - 55 * n), 95))
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="JPEG", quality=q)
            buf.seek(0)
            out = np.asarray(Image.open(buf).convert("RGB"))
        return out

    def _clutter(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, S: int, col: Any) -> None:
        """A cluttered background: random rectangles, ellipses, bars and polygons (one RNG call for all)."""
        count = int(rng.integers(2, 4 + int(5 * self.nuisance)))
        u = rng.random((count, 14))
        u[:, :3] *= 256.0
        for row in u.tolist():
            c = col(row[:3])
            kind = int(row[3] * 4)
            x0, y0 = (row[4] * 1.2 - 0.2) * S, (row[5] * 1.2 - 0.2) * S
            w, h = (0.1 + 0.6 * row[6]) * S, (0.1 + 0.6 * row[7]) * S
            if kind == 0:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=c)
            elif kind == 1:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=c)
            elif kind == 2:
                draw.line([x0, y0, x0 + w, y0 + h], fill=c, width=1 + int(row[8] * max(1, S // 16)))
            else:
                draw.polygon([(v * 1.2 - 0.1) * S for v in row[8:14]], fill=c)

    def _occluder(
        self,
        draw: ImageDraw.ImageDraw,
        dlab: ImageDraw.ImageDraw,
        rng: np.random.Generator,
        S: int,
        landmarks: np.ndarray,
        col: Any,
    ) -> None:
        """A random object over a face part (a hand, a cup, a scarf...); it removes that part from the
        masks."""
        # targets: each eye, nose, mouth, chin, forehead and either cheek (hands, cups, hair, scarves...)
        le, re_, nose, lm_, rm_ = landmarks
        mouth, eye_mid = (lm_ + rm_) / 2, (le + re_) / 2
        chin, forehead = 2 * mouth - nose, 2 * eye_mid - nose
        targets = (le, re_, nose, mouth, chin, forehead, (le + lm_) / 2, (re_ + rm_) / 2)
        weights = (0.08, 0.08, 0.14, 0.2, 0.16, 0.1, 0.12, 0.12)
        target = targets[int(rng.choice(len(targets), p=weights))] + rng.normal(0, 0.03 * S, 2)
        w, h = rng.uniform(0.12, 0.3, 2) * S
        tx, ty = target
        box = [float(tx - w / 2), float(ty - h / 2), float(tx + w / 2), float(ty + h / 2)]
        c = col(rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle(box, fill=c)
            dlab.rectangle(box, fill=0)
        else:
            draw.ellipse(box, fill=c)
            dlab.ellipse(box, fill=0)
        # a little texture, so the occluder is not a flat patch
        for _ in range(3):
            c2 = col(rng.integers(0, 256, 3))
            yy = _u(rng, box[1], box[3])
            draw.line([box[0], yy, box[2], yy + _u(rng, -5, 5)], fill=c2, width=max(1, S // 56))
