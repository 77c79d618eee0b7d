"""Training and prediction speed: pyro_svae against a plain-PyTorch floor, before and after, and scaling.

    python benchmarks/speed.py [--threads 1 2] [--before PATH] [--scvi-python PYTHON] [--sizes 100000 1000000]

1. Per step. The same networks (``pyro_svae.nets``), data, batch size (256), hidden 128 x 2, 10
   latents, and the same objective (``fit``'s default: the collapsed spike-and-slab with
   data-scaled sparsity, NB likelihood, analytic KL of z), trained by (a) ``fit``'s step (the fused
   objective of :mod:`pyro_svae.objective` and the multi-tensor ``ClippedAdam``), (a') Pyro's own
   ``SVI`` + ``TraceMeanField_ELBO`` on the model and guide functions, and (b) plain PyTorch with one
   ``torch.optim.Adam`` and no Pyro (the floor, written here; with torch's ``NegativeBinomial``, and
   again with the package's, which takes ``lgamma(theta)`` once per gene). Median over repeats of a
   fixed number of steps, implementations interleaved; on a ~10,000 x 500 screen and a sparse
   100,000 x 2,000 one.
2. Whole fit. Seconds per epoch run of ``pyro_svae.fit`` (everything it does: set-up, warm start
   and its rotation, validation ELBO, early-stopping bookkeeping, the checks after training, in a
   fresh process run outside the project, after a 2-epoch fit of 300 cells has imported what
   ``fit`` imports on first use) against the floor trained as a loop of its own (the same 90% of
   cells, in a fresh process), now and, with ``--before PATH`` (an earlier checkout), before, runs
   interleaved; on both screens. Each is timed at twice the epochs too, which splits its time into
   the cost of an added epoch and a fixed cost.
3. Profile: the functions ``fit`` spends its time in (cProfile, by own time), now and before.
4. Prediction: ``predict`` of 100,000 cells, ``posterior_predictive`` of 100,000 cells (10 draws,
   50 genes) with the resident memory it adds.
5. Scaling. Sparse (CSR, 5% non-zero) screens of ``--sizes`` cells x 2,000 genes: time per step,
   cells per second and the resident memory ``fit`` adds above the data.

Writes ``benchmarks/results/speed.md`` and ``speed.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
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


def sparse_screen(n_cells: int, n_genes: int = 2000, per_row: int = 100, seed: int = 0):
    """A CSR screen with ``per_row`` non-zero genes per cell (5% of 2,000), 100 perturbations, 10% controls."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    columns = np.sort(rng.integers(0, n_genes, size=(n_cells, per_row), dtype=np.int32), axis=1)
    values = rng.poisson(2.0, size=columns.shape).astype(np.float32) + 1
    X = sp.csr_matrix((values.ravel(), columns.ravel(), np.arange(0, columns.size + 1, per_row)),
                      shape=(n_cells, n_genes))
    X.sum_duplicates()
    labels = np.where(rng.random(n_cells) < 0.1, "control", rng.choice([f"p{i}" for i in range(100)], n_cells))
    return anndata.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=pd.RangeIndex(n_cells).astype(str)))


