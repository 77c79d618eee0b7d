"""Training throughput on a GPU: pyro_svae's training step beside the plain-PyTorch floor, same device.

    python benchmarks/gpu.py                      # on a CUDA machine: the table, in a few minutes
    python benchmarks/gpu.py --device cpu --cells 20000 --batch-sizes 256 1024 --steps 20   # a smoke run

A dense screen of ``--cells`` cells x 2,000 genes (NB-like counts, 100 perturbations) lives on the
device; for each batch size (256 to 4,096), ``--steps`` training steps of (a) ``fit``'s step (the
fused ``TraceMeanField_ELBO`` objective of :mod:`pyro_svae.objective` and the multi-tensor
``ClippedAdam``, with the default ``spike_and_slab`` prior) and (b) the same networks and objective in
plain PyTorch (``benchmarks/speed.py``'s floor), timed with CUDA synchronisation, implementations
interleaved; optionally (``--bf16``) the floor under bfloat16 autocast. Reports cells per second
and the ratio, and writes ``benchmarks/results/gpu.md`` and ``gpu.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_screen(n_cells: int, n_genes: int = 2000, n_perturbations: int = 100, seed: int = 0):
    """Counts ``[n_cells, n_genes]`` (gamma-Poisson around log-normal gene means), labels, no simulator needed."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    means = rng.lognormal(0.0, 1.5, n_genes) / 5
    counts = rng.poisson(rng.gamma(5.0, means / 5.0, size=(n_cells, n_genes))).astype(np.float32)
    labels = np.where(rng.random(n_cells) < 0.1, "control", rng.choice([f"p{i}" for i in range(n_perturbations)],
                                                                         n_cells))
    return anndata.AnnData(X=counts, obs=pd.DataFrame({"perturbation": labels}, index=pd.RangeIndex(n_cells).astype(str)))


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pyro_svae_step(adata, device, batch_size: int):
    """``fit``'s training step on ``device`` (data resident there), as a closure; call inside a
    ``param_scope`` of its own."""
    import torch

    from pyro_svae.data import read_screen
    from pyro_svae.factory import SVAEConfig, build, layout_of
    from pyro_svae.objective import register_networks, step_function
    from pyro_svae.optim import MultiTensorClippedAdam
    from pyro_svae.runtime import DataOnDevice

    import pyro

    screen = read_screen(adata)
    components = build(SVAEConfig(n_latent=10), layout_of(screen))
    components.nets.to(device)
    store = pyro.get_param_store()  # the caller's scope (one pyro_svae stepper at a time)
    register_networks(components)
    prior_names = {name for site in components.sites for name in site.params.values()}
    optimizer = MultiTensorClippedAdam(lambda name: {"lr": 1e-2 if name in prior_names else 1e-3, "clip_norm": 10.0})
    step = step_function(components, optimizer, store)
    data = DataOnDevice(screen, device)
    generator = torch.Generator(device="cpu").manual_seed(0)

    def run():
        index = torch.randperm(screen.n_cells, generator=generator)[:batch_size].sort().values.numpy()
        return step(data.minibatch(index), screen.n_cells, 1.0)

    return run


def floor_step(adata, device, batch_size: int, bf16: bool = False):
    from speed import plain_torch_stepper

    return plain_torch_stepper(adata, device=device, batch_size=batch_size, bf16=bf16)


def time_interleaved(steppers: dict, device, steps: int, repeats: int, warmup: int = 10) -> dict:
    from pyro_svae.runtime import flush_denormals

    import pyro

    times = {name: [] for name in steppers}
    with flush_denormals(device.type == "cpu"), pyro.validation_enabled(False):
        for step in steppers.values():
            for _ in range(warmup):
                step()
        _sync(device)
        for _ in range(repeats):
            for name, step in steppers.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                _sync(device)
                times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time the floor under bfloat16 autocast")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA device here: run this on a GPU machine, or pass --device cpu for a smoke run.")
        return None
    from pyro_svae.runtime import param_scope

    adata = synthetic_screen(args.cells)
    rows = []
    for batch_size in args.batch_sizes:
        with param_scope({}):
            steppers = {"pyro_svae": pyro_svae_step(adata, device, batch_size),
                        "plain torch": floor_step(adata, device, batch_size)}
            if args.bf16:
                steppers["plain torch bf16"] = floor_step(adata, device, batch_size, bf16=True)
            seconds = time_interleaved(steppers, device, args.steps, args.repeats)
        row = {"batch_size": batch_size, **{f"{name} cells/s": batch_size / t for name, t in seconds.items()},
               "ratio (pyro_svae / floor time)": seconds["pyro_svae"] / seconds["plain torch"]}
        rows.append(row)
        print(row, flush=True)
    report(rows, args, device, adata)
    return rows


def report(rows, args, device, adata):
    import pandas as pd
    import torch

    table = pd.DataFrame(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Training throughput on a GPU", "",
             f"`python benchmarks/gpu.py --device {args.device} --cells {args.cells}` on {name}, torch {torch.__version__}: "
             f"{adata.n_obs} cells x {adata.n_vars} genes resident on the device, 10 latents, hidden 128 x 2, "
             f"{args.steps} steps x {args.repeats} repeats per batch size (median), implementations interleaved.", "",
             "```", table.round(3).to_string(index=False), "```", ""]
    (out / "gpu.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for column in [c for c in table.columns if c.endswith("cells/s")]:
        ax.plot(table["batch_size"], table[column], "o-", label=column.replace(" cells/s", ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("training cells per second")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gpu.png", dpi=120)
    print(f"Wrote {out / 'gpu.md'} and .png")


if __name__ == "__main__":
    main()
