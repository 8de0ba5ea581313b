"""tcestim.streaming: the torchmetrics classes equal the one-shot functions on the concatenated
epoch, in one process and gathered over two gloo processes."""
import pytest
import torch

import tcestim
from tcestim import metrics

torchmetrics = pytest.importorskip("torchmetrics")
from tcestim.streaming import ExactDecomposition, MutualInformationGap  # noqa: E402

N, D = 90, 3
BATCHES = [(0, 25), (25, 32), (32, 70), (70, 90)]   # uneven, as an evaluation loader's last batch


def epoch():
    g = torch.Generator().manual_seed(1)
    factors = torch.stack([torch.arange(N) % 3, torch.arange(N) % 5], 1)
    mu = torch.stack([factors[:, 0].double(), factors[:, 1].double() / 2,
                      torch.randn(N, generator=g, dtype=torch.float64)], 1)
    logvar = torch.full_like(mu, -2.0)
    z = mu + torch.randn(N, D, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    return z, mu, logvar, factors


def test_exact_decomposition_equals_one_shot():
    z, mu, logvar, _ = epoch()
    metric = ExactDecomposition()
    for a, b in BATCHES:
        metric.update(z[a:b], mu[a:b], logvar[a:b])
    result = metric.compute()
    expected = tcestim.decompose_exact(z, mu, logvar, mu, logvar)
    errors = expected.standard_errors()
    for name in ("mi", "tc", "dimkl"):
        torch.testing.assert_close(result[name], getattr(expected, name).mean())
        assert float(result[f"{name}_se"]) == pytest.approx(errors[name], rel=1e-9)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_exact_decomposition_reset_and_empty():
    z, mu, logvar, _ = epoch()
    metric = ExactDecomposition()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(z + 100.0, mu, logvar)
    metric.reset()
    metric.update(z, mu, logvar)
    torch.testing.assert_close(metric.compute()["tc"], tcestim.decompose_exact(z, mu, logvar, mu, logvar).tc.mean())


def test_exact_decomposition_checks_inputs():
    z, mu, logvar, _ = epoch()
    with pytest.raises(ValueError):
        ExactDecomposition().update(z[:, :2], mu, logvar)


@pytest.mark.parametrize("method", ["chen", "discrete"])
def test_mig_equals_one_shot(method):
    z, mu, logvar, factors = epoch()
    metric = MutualInformationGap(method=method)
    for a, b in BATCHES:
        metric.update(mu[a:b], logvar[a:b], factors[a:b])
    score = metric.compute()
    expected = metrics.mig(mu, logvar, factors, method=method)
    torch.testing.assert_close(score, expected.score)
    torch.testing.assert_close(metric.details.mi, expected.details.mi)
    assert score > 0.1


def test_mig_chen_needs_logvar():
    _, mu, _, factors = epoch()
    with pytest.raises(ValueError, match="needs logvar"):
        MutualInformationGap().update(mu, None, factors)
    with pytest.raises(ValueError, match="method"):
        MutualInformationGap(method="bins")


def gathered_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z, mu, logvar, factors = epoch()
        decomposition, gap = ExactDecomposition(), MutualInformationGap()
        for a, b in BATCHES[rank::world]:
            decomposition.update(z[a:b], mu[a:b], logvar[a:b])
            gap.update(mu[a:b], logvar[a:b], factors[a:b])
        result = {name: value for name, value in decomposition.compute().items()}
        result["mig"] = gap.compute()
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_states_are_gathered_across_processes(tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    mp.spawn(gathered_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    z, mu, logvar, factors = epoch()
    # Rank 0 holds batches 0 and 2, rank 1 batches 1 and 3: the gathered order differs from the
    # epoch's, which changes nothing in these permutation-invariant quantities but the rounding.
    expected = tcestim.decompose_exact(z, mu, logvar, mu, logvar)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name in ("mi", "tc", "dimkl"):
            torch.testing.assert_close(result[name], getattr(expected, name).mean())
        assert 0.1 < float(result["mig"]) <= 1.0
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert float(first["mig"]) == float(second["mig"])
