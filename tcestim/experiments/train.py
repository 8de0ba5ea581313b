"""`python -m tcestim train ...` and `python -m tcestim evaluate CHECKPOINT`.

Trains a reference VAE (tcestim.models) on procedural dSprites or the pinwheel toy set with one of
the objectives of tcestim.losses, and evaluates it: the exact KL decomposition of the aggregate
posterior of an evaluation set (tcestim.decompose_exact), MIG (Chen et al.'s estimator and the
discretised one), Hoyer sparsity and TC of means vs samples. Writes into the output folder:

    checkpoint.pt     model, prior, optimiser, sampler and RNG states, the arguments and the step
                      (written atomically at every evaluation; plain data, loaded weights-only)
    metrics.jsonl     one JSON object per evaluation, appended after the checkpoint it describes

An existing non-empty folder is refused unless ``--resume`` (continue from its checkpoint) or
``--overwrite`` is given. Batches are distinct data points drawn from shuffled epochs.
    curves.png        loss and MI / TC / dimension-wise KL over training
    traversals.png    latent traversals (images) or the latent space (pinwheel)
    mi_matrix.png     I(z_j; v_k) per latent and factor (Chen et al. fig. 4 style)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch

from tcestim import losses, metrics, priors
from tcestim.bank import DatasetBank, MemoryBank
from tcestim.exact import decompose_exact
from tcestim.experiments import data as datasets
from tcestim.experiments import models, runs
from tcestim.experiments.plotting import figure, save
from tcestim.weights import ESTIMATORS

OBJECTIVES = ("beta-vae", "beta-tcvae", "rtc-vae", "decomposition")
PRIORS = ("normal", "anisotropic", "student-t", "spike-slab")


# ---------------------------------------------------------------------------------------------
# building blocks

class PinwheelData:
    """The pinwheel points with the interface of the sprites data sets (images = 2-D points)."""

    factor_names = ("arm",)

    def __init__(self, n: int, seed: int, device: str = "cpu"):
        points, labels = datasets.pinwheel(n, generator=torch.Generator().manual_seed(seed))
        self.points, self.labels = points.float().to(device), labels.long().reshape(-1, 1)
        self.factor_sizes = (int(self.labels.max()) + 1,)

    def __len__(self):
        return len(self.points)

    def images(self, indices):
        return self.points[indices]

    def factors(self, indices):
        return self.labels[indices]


def build_data(args):
    """The data set, its batches rendered on (or moved to) ``args.device``."""
    device = getattr(args, "device", "cpu")
    if args.data == "pinwheel":
        return PinwheelData(args.subsample or 20_000, args.seed, device)
    strides = getattr(args, "factor_strides", None)
    data = datasets.SpritesDataset(image_size=args.image_size, subsample=tuple(strides) if strides else args.subsample,
                                   seed=args.seed, cache=True, device=device)
    data.factor_names = datasets.FACTOR_NAMES
    data.factor_sizes = datasets.FACTOR_SIZES
    return data


def build_model(args):
    if args.data == "pinwheel":
        return models.MLPVAE(2, args.latent_dim, hidden=(128, 128))
    size = args.image_size * args.image_size
    if args.model == "mlp":
        return models.MLPVAE(size, args.latent_dim, hidden=(512, 256),
                             output_shape=(1, args.image_size, args.image_size))
    if args.model == "paper-mlp":  # Chen et al. 2018's dSprites model
        return models.MLPVAE(size, args.latent_dim, hidden=(1200, 1200), decoder_hidden=(1200, 1200, 1200),
                             decoder_activation="tanh", output_shape=(1, args.image_size, args.image_size))
    return models.ConvVAE(latent_dim=args.latent_dim, image_size=args.image_size)


def log_likelihood(args, recon, x):
    if args.data == "pinwheel":
        return models.gaussian_log_likelihood(recon, x, log_scale=math.log(0.1))
    return models.bernoulli_log_likelihood(recon, x)


def build_prior(args):
    """None for the normal prior, else the learnable prior module on ``args.device``."""
    if args.prior == "normal":
        return None
    if args.prior == "anisotropic":
        prior = priors.AnisotropicGaussian(args.latent_dim)
    elif args.prior == "student-t":
        prior = priors.FactorisedStudentT(args.latent_dim, nu=3.0)
    else:
        prior = priors.SpikeAndSlab(args.latent_dim, gamma=0.8)
    return prior.to(getattr(args, "device", "cpu"))


def objective(args, prior, log_px, out, dataset_size, bank=None):
    """The command line takes each paper's own symbols (--alpha, --beta, --gamma, --eta); this maps
    them onto tcestim.losses' weights, as the table in that module's docstring says."""
    z, mu, logvar = out.z, out.mu, out.logvar
    if args.objective == "beta-vae":
        return losses.beta_vae(log_px, mu, logvar, kl_weight=args.beta)
    if args.objective == "beta-tcvae":
        return losses.beta_tcvae(log_px, z, mu, logvar, dataset_size=dataset_size, mi_weight=args.alpha,
                                 tc_weight=args.beta, dimkl_weight=args.gamma, estimator=args.estimator,
                                 prior=prior, bank=bank)
    if args.objective == "rtc-vae":
        return losses.rtc_vae(log_px, z, mu, logvar, dataset_size=dataset_size, tc_weight=1.0 + args.beta,
                              variance_weight=args.eta, estimator=args.estimator, prior=prior, bank=bank)
    return losses.decomposition_objective(log_px, z, mu, logvar, dataset_size=dataset_size, kl_weight=args.beta,
                                          divergence_weight=args.alpha, divergence=args.divergence, prior=prior,
                                          estimator=args.estimator, bank=bank)


def build_bank(args, size: int):
    """None, a FIFO MemoryBank of --bank-size encodings, or a DatasetBank with a slot per data point."""
    if args.bank == "fifo":
        return MemoryBank(args.bank_size, args.latent_dim)
    if args.bank == "dataset":
        return DatasetBank(size, args.latent_dim)
    return None


# ---------------------------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def encode_all(model, data, indices, batch_size=512):
    mus, logvars = [], []
    for start in range(0, len(indices), batch_size):
        mu, logvar = model.encode(data.images(indices[start:start + batch_size]))
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def evaluate(model, data, args, prior, generator) -> dict:
    """Exact decomposition over an evaluation set, its ELBO, MIG (both methods), Hoyer, TC means vs samples.

    The ELBO (nats per data point) is mean log p(x|z) at the same z minus the exact KL of the
    decomposition (mi + tc + dimkl).
    """
    model.eval()
    n = args.eval_points
    indices = torch.randperm(len(data), generator=generator)[:n]
    mu, logvar = encode_all(model, data, indices)
    # drawn on the CPU whatever the device, so a checkpoint evaluates to the same numbers on any device
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    d = decompose_exact(z, mu, logvar, mu, logvar, prior=prior, progress=False)
    log_px = torch.cat([log_likelihood(args, model.decode(z[i:i + 512]), data.images(indices[i:i + 512]))
                        for i in range(0, n, 512)])
    factors = data.factors(indices)
    varying = [k for k, size in enumerate(data.factor_sizes) if len(torch.unique(factors[:, k])) > 1]
    chen, chen_details = metrics.mig(mu, logvar, factors[:, varying], method="chen",
                                     num_samples=min(n, 4096), generator=generator)
    discrete, _ = metrics.mig(mu, None, factors[:, varying], method="discrete")
    paper = [k for k in varying if data.factor_names[k] != "shape"]  # Chen et al.'s protocol leaves shape out
    mig_paper = chen if paper == varying else (
        metrics.mig(mu, logvar, factors[:, paper], method="chen", num_samples=min(n, 4096),
                    generator=torch.Generator().manual_seed(args.seed + 4)).score if paper else math.nan)
    result = {
        **{k: float(v) for k, v in d.means().items()},
        **{f"{k}_se": float(v) for k, v in d.standard_errors().items()},
        "elbo": float(log_px.mean()) - sum(d.means().values()),
        "mig_chen": float(chen),
        "mig_discrete": float(discrete),
        "mig_paper": float(mig_paper),
        "mi_matrix": chen_details.mi.tolist(),
        "factor_names": [data.factor_names[k] for k in varying],
        "hoyer": float(metrics.hoyer_sparsity(mu)) if mu.shape[1] > 1 else float("nan"),
        "tc_of_means": float(metrics.tc_of_means_vs_samples(z, mu, logvar).tc_of_means)
        if n > mu.shape[1] else float("nan"),
        "eval_points": n,
    }
    model.train()
    return result


# ---------------------------------------------------------------------------------------------
# plots

def plot_curves(history, path):
    steps = [h["step"] for h in history]
    fig, axes = figure(1, 2, figsize=(11, 4))
    axes[0].plot(steps, [h["loss"] for h in history], marker="o")
    axes[0].set_title("training loss (nats)")
    for key in ("mi", "tc", "dimkl"):
        axes[1].plot(steps, [h[key] for h in history], marker="o", label=key)
    axes[1].set_title("exact decomposition of the evaluation set (nats)")
    axes[1].legend()
    for ax in axes:
        ax.set_xlabel("step")
    save(fig, path)


def plot_mi_matrix(result, path):
    mi = torch.tensor(result["mi_matrix"]).numpy()
    fig, ax = figure(figsize=(1.2 + 0.9 * mi.shape[1], 1.0 + 0.4 * mi.shape[0]))
    image = ax.imshow(mi, aspect="auto", cmap="viridis")
    ax.set_xticks(range(mi.shape[1]), result["factor_names"], rotation=30)
    ax.set_yticks(range(mi.shape[0]), [f"z{j}" for j in range(mi.shape[0])])
    ax.set_title(f"I(z_j; v_k), MIG = {result['mig_chen']:.3f}")
    fig.colorbar(image, ax=ax, label="nats")
    save(fig, path)


@torch.no_grad()
def plot_traversals(model, data, args, path, generator):
    model.eval()
    if args.data == "pinwheel":
        idx = torch.randperm(len(data), generator=generator)[:2000]
        points, labels = data.images(idx).cpu().numpy(), data.factors(idx)[:, 0].numpy()
        mu = model.encode(data.images(idx))[0].cpu().numpy()
        fig, axes = figure(1, 2, figsize=(10, 4.5))
        axes[0].scatter(points[:, 0], points[:, 1], c=labels, s=3, cmap="tab10")
        axes[0].set_title("data")
        axes[1].scatter(mu[:, 0], mu[:, 1] if mu.shape[1] > 1 else 0 * mu[:, 0], c=labels, s=3, cmap="tab10")
        axes[1].set_title("encoder means (z0, z1)")
    else:
        anchor = model.encode(data.images(torch.randint(len(data), (1,), generator=generator)))[0][0]
        values = torch.linspace(-2.5, 2.5, 9, device=anchor.device)
        D = anchor.shape[0]
        fig, axes = figure(D, len(values), figsize=(len(values) * 0.9, D * 0.9))
        for j in range(D):
            codes = anchor.repeat(len(values), 1)
            codes[:, j] = values
            images = torch.sigmoid(model.decode(codes)).cpu().numpy()
            for c in range(len(values)):
                ax = axes[j][c] if D > 1 else axes[c]
                ax.imshow(images[c, 0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            (axes[j][0] if D > 1 else axes[0]).set_ylabel(f"z{j}", rotation=0, labelpad=12)
        fig.suptitle("latent traversals (-2.5 .. 2.5 around one encoding)")
    save(fig, path, dpi=80)
    model.train()


# ---------------------------------------------------------------------------------------------
# commands

# Options that may differ when a run is resumed (they do not change what is computed).
OWNED_FILES = ("checkpoint.pt", "metrics.jsonl", "curves.png", "traversals.png", "mi_matrix.png")
"""What ``train`` writes into --out (and all --overwrite may delete)."""

RESUMABLE = ("steps", "out", "resume", "overwrite", "no_progress", "no_plots", "threads", "explicit")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    weight = runs.non_negative_float
    parser.add_argument("--data", choices=("sprites", "pinwheel"), default="sprites")
    parser.add_argument("--model", choices=("conv", "mlp", "paper-mlp"), default="conv",
                        help="for image data; paper-mlp: β-TCVAE paper's MLP (encoder 1200-1200 ReLU, decoder "
                             "1200-1200-1200 Tanh)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="beta-tcvae")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="stratified", help="TC estimator")
    parser.add_argument("--divergence", choices=losses.DIVERGENCES, default="kl",
                        help="for --objective decomposition")
    parser.add_argument("--beta", type=weight, default=6.0,
                        help="the paper's β of the objective (KL weight for beta-vae and decomposition, TC weight "
                             "for beta-tcvae, extra TC weight for rtc-vae)")
    parser.add_argument("--alpha", type=weight, default=1.0,
                        help="β-TCVAE's MI weight; the divergence weight of decomposition")
    parser.add_argument("--gamma", type=weight, default=1.0, help="β-TCVAE's dimension-wise KL weight")
    parser.add_argument("--eta", type=weight, default=0.0, help="RTC-VAE variance penalty")
    parser.add_argument("--bank", choices=("none", "fifo", "dataset"), default="none",
                        help="past encodings as extra mixture components: a FIFO of --bank-size, or one slot "
                             "per data point (the exact aggregate posterior up to staleness)")
    parser.add_argument("--bank-size", type=runs.positive_int, default=4096, help="for --bank fifo")
    parser.add_argument("--bank-refresh", type=runs.int_at_least(0), default=0,
                        help="for --bank dataset: re-encode this many more slots per step (no gradient), in a "
                             "rotating order, against staleness (N / 5 took the bias from -3.4%% to -0.8%%)")
    parser.add_argument("--prior", choices=PRIORS, default="normal")
    parser.add_argument("--latent-dim", type=runs.positive_int, default=10)
    parser.add_argument("--image-size", type=runs.int_at_least(4), default=64)
    parser.add_argument("--subsample", type=runs.int_at_least(2), default=None,
                        help="number of data points (default: all; pinwheel: 20000)")
    parser.add_argument("--factor-strides", type=runs.positive_int, nargs=5, default=None,
                        metavar=("SHAPE", "SCALE", "ORIENTATION", "X", "Y"),
                        help="sprites: keep every k-th value of each factor (1 1 2 2 2: 3 x 6 x 20 x 16 x 16 = 92 160 "
                             "images); not with --subsample")
    parser.add_argument("--steps", type=runs.positive_int, default=5000, help="total optimiser steps")
    parser.add_argument("--batch-size", type=runs.int_at_least(2), default=256,
                        help="distinct data points per step (batches are drawn from shuffled epochs)")
    parser.add_argument("--lr", type=runs.positive_float, default=1e-3)
    parser.add_argument("--eval-every", type=runs.positive_int, default=1000)
    parser.add_argument("--eval-points", type=runs.int_at_least(2), default=None,
                        help="evaluation set size (default: min(4096, dataset size))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=runs.positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", type=runs.device, default="cpu",
                        help="cpu, cuda or cuda:N: where the model, the batches (rendered there), the bank and the "
                             "estimator run")
    parser.add_argument("--out", default="runs/tcestim")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete what --out holds and start afresh")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-plots", action="store_true")


def check_plotting(args) -> None:
    if args.no_plots:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("error: plots need matplotlib (pip install matplotlib), or pass --no-plots") from None


def _check_sizes(args, n: int) -> None:
    if getattr(args, "factor_strides", None) and (args.subsample is not None or args.data != "sprites"):
        raise SystemExit("error: --factor-strides is for --data sprites, and not with --subsample")
    if args.batch_size > n:
        raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the data set ({n} points)")
    if args.bank_refresh and args.bank != "dataset":
        raise SystemExit("error: --bank-refresh is for --bank dataset")
    if args.bank != "none":
        unused = args.objective == "beta-vae" or (args.objective == "decomposition" and args.divergence != "kl")
        if unused or args.estimator != "stratified":
            raise SystemExit("error: --bank needs an objective that estimates q(z) from the minibatch (beta-tcvae, "
                             "rtc-vae, or decomposition with --divergence kl) and --estimator stratified")
        if args.bank == "fifo" and args.batch_size + args.bank_size > n:
            raise SystemExit(f"error: --batch-size + --bank-size ({args.batch_size + args.bank_size}) must fit in "
                             f"the data set ({n} points)")
    if args.eval_points is None:
        args.eval_points = min(4096, n)
    elif args.eval_points > n:
        raise SystemExit(f"error: --eval-points {args.eval_points} is larger than the data set ({n} points)")


def _resumed_args(args, saved: dict):
    """The run's own arguments, with what may change on resume taken from the command line; an
    option given explicitly with another value than the run's is an error, not silently ignored."""
    # From the command line, `explicit` names the options the user typed; a namespace built in Python
    # means every value it holds.
    explicit = set(args.explicit) if hasattr(args, "explicit") else set(vars(args))
    for key, value in saved.items():
        if key in RESUMABLE or key not in explicit:
            continue
        if getattr(args, key) != value:
            raise SystemExit(f"error: --{key.replace('_', '-')} {getattr(args, key)!r} differs from the run being "
                             f"resumed ({value!r}); on --resume only --steps and the output options may change")
    merged = dict(saved)
    merged.setdefault("device", getattr(args, "device", "cpu"))  # runs from before --device existed
    merged.update({key: getattr(args, key) for key in RESUMABLE if hasattr(args, key)})
    if "steps" not in explicit:
        merged["steps"] = saved["steps"]
    return SimpleNamespace(**merged)


