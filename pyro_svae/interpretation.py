"""What the latents and perturbations mean in gene space.

- :func:`gene_programs`: the decoder's Jacobian, ``d log mu_g / d z_k``, averaged over cells: the
  change in each gene's log mean expression per unit of each latent (a latent's gene program).
- :func:`perturbation_effects`: each perturbation's predicted log2 fold change of mean expression
  against controls, with a credible interval over the global sites and the cells.
- :func:`enrichment`: gene programs scored against user-supplied gene sets (decoupler's ULM).

Both run inside the model's param scope (``SVAE`` enters it) and read only the fitted model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .factory import Components
from .guide import encode
from .posterior import draw_globals, expected_shifts

__all__ = ["gene_programs", "perturbation_effects", "top_genes", "enrichment"]


def _log_proportions(components: Components, z: torch.Tensor, batch: Optional[torch.Tensor]) -> torch.Tensor:
    log_p, _ = components.nets.decoder(z, batch)
    return log_p


def gene_programs(components: Components, minibatches, n_cells: int) -> pd.DataFrame:
    """Mean Jacobian ``d log mu_g / d z_k`` over the cells of ``minibatches``: ``[K x G]``.

    ``mu = library * softmax(decoder(z, batch))``, so the library drops out; each cell is
    evaluated at its posterior mean latent with its own batch. Forward-mode derivatives
    (``torch.func.jvp``), one per latent.
    """
    n_latent = components.config.n_latent
    total = torch.zeros(n_latent, len(components.layout.genes), dtype=torch.float64)
    shifts = None
    for _, batch in minibatches:
        with torch.no_grad():
            if shifts is None and components.nets.encoder.conjugate:
                shifts = expected_shifts(components, batch["counts"].device)
            z = encode(components.nets, batch, shifts).mean
        for k in range(n_latent):
            tangent = torch.zeros_like(z)
            tangent[:, k] = 1.0
            _, derivative = torch.func.jvp(lambda z_: _log_proportions(components, z_, batch["batch"]), (z,), (tangent,))
            total[k] += derivative.detach().double().sum(0).cpu()
    values = (total / max(1, n_cells)).numpy()
    return pd.DataFrame(values, index=pd.RangeIndex(n_latent, name="latent"),
                        columns=pd.Index(list(components.layout.genes), name="gene"))


def top_genes(programs: pd.DataFrame, latent: int, n: int = 10) -> pd.DataFrame:
    """The ``n`` genes a latent drives most (largest ``|d log mu / d z|``), with their values.

    Columns ``gene``, ``effect`` (the signed derivative) and ``direction`` (``"up"`` or ``"down"``).
    """
    if latent not in programs.index:
        raise KeyError(f"latent={latent!r} is not a latent of the programs; expected one of {list(programs.index)}.")
    row = programs.loc[latent]
    order = row.abs().sort_values(ascending=False).index[:n]
    out = pd.DataFrame({"gene": list(order), "effect": row[order].to_numpy()})
    out["direction"] = np.where(out["effect"] > 0, "up", "down")
    return out


def perturbation_effects(components: Components, perturbations: Sequence[str], codes: np.ndarray,
                         batches: Optional[Sequence[int]], device, num_samples: int = 200, n_cells: int = 200,
                         interval: float = 0.9) -> pd.DataFrame:
    """Predicted log2 fold change of mean expression, perturbation against control, per gene.

    For each of ``num_samples`` draws of the global sites (masks sampled): ``n_cells`` latents
    ``z = shift + noise`` of the perturbation and of controls, decoded to expression proportions
    (spread over ``batches``), averaged over cells; the log2 ratio of the two means is one draw of
    the effect. Returns a long table: ``perturbation``, ``gene``, ``lfc`` (the mean over draws),
    ``lower``, ``upper`` (the central ``interval``).
    """
    if not 0.0 < interval < 1.0:
        raise ValueError(f"interval must lie in (0, 1), but got {interval}.")
    draws = draw_globals(components, num_samples, device)
    shifts = draws.masked_shifts()  # [S, P, K]
    n_latent, genes = components.config.n_latent, list(components.layout.genes)
    padded = torch.cat([shifts, shifts.new_zeros(num_samples, 1, n_latent)], dim=1)
    noise = torch.randn(num_samples, n_cells, n_latent, device=device)
    batch = None
    if batches:
        batch = torch.as_tensor(np.resize(np.asarray(batches), n_cells), device=device)

    def mean_expression(shift):  # [S, K] -> mean proportions [S, G]
        z = (shift[:, None, :] + noise).reshape(-1, n_latent)
        b = None if batch is None else batch.repeat(num_samples)
        with torch.no_grad():
            p = _log_proportions(components, z, b).exp().reshape(num_samples, n_cells, -1)
        return p.mean(1)

    control = torch.log2(mean_expression(torch.zeros(num_samples, n_latent, device=device)))
    alpha = (1.0 - interval) / 2.0
    frames = []
    for label, members in zip(perturbations, codes):
        shift = padded[:, torch.as_tensor(members, device=device)].sum(1)  # [S, K]
        lfc = (torch.log2(mean_expression(shift)) - control).cpu().numpy()  # [S, G]
        lower, upper = np.quantile(lfc, [alpha, 1.0 - alpha], axis=0)
        frames.append(pd.DataFrame({"perturbation": label, "gene": genes, "lfc": lfc.mean(0), "lower": lower,
                                    "upper": upper}))
    return pd.concat(frames, ignore_index=True)


def _gene_set_table(gene_sets) -> pd.DataFrame:
    if isinstance(gene_sets, pd.DataFrame):
        missing = [c for c in ("source", "target") if c not in gene_sets.columns]
        if missing:
            raise KeyError(f"gene_sets lacks the columns {missing}; expected 'source', 'target' (and 'weight').")
        table = gene_sets.copy()
    elif isinstance(gene_sets, dict):
        table = pd.DataFrame([(name, str(g)) for name, genes in gene_sets.items() for g in genes],
                             columns=["source", "target"])
    else:
        raise TypeError(f"Expected gene_sets as a dict {{name: genes}} or a DataFrame (source, target, weight), "
                        f"but got {type(gene_sets).__name__}.")
    if "weight" not in table:
        table["weight"] = 1.0
    return table[["source", "target", "weight"]]


def _ulm(programs: pd.DataFrame, net: pd.DataFrame, min_genes: int):
    from scipy import stats

    genes = list(programs.columns)
    sources = [s for s, rows in net.groupby("source") if rows["target"].isin(genes).sum() >= min_genes]
    y = programs.to_numpy(float)  # [latents, G]
    scores = np.zeros((len(programs), len(sources)))
    for j, source in enumerate(sources):
        rows = net[(net["source"] == source) & net["target"].isin(genes)]
        x = pd.Series(rows["weight"].to_numpy(float), index=rows["target"]).groupby(level=0).sum()
        x = x.reindex(genes, fill_value=0.0).to_numpy()
        xc, yc = x - x.mean(), y - y.mean(1, keepdims=True)
        r = (yc @ xc) / np.sqrt((yc**2).sum(1) * (xc**2).sum() + 1e-300)
        scores[:, j] = r * np.sqrt((len(genes) - 2) / np.clip(1 - r**2, 1e-12, None))
    p = 2 * stats.t.sf(np.abs(scores), len(genes) - 2)
    frame = (lambda v: pd.DataFrame(v, index=programs.index, columns=pd.Index(sources, name="source")))  # noqa: E731
    return frame(scores), frame(p)


def enrichment(programs: pd.DataFrame, gene_sets, min_genes: int = 5, use_decoupler: Optional[bool] = None):
    """Score each latent's gene program against gene sets with a univariate linear model (ULM).

    For each latent and gene set, the t-value of regressing the program's values over all genes on
    the set's membership (or weights): positive when the set's genes go up with the latent.
    Through ``decoupler`` (``decoupler.mt.ulm``, the same method) when it is installed and
    ``use_decoupler`` is not ``False``; else the same computation here. Nothing is downloaded:
    gene sets are given, as a dict ``{name: genes}`` or a DataFrame with ``source``, ``target``
    and optional ``weight`` columns. Sets with fewer than ``min_genes`` genes in the programs are
    dropped.

    Returns
    -------
    (scores, pvalues) : two DataFrames ``[latents x gene sets]``.
    """
    net = _gene_set_table(gene_sets)
    if use_decoupler is not False:
        try:
            import decoupler as dc
        except ImportError:
            if use_decoupler:
                raise ImportError("use_decoupler=True needs decoupler: pip install decoupler") from None
        else:
            if hasattr(dc, "mt"):  # decoupler >= 2
                return dc.mt.ulm(data=programs, net=net, tmin=min_genes, verbose=False)
            return dc.run_ulm(mat=programs, net=net, min_n=min_genes, verbose=False)  # decoupler 1.x
    return _ulm(programs, net, min_genes)
