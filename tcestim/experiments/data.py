"""Data sets for the reference experiments: procedural dSprites, the official dSprites file, pinwheel.

**Procedural dSprites.** :class:`SpritesDataset` is the full factor grid of dSprites (Matthey et al.
2017) rendered on the fly, so nothing is ever downloaded:

    factor        index range   value                                   (dSprites convention)
    shape         0..2          1.0 square, 2.0 ellipse, 3.0 heart
    scale         0..5          linspace(0.5, 1, 6)
    orientation   0..39         linspace(0, 2 pi, 40)   (0 and 2 pi both present, as in dSprites)
    pos_x         0..31         linspace(0, 1, 32)      (left to right: image columns)
    pos_y         0..31         linspace(0, 1, 32)      (top to bottom: image rows)

737 280 binary images; the flat index is the mixed-radix number of the factor indices (shape most
significant, pos_y least), the order of the official file. Geometry, in units of the image width:
a sprite of scale s has half-size ``s * HALF_SIZE``; the square is the set max(|u|, |w|) <= 1, the
ellipse u^2 + (w / ELLIPSE_AXIS)^2 <= 1 (so it has a direction, like the dSprites oval), the heart
the implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 rescaled to half-width 1, where (u, w) are the
pixel-centre coordinates relative to the sprite centre, rotated by minus the orientation
(counter-clockwise on screen) and divided by the half-size. A pixel is on when its centre is inside.
Centres run over [MARGIN, 1 - MARGIN], so every sprite lies inside the image at every orientation.
The images look like dSprites but are not pixel-identical to the official file: use
:func:`load_dsprites_npz` when you have it.

**Official file.** :func:`load_dsprites_npz` reads ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
(keys ``imgs``, ``latents_classes``, ``latents_values``; the constant colour column is dropped) into a
data set with the same interface.

**Pinwheel.** :func:`pinwheel` draws the 2-D spiral clusters of Johnson et al. (2016), used by
Mathieu et al. (2019) for clustering.
"""
from __future__ import annotations

import math
import operator
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
NUM_IMAGES = 737280  # = prod(FACTOR_SIZES)

HALF_SIZE = 0.15       # half-size of a scale-1 sprite, in units of the image width
ELLIPSE_AXIS = 0.5     # the ellipse's minor/major axis ratio (major half-axis = 1 in shape units)
_HEART_HALF_WIDTH = 1.1390   # x-extent of (x^2+y^2-1)^3 - x^2 y^3 <= 0
_HEART_Y_CENTRE = 0.118      # middle of its y-extent [-1, 1.236]
MARGIN = 0.22          # > _REACH: every sprite lies inside the image
_REACH = HALF_SIZE * 1.4143  # farthest reach of a scale-1 sprite (rotated square; the heart: 1.17 half-sizes)

_STRIDES = tuple(int(np.prod(FACTOR_SIZES[k + 1:])) for k in range(len(FACTOR_SIZES)))

Indices = Union[int, Sequence[int], np.ndarray, torch.Tensor]


def factor_value_table() -> Tuple[torch.Tensor, ...]:
    """The value of every factor index, one float64 tensor per factor (dSprites' latents_values)."""
    return (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
            torch.linspace(0.5, 1.0, 6, dtype=torch.float64),
            torch.linspace(0.0, 2 * math.pi, 40, dtype=torch.float64),
            torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
            torch.linspace(0.0, 1.0, 32, dtype=torch.float64))


_VALUES = factor_value_table()