class EpochSampler:
    """Batches of distinct data points: each epoch is a fresh permutation of the N indices, consumed
    batch by batch (the last partial batch of an epoch is dropped), so no point appears twice in a
    batch, as the stratified weights assume. Its state can be saved and restored exactly."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size = size, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._epoch_start = self.generator.get_state()
        self._order = torch.randperm(self.size, generator=self.generator)

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.size:
            self._new_epoch()
        batch = self._order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "epoch_start": self._epoch_start}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["epoch_start"])
        self.epoch = state["epoch"] - 1
        self._new_epoch()
        self.position = state["position"]


def train(args) -> dict:
    """Trains as ``args`` says (``--resume`` continues the run in ``--out``); returns the final evaluation.

    Files in ``--out`` are written atomically, the checkpoint before the metrics line that describes
    it; a NaN or infinite loss stops the run with :class:`~tcestim.experiments.runs.TrainingDiverged`
    and leaves the last good checkpoint in place.
    """
    runs.check_output(args.out, resume=args.resume, overwrite=args.overwrite, owned=OWNED_FILES)
    checkpoint_path = os.path.join(args.out, "checkpoint.pt")
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    state = None
    if args.resume:
        state = runs.load_checkpoint(checkpoint_path)
        args = _resumed_args(args, state["args"])
    check_plotting(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = build_data(args)
    _check_sizes(args, len(data))
    runs.prepare_output(args.out, resume=args.resume, overwrite=args.overwrite, owned=OWNED_FILES)
    device = torch.device(args.device)
    model = build_model(args).to(device)
    prior = build_prior(args)
    parameters = list(model.parameters()) + (list(prior.parameters()) if prior is not None else [])
    optimiser = torch.optim.Adam(parameters, lr=args.lr)
    sampler = EpochSampler(len(data), args.batch_size, args.seed)
    bank = build_bank(args, len(data))
    noise = torch.Generator(device=device).manual_seed(args.seed + 2)  # the reparameterisation's samples
    first_step, history, refresh_cursor = 1, [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        if prior is not None:
            prior.load_state_dict(state["prior"])
        optimiser.load_state_dict(state["optimiser"])
        sampler.load_state_dict(state["sampler"])
        noise.set_state(state["noise"])
        if bank is not None:  # the checkpoint is read onto the CPU
            bank.load_state_dict({k: v.to(device) if isinstance(v, torch.Tensor) and k != "filled" else v
                                  for k, v in state["bank"].items()})
            refresh_cursor = state.get("refresh_cursor", 0)
        torch.set_rng_state(state["torch_rng"])
        first_step = state["step"] + 1
        history = [r for r in runs.read_json_lines(metrics_path) if r.get("step", math.inf) <= state["step"]]
        if state.get("record") and (not history or history[-1]["step"] != state["step"]):
            history.append(json.loads(state["record"]))  # killed between the checkpoint and its metrics line
    runs.atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    steps = range(first_step, args.steps + 1)
    if not args.no_progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"train {args.objective}", unit="step", initial=first_step - 1, total=args.steps)
    start = time.perf_counter()
    for step in steps:
        index = sampler.next()
        x = data.images(index)
        out = model(x, noise)
        seen = bank.for_batch(index) if isinstance(bank, DatasetBank) else bank
        result = objective(args, prior, log_likelihood(args, out.recon, x), out, len(data), seen)
        loss = float(result.loss.detach())
        if not math.isfinite(loss):
            kept = f"the last good checkpoint (step {history[-1]['step']}) is kept in {checkpoint_path}" \
                if history else "no checkpoint was written yet"
            raise runs.TrainingDiverged(f"the loss is {loss} at step {step}: the run diverged (try a lower --lr); "
                                        f"{kept}")
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        if isinstance(bank, DatasetBank):
            bank.update(index, out.mu, out.logvar)
            refresh_cursor = _refresh(bank, model, data, index, refresh_cursor, args.bank_refresh)
        elif bank is not None:
            bank.update(out.mu, out.logvar)
        if hasattr(steps, "set_postfix"):
            steps.set_postfix(loss=f"{loss:.1f}")
        if step % args.eval_every == 0 or step == args.steps:
            record = {"step": step, "loss": loss, "seconds": time.perf_counter() - start,
                      **evaluate(model, data, args, prior, torch.Generator().manual_seed(args.seed + 1))}
            runs.save_checkpoint({"model": model.state_dict(),
                                  "prior": prior.state_dict() if prior is not None else None,
                                  "optimiser": optimiser.state_dict(), "sampler": sampler.state_dict(),
                                  "noise": noise.get_state(), "torch_rng": torch.get_rng_state(),
                                  "bank": bank.state_dict() if bank is not None else None,
                                  "refresh_cursor": refresh_cursor,
                                  "args": _plain_args(args), "step": step, "record": json.dumps(record)},
                                 checkpoint_path)
            runs.append_line(metrics_path, json.dumps(record))
            history.append(record)
    if not args.no_plots and history:
        plot_curves(history, os.path.join(args.out, "curves.png"))
        plot_mi_matrix(history[-1], os.path.join(args.out, "mi_matrix.png"))
        plot_traversals(model, data, args, os.path.join(args.out, "traversals.png"),
                        torch.Generator().manual_seed(args.seed + 3))
    return history[-1] if history else {}


@torch.no_grad()
def _refresh(bank, model, data, batch, cursor: int, count: int) -> int:
    """Re-encode ``count`` slots after ``cursor`` (wrapping around), skipping the batch's own; returns
    the new cursor. The slots' encodings are then at most N / (B + count) steps old."""
    if count == 0:
        return cursor
    slots = (cursor + torch.arange(count)) % bank.dataset_size
    slots = slots[~torch.isin(slots, batch)]
    if slots.numel():
        bank.update(slots, *encode_all(model, data, slots))
    return int((cursor + count) % bank.dataset_size)


