"""Training speed and memory: pyro_svae against a plain-PyTorch floor and scvi-tools, and scaling.

    python benchmarks/speed.py [--threads 1 2] [--scvi-python /path/to/venv/bin/python] [--sizes 10000 100000 1000000]

1. Framework overhead. The same networks (``pyro_svae.nets``), data, batch size (256), hidden
   128 x 2 layers, 10 latents, 500 genes, ~10,000 cells, and the same objective (the ELBO of the
   collapsed spike-and-slab model: NB likelihood, analytic KL of z, the prior's global terms),
   trained by (a) pyro_svae's training step (``SVI`` + ``TraceMeanField_ELBO`` + multi-tensor ``ClippedAdam``,
   as ``fit`` runs it) and (b) plain PyTorch with one ``torch.optim.Adam`` and no Pyro (the floor,
   written here). Time per step: median over repeats of a fixed number of steps after warm-up,
   implementations interleaved so that load on the machine affects both alike. Also the time per
   epoch of ``pyro_svae.fit`` itself (with its per-epoch ELBO monitoring) and, with
   ``--scvi-python``, scvi-tools' SCVI at the same architecture (run in that interpreter, so the
   project does not depend on it).
2. Scaling. Sparse (CSR, 5% non-zero) screens of ``--sizes`` cells x 2,000 genes: time per step
   and cells per second, and the peak resident memory of a process that builds the screen and
   runs ``fit`` for a fixed number of steps, above the memory of the data itself.

Writes ``benchmarks/results/speed.md`` and ``speed.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SETTING = dict(n_genes=500, n_latent=10, n_hidden=128, n_layers=2, batch_size=256, n_perturbations=50)


def screen(n_cells: int = 10_000, n_genes: int = 500, seed: int = 0):
    import pyro_svae

    per = (n_cells - 500) // SETTING["n_perturbations"]
    return pyro_svae.datasets.simulate(n_perturbations=SETTING["n_perturbations"], n_latent=5, n_genes=n_genes,
                                       n_cells_per_perturbation=per, n_control=500, max_targets=2, seed=seed)


# ---- (a) pyro_svae's training step --------------------------------------------------------------
def pyro_svae_stepper(adata):
    """One training step of ``fit`` (the body of ``pyro_svae.train.train``'s loop), as a closure."""
    import functools

    import pyro
    import torch
    from pyro.infer import SVI, TraceMeanField_ELBO

    from pyro_svae.data import read_screen
    from pyro_svae.guide import guide, inspect_prior
    from pyro_svae.model import model
    from pyro_svae.nets import Networks
    from pyro_svae.optim import MultiTensorClippedAdam
    from pyro_svae.priors import resolve_prior
    from pyro_svae.runtime import DataOnDevice

    pyro.clear_param_store()
    data = read_screen(adata)
    nets = Networks(data.n_genes, SETTING["n_latent"], SETTING["n_hidden"], SETTING["n_layers"])
    prior = resolve_prior("spike_and_slab")
    sites = inspect_prior(prior, data.n_perturbations, SETTING["n_latent"])
    static = dict(nets=nets, prior=prior, n_perturbations=data.n_perturbations, likelihood="nb")
    svi = SVI(functools.partial(model, **static), functools.partial(guide, prior_sites=sites, **static),
              MultiTensorClippedAdam({"lr": 1e-3, "clip_norm": 10.0}), loss=TraceMeanField_ELBO())
    on_device = DataOnDevice(data, torch.device("cpu"))
    rng = np.random.default_rng(0)
    n = data.n_cells

    def step():
        index = np.sort(rng.choice(n, SETTING["batch_size"], replace=False))
        return svi.step(n_cells=n, cell_index=torch.as_tensor(index), kl_weight=1.0, **on_device.minibatch(index))

    return step


# ---- (b) the plain-PyTorch floor ------------------------------------------------------------------
def plain_torch_stepper(adata):
    """The same networks and objective in plain PyTorch: one Adam, no Pyro."""
    import torch
    from torch.distributions import Beta, NegativeBinomial, Normal, kl_divergence

    from pyro_svae.data import read_screen
    from pyro_svae.nets import Networks

    data = read_screen(adata)
    P, K = data.n_perturbations, SETTING["n_latent"]
    nets = Networks(data.n_genes, K, SETTING["n_hidden"], SETTING["n_layers"])
    pi_logit = torch.zeros(P, K, requires_grad=True)
    shift_loc = torch.zeros(P, K, requires_grad=True)
    shift_log_scale = torch.full((P, K), math.log(0.1), requires_grad=True)
    log_dispersion = torch.full((data.n_genes,), math.log(5.0), requires_grad=True)
    optimizer = torch.optim.Adam(list(nets.parameters()) + [pi_logit, shift_loc, shift_log_scale, log_dispersion], lr=1e-3)
    counts = torch.as_tensor(np.asarray(data.counts), dtype=torch.float32)
    library = torch.as_tensor(data.library).clamp(min=1.0)
    perturbations = torch.as_tensor(data.perturbations)
    rng = np.random.default_rng(0)
    n = data.n_cells
    slab_prior, pi_prior = Normal(0.0, 5.0), Beta(1.0, 50.0)

    def step():
        index = torch.as_tensor(np.sort(rng.choice(n, SETTING["batch_size"], replace=False)))
        x, lib, members = counts[index], library[index], perturbations[index]
        pi = torch.sigmoid(pi_logit)
        q_shift = Normal(shift_loc, shift_log_scale.exp())
        shift = q_shift.rsample()
        padded = lambda t: torch.cat([t, t.new_zeros(1, K)])  # noqa: E731
        mean, variance = padded(pi * shift)[members].sum(-2), padded(pi * (1 - pi) * shift**2)[members].sum(-2)
        loc, scale = nets.encoder(x, None)
        q_z = Normal(loc, scale)
        z = q_z.rsample()
        log_proportions, _ = nets.decoder(z, None)
        theta = log_dispersion.exp()
        log_mean = lib.log().unsqueeze(-1) + log_proportions
        log_lik = NegativeBinomial(total_count=theta, logits=log_mean - theta.log()).log_prob(x).sum(-1)
        local = log_lik - kl_divergence(q_z, Normal(mean, 1.0)).sum(-1) - 0.5 * variance.sum(-1)
        global_terms = pi_prior.log_prob(pi.clamp(1e-6, 1 - 1e-6)).sum() - (pi * kl_divergence(q_shift, slab_prior)).sum()
        loss = -(n / len(index) * local.sum() + global_terms)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def time_steps(steppers: dict, n_steps: int, repeats: int, warmup: int = 20) -> dict:
    """Median seconds per step of each stepper, runs interleaved."""
    from pyro_svae.runtime import flush_denormals

    import pyro

    times = {name: [] for name in steppers}
    # as in ``fit``: denormals flushed, argument validation off (for torch distributions too)
    with flush_denormals(), pyro.validation_enabled(False):
        for step in steppers.values():
            for _ in range(warmup):
                step()
        for _ in range(repeats):
            for name, step in steppers.items():
                start = time.perf_counter()
                for _ in range(n_steps):
                    step()
                times[name].append((time.perf_counter() - start) / n_steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def fit_seconds_per_epoch(adata, epochs: int = 3) -> float:
    import pyro_svae

    start = time.perf_counter()
    pyro_svae.fit(adata, n_latent=SETTING["n_latent"], n_hidden=SETTING["n_hidden"], n_layers=SETTING["n_layers"],
                  batch_size=SETTING["batch_size"], max_epochs=epochs, early_stopping=False, progress=False)
    return (time.perf_counter() - start) / epochs


SCVI_SCRIPT = """
import json, sys, time
import numpy as np, torch, anndata, scvi
torch.set_num_threads(int(sys.argv[2]))
adata = anndata.read_h5ad(sys.argv[1])
scvi.model.SCVI.setup_anndata(adata)
model = scvi.model.SCVI(adata, n_hidden=128, n_layers=2, n_latent=10, gene_likelihood="nb")
epochs = int(sys.argv[3])
start = time.perf_counter()
model.train(max_epochs=epochs, batch_size=256, train_size=1.0, early_stopping=False, accelerator="cpu",
            enable_progress_bar=False, logger=False, enable_checkpointing=False)
seconds = time.perf_counter() - start
steps = epochs * int(np.ceil(adata.n_obs / 256))
print(json.dumps({"seconds_per_epoch": seconds / epochs, "seconds_per_step": seconds / steps, "version": scvi.__version__}))
"""


def scvi_timing(python: str, adata, threads: int, epochs: int = 3) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "screen.h5ad"
        adata.write_h5ad(path)
        out = subprocess.run([python, "-c", SCVI_SCRIPT, str(path), str(threads), str(epochs)], capture_output=True,
                             text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- scaling ---------------------------------------------------------------------------------------
SCALE_SCRIPT = """
import json, sys, time
import numpy as np, scipy.sparse as sp, anndata, pandas as pd, torch
torch.set_num_threads(int(sys.argv[2]))
import pyro_svae
n_cells, n_genes, per_row, batch = int(sys.argv[1]), 2000, 100, 256  # 5% of the genes per cell
rng = np.random.default_rng(0)
columns = np.sort(rng.integers(0, n_genes, size=(n_cells, per_row), dtype=np.int32), axis=1)
values = rng.poisson(2.0, size=columns.shape).astype(np.float32) + 1
X = sp.csr_matrix((values.ravel(), columns.ravel(), np.arange(0, columns.size + 1, per_row)), shape=(n_cells, n_genes))
X.sum_duplicates()
del columns, values
labels = np.where(rng.random(n_cells) < 0.1, "control", rng.choice([f"p{i}" for i in range(100)], n_cells))
adata = anndata.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=pd.RangeIndex(n_cells).astype(str)))

def rss_gb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024 / 1e9
import threading
peak = [0.0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_gb())
        done.wait(0.01)
data_gb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e9
before_gb = rss_gb()  # resident memory now: the process holding the screen
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
model = pyro_svae.fit(adata, n_latent=10, batch_size=batch, max_epochs=1, validation_fraction=0.0,
                      early_stopping=False, progress=False)
seconds = time.perf_counter() - start
done.set()
sampler.join()
steps = -(-n_cells // batch)
print(json.dumps({"n_cells": n_cells, "seconds_per_step": seconds / steps, "cells_per_second": n_cells / seconds,
                  "data_gb": data_gb, "rss_before_fit_gb": before_gb, "peak_rss_gb": peak[0],
                  "fit_above_before_gb": peak[0] - before_gb}))
"""


def scaling(n_cells: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, str(n_cells), str(threads)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scvi-python", default=None, help="a Python interpreter with scvi-tools installed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    import torch

    adata = screen()
    overhead = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = time_steps({"pyro_svae": pyro_svae_stepper(adata), "plain torch": plain_torch_stepper(adata)},
                           args.steps, args.repeats)
        row = {"threads": threads, "pyro_svae ms/step": 1e3 * times["pyro_svae"],
               "plain torch ms/step": 1e3 * times["plain torch"], "ratio": times["pyro_svae"] / times["plain torch"],
               "fit s/epoch": fit_seconds_per_epoch(adata)}
        if args.scvi_python:
            scvi = scvi_timing(args.scvi_python, adata, threads)
            row.update({"scvi-tools ms/step": 1e3 * scvi["seconds_per_step"], "scvi-tools s/epoch": scvi["seconds_per_epoch"],
                        "scvi-tools version": scvi["version"]})
        overhead.append(row)
        print(row, flush=True)
    scale = []
    threads = max(args.threads)
    for n in args.sizes:
        scale.append(scaling(n, threads))
        print(scale[-1], flush=True)
    report(overhead, scale, args, adata)


def report(overhead, scale, args, adata):
    import pandas as pd
    import torch

    import pyro_svae

    overhead, scale = pd.DataFrame(overhead), pd.DataFrame(scale)
    pd.set_option("display.width", 200)
    print(overhead.round(3).to_string(index=False))
    print(scale.round(3).to_string(index=False))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU"
    lines = ["# Training speed and memory", "",
             f"`python benchmarks/speed.py{' --scvi-python ...' if args.scvi_python else ''}` on {machine}; "
             f"pyro_svae {pyro_svae.__version__}.", "",
             f"## Framework overhead ({adata.n_obs} cells x {SETTING['n_genes']} genes, batch {SETTING['batch_size']}, "
             f"hidden {SETTING['n_hidden']} x {SETTING['n_layers']}, {SETTING['n_latent']} latents, "
             f"{SETTING['n_perturbations']} perturbations)", "",
             "Per step: median over repeats of the mean time of a fixed number of steps, the implementations",
             "interleaved. `fit s/epoch` adds `fit`'s per-epoch ELBO monitoring (1,024 cells, plus validation).", "",
             "```", overhead.round(3).to_string(index=False), "```", "",
             f"## Scaling: sparse screens, 2,000 genes, 5% non-zero, one epoch of `fit` ({max(args.threads)} threads)", "",
             "`rss_before_fit_gb`: resident memory of the process holding the screen (AnnData with a CSR matrix of",
             "`data_gb`) just before `fit`; `peak_rss_gb`: its peak during `fit` (sampled every 10 ms);",
             "`fit_above_before_gb`: the difference, what `fit` added.", "",
             "```", scale.round(3).to_string(index=False), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot(scale["n_cells"], scale["cells_per_second"], "o-")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("cells")
    axes[0].set_ylabel("cells per second (training)")
    axes[1].plot(scale["n_cells"], scale["data_gb"], "o-", label="data (CSR)")
    axes[1].plot(scale["n_cells"], scale["peak_rss_gb"], "o-", label="peak RSS")
    axes[1].plot(scale["n_cells"], scale["fit_above_before_gb"], "o-", label="added by fit")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("cells")
    axes[1].set_ylabel("GB")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "speed.png", dpi=120)
    print(f"Wrote {RESULTS / 'speed.md'} and .png")


if __name__ == "__main__":
    main()
