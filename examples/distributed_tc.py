"""Global-batch total correlation across processes.

    torchrun --nproc_per_node 2 examples/distributed_tc.py

Each rank draws its own minibatch (the last rank a smaller one) from a shared synthetic posterior,
then compares the TC of its local batch with the TC over the global batch, which every rank gets.
On GPUs use the nccl backend and CUDA tensors; nothing else changes.
"""
import torch
import torch.distributed as dist

import tcestim
import tcestim.distributed
from tcestim.experiments.synthetic import make_posterior


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    posterior = make_posterior(10_000, 8, rho=0.5, noise_std=0.5, generator=torch.Generator().manual_seed(0))
    batch = 256 if rank < world - 1 else 200  # uneven last batch
    index = torch.randint(10_000, (batch,), generator=torch.Generator().manual_seed(rank + 1))
    mu = posterior.mu[index].requires_grad_()
    logvar = posterior.logvar[index].requires_grad_()
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    local = tcestim.total_correlation(z, mu, logvar, dataset_size=10_000)
    tc = tcestim.distributed.total_correlation(z, mu, logvar, dataset_size=10_000)
    tc.backward()
    print(f"rank {rank}/{world}: local-batch TC {float(local):.4f}, global-batch TC {float(tc):.4f} "
          f"(B_local = {batch}), grad norm {float(mu.grad.norm()):.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