# ---- (a) pyro_svae's training step --------------------------------------------------------------
def pyro_svae_stepper(adata, objective: str = "fused", encoder: str = "counts", n_latent: int = None):
    """One training step of ``fit`` (the body of ``pyro_svae.train.train``'s loop), as a closure.

    ``objective="fused"`` is ``fit``'s default (:mod:`pyro_svae.objective`); ``"pyro"`` is Pyro's
    ``SVI`` with ``TraceMeanField_ELBO`` on the model and guide functions. ``encoder`` and ``n_latent``
    (default ``SETTING``'s) as ``fit``'s. Call inside a ``param_scope`` of its own.
    """
    import pyro
    import torch
    from pyro.infer import SVI, TraceMeanField_ELBO

    from pyro_svae.data import read_screen
    from pyro_svae.factory import SVAEConfig, build, layout_of
    from pyro_svae.objective import register_networks, step_function
    from pyro_svae.optim import MultiTensorClippedAdam
    from pyro_svae.runtime import DataOnDevice

    data = read_screen(adata)
    components = build(SVAEConfig(n_latent=n_latent or SETTING["n_latent"], n_hidden=SETTING["n_hidden"],
                                  n_layers=SETTING["n_layers"], encoder=encoder), layout_of(data))
    prior_names = {name for site in components.sites for name in site.params.values()}
    optimizer = MultiTensorClippedAdam(lambda name: {"lr": 1e-2 if name in prior_names else 1e-3, "clip_norm": 10.0})
    on_device = DataOnDevice(data, torch.device("cpu"))
    rng = np.random.default_rng(0)
    n = data.n_cells
    if objective == "fused":
        register_networks(components)
        step = step_function(components, optimizer, pyro.get_param_store())

        def run():
            index = np.sort(rng.choice(n, SETTING["batch_size"], replace=False))
            return step(on_device.minibatch(index), n, 1.0)
        return run
    svi = SVI(*components.functions(), optimizer, loss=TraceMeanField_ELBO())

    def run():
        index = np.sort(rng.choice(n, SETTING["batch_size"], replace=False))
        return svi.step(n_cells=n, cell_index=torch.as_tensor(index), kl_weight=1.0, **on_device.minibatch(index))
    return run


