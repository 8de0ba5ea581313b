"""tcestim.data: the procedural dSprites grid, the npz loader on a fake file, pinwheel."""
import math

import numpy as np
import pytest
import torch

from tcestim.experiments import data as D
from tcestim.experiments.data import (
    FACTOR_SIZES,
    NUM_IMAGES,
    SpritesDataset,
    factors_to_index,
    index_to_factors,
    load_dsprites_npz,
    pinwheel,
    render_sprites,
)
from tcestim.testing import devices

SQUARE, ELLIPSE, HEART = 0, 1, 2


def _one(shape, scale, orientation, px, py, size=64):
    return render_sprites(torch.tensor([[shape, scale, orientation, px, py]]), size)[0, 0]


def _centre_px(pos_index, size):
    """Expected centre in pixel-index coordinates (pixel i covers [i, i + 1), its centre is i + 0.5)."""
    value = pos_index / 31
    return (D.MARGIN + value * (1 - 2 * D.MARGIN)) * size - 0.5


def test_dataset_interface_shapes_and_dtypes():
    ds = SpritesDataset()
    assert len(ds) == NUM_IMAGES == 737280 == math.prod(FACTOR_SIZES)
    assert ds.factor_sizes == (3, 6, 40, 32, 32)
    image, factors = ds[12345]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert factors.shape == (5,) and factors.dtype == torch.int64
    assert set(image.unique().tolist()) <= {0.0, 1.0} and image.sum() > 0
    assert torch.equal(ds[-1][1], torch.tensor([2, 5, 39, 31, 31]))
    batch = ds.images([0, 5, 737279])
    assert batch.shape == (3, 1, 64, 64) and batch.dtype == torch.float32
    assert torch.equal(batch[1], ds[5][0])
    values = ds.factor_values([0, 737279])
    assert values.dtype == torch.float64
    assert values[0].tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert values[1].tolist() == pytest.approx([3.0, 1.0, 2 * math.pi, 1.0, 1.0])
    small = SpritesDataset(image_size=32)
    assert small[7][0].shape == (1, 32, 32) and small.images(torch.arange(4)).shape == (4, 1, 32, 32)
    with pytest.raises(IndexError):
        ds[NUM_IMAGES]
    with pytest.raises(IndexError):
        ds.images([NUM_IMAGES])
    with pytest.raises(ValueError, match="image_size"):
        SpritesDataset(image_size=2)


def test_index_factor_mapping_is_bijective():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, NUM_IMAGES, (5000,), generator=g)
    f = index_to_factors(idx)
    assert bool((f >= 0).all()) and bool((f < torch.tensor(FACTOR_SIZES)).all())
    assert torch.equal(factors_to_index(f), idx)
    # Distinct indices give distinct factor tuples (mixed radix, pos_y fastest like the official file).
    uniq = torch.unique(idx)
    assert torch.unique(index_to_factors(uniq), dim=0).shape[0] == uniq.shape[0]
    assert index_to_factors(1).tolist() == [[0, 0, 0, 0, 1]]
    assert index_to_factors(32).tolist() == [[0, 0, 0, 1, 0]]
    assert index_to_factors(32 * 32 * 40 * 6).tolist() == [[1, 0, 0, 0, 0]]
    f_random = torch.stack([torch.randint(0, s, (300,), generator=g) for s in FACTOR_SIZES], 1)
    assert torch.equal(index_to_factors(factors_to_index(f_random)), f_random)
    with pytest.raises(ValueError):
        factors_to_index(torch.tensor([[3, 0, 0, 0, 0]]))


