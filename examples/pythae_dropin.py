"""pythae's β-TCVAE with tcestim's estimator swapped in, and the numbers before and after on one batch.

    pip install pythae            # not a tcestim dependency; tested with pythae 0.1.2
    python examples/pythae_dropin.py

1. pythae's own TC term is reproduced by tcestim ("mss-legacy" for use_mss=True, "mws" for
   use_mss=False) on the same batch: the script stops if it is not.
2. ``StratifiedBetaTCVAE`` subclasses pythae's model and replaces the decomposition inside its
   loss by ``tcestim.decompose`` (the stratified estimator); everything else is pythae's.
"""
import torch
from pythae.models import BetaTCVAE, BetaTCVAEConfig

import tcestim

B, D, N, PIXELS = 256, 10, 60_000, 64


class StratifiedBetaTCVAE(BetaTCVAE):
    """pythae's BetaTCVAE whose MI / TC / dim-KL come from tcestim's stratified estimator."""

    def loss_function(self, recon_x, x, mu, log_var, z, dataset_size):
        recon = 0.5 * (recon_x.reshape(x.shape[0], -1) - x.reshape(x.shape[0], -1)).square().sum(-1)
        d = tcestim.decompose(z, mu, log_var, dataset_size=dataset_size)      # the one changed line
        reg = self.alpha * d.mi + self.beta * d.tc + self.gamma * d.dimkl
        return (recon + reg).mean(0), recon.mean(0), reg.mean(0)


def tc_term(model, mu, log_var, z):
    """pythae's mean TC term on a batch: its loss with alpha = gamma = 0, beta = 1 and no reconstruction error."""
    x = torch.zeros(len(z), PIXELS)
    _, _, reg = model.loss_function(x, x, mu, log_var, z, N)
    return reg


def main():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, D, generator=g)
    log_var = torch.rand(B, D, generator=g) * 2.0 - 3.0
    z = mu + torch.randn(B, D, generator=g) * (0.5 * log_var).exp()
    print(f"B = {B}, D = {D}, N = {N}; float32")
    for use_mss, ours in ((True, "mss-legacy"), (False, "mws")):
        config = BetaTCVAEConfig(input_dim=(PIXELS,), latent_dim=D, alpha=0.0, beta=1.0, gamma=0.0,
                                 use_mss=use_mss, reconstruction_loss="mse")
        theirs = tc_term(BetaTCVAE(config), mu, log_var, z)
        mine = tcestim.total_correlation(z, mu, log_var, dataset_size=N, estimator=ours)
        torch.testing.assert_close(mine, theirs.to(mine.dtype), rtol=1e-4, atol=1e-4)
        print(f"pythae use_mss={use_mss!s:5}: TC {float(theirs):9.4f}   tcestim estimator={ours!r}: {float(mine):9.4f}")
    config = BetaTCVAEConfig(input_dim=(PIXELS,), latent_dim=D, alpha=0.0, beta=1.0, gamma=0.0, use_mss=True)
    swapped = tc_term(StratifiedBetaTCVAE(config), mu, log_var, z)
    print(f"swapped in (stratified):   TC {float(swapped):9.4f}")


if __name__ == "__main__":
    main()
