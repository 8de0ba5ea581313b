"""tcestim.streaming's metrics in a Lightning validation loop.

    pip install lightning          # not a tcestim dependency; tested with lightning 2.6.6
    python examples/lightning_metrics.py

A small MLP VAE on procedural sprites: each validation epoch accumulates the exact decomposition and
the MIG of the whole validation set batch by batch; Lightning calls compute() and reset() at the
epoch's end and, under DDP, the states of all ranks are gathered first. The script checks the
logged values against the one-shot functions on the same encodings.
"""
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import tcestim
from tcestim import losses, metrics
from tcestim.experiments.data import SpritesDataset
from tcestim.experiments.models import MLPVAE, bernoulli_log_likelihood
from tcestim.streaming import ExactDecomposition, MutualInformationGap


class Module(L.LightningModule):
    def __init__(self, dataset_size: int):
        super().__init__()
        self.vae = MLPVAE(32 * 32, 6, output_shape=(1, 32, 32))
        self.dataset_size = dataset_size
        self.decomposition = ExactDecomposition()
        self.gap = MutualInformationGap(method="discrete")

    def training_step(self, batch, _):
        x, _ = batch
        mu, logvar = self.vae.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        log_px = bernoulli_log_likelihood(self.vae.decode(z), x)
        return losses.beta_tcvae(log_px, z, mu, logvar, dataset_size=self.dataset_size, tc_weight=6.0).loss

    def validation_step(self, batch, _):
        x, factors = batch
        mu, logvar = self.vae.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        self.decomposition.update(z, mu, logvar)
        self.gap.update(mu, logvar, factors)

    def on_validation_epoch_end(self):
        values = self.decomposition.compute()
        self.log_dict({f"val/{name}": values[name] for name in ("mi", "tc", "dimkl")})
        self.log("val/mig", self.gap.compute())
        self.last = {"decomposition": values, "z": torch.cat(self.decomposition.z) if isinstance(
            self.decomposition.z, list) else self.decomposition.z}
        self.decomposition.reset()
        self.gap.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main():
    torch.manual_seed(0)
    data = SpritesDataset(image_size=32, subsample=2048, seed=0)
    images, factors = data.images(torch.arange(2048)), data.all_factors()
    train = DataLoader(TensorDataset(images[:1536], factors[:1536]), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(images[1536:], factors[1536:]), batch_size=128)
    module = Module(dataset_size=1536)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train, val)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    print(logged)
    # The same numbers from the one-shot functions on the last epoch's encodings.
    with torch.no_grad():
        mu, logvar = module.vae.encode(images[1536:])
    z = module.last["z"]
    exact = tcestim.decompose_exact(z, mu, logvar, mu, logvar)
    assert abs(float(exact.tc.mean()) - logged["val/tc"]) < 1e-4, (float(exact.tc.mean()), logged["val/tc"])
    score, _ = metrics.mig(mu, None, factors[1536:], method="discrete")
    assert abs(float(score) - logged["val/mig"]) < 1e-6
    print("logged values equal decompose_exact and metrics.mig on the same encodings")


if __name__ == "__main__":
    main()