def _reference_render(factors, size):
    """Straightforward float64 rendering over the whole image, one sprite at a time."""
    out = torch.zeros(len(factors), size, size)
    grid = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    px, py = grid.unsqueeze(0), grid.unsqueeze(1)                  # columns, rows
    for i, f in enumerate(factors.tolist()):
        v = D.factors_to_values(torch.tensor([f]))[0].tolist()
        half = v[1] * D.HALF_SIZE
        cx, cy = (D.MARGIN + v[k] * (1 - 2 * D.MARGIN) for k in (3, 4))
        x, y = (px - cx) / half, (cy - py) / half
        u = math.cos(v[2]) * x + math.sin(v[2]) * y
        w = -math.sin(v[2]) * x + math.cos(v[2]) * y
        if f[0] == SQUARE:
            inside = torch.maximum(u.abs(), w.abs()) <= 1
        elif f[0] == ELLIPSE:
            inside = u ** 2 + (w / D.ELLIPSE_AXIS) ** 2 <= 1
        else:
            hx, hy = u * 1.139, w * 1.139 + 0.118
            inside = (hx ** 2 + hy ** 2 - 1) ** 3 - hx ** 2 * hy ** 3 <= 0
        out[i] = inside.float()
    return out


def test_rendering_matches_a_whole_image_reference():
    g = torch.Generator().manual_seed(4)
    idx = torch.cat([torch.randint(0, NUM_IMAGES, (60,), generator=g),
                     factors_to_index(torch.tensor([[s, 5, o, p, q] for s in range(3) for o in (5, 15)
                                                    for p, q in ((0, 0), (31, 31), (0, 31))]))])
    f = index_to_factors(idx)
    for size in (64, 32, 16):
        ours = render_sprites(f, size)[:, 0]
        ref = _reference_render(f, size)
        # float32 vs float64 may flip a pixel centre lying on the outline, nothing more.
        assert (ours != ref).sum((1, 2)).max().item() <= 2
        assert (ours != ref).float().mean().item() < 1e-3


def test_centroid_follows_position_factors():
    for size in (64, 32):
        xs, ys = [], []
        for p in range(32):
            img = _one(SQUARE, 5, 0, p, 31 - p, size)
            rows, cols = img.nonzero(as_tuple=True)
            xs.append(cols.double().mean().item())
            ys.append(rows.double().mean().item())
            assert xs[-1] == pytest.approx(_centre_px(p, size), abs=0.5)
            assert ys[-1] == pytest.approx(_centre_px(31 - p, size), abs=0.5)
        # pos_x moves left to right, pos_y top to bottom (decreasing here). A position step is 1.16
        # pixels at 64 x 64 (strictly monotone centroids) and 0.58 at 32 x 32 (monotone).
        strict = size == 64
        assert all(b > a if strict else b >= a for a, b in zip(xs, xs[1:]))
        assert all(b < a if strict else b <= a for a, b in zip(ys, ys[1:]))
        assert xs[-1] - xs[0] == pytest.approx(ys[0] - ys[-1]) and xs[-1] - xs[0] > 0.5 * size


def test_area_grows_with_scale_and_matches_geometry():
    for shape in (SQUARE, ELLIPSE, HEART):
        counts = [_one(shape, s, 0, 16, 16).sum().item() for s in range(6)]
        assert all(b > a for a, b in zip(counts, counts[1:])), (shape, counts)
    # Square of half-size 0.15 * scale image widths: (2 * 0.15 * 64)^2 = 368.64 pixels at scale 1.
    half_px = D.HALF_SIZE * 64
    # Counting pixel centres misses or adds at most a half-pixel band along the outline.
    for scale, side in ((5, 2 * half_px), (0, half_px)):
        assert abs(_one(SQUARE, scale, 0, 16, 16).sum().item() - side ** 2) <= 0.5 * 4 * side
    # Square vs ellipse with the same major half-axis: area ratio 4 / (pi * minor/major).
    ratio = _one(SQUARE, 5, 0, 16, 16).sum().item() / _one(ELLIPSE, 5, 0, 16, 16).sum().item()
    assert ratio == pytest.approx(4 / (math.pi * D.ELLIPSE_AXIS), rel=0.05)
    # The heart's area: 3.66 in curve units / 1.139^2 -> 2.82 half-size^2 units.
    assert _one(HEART, 5, 0, 16, 16).sum().item() == pytest.approx(2.821 * half_px ** 2, rel=0.06)


