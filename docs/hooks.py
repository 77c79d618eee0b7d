"""MkDocs hooks: build pages from files that live outside ``docs/`` (the tutorials and the
benchmark results, so the site cannot go stale), and draw the model's graph when graphviz is
installed."""

from __future__ import annotations

import shutil
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
GRAPH_MARKER = "<!-- model graph -->"


@event_priority(100)  # before mkdocs-jupyter turns the tutorials into notebook pages
def on_files(files, config):
    sources = sorted((ROOT / "tutorials").glob("*.py")) + sorted((ROOT / "benchmarks" / "results").glob("*.*"))
    for path in sources:
        files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def model_graph_svg():
    """``pyro.render_model`` of the model and guide on a tiny screen, as SVG; ``None`` without graphviz."""
    if shutil.which("dot") is None:
        return None
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return None
    import pyro
    import torch

    from pyro_svae import datasets, fit

    adata = datasets.simulate(n_perturbations=3, n_latent=2, n_genes=50, n_cells_per_perturbation=10, n_control=10,
                             max_targets=1)
    model = fit(adata, n_latent=2, n_hidden=8, n_layers=1, batch_size=16, max_epochs=1, progress=False)
    model_fn, _ = model.components.functions()
    batch = {"library": torch.ones(4), "perturbations": torch.zeros(4, 1, dtype=torch.long), "batch": None,
             "counts": torch.ones(4, 50)}
    return pyro.render_model(model_fn, model_kwargs=batch, render_distributions=True).pipe(format="svg").decode()


def on_page_markdown(markdown, page, config, files):
    if GRAPH_MARKER not in markdown:
        return markdown
    svg = model_graph_svg()
    if svg is None:
        note = ("!!! note\n    The graph of the model is drawn here by `pyro.render_model` when graphviz "
                "(the `dot` program and the `graphviz` Python package) is installed where the docs are built.")
        return markdown.replace(GRAPH_MARKER, note)
    return markdown.replace(GRAPH_MARKER, svg[svg.index("<svg"):])