# ---- (b) the plain-PyTorch floor ------------------------------------------------------------------
def plain_torch_stepper(adata, device="cpu", batch_size: int = None, bf16: bool = False, nb: str = "torch"):
    """The same networks and objective as ``fit``'s default in plain PyTorch: one Adam, no Pyro.

    The collapsed spike-and-slab with data-scaled sparsity: ``pi`` a point estimate with the mean-field
    mask term ``-KL(Bernoulli(pi) || Bernoulli(prior))``, a Normal slab weighted by ``pi``, the NB
    likelihood, the analytic KL of ``z`` and the mask variance term. ``bf16``: the networks under
    bfloat16 autocast (CUDA). ``nb``: the negative binomial's log-density, ``"torch"``'s own (what a
    plain loop uses) or ``"pyro_svae"``'s (the same values, ``lgamma(theta)`` once per gene).

    Returns ``step()``, a step on a random minibatch; ``step.on(index)`` steps on the cells ``index``.
    """
    import scipy.sparse as sp
    import torch
    import torch.nn.functional as F
    from torch.distributions import NegativeBinomial, Normal, kl_divergence

    from pyro_svae.data import read_screen
    from pyro_svae.likelihoods import NegativeBinomial as PackageNegativeBinomial
    from pyro_svae.nets import Networks

    if nb not in ("torch", "pyro_svae"):
        raise ValueError(f"Expected nb 'torch' or 'pyro_svae', but got {nb!r}.")
    negative_binomial = NegativeBinomial if nb == "torch" else PackageNegativeBinomial
    device = torch.device(device)
    batch_size = batch_size or SETTING["batch_size"]
    data = read_screen(adata)
    P, K = data.n_perturbations, SETTING["n_latent"]
    nets = Networks(data.n_genes, K, SETTING["n_hidden"], SETTING["n_layers"]).to(device)
    cells = np.bincount(data.perturbations.reshape(-1), minlength=P + 1)[:P]
    prior_logits = torch.as_tensor(math.log(1 / K) - math.log1p(-1 / K) - cells * 0.5**2 / 2,
                                   dtype=torch.float32, device=device)[:, None]
    pi_logit = torch.full((P, K), math.log(0.95 / 0.05), device=device, requires_grad=True)
    shift_loc = torch.zeros(P, K, device=device, requires_grad=True)
    shift_log_scale = torch.full((P, K), math.log(0.1), device=device, requires_grad=True)
    log_dispersion = torch.full((data.n_genes,), math.log(5.0), device=device, requires_grad=True)
    optimizer = torch.optim.Adam(list(nets.parameters()) + [pi_logit, shift_loc, shift_log_scale, log_dispersion],
                                 lr=1e-3)
    sparse = sp.issparse(data.counts)
    counts = data.counts if sparse else torch.as_tensor(np.asarray(data.counts), dtype=torch.float32, device=device)
    library = torch.as_tensor(data.library, device=device).clamp(min=1.0)
    perturbations = torch.as_tensor(data.perturbations, device=device)
    generator = torch.Generator().manual_seed(0)
    n = data.n_cells
    slab_prior = Normal(torch.tensor(0.0, device=device), torch.tensor(5.0, device=device))

    def step_on(index):
        index = torch.as_tensor(index, device=device)
        # sparse counts: the minibatch's rows densified, as fit does
        x = torch.as_tensor(counts[index.cpu().numpy()].toarray(), device=device) if sparse else counts[index]
        lib, members = library[index], perturbations[index]
        pi = torch.sigmoid(pi_logit)
        q_shift = Normal(shift_loc, shift_log_scale.exp())
        shift = q_shift.rsample()
        padded = lambda t: torch.cat([t, t.new_zeros(1, K)])  # noqa: E731
        mean, variance = padded(pi * shift)[members].sum(-2), padded(pi * (1 - pi) * shift**2)[members].sum(-2)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loc, scale = nets.encoder(x, None)
            q_z = Normal(loc.float(), scale.float())
            z = q_z.rsample()
            log_proportions, _ = nets.decoder(z, None)
        theta = log_dispersion.exp()
        log_mean = lib.log().unsqueeze(-1) + log_proportions.float()
        log_lik = negative_binomial(total_count=theta, logits=log_mean - theta.log()).log_prob(x).sum(-1)
        local = log_lik - kl_divergence(q_z, Normal(mean, 1.0)).sum(-1) - 0.5 * variance.sum(-1)
        a = pi.clamp(1e-6, 1 - 1e-6)
        mask_kl = a * (a.log() - F.logsigmoid(prior_logits)) + (1 - a) * ((1 - a).log() - F.logsigmoid(-prior_logits))
        global_terms = -mask_kl.sum() - (pi * kl_divergence(q_shift, slab_prior)).sum()
        loss = -(n / len(index) * local.sum() + global_terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def step():
        return step_on(torch.randperm(n, generator=generator)[:batch_size].sort().values)

    step.on = step_on
    return step


def time_steps(steppers: dict, n_steps: int, repeats: int, warmup: int = 20) -> dict:
    """Median seconds per step of each stepper ``name -> (run, param_state or None)``, runs interleaved.

    A Pyro stepper's parameters are swapped in (``param_scope``) around each block of steps, outside
    the timer, so that two of them never share a param store."""
    import contextlib

    import pyro

    from pyro_svae.runtime import flush_denormals, param_scope

    times = {name: [] for name in steppers}

    def scope(state):
        return contextlib.nullcontext() if state is None else param_scope(state)

    # as in ``fit``: denormals flushed, argument validation off (for torch distributions too)
    with flush_denormals(), pyro.validation_enabled(False):
        for run, state in steppers.values():
            with scope(state):
                for _ in range(warmup):
                    run()
        for _ in range(repeats):
            for name, (run, state) in steppers.items():
                with scope(state):
                    start = time.perf_counter()
                    for _ in range(n_steps):
                        run()
                    times[name].append((time.perf_counter() - start) / n_steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def make_steppers(adata, with_pyro: bool = True) -> dict:
    from pyro_svae.runtime import param_scope

    objectives = [("fit's step", "fused")] + ([("Pyro SVI", "pyro")] if with_pyro else [])
    steppers = {}
    for name, objective in objectives:
        state: dict = {}
        with param_scope(state):
            steppers[name] = (pyro_svae_stepper(adata, objective), state)
    steppers["plain torch"] = (plain_torch_stepper(adata), None)
    steppers["plain torch, pyro_svae's NB"] = (plain_torch_stepper(adata, nb="pyro_svae"), None)
    return steppers


FIT_SCRIPT = """
import json, sys, time
import anndata, torch
torch.set_num_threads(int(sys.argv[2]))
import pyro_svae
adata = anndata.read_h5ad(sys.argv[1])
epochs = int(sys.argv[3])
options = json.loads(sys.argv[4])
profile = sys.argv[5] == "profile"
# the modules fit imports on first use, once per process: not a cost of its epochs
pyro_svae.fit(adata[:300].copy(), max_epochs=2, early_stopping=False, progress=False, **options)
if profile:
    import cProfile, io, pstats
    profiler = cProfile.Profile()
    profiler.enable()
start = time.perf_counter()
model = pyro_svae.fit(adata, max_epochs=epochs, early_stopping=False, progress=False, **options)
out = {"seconds": time.perf_counter() - start, "epochs_run": len(model.history), "version": pyro_svae.__version__,
       "code": pyro_svae.__file__}
if profile:
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    out["profile"] = text.getvalue()
print(json.dumps(out))
"""


FLOOR_SCRIPT = """
import json, sys, time
import anndata, numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[4])
import speed
from pyro_svae.train import split_cells
adata = anndata.read_h5ad(sys.argv[1])
epochs, batch = int(sys.argv[3]), speed.SETTING["batch_size"]
warm = speed.plain_torch_stepper(adata[:300].copy())  # first use of the kernels, as the fit script's 300-cell fit
for _ in range(3):
    warm()
start = time.perf_counter()
step = speed.plain_torch_stepper(adata)
rng = np.random.default_rng(0)
train, _ = split_cells(adata.n_obs, 0.1, rng)  # the 90% of cells fit trains on
for epoch in range(epochs):
    perm = rng.permutation(train)
    for first in range(0, len(perm), batch):
        step.on(np.sort(perm[first:first + batch]))
print(json.dumps({"seconds": time.perf_counter() - start, "epochs_run": epochs, "code": "floor"}))
"""


def floor_seconds(path: Path, threads: int, epochs: int) -> dict:
    """The plain-PyTorch floor trained for ``epochs`` epochs of the same 90% of cells, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT, str(path), str(threads), str(epochs),
                          str(Path(__file__).resolve().parent)], capture_output=True, text=True, check=True,
                         cwd=path.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_seconds(path: Path, threads: int, epochs: int, code_dir=None, profile: bool = False) -> dict:
    """``fit`` of the screen at ``path`` for ``epochs`` epochs in a fresh process (``code_dir``: another checkout)."""
    env = dict(os.environ)
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir)
    options = {k: SETTING[k] for k in ("n_latent", "n_hidden", "n_layers", "batch_size")}
    # run outside the project: a ``python -c`` puts its working directory first on sys.path, ahead of PYTHONPATH
    out = subprocess.run([sys.executable, "-c", FIT_SCRIPT, str(path), str(threads), str(epochs), json.dumps(options),
                          "profile" if profile else "time"], capture_output=True, text=True, check=True, env=env,
                         cwd=path.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def whole_fit(adata, threads: int, epochs: int, repeats: int, floor_step: float, before=None) -> dict:
    """Seconds per epoch of ``fit`` (now, and ``before``) and of the plain-PyTorch floor trained as a
    loop of its own, each in a fresh process and interleaved.

    Each is also timed at ``2 * epochs``: the difference is the cost of an added epoch (for ``fit``:
    training steps, validation ELBO, bookkeeping) and the rest the fixed cost of a fit (set-up, the
    warm start's rotation, the checks after training), which a longer fit spreads thinner.
    ``floor_step``: the floor's step time from the per-step timing, times the steps of an epoch, for
    comparison with the floor's own loop.
    """
    steps = math.ceil(round(0.9 * adata.n_obs) / SETTING["batch_size"])
    versions = {"now": None, **({"before": before} if before else {}), "floor": "floor"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "screen.h5ad"
        adata.write_h5ad(path)
        runs = {(name, n): [] for name in versions for n in (epochs, 2 * epochs)}
        for _ in range(repeats):
            for n in (epochs, 2 * epochs):
                for name, code in versions.items():  # interleaved
                    run = floor_seconds(path, threads, n) if name == "floor" else fit_seconds(path, threads, n, code)
                    runs[name, n].append((run["seconds"], run["epochs_run"], run["code"]))
    if before:
        codes = {name: {Path(c).resolve().parent for _, _, c in runs[name, epochs]} for name in ("now", "before")}
        assert not codes["now"] & codes["before"], codes
    timing = {}
    for name in versions:
        short = [(s, e) for s, e, _ in runs[name, epochs]]
        long = [(s, e) for s, e, _ in runs[name, 2 * epochs]]
        t_short, e_short = float(np.median([s for s, _ in short])), short[0][1]
        t_long, e_long = float(np.median([s for s, _ in long])), long[0][1]
        added = (t_long - t_short) / (e_long - e_short)
        timing[name] = {"per_epoch": float(np.median([s / e for s, e in short])), "added": added,
                        "fixed": t_short - added * e_short}
    floor = timing["floor"]
    row = {"screen": f"{adata.n_obs} x {adata.n_vars}", "threads": threads, "epochs": epochs,
           "floor s/epoch": floor["per_epoch"], "floor added epoch s": floor["added"],
           "floor step x steps s": floor_step * steps}
    for name in ("now", "before") if before else ("now",):
        prefix = "" if name == "now" else "before: "
        t = timing[name]
        row.update({f"{prefix}fit s/epoch": t["per_epoch"], f"{prefix}whole-fit ratio": t["per_epoch"] / floor["per_epoch"],
                    f"{prefix}added epoch s": t["added"], f"{prefix}added-epoch ratio": t["added"] / floor["added"],
                    f"{prefix}fixed s": t["fixed"]})
    return row


def profiles(adata, threads: int, epochs: int, before=None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "screen.h5ad"
        adata.write_h5ad(path)
        out = {"now": fit_seconds(path, threads, epochs, profile=True)["profile"]}
        if before:
            out["before"] = fit_seconds(path, threads, epochs, before, profile=True)["profile"]
    return out


PREDICT_SCRIPT = """
import json, sys, threading, time
import torch
torch.set_num_threads(int(sys.argv[1]))
import pyro_svae
def rss_gb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024 / 1e9
adata = pyro_svae.datasets.simulate(n_perturbations=50, n_latent=10, n_genes=500, n_cells_per_perturbation=190,
                                    n_control=500, max_targets=2, seed=0)
model = pyro_svae.fit(adata, n_latent=10, max_epochs=3, progress=False)
labels = list(model.perturbation_names)[:10]
start = time.perf_counter()
model.predict(labels, n_cells=10_000, seed=0)
predict_s = time.perf_counter() - start
from pyro_svae import interventions  # the lever, side by side: the counts drawn by one .sample() per chunk
interventions._decode_in_blocks = interventions._decode
start = time.perf_counter()
model.predict(labels, n_cells=10_000, seed=0)
serial_s = time.perf_counter() - start
import anndata, numpy as np
many = anndata.concat([adata] * 10, index_unique="-")  # 100,000 cells
peak = [0.0]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_gb()); done.wait(0.01)
before = rss_gb()
thread = threading.Thread(target=sample, daemon=True); thread.start()
start = time.perf_counter()
counts = model.posterior_predictive(many, num_samples=10, genes=list(adata.var_names[:50]), seed=0)
ppc_s = time.perf_counter() - start
done.set(); thread.join()
print(json.dumps({"predict 100,000 cells (500 genes) s": predict_s,
                  "same, counts drawn on one thread s": serial_s,
                  "posterior_predictive 100,000 cells x 10 draws x 50 genes s": ppc_s,
                  "its output GB": counts.nbytes / 1e9, "resident memory added GB": peak[0] - before}))
"""


def prediction(threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, str(threads)], capture_output=True, text=True,
                         check=True)
    return {"threads": threads, **json.loads(out.stdout.strip().splitlines()[-1])}


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




def _table(rows) -> str:
    import pandas as pd

    return pd.DataFrame(rows).round(3).to_string(index=False)


def step_row(times: dict) -> dict:
    """Milliseconds per step of each implementation and the ratios to the floors."""
    floor, floor_nb = times["plain torch"], times["plain torch, pyro_svae's NB"]
    row = {f"{name} ms/step": 1e3 * t for name, t in times.items()}
    row["ratio (fit's step / floor)"] = times["fit's step"] / floor
    row["ratio (fit's step / floor with pyro_svae's NB)"] = times["fit's step"] / floor_nb
    if "Pyro SVI" in times:
        row["ratio (Pyro SVI / floor)"] = times["Pyro SVI"] / floor
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each timed fit of the dense screen")
    parser.add_argument("--before", default=None, help="an earlier checkout of the project, timed beside this one")
    parser.add_argument("--scvi-python", default=None, help="a Python interpreter with scvi-tools installed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    import torch

    adata = screen()
    steps, fits = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = time_steps(make_steppers(adata), args.steps, args.repeats)
        floor = times["plain torch"]
        row = {"screen": f"{adata.n_obs} x {adata.n_vars}", "threads": threads, **step_row(times)}
        if args.scvi_python:
            scvi = scvi_timing(args.scvi_python, adata, threads)
            row.update({"scvi-tools ms/step": 1e3 * scvi["seconds_per_step"], "scvi-tools version": scvi["version"]})
        steps.append(row)
        print(row, flush=True)
        fits.append(whole_fit(adata, threads, args.epochs, 3, floor, args.before))
        print(fits[-1], flush=True)
    threads = max(args.threads)
    torch.set_num_threads(threads)
    big = sparse_screen(100_000)
    times = time_steps(make_steppers(big, with_pyro=False), 50, 3)
    steps.append({"screen": f"{big.n_obs} x {big.n_vars} sparse", "threads": threads, **step_row(times)})
    print(steps[-1], flush=True)
    # 2 epochs: one of each warm-start stage; 3 repeats
    fits.append(whole_fit(big, threads, 2, 3, times["plain torch"], args.before))
    print(fits[-1], flush=True)
    profile = profiles(adata, threads, args.epochs, args.before)
    predicted = [prediction(threads)]
    print(predicted, flush=True)
    scale = [scaling(n, threads) for n in args.sizes]
    print(_table(scale), flush=True)
    report(steps, fits, profile, predicted, scale, args, adata)


def report(steps, fits, profile, predicted, scale, args, adata):
    import torch

    import pyro_svae

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU"
    command = "python benchmarks/speed.py" + (" --before CHECKOUT" if args.before else "") + (
        " --scvi-python ..." if args.scvi_python else "")
    before = ""
    if args.before:  # named by its commit, not by where it lies on this machine
        commit = subprocess.run(["git", "-C", args.before, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
        before = f" CHECKOUT: a checkout of commit {commit} (`git worktree add CHECKOUT {commit}`)."
    lines = ["# Training and prediction speed", "",
             f"`{command}` on {machine}; pyro_svae {pyro_svae.__version__}.{before}", "",
             f"## Per step (batch {SETTING['batch_size']}, hidden {SETTING['n_hidden']} x {SETTING['n_layers']}, "
             f"{SETTING['n_latent']} latents)", "",
             f"The dense {adata.n_obs} x {SETTING['n_genes']} screen ({SETTING['n_perturbations']} perturbations) and the "
             "sparse one of the whole-fit table (100 perturbations). Median over repeats of the mean time of a",
             "fixed number of steps, the implementations interleaved. `plain torch` is the floor, with torch's",
             "`NegativeBinomial`; `plain torch, pyro_svae's NB` is the same loop with",
             "`pyro_svae.likelihoods.NegativeBinomial`, which `fit` uses: the same values and gradients, with",
             "`lgamma` and `digamma` of the inverse dispersion taken once per gene instead of once per cell and gene.", "",
             "```", _table(steps), "```", "",
             "## Whole fit", "",
             f"Seconds per epoch run of `fit` (max_epochs {args.epochs} on the dense screen, 2 on the sparse one: a warm",
             "start runs at least one epoch of each stage; set-up, the warm start's rotation, validation ELBO,",
             "early-stopping bookkeeping and the checks after training included, in a fresh process after a",
             "2-epoch fit of 300 cells has imported what `fit` imports on first use) against the floor trained as",
             "a loop of its own (plain PyTorch with torch's `NegativeBinomial`: the same 90% of cells in shuffled",
             "minibatches, its set-up included, in a fresh process after 3 steps on 300 cells). Median of repeats;",
             "each repeat runs now, the earlier checkout and the floor one after the other, so that they share the",
             "machine's state. `floor step x steps s`: the per-step time above times the steps of an epoch.", "",
             "Each is also run for twice the epochs: `added epoch s` is the cost of one more epoch (its",
             "steps, the validation ELBO and the bookkeeping; `added-epoch ratio` against the floor's added",
             "epoch), `fixed s` what a fit costs whatever its length (set-up, the warm start's rotation, the checks",
             "after training). A fit of E epochs takes `fixed s + E x added epoch s`.", "",
             "```", _table(fits), "```", "",
             "## Profile of `fit` (cProfile, by own time)", ""]
    for name, text in profile.items():
        body = text[text.index("ncalls"):] if "ncalls" in text else text
        body = re.sub(r"\S*/site-packages/", "site-packages/", body)  # paths short, and no one's home folder
        body = re.sub(r"\S*/(pyro_svae/\S+\.py)", r"\1", body)  # the package's files relative to its checkout
        lines += [f"{name}:", "", "```", body.strip(), "```", ""]
    lines += ["## Prediction", "", "`predict` of 100,000 cells draws its counts in blocks of 2,048 cells on torch's threads at",
              "once, each block from a NumPy generator of its own; `same, counts drawn on one thread`: the same call",
              "with each chunk's counts drawn by one `.sample()` of the distribution (torch's samplers, on one",
              "thread), timed after it in the same process.", "",
              "```", _table(predicted), "```", "",
              "## Scaling: sparse screens, 2,000 genes, 5% non-zero, one epoch of `fit`", "",
              "`fit_above_before_gb`: the resident memory `fit` added to the process holding the screen.", "",
              "```", _table(scale), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.md").write_text("\n".join(lines))

    figure(fits, scale, RESULTS / "speed.png")
    print(f"Wrote {RESULTS / 'speed.md'} and .png")


def figure(fits, scale, path) -> None:
    """The whole-fit and added-epoch ratios (now and before) beside the goal, and cells per second by size."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    fit_table = pd.DataFrame(fits)
    labels = [f"{r['screen']}\n{r['threads']} thr" for _, r in fit_table.iterrows()]
    x = np.arange(len(fit_table))
    bars = [("whole-fit ratio", "whole fit, now"), ("before: whole-fit ratio", "whole fit, before"),
            ("added-epoch ratio", "added epoch, now"), ("before: added-epoch ratio", "added epoch, before")]
    bars = [(column, label) for column, label in bars if column in fit_table]
    width = 0.8 / len(bars)
    for i, (column, label) in enumerate(bars):
        axes[0].bar(x + (i - (len(bars) - 1) / 2) * width, fit_table[column], width, label=label)
    axes[0].axhline(1.15, color="k", ls="--", lw=0.8, label="goal 1.15")
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylabel("fit time / plain-PyTorch floor")
    axes[0].legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # below
    scale = pd.DataFrame(scale)
    axes[1].plot(scale["n_cells"], scale["cells_per_second"], "o-")
    axes[1].set_xscale("log")
    axes[1].set_ylim(0, 1.1 * scale["cells_per_second"].max())  # from zero: a flat line is flat
    axes[1].set_xlabel("cells (sparse, 2,000 genes)")
    axes[1].set_ylabel("training cells per second")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