def test_orientation_rotates_the_ellipse_and_keeps_area():
    base = _one(ELLIPSE, 5, 0, 16, 16).sum().item()
    values = D.factor_value_table()[2]
    for o in (0, 3, 7, 10, 16, 25, 33):
        img = _one(ELLIPSE, 5, o, 16, 16)
        assert img.sum().item() == pytest.approx(base, rel=0.06)
        rows, cols = img.nonzero(as_tuple=True)
        x = cols.double() - cols.double().mean()
        y = -(rows.double() - rows.double().mean())             # y up: counter-clockwise on screen
        cov = torch.stack([torch.stack([(x * x).mean(), (x * y).mean()]),
                           torch.stack([(x * y).mean(), (y * y).mean()])])
        evals, evecs = torch.linalg.eigh(cov)
        major = evecs[:, 1]
        angle = math.atan2(major[1].item(), major[0].item()) % math.pi
        expected = values[o].item() % math.pi
        diff = min(abs(angle - expected), math.pi - abs(angle - expected))
        assert diff < math.radians(3), (o, angle, expected)
    # Orientation 0 and 2 pi are both on the grid (as in dSprites) and render the same image.
    assert torch.equal(_one(HEART, 3, 0, 5, 9), _one(HEART, 3, 39, 5, 9))
    # The heart is upright (tip down) at orientation 0: more mass in the top half.
    heart = _one(HEART, 5, 0, 16, 16)
    rows = heart.nonzero(as_tuple=True)[0].double()
    assert rows.mean().item() < _centre_px(16, 64)


def test_sprites_stay_inside_the_image():
    corners = [(0, 0), (0, 31), (31, 0), (31, 31)]
    f = torch.tensor([[shape, 5, o, px, py] for shape in range(3) for o in range(40) for px, py in corners])
    for size in (64, 32):
        imgs = render_sprites(f, size)[:, 0]
        centred = f.clone()
        centred[:, 3:] = 16
        ref = render_sprites(centred, size)[:, 0].sum((1, 2))
        ratio = imgs.sum((1, 2)) / ref                         # nothing cut off (up to rasterisation)
        assert bool((ratio > 0.85).all()) and bool((ratio < 1.15).all())


def test_resolutions_agree():
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, NUM_IMAGES, (64,), generator=g)
    f = index_to_factors(idx)
    big, small = render_sprites(f, 64), render_sprites(f, 32)
    pooled = (torch.nn.functional.avg_pool2d(big, 2) >= 0.5).float()
    assert (pooled == small).float().mean().item() > 0.97
    assert torch.allclose(small.sum((1, 2, 3)) * 4, big.sum((1, 2, 3)), rtol=0.25)


def test_determinism_cache_and_batch_path():
    idx = torch.tensor([3, 99999, 3, 500000, 737279])
    a = SpritesDataset(image_size=32)
    cached = SpritesDataset(image_size=32, cache=True)
    first = cached.images(idx)
    assert torch.equal(first, a.images(idx))
    assert torch.equal(cached.images(idx), first)                     # now served from the cache
    assert torch.equal(render_sprites(index_to_factors(idx), 32), a.images(idx))
    for i in idx.tolist():
        img, fac = a[i]
        assert torch.equal(img, a.images([i])[0]) and torch.equal(fac, index_to_factors(i)[0])


def test_subsampling():
    a = SpritesDataset(subsample=1000, seed=3, image_size=32)
    b = SpritesDataset(subsample=1000, seed=3, image_size=32)
    c = SpritesDataset(subsample=1000, seed=4, image_size=32)
    assert len(a) == 1000 and torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.equal(a.indices, torch.unique(a.indices))         # sorted, distinct
    assert torch.equal(a.all_factors(), index_to_factors(a.indices))
    assert torch.equal(a[10][0], render_sprites(index_to_factors(a.indices[10:11]), 32)[0])
    s = SpritesDataset(subsample=(1, 1, 4, 4, 4), image_size=8)
    assert len(s) == 3 * 6 * 10 * 8 * 8
    f = s.all_factors()
    assert bool((f[:, 2:] % 4 == 0).all()) and f[:, 2].unique().numel() == 10
    seen = torch.cat([fac for _, fac in s.batches(1000, generator=torch.Generator().manual_seed(0))])
    assert seen.shape == f.shape
    assert torch.equal(torch.unique(factors_to_index(seen)), factors_to_index(f))
    with pytest.raises(ValueError):
        SpritesDataset(subsample=0)
    with pytest.raises(ValueError):
        SpritesDataset(subsample=(1, 2))


