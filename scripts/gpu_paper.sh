#!/usr/bin/env bash
# The β-TCVAE paper's dSprites set-up on a GPU (the README's "GPU protocol"): β-VAE and β-TCVAE at
# β = 6, seed 0, the paper's MLP on 64 x 64 images, batch 2048, Adam 1e-3, 18 000 steps (50 epochs of
# the 737 280-image grid), the paper's default minibatch-weighted estimator, evaluated on 65 536 points.
# Run it after scripts/gpu_session.sh, in the same lease (that script builds the CUDA extension; this
# one builds it only if it is missing):
#     run(command="bash scripts/gpu_paper.sh", timeout_s=600)
#
# The sweep is resumable: it lives in runs/gpu-paper (ignored by git, kept on a warm device machine),
# a cell cut short by the budget (PAPER_S seconds, default 540) continues from its last evaluation
# on the next call, a finished cell is read back. $OUT gets at most 8 files: paper.log, sweep.md,
# sweep.json, mig_vs_beta.png, tc_vs_mig.png and each cell's metrics (<cell>.jsonl).
#
# Overrides (tests/test_gpu_paper.py rehearses the script on the CPU with them): PAPER_TRAIN_ARGS,
# PAPER_BETAS, PAPER_SEEDS, PAPER_RUNS (the sweep folder), PAPER_S, PYTHON.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tcestim-gpu-paper}
PY=${PYTHON:-python3}
RUNS=${PAPER_RUNS:-runs/gpu-paper}
BUDGET=${PAPER_S:-540}
TRAIN_ARGS=${PAPER_TRAIN_ARGS:-"--device cuda --data sprites --model paper-mlp --image-size 64 --batch-size 2048 \
--steps 18000 --eval-every 3600 --eval-points 65536 --estimator mws --lr 1e-3"}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) paper protocol: $TRAIN_ARGS"
  if [[ "$TRAIN_ARGS" == *"--device cuda"* ]]; then
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1
    if ! "$PY" -c "import torch, tcestim; assert torch._C._dispatch_has_kernel_for_dispatch_key('tcestim::mixture_logdensity', 'CUDA')" 2>/dev/null; then
      echo "== building the CUDA extension"
      TCESTIM_CUDA=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 "$PY" setup.py build_ext --inplace > "$RUNS/build.log" 2>&1 \
        || { tail -30 "$RUNS/build.log"; exit 1; }
    fi
  fi
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  # shellcheck disable=SC2086
  timeout -k 10 "$BUDGET" "$PY" -m tcestim sweep --objectives beta-vae beta-tcvae --betas ${PAPER_BETAS:-6} \
    --seeds ${PAPER_SEEDS:-0} --out "$RUNS" --train-args "$TRAIN_ARGS" --no-progress
  status=$?
  [ $status = 124 ] && echo "== budget of $BUDGET s spent: call again to continue the cut cells"
  for f in sweep.md sweep.json mig_vs_beta.png tc_vs_mig.png; do
    [ -f "$RUNS/$f" ] && cp "$RUNS/$f" "$OUT/"
  done
  for cell in "$RUNS"/*/metrics.jsonl; do
    [ -f "$cell" ] && cp "$cell" "$OUT/$(basename "$(dirname "$cell")").jsonl"
  done
  echo "== files: $(cd "$OUT" && ls | tr '\n' ' ')"
  exit $status
} 2>&1 | tee "$OUT/paper.log"
exit "${PIPESTATUS[0]}"