def _as_index_tensor(indices: Indices, length: int, name: str = "indices") -> torch.Tensor:
    """1-D int64 tensor of indices in [0, length) (negative ones wrap, as in Python)."""
    if isinstance(indices, torch.Tensor):
        t = indices.detach().to("cpu")
    else:
        t = torch.as_tensor(np.asarray(indices))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be integers, got dtype {t.dtype}")
    t = t.reshape(-1).to(torch.int64)
    if t.numel() and (bool((t < -length).any()) or bool((t >= length).any())):
        raise IndexError(f"{name} must lie in [-{length}, {length}), got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    return torch.where(t < 0, t + length, t)


def index_to_factors(index: Indices) -> torch.Tensor:
    """Flat grid indices (B,) -> factor indices (B, 5) long (shape, scale, orientation, pos_x, pos_y)."""
    idx = _as_index_tensor(index, NUM_IMAGES, "index")
    out = torch.empty(idx.shape[0], len(FACTOR_SIZES), dtype=torch.int64)
    for k, (size, stride) in enumerate(zip(FACTOR_SIZES, _STRIDES)):
        out[:, k] = (idx // stride) % size
    return out


def factors_to_index(factors) -> torch.Tensor:
    """Factor indices (B, 5) -> flat grid indices (B,) long; the inverse of :func:`index_to_factors`."""
    f = torch.as_tensor(factors).to(torch.int64)
    if f.dim() == 1:
        f = f.unsqueeze(0)
    if f.dim() != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must have shape (B, 5), got {tuple(f.shape)}")
    sizes = torch.tensor(FACTOR_SIZES)
    if bool((f < 0).any()) or bool((f >= sizes).any()):
        raise ValueError(f"factor indices must lie in [0, size) for sizes {FACTOR_SIZES}")
    return (f * torch.tensor(_STRIDES)).sum(1)


def factors_to_values(factors: torch.Tensor) -> torch.Tensor:
    """Factor indices (B, 5) -> factor values (B, 5) float64, on the device of ``factors`` (see the module
    docstring)."""
    return torch.stack([_VALUES[k].to(factors.device)[factors[:, k]] for k in range(len(FACTOR_SIZES))], dim=1)


def render_sprites(factors, image_size: int = 64) -> torch.Tensor:
    """Rasterise sprites from factor indices.

    Args:
        factors: (B, 5) integer factor indices (shape, scale, orientation, pos_x, pos_y); the images are
            computed on their device (a GPU renders a batch of 2048 in well under a millisecond).
        image_size: side of the square image in pixels; the geometry is resolution-independent.

    Returns:
        (B, 1, image_size, image_size) float32 binary images (1.0 where a pixel centre is inside), on the
        device of ``factors``.
    """
    f = torch.as_tensor(factors).to(torch.int64)
    if f.dim() != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must have shape (B, 5), got {tuple(f.shape)}")
    image_size = operator.index(image_size)
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    B, S, device = f.shape[0], image_size, f.device
    out = torch.zeros(B, S * S, dtype=torch.float32, device=device)
    if B == 0:
        return out.reshape(B, 1, S, S)
    # Every sprite lies within _REACH * scale of its centre: test only a W x W window around it.
    W = min(S, int(math.ceil(2 * _REACH * S)) + 2)
    values = factors_to_values(f).to(torch.float32)
    half = values[:, 1] * HALF_SIZE                                   # (B,) half-size, image widths
    theta = values[:, 2]
    cx = (MARGIN + values[:, 3] * (1 - 2 * MARGIN)) * S              # centre, in pixels
    cy = (MARGIN + values[:, 4] * (1 - 2 * MARGIN)) * S
    c0 = torch.clamp(torch.floor(cx - W / 2), 0, S - W).to(torch.int64)   # window's first column
    r0 = torch.clamp(torch.floor(cy - W / 2), 0, S - W).to(torch.int64)   # and first row
    offs = torch.arange(W, device=device)
    scale_px = (half * S).unsqueeze(1)
    # Pixel centres relative to the sprite centre in half-size units; y points up in shape
    # coordinates while rows grow downwards, so dy = cy - row.
    dx = ((c0.unsqueeze(1) + offs).to(torch.float32) + 0.5 - cx.unsqueeze(1)) / scale_px   # (B, W)
    dy = (cy.unsqueeze(1) - (r0.unsqueeze(1) + offs).to(torch.float32) - 0.5) / scale_px   # (B, W)
    cos, sin = torch.cos(theta), torch.sin(theta)
    window = torch.empty(B, W, W, dtype=torch.float32, device=device)
    for shape in range(3):
        sel = (f[:, 0] == shape).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        x = dx[sel].unsqueeze(1)                                      # (b, 1, W): columns
        y = dy[sel].unsqueeze(2)                                      # (b, W, 1): rows
        c, s = cos[sel][:, None, None], sin[sel][:, None, None]
        # (u, w) = rotation of (x, y) by -theta; per-shape constants folded into the small factors.
        if shape == 0:
            u = c * x + s * y
            w = c * y - s * x
            inside = torch.maximum(u.abs(), w.abs()) <= 1.0
        elif shape == 1:
            u = c * x + s * y
            w = (c / ELLIPSE_AXIS) * y - (s / ELLIPSE_AXIS) * x
            inside = u.square() + w.square() <= 1.0
        else:
            a = _HEART_HALF_WIDTH
            hx = (a * c) * x + (a * s) * y
            hy = ((a * c) * y + _HEART_Y_CENTRE) - (a * s) * x
            hx2, hy2 = hx.square(), hy.square()
            t = hx2 + hy2 - 1.0
            inside = t * t * t <= hx2 * hy2 * hy
        window[sel] = inside.to(torch.float32)
    flat = ((r0.unsqueeze(1) + offs).unsqueeze(2) * S + (c0.unsqueeze(1) + offs).unsqueeze(1)).reshape(B, -1)
    out.scatter_(1, flat, window.reshape(B, -1))
    return out.reshape(B, 1, S, S)


def _subsample_mask_from_strides(classes: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    strides = [operator.index(s) for s in strides]
    if len(strides) != classes.shape[1] or any(s < 1 for s in strides):
        raise ValueError(f"subsample as strides needs {classes.shape[1]} positive ints, got {strides}")
    return (classes % torch.tensor(strides)).eq(0).all(1)


def _select(subsample, total: int, seed: int, classes_fn) -> Optional[torch.Tensor]:
    """Sorted int64 indices into [0, total) chosen by ``subsample`` (None: all)."""
    if subsample is None:
        return None
    if isinstance(subsample, (int, np.integer)) and not isinstance(subsample, bool):
        n = int(subsample)
        if not 1 <= n <= total:
            raise ValueError(f"subsample must be in [1, {total}], got {n}")
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(total, generator=g)[:n].sort().values
    if isinstance(subsample, (list, tuple)):
        return classes_fn(subsample)
    raise TypeError("subsample must be None, an int (random subset size) or a sequence of per-factor "
                    f"strides, got {type(subsample).__name__}")


class _FactorImageDataset(torch.utils.data.Dataset):
    """Shared interface: images, factor indices and values by position, batch access, iteration."""

    factor_names: Tuple[str, ...] = FACTOR_NAMES
    factor_sizes: Tuple[int, ...] = FACTOR_SIZES
    image_size: int = 64

    def __len__(self) -> int:
        raise NotImplementedError

    def images(self, indices: Indices) -> torch.Tensor:
        """(B, 1, S, S) float32 binary images of the items at ``indices`` (positions in this data set)."""
        raise NotImplementedError

    def factors(self, indices: Indices) -> torch.Tensor:
        """(B, 5) int64 factor indices of the items at ``indices``."""
        raise NotImplementedError

    def factor_values(self, indices: Indices) -> torch.Tensor:
        """(B, 5) float64 factor values of the items at ``indices``."""
        raise NotImplementedError

    def _positions(self, indices: Indices) -> torch.Tensor:
        return _as_index_tensor(indices, len(self))

    def __getitem__(self, i) -> Tuple[torch.Tensor, torch.Tensor]:
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a data set of {len(self)} items")
        return self.images([i])[0], self.factors([i])[0]

    def all_factors(self) -> torch.Tensor:
        """(len, 5) int64 factor indices of every item."""
        return self.factors(torch.arange(len(self)))

    def batches(self, batch_size: int, *, shuffle: bool = True, generator: Optional[torch.Generator] = None,
                drop_last: bool = False) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(images (B, 1, S, S), factors (B, 5))`` through the fast batch path."""
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield self.images(idx), self.factors(idx)


class SpritesDataset(_FactorImageDataset):
    """The dSprites factor grid, rendered on the fly (no download; see the module docstring).

    Args:
        image_size: image side in pixels (64 like dSprites; 32 for quick CPU runs; any value >= 4).
        subsample: ``None`` (all 737 280 images), an int n (a fixed random subset of n grid points,
            drawn with ``seed``, kept in grid order) or 5 per-factor strides (``(1, 1, 4, 4, 4)`` keeps
            every 4th orientation and position). Factor indices always refer to the full grid.
        seed: seed of the random subset.
        cache: keep every rendered image (bit-packed, 1 bit a pixel: 377 MB for the full 64 x 64 grid,
            filled as items are first requested). Only on the CPU: on a GPU rendering is cheaper than
            the cache.
        device: where :meth:`images` renders and returns the batch (default: the CPU).

    ``__getitem__(i)`` returns ``(image (1, S, S) float32, factors (5,) int64)``; ``images(indices)``
    renders a whole batch at once (use it, or :meth:`batches`, rather than a per-item DataLoader).
    """

    def __init__(self, *, image_size: int = 64, subsample=None, seed: int = 0, cache: bool = False,
                 device: Union[str, torch.device, None] = None):
        self.image_size = operator.index(image_size)
        self.device = torch.device(device if device is not None else "cpu")
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")

        def by_strides(strides):
            strides = [operator.index(s) for s in strides]
            if len(strides) != 5 or any(s < 1 for s in strides):
                raise ValueError(f"subsample as strides needs 5 positive ints, got {strides}")
            axes = [torch.arange(0, size, s) for size, s in zip(FACTOR_SIZES, strides)]
            mesh = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], 1)
            return factors_to_index(mesh)

        self.indices = _select(subsample, NUM_IMAGES, seed, by_strides)
        """Full-grid flat index of each item (int64 tensor), or None when the data set is the whole grid."""
        self._cache = None
        if cache and self.device.type == "cpu":
            n_bytes = (self.image_size * self.image_size + 7) // 8
            self._cache = np.zeros((len(self), n_bytes), dtype=np.uint8)
            self._cached = np.zeros(len(self), dtype=bool)

    def __len__(self) -> int:
        return NUM_IMAGES if self.indices is None else int(self.indices.shape[0])

    def grid_index(self, indices: Indices) -> torch.Tensor:
        """Full-grid flat indices (B,) of the items at ``indices``."""
        pos = self._positions(indices)
        return pos if self.indices is None else self.indices[pos]

    def factors(self, indices: Indices) -> torch.Tensor:
        return index_to_factors(self.grid_index(indices))

    def factor_values(self, indices: Indices) -> torch.Tensor:
        return factors_to_values(self.factors(indices))

    def images(self, indices: Indices) -> torch.Tensor:
        pos = self._positions(indices)
        if self._cache is None:
            return render_sprites(index_to_factors(self.grid_index(pos)).to(self.device), self.image_size)
        S = self.image_size
        p = pos.numpy()
        missing = np.unique(p[~self._cached[p]])
        if missing.size:
            rendered = render_sprites(self.factors(missing), S).reshape(missing.size, S * S)
            self._cache[missing] = np.packbits(rendered.numpy().astype(np.uint8), axis=1)
            self._cached[missing] = True
        bits = np.unpackbits(self._cache[p], axis=1, count=S * S)
        return torch.from_numpy(bits).reshape(-1, 1, S, S).to(torch.float32)


class NpzSpritesDataset(_FactorImageDataset):
    """Images and factors held in memory (what :func:`load_dsprites_npz` returns)."""

    def __init__(self, imgs: torch.Tensor, classes: torch.Tensor, values: torch.Tensor, *,
                 image_size: int = 64, subsample=None, seed: int = 0,
                 factor_names: Sequence[str] = FACTOR_NAMES, factor_sizes: Optional[Sequence[int]] = None):
        native = int(imgs.shape[-1])
        self.image_size = operator.index(image_size)
        if self.image_size < 1 or native % self.image_size:
            raise ValueError(f"image_size must divide the stored size {native}, got {self.image_size}")
        self._imgs, self._classes, self._values = imgs, classes, values
        self.factor_names = tuple(factor_names)
        self.factor_sizes = tuple(int(s) for s in factor_sizes) if factor_sizes is not None else tuple(
            int(c) + 1 for c in classes.max(0).values)
        self.indices = _select(subsample, int(imgs.shape[0]), seed,
                               lambda strides: _subsample_mask_from_strides(classes, strides).nonzero().squeeze(1))
        """Row of the stored arrays of each item, or None when all rows are used."""

    def __len__(self) -> int:
        return int(self._imgs.shape[0]) if self.indices is None else int(self.indices.shape[0])

    def _rows(self, indices: Indices) -> torch.Tensor:
        pos = self._positions(indices)
        return pos if self.indices is None else self.indices[pos]

    def factors(self, indices: Indices) -> torch.Tensor:
        return self._classes[self._rows(indices)].to(torch.int64)

    def factor_values(self, indices: Indices) -> torch.Tensor:
        return self._values[self._rows(indices)].to(torch.float64)

    def images(self, indices: Indices) -> torch.Tensor:
        x = self._imgs[self._rows(indices)].to(torch.float32).unsqueeze(1)
        factor = int(self._imgs.shape[-1]) // self.image_size
        if factor > 1:   # box-average, then threshold: binary images at the lower resolution
            x = (torch.nn.functional.avg_pool2d(x, factor) >= 0.5).to(torch.float32)
        return x


def load_dsprites_npz(path, *, image_size: int = 64, subsample=None, seed: int = 0) -> NpzSpritesDataset:
    """Load the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (never downloads it).

    Reads ``imgs`` (N, 64, 64), ``latents_classes`` and ``latents_values`` (N, 6 with the constant
    colour column first, which is dropped; N x 5 is accepted as is). The result has the interface of
    :class:`SpritesDataset`; ``factor_sizes`` is (3, 6, 40, 32, 32) for the official file (the largest
    class index + 1 per factor in general). The whole image array is held in memory (about 3 GB for the
    official file, as uint8).
    """
    with np.load(path, allow_pickle=False) as data:
        missing = {"imgs", "latents_classes", "latents_values"} - set(data.files)
        if missing:
            raise KeyError(f"{path}: missing arrays {sorted(missing)} (has {sorted(data.files)})")
        imgs, classes, values = data["imgs"], data["latents_classes"], data["latents_values"]
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
        raise ValueError(f"{path}: imgs must have shape (N, S, S), got {imgs.shape}")
    n = imgs.shape[0]
    if classes.ndim != 2 or classes.shape[0] != n or values.shape != classes.shape:
        raise ValueError(f"{path}: latents_classes/latents_values must be (N, K) with N = {n}, got "
                         f"{classes.shape} and {values.shape}")
    if classes.shape[1] == 6:   # drop colour (always one value in dSprites)
        classes, values = classes[:, 1:], values[:, 1:]
    if classes.shape[1] != 5:
        raise ValueError(f"{path}: expected 5 factors (or 6 with colour), got {classes.shape[1]}")
    imgs_t = torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.uint8))
    return NpzSpritesDataset(imgs_t, torch.from_numpy(classes.astype(np.int64)),
                             torch.from_numpy(values.astype(np.float64)),
                             image_size=image_size, subsample=subsample, seed=seed)


def pinwheel(n: int, num_classes: int = 5, radial_std: float = 0.3, tangential_std: float = 0.05,
             rate: float = 0.25, generator: Optional[torch.Generator] = None, *, scale: float = 1.0,
             dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pinwheel (spiral clusters) of Johnson et al. (2016).

    Each point starts at (1 + radial_std * e1, tangential_std * e2) with e ~ N(0, I), and is rotated by
    its arm's angle 2 pi c / num_classes plus ``rate * exp(radial coordinate)`` (the spiral).

    Args:
        n: number of points; classes are balanced (counts differ by at most one) and shuffled.
        scale: multiplies the points (Johnson et al. use 10; 1 keeps them near the unit circle).

    Returns:
        ``(points (n, 2), labels (n,) int64 in [0, num_classes))``.
    """
    n = operator.index(n)
    num_classes = operator.index(num_classes)
    if n < 1 or num_classes < 1:
        raise ValueError(f"n and num_classes must be >= 1, got n={n}, num_classes={num_classes}")
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    feats = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    feats = feats * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    feats[:, 0] += 1.0
    angles = 2 * math.pi * labels.to(torch.float64) / num_classes + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    x = feats[:, 0] * c - feats[:, 1] * s
    y = feats[:, 0] * s + feats[:, 1] * c
    return (scale * torch.stack([x, y], 1)).to(dtype), labels