def _fake_npz(path, n=24, columns=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, NUM_IMAGES, (n,), generator=g)
    f = index_to_factors(idx)
    imgs = render_sprites(f, 64)[:, 0].to(torch.uint8).numpy()
    classes = f.numpy()
    values = D.factors_to_values(f).numpy()
    if columns == 6:   # the official layout: a constant colour column first
        classes = np.concatenate([np.zeros((n, 1), np.int64), classes], 1)
        values = np.concatenate([np.ones((n, 1)), values], 1)
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=values)
    return imgs, f, D.factors_to_values(f)


def test_npz_loader_on_a_fake_file(tmp_path):
    path = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    imgs, f, values = _fake_npz(path)
    ds = load_dsprites_npz(path)
    assert len(ds) == 24
    assert ds.factor_sizes == tuple(int(m) + 1 for m in f.max(0).values)
    image, fac = ds[5]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert fac.dtype == torch.int64 and torch.equal(fac, f[5])
    assert torch.equal(ds.images(torch.arange(24))[:, 0], torch.from_numpy(imgs).float())
    assert torch.equal(ds.all_factors(), f)
    assert torch.allclose(ds.factor_values([0, 23]), values[[0, 23]])
    small = load_dsprites_npz(path, image_size=32)
    assert small.images([0, 1]).shape == (2, 1, 32, 32)
    agree = (small.images(torch.arange(24)) == render_sprites(f, 32)).float().mean().item()
    assert agree > 0.97
    sub = load_dsprites_npz(path, subsample=10, seed=0)
    assert len(sub) == 10 and torch.equal(sub.all_factors(), f[sub.indices])
    five = tmp_path / "five.npz"
    _fake_npz(five, n=8, columns=5, seed=1)
    assert len(load_dsprites_npz(five)) == 8
    bad = tmp_path / "bad.npz"
    np.savez(bad, imgs=imgs)
    with pytest.raises(KeyError, match="latents_classes"):
        load_dsprites_npz(bad)


def test_pinwheel():
    x, y = pinwheel(1000, num_classes=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert y.shape == (1000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [200] * 5
    x2, y2 = pinwheel(1000, num_classes=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    radius = x.norm(dim=1)
    assert radius.mean().item() == pytest.approx(1.0, abs=0.1)
    # Arms are 2 pi / C apart: the angles of the class means step by 2 pi / 5.
    means = torch.stack([x[y == c].mean(0) for c in range(5)])
    angles = torch.atan2(means[:, 1], means[:, 0])
    steps = (angles.roll(-1) - angles) % (2 * math.pi)
    assert torch.allclose(steps, torch.full((5,), 2 * math.pi / 5), atol=0.1)
    x3, y3 = pinwheel(7, num_classes=3, scale=10.0)
    assert x3.shape == (7, 2) and sorted(torch.bincount(y3).tolist()) == [2, 2, 3]


@pytest.mark.parametrize("device", devices())
def test_rendering_on_every_device(device):
    idx = torch.randperm(NUM_IMAGES, generator=torch.Generator().manual_seed(1))[:512]
    on_device = SpritesDataset(image_size=32, device=device, cache=True)
    images = on_device.images(idx)
    assert images.device.type == device and images.shape == (512, 1, 32, 32)
    reference = SpritesDataset(image_size=32).images(idx)
    # cos/sin may round differently on another device: a pixel centre on a sprite's edge may flip
    assert (images.cpu() != reference).float().mean() < 1e-3
    assert float(images.sum()) > 0.02 * images.numel()


def test_factor_strides_select_the_grid():
    data = SpritesDataset(image_size=16, subsample=(1, 1, 2, 2, 2))
    assert len(data) == 3 * 6 * 20 * 16 * 16
    factors = data.all_factors()
    for k, stride in enumerate((1, 1, 2, 2, 2)):
        assert bool((factors[:, k] % stride == 0).all())
        assert len(torch.unique(factors[:, k])) == FACTOR_SIZES[k] // stride
