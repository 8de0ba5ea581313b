"""`python -m tcestim train ...` and `python -m tcestim evaluate CHECKPOINT`.

Trains a reference VAE (tcestim.models) on procedural dSprites or the pinwheel toy set with one of
the objectives of tcestim.losses, and evaluates it: the exact KL decomposition of the aggregate
posterior of an evaluation set (tcestim.decompose_exact), MIG (Chen et al.'s estimator and the
discretised one), Hoyer sparsity and TC of means vs samples. Writes into the output folder:

    checkpoint.pt     model weights, the arguments and the step (also written at every evaluation)
    metrics.jsonl     one JSON object per evaluation
    curves.png        loss and MI / TC / dimension-wise KL over training
    traversals.png    latent traversals (images) or the latent space (pinwheel)
    mi_matrix.png     I(z_j; v_k) per latent and factor (Chen et al. fig. 4 style)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from types import SimpleNamespace

import torch

from tcestim import losses, metrics, priors
from tcestim.exact import decompose_exact
from tcestim.experiments import data as datasets
from tcestim.experiments import models
from tcestim.experiments.plotting import figure, save

OBJECTIVES = ("beta-vae", "beta-tcvae", "rtc-vae", "decomposition")
PRIORS = ("normal", "anisotropic", "student-t", "spike-slab")


# ---------------------------------------------------------------------------------------------
# building blocks

class PinwheelData:
    """The pinwheel points with the interface of the sprites data sets (images = 2-D points)."""

    factor_names = ("arm",)

    def __init__(self, n: int, seed: int):
        points, labels = datasets.pinwheel(n, generator=torch.Generator().manual_seed(seed))
        self.points, self.labels = points.float(), labels.long().reshape(-1, 1)
        self.factor_sizes = (int(self.labels.max()) + 1,)

    def __len__(self):
        return len(self.points)

    def images(self, indices):
        return self.points[indices]

    def factors(self, indices):
        return self.labels[indices]


def build_data(args):
    if args.data == "pinwheel":
        return PinwheelData(args.subsample or 20_000, args.seed)
    subsample = args.subsample
    data = datasets.SpritesDataset(image_size=args.image_size, subsample=subsample, seed=args.seed, cache=True)
    data.factor_names = datasets.FACTOR_NAMES
    data.factor_sizes = datasets.FACTOR_SIZES
    return data


def build_model(args):
    if args.data == "pinwheel":
        return models.MLPVAE(2, args.latent_dim, hidden=(128, 128))
    if args.model == "mlp":
        size = args.image_size * args.image_size
        return models.MLPVAE(size, args.latent_dim, hidden=(512, 256),
                             output_shape=(1, args.image_size, args.image_size))
    return models.ConvVAE(latent_dim=args.latent_dim, image_size=args.image_size)


def log_likelihood(args, recon, x):
    if args.data == "pinwheel":
        return models.gaussian_log_likelihood(recon, x, log_scale=math.log(0.1))
    return models.bernoulli_log_likelihood(recon, x)


def build_prior(args):
    if args.prior == "normal":
        return None
    if args.prior == "anisotropic":
        return priors.AnisotropicGaussian(args.latent_dim)
    if args.prior == "student-t":
        return priors.FactorisedStudentT(args.latent_dim, nu=3.0)
    return priors.SpikeAndSlab(args.latent_dim, gamma=0.8)


def objective(args, prior, log_px, out, dataset_size):
    """The command line takes each paper's own symbols (--alpha, --beta, --gamma, --eta); this maps
    them onto tcestim.losses' weights, as the table in that module's docstring says."""
    z, mu, logvar = out.z, out.mu, out.logvar
    if args.objective == "beta-vae":
        return losses.beta_vae(log_px, mu, logvar, kl_weight=args.beta)
    if args.objective == "beta-tcvae":
        return losses.beta_tcvae(log_px, z, mu, logvar, dataset_size=dataset_size, mi_weight=args.alpha,
                                 tc_weight=args.beta, dimkl_weight=args.gamma, estimator=args.estimator,
                                 prior=prior)
    if args.objective == "rtc-vae":
        return losses.rtc_vae(log_px, z, mu, logvar, dataset_size=dataset_size, tc_weight=1.0 + args.beta,
                              variance_weight=args.eta, estimator=args.estimator, prior=prior)
    return losses.decomposition_objective(log_px, z, mu, logvar, dataset_size=dataset_size, kl_weight=args.beta,
                                          divergence_weight=args.alpha, divergence=args.divergence, prior=prior,
                                          estimator=args.estimator)


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
    """Exact decomposition over an evaluation set, MIG (both methods), Hoyer, TC means vs samples."""
    model.eval()
    n = min(args.eval_points, len(data))
    indices = torch.randperm(len(data), generator=generator)[:n]
    mu, logvar = encode_all(model, data, indices)
    z = models.reparameterize(mu, logvar, generator)
    d = decompose_exact(z, mu, logvar, mu, logvar, prior=prior, progress=False)
    factors = data.factors(indices)
    varying = [k for k, size in enumerate(data.factor_sizes) if len(torch.unique(factors[:, k])) > 1]
    chen, chen_details = metrics.mig(mu, logvar, factors[:, varying], method="chen",
                                     num_samples=min(n, 4096), generator=generator)
    discrete, _ = metrics.mig(mu, None, factors[:, varying], method="discrete")
    result = {
        **{k: float(v) for k, v in d.means().items()},
        **{f"{k}_se": float(v) for k, v in d.standard_errors().items()},
        "mig_chen": float(chen),
        "mig_discrete": float(discrete),
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
        points, labels = data.images(idx).numpy(), data.factors(idx)[:, 0].numpy()
        mu = model.encode(data.images(idx))[0].numpy()
        fig, axes = figure(1, 2, figsize=(10, 4.5))
        axes[0].scatter(points[:, 0], points[:, 1], c=labels, s=3, cmap="tab10")
        axes[0].set_title("data")
        axes[1].scatter(mu[:, 0], mu[:, 1] if mu.shape[1] > 1 else 0 * mu[:, 0], c=labels, s=3, cmap="tab10")
        axes[1].set_title("encoder means (z0, z1)")
    else:
        anchor = model.encode(data.images(torch.randint(len(data), (1,), generator=generator)))[0][0]
        values = torch.linspace(-2.5, 2.5, 9)
        D = anchor.shape[0]
        fig, axes = figure(D, len(values), figsize=(len(values) * 0.9, D * 0.9))
        for j in range(D):
            codes = anchor.repeat(len(values), 1)
            codes[:, j] = values
            images = torch.sigmoid(model.decode(codes)).numpy()
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

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("sprites", "pinwheel"), default="sprites")
    parser.add_argument("--model", choices=("conv", "mlp"), default="conv", help="for image data")
    parser.add_argument("--objective", choices=OBJECTIVES, default="beta-tcvae")
    parser.add_argument("--estimator", default="stratified", help="TC estimator (tcestim.ESTIMATORS)")
    parser.add_argument("--divergence", choices=losses.DIVERGENCES, default="kl", help="for --objective decomposition")
    parser.add_argument("--beta", type=float, default=6.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--eta", type=float, default=0.0, help="RTC-VAE variance penalty")
    parser.add_argument("--prior", choices=PRIORS, default="normal")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--subsample", type=int, default=None, help="number of data points (default: all)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-points", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default="runs/tcestim")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-plots", action="store_true")


def train(args) -> dict:
    """Trains as ``args`` says; returns the final evaluation."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    data = build_data(args)
    model = build_model(args)
    prior = build_prior(args)
    parameters = list(model.parameters()) + (list(prior.parameters()) if prior is not None else [])
    optimiser = torch.optim.Adam(parameters, lr=args.lr)
    history = []
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    open(metrics_path, "w").close()
    steps = range(1, args.steps + 1)
    if not args.no_progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"train {args.objective}", unit="step")
    start, last = time.perf_counter(), None
    for step in steps:
        index = torch.randint(len(data), (args.batch_size,), generator=generator)
        x = data.images(index)
        out = model(x, generator)
        result = objective(args, prior, log_likelihood(args, out.recon, x), out, len(data))
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        last = float(result.loss.detach())
        if hasattr(steps, "set_postfix"):
            steps.set_postfix(loss=f"{last:.1f}")
        if step % args.eval_every == 0 or step == args.steps:
            record = {"step": step, "loss": last, "seconds": time.perf_counter() - start,
                      **evaluate(model, data, args, prior, torch.Generator().manual_seed(args.seed + 1))}
            history.append(record)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(model, prior, args, step, os.path.join(args.out, "checkpoint.pt"))
    if not args.no_plots and history:
        plot_curves(history, os.path.join(args.out, "curves.png"))
        plot_mi_matrix(history[-1], os.path.join(args.out, "mi_matrix.png"))
        plot_traversals(model, data, args, os.path.join(args.out, "traversals.png"), generator)
    return history[-1] if history else {}


