"""tcestim.models: the reference VAEs (shapes, architecture, training signal) and the likelihoods."""
import math

import pytest
import torch
from torch import nn

from tcestim.experiments.data import SpritesDataset, pinwheel
from tcestim.experiments.models import (
    MLPVAE,
    ConvVAE,
    VAEOutput,
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    reparameterize,
)


@pytest.mark.parametrize("image_size", [64, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_vae_shapes(image_size, channels):
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=10, image_size=image_size, channels=channels)
    x = torch.rand(3, channels, image_size, image_size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 10)
    assert model.decode(mu).shape == x.shape
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.z.shape == (3, 10) and out.recon.shape == x.shape
    assert torch.equal(out.mu, mu) and torch.equal(out.logvar, logvar)


def test_conv_vae_architecture_follows_table_1a():
    model = ConvVAE(latent_dim=10, image_size=64)
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    fcs = [m for m in model.encoder if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [(1024, 128), (128, 20)]
    ups = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [64, 64, 32, 1]
    assert all(u.kernel_size == (4, 4) and u.stride == (2, 2) for u in ups)
    dfcs = [m for m in model.decoder if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in dfcs] == [(10, 128), (128, 1024)]
    small = ConvVAE(latent_dim=6, image_size=32)
    assert [c.out_channels for c in small.encoder if isinstance(c, nn.Conv2d)] == [32, 64, 64]
    assert [u.out_channels for u in small.decoder if isinstance(u, nn.ConvTranspose2d)] == [64, 32, 1]


def test_conv_vae_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        ConvVAE(image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        ConvVAE(image_size=8)
    with pytest.raises(ValueError, match="x must have shape"):
        ConvVAE(image_size=32).encode(torch.rand(2, 1, 64, 64))


def test_mlp_vae_shapes():
    model = MLPVAE(2, 3, hidden=(100,))
    x = torch.randn(5, 2)
    out = model(x)
    assert out.z.shape == out.mu.shape == out.logvar.shape == (5, 3)
    assert out.recon.shape == (5, 2)
    assert [m.out_features for m in model.encoder if isinstance(m, nn.Linear)] == [100, 6]
    assert [m.out_features for m in model.decoder if isinstance(m, nn.Linear)] == [100, 2]
    img = MLPVAE(64, 4, output_shape=(1, 8, 8))
    out = img(torch.rand(2, 1, 8, 8))
    assert out.recon.shape == (2, 1, 8, 8) and out.mu.shape == (2, 4)
    with pytest.raises(ValueError, match="input_dim"):
        img.encode(torch.rand(2, 10))
    with pytest.raises(ValueError, match="output_shape"):
        MLPVAE(64, 4, output_shape=(1, 8, 9))


def test_reparameterised_sample_is_deterministic_and_differentiable():
    model = MLPVAE(4, 2, hidden=(8,))
    x = torch.randn(6, 4)
    a = model(x, generator=torch.Generator().manual_seed(3))
    b = model(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.z, b.z)
    eps = torch.randn(a.mu.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.z, a.mu + torch.exp(0.5 * a.logvar) * eps)
    mu = torch.zeros(4, 2, requires_grad=True)
    logvar = torch.zeros(4, 2, requires_grad=True)
    reparameterize(mu, logvar).sum().backward()
    assert torch.equal(mu.grad, torch.ones(4, 2)) and logvar.grad.abs().sum() > 0


def test_bernoulli_log_likelihood_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    x = torch.randint(0, 2, (4, 1, 8, 8), generator=g).double()
    ours = bernoulli_log_likelihood(logits, x)
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    assert ours.shape == (4,)
    torch.testing.assert_close(ours, ref)
    # Fractional targets: the negative binary cross-entropy x log p + (1 - x) log(1 - p).
    xf = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, xf),
                               (xf * p.log() + (1 - xf) * (1 - p).log()).sum((1, 2, 3)))
    # Extreme logits stay finite.
    assert torch.isfinite(bernoulli_log_likelihood(torch.full((1, 3), 200.0), torch.zeros(1, 3))).all()
    with pytest.raises(ValueError, match="shape"):
        bernoulli_log_likelihood(logits, x[:, :, :4])


def test_gaussian_log_likelihood_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(5, 7, generator=g, dtype=torch.float64)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gaussian_log_likelihood(mean, x),
                               torch.distributions.Normal(mean, 1.0).log_prob(x).sum(1))
    torch.testing.assert_close(gaussian_log_likelihood(mean, x, log_scale=-1.3),
                               torch.distributions.Normal(mean, math.exp(-1.3)).log_prob(x).sum(1))
    log_scale = torch.linspace(-2, 1, 7, dtype=torch.float64, requires_grad=True)   # learned, per feature
    ours = gaussian_log_likelihood(mean, x, log_scale)
    torch.testing.assert_close(ours, torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).sum(1))
    ours.sum().backward()
    assert log_scale.grad is not None and torch.isfinite(log_scale.grad).all()


def test_conv_vae_reconstruction_improves_on_a_fixed_batch():
    torch.manual_seed(0)
    data = SpritesDataset(image_size=32, subsample=8, seed=1)
    x = data.images(torch.arange(8))
    model = ConvVAE(latent_dim=6, image_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        out = model(x, generator=g)
        loss = -bernoulli_log_likelihood(out.recon, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert min(losses[-5:]) < min(losses[:5])


def test_mlp_vae_reconstruction_improves_on_pinwheel():
    torch.manual_seed(0)
    x, _ = pinwheel(256, generator=torch.Generator().manual_seed(0))
    model = MLPVAE(2, 2, hidden=(100,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        out = model(x, generator=g)
        loss = -gaussian_log_likelihood(out.recon, x, log_scale=math.log(0.1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