def _plain_args(args) -> dict:
    """The arguments as plain data (what a weights-only checkpoint may hold)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
            if v is None or isinstance(v, (bool, int, float, str, list, tuple))}


def evaluate_checkpoint(path: str, eval_points: int | None = None, device: str = "cpu") -> dict:
    """Rebuilds the data, model and prior of a checkpoint and evaluates it again on ``device`` (the same
    evaluation set and samples on every device, so the numbers agree up to rounding).

    The file is loaded with ``torch.load(weights_only=True)``: it can hold no code. A file that is not
    a tcestim checkpoint of this version raises :class:`~tcestim.experiments.runs.CheckpointError`.
    """
    state = runs.load_checkpoint(path)
    args = SimpleNamespace(**state["args"])
    args.device = device
    data = build_data(args)
    if eval_points is not None:
        if eval_points > len(data):
            raise SystemExit(f"error: --eval-points {eval_points} is larger than the data set ({len(data)} points)")
        args.eval_points = eval_points
    model = build_model(args).to(device)
    model.load_state_dict(state["model"])
    prior = build_prior(args)
    if prior is not None and state["prior"] is not None:
        prior.load_state_dict(state["prior"])
    result = evaluate(model, data, args, prior, torch.Generator().manual_seed(args.seed + 1))
    return {"step": state["step"], **result}


def main_train(args) -> int:
    try:
        final = train(args)
    except runs.TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except runs.CheckpointError as error:
        print(f"error: cannot resume: {error}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in final.items() if k not in ("mi_matrix", "factor_names")}
    print(json.dumps(summary, indent=1))
    plots = "" if args.no_plots else ", curves.png, mi_matrix.png, traversals.png"
    print(f"wrote {args.out}/checkpoint.pt, metrics.jsonl{plots}")
    return 0


def main_evaluate(args) -> int:
    try:
        result = evaluate_checkpoint(args.checkpoint, args.eval_points, args.device)
    except runs.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "mi_matrix"}, indent=1))
    return 0