def save_checkpoint(model, prior, args, step, path):
    torch.save({"model": model.state_dict(), "prior": prior.state_dict() if prior is not None else None,
                "args": vars(args), "step": step}, path)


def evaluate_checkpoint(path: str, eval_points: int | None = None) -> dict:
    """Rebuilds the data, model and prior of a checkpoint and evaluates it again."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    args = SimpleNamespace(**state["args"])
    if eval_points:
        args.eval_points = eval_points
    data = build_data(args)
    model = build_model(args)
    model.load_state_dict(state["model"])
    prior = build_prior(args)
    if prior is not None and state["prior"] is not None:
        prior.load_state_dict(state["prior"])
    result = evaluate(model, data, args, prior, torch.Generator().manual_seed(args.seed + 1))
    return {"step": state["step"], **result}


def main_train(args) -> None:
    final = train(args)
    summary = {k: v for k, v in final.items() if k not in ("mi_matrix", "factor_names")}
    print(json.dumps(summary, indent=1))
    plots = "" if args.no_plots else ", curves.png, mi_matrix.png, traversals.png"
    print(f"wrote {args.out}/checkpoint.pt, metrics.jsonl{plots}")


def main_evaluate(args) -> None:
    result = evaluate_checkpoint(args.checkpoint, args.eval_points)
    print(json.dumps({k: v for k, v in result.items() if k != "mi_matrix"}, indent=1))
