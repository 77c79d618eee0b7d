"""Simulated screens: the paper's setting (Lopez et al. 2023, Sec. 5), corrected, seeded and widened
to what real screens vary (gene baselines, depth, noise, decoder depth, controls, combinations)."""

from __future__ import annotations

from typing import Optional, Sequence

import anndata
import numpy as np
import pandas as pd

__all__ = ["ACTIVATIONS", "activate", "decode", "decoder_of", "simulate", "true_log_mean"]

#: Leaky-ReLU slope of the simulated decoder.
SLOPE = 0.2

#: The simulated decoder's hidden nonlinearities, all strictly increasing, so the decoder stays
#: injective: a kink at the origin (``"leaky_relu"``, the default), a smooth bend (``"softplus"``)
#: and saturation (``"tanh"``).
ACTIVATIONS = ("leaky_relu", "softplus", "tanh")


def _injective_decoder(rng: np.random.Generator, n_latent: int, n_genes: int, n_hidden: int, slope: float,
                       n_layers: int = 3):
    """Weights of an MLP with strictly increasing nonlinearities that is injective (full column rank
    layers, Lachapelle et al.)."""
    sizes = [n_latent] + [n_hidden] * n_layers + [n_genes]
    weights = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w, _ = np.linalg.qr(rng.normal(size=(max(n_in, n_out), min(n_in, n_out))))
        w = w if n_in >= n_out else w.T  # orthonormal rows or columns: injective when n_in <= n_out
        w = w.reshape(n_in, n_out) * np.sqrt(2.0 / (1 + slope**2)) * np.sqrt(2.0 / (n_in + n_out))
        weights.append(w)
    return weights


def activate(h, activation: str, slope: float = SLOPE):
    """The simulated decoder's nonlinearity on ``h`` (a NumPy array or a torch tensor)."""
    if activation == "leaky_relu":
        return np.maximum(slope * h, h) if isinstance(h, np.ndarray) else h.maximum(slope * h)
    if activation == "softplus":
        return np.logaddexp(0.0, h) if isinstance(h, np.ndarray) else h.clamp(min=0) + (-h.abs()).exp().log1p()
    if activation == "tanh":
        return np.tanh(h) if isinstance(h, np.ndarray) else h.tanh()
    raise ValueError(f"Expected decoder_activation to be one of {list(ACTIVATIONS)}, but got {activation!r}.")


def decode(z, weights, slope: float, activation: str = "leaky_relu", biases=None, centre=None):
    """The simulated decoder's logits ``[..., n_genes]`` of latents ``z`` ``[..., n_latent]`` (a NumPy
    array, or a torch tensor with torch ``weights``), before ``logit_scale`` and the baseline:
    ``weights`` ``[n_latent, n_hidden], ..., [n_hidden, n_genes]``; ``biases`` (``[n_hidden]`` per
    hidden layer, ``None``: zero); ``centre`` (``[n_genes]``, ``None``: zero) is subtracted from the
    output. :func:`decoder_of` gives every argument but ``z`` for a simulated screen."""
    h = z
    for i, w in enumerate(weights[:-1]):
        h = h @ w
        if biases is not None:
            h = h + biases[i]
        h = activate(h, activation, slope)
    h = h @ weights[-1]
    return h if centre is None else h - centre


def _standardised(weights, z: np.ndarray, activation: str, bias: float, rng: np.random.Generator):
    """``weights`` with each hidden unit's pre-activation scaled to unit standard deviation over the
    cells ``z``, and hidden biases ``N(0, bias)`` in those units (``None`` when ``bias`` is 0), so that
    a nonlinearity acts on the latents' own range whatever the depth."""
    scaled, biases, h = [], [], z
    for w in weights[:-1]:
        w = w / (h @ w).std(axis=0)
        biases.append(rng.normal(0.0, bias, size=w.shape[1]) if bias else np.zeros(w.shape[1]))
        h = activate(h @ w + biases[-1], activation)
        scaled.append(w)
    return scaled + [weights[-1]], (biases if bias else None)


def decoder_of(adata: anndata.AnnData, convert=np.asarray) -> dict:
    """The simulator's decoder kept in ``adata.uns["true_decoder"]``, as keyword arguments of
    :func:`decode` (``weights``, ``slope``, ``activation``, ``biases``, ``centre``); ``convert`` turns each array into
    the array type wanted. Screens simulated before the decoder options were added decode as before."""
    decoder = adata.uns["true_decoder"]
    n_weights = int(decoder["n_weights"])
    biases = ([convert(np.asarray(decoder[f"b{i}"], float)) for i in range(n_weights - 1)]
              if "b0" in decoder else None)
    centre = convert(np.asarray(decoder["centre"], float)) if "centre" in decoder else None
    return {"weights": [convert(np.asarray(decoder[f"w{i}"], float)) for i in range(n_weights)],
            "slope": float(decoder["slope"]), "activation": str(decoder.get("activation", "leaky_relu")),
            "biases": biases, "centre": centre}


def true_log_mean(adata: anndata.AnnData, z: np.ndarray, library=None) -> np.ndarray:
    """The simulator's own decoder: log mean counts ``[n_cells, n_genes]`` of latents ``z [n_cells, K]``.

    ``library`` (a number or ``[n_cells]``) defaults to 1, giving the log proportions
    ``log softmax(f(z) + baseline)``. Reads the weights kept in ``adata.uns["true_decoder"]``, so
    gene programs learned by a model can be compared with the truth.
    """
    decoder = adata.uns["true_decoder"]
    logits = decode(np.asarray(z, float), **decoder_of(adata)) / float(decoder["logit_scale"])
    logits = logits + np.asarray(decoder["baseline"])
    log_p = logits - logits.max(axis=-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    lib = 1.0 if library is None else np.asarray(library, float).reshape(-1, 1)
    return log_p + np.log(lib)


def _combination_pairs(rng: np.random.Generator, n_perturbations: int, n_combinations: int) -> list:
    pairs = set()
    possible = n_perturbations * (n_perturbations - 1) // 2
    if n_combinations > possible:
        raise ValueError(f"Expected n_combinations <= {possible} (the pairs of {n_perturbations} perturbations), "
                         f"but got {n_combinations}.")
    while len(pairs) < n_combinations:
        a, b = sorted(rng.choice(n_perturbations, size=2, replace=False))
        pairs.add((int(a), int(b)))
    return sorted(pairs)


def simulate(
    n_perturbations: int = 20,
    n_latent: int = 5,
    n_genes: int = 100,
    n_cells_per_perturbation: int = 150,
    n_control: int = 300,
    max_targets: int = 3,
    shift_size: float = 5.0,
    library_size: float = 2000.0,
    dispersion: Optional[float] = 10.0,
    n_hidden: int = 40,
    seed: int = 0,
    *,
    min_targets: int = 1,
    gene_baseline_sd: float = 0.0,
    library_sd: float = 0.2,
    decoder_layers: int = 3,
    decoder_activation: str = "leaky_relu",
    decoder_bias: float = 0.0,
    n_combinations: int = 0,
    interaction: float = 0.0,
    cells_per_perturbation: Optional[Sequence[int]] = None,
) -> anndata.AnnData:
    """Simulate a perturbation screen with sparse mechanism shifts (Lopez et al. 2023, Sec. 5).

    Each perturbation targets ``min_targets`` to ``max_targets`` distinct latents, shifting each
    by ``+-N(shift_size, 0.5)``; cells have ``z ~ Normal(delta[a], I)``; an injective leaky-ReLU
    MLP with ``decoder_layers`` hidden layers maps ``z`` to gene logits (scaled to unit standard
    deviation), a log-normal baseline per gene (``gene_baseline_sd``, the sd of the log baseline:
    real genes span orders of magnitude, ~1.5-2) is added, and a softmax **over genes** gives the
    proportions (the reference code normalises over cells); counts are negative binomial with mean
    ``library * softmax`` and inverse dispersion ``dispersion`` (``None``: Poisson). Library sizes
    are log-normal around ``library_size`` with log-sd ``library_sd``.

    ``decoder_activation`` is the decoder's hidden nonlinearity (:data:`ACTIVATIONS`): the
    default leaky ReLU bends each latent at its origin, ``"softplus"`` bends it smoothly and
    ``"tanh"`` saturates it. ``decoder_bias`` > 0 adds a bias to each hidden unit, drawn with that
    standard deviation, so that the bends sit away from the origin (0: none). With either option
    away from its default, each hidden unit's pre-activation is scaled to unit standard deviation
    over the screen's cells (a smooth nonlinearity then acts on the latents' own range, where the
    bias-free leaky ReLU is indifferent to scale) and each gene's logit is centred over the cells (a
    constant per gene is a baseline) before the logits are scaled; the default decoder is drawn as
    before.

    ``n_combinations`` random pairs ``"pA+pB"`` get ``n_cells_per_perturbation`` cells each, with
    the sum of their members' shifts plus, with ``interaction > 0``, a non-additive term: a shift
    of ``interaction * shift_size`` on one random latent per pair. ``cells_per_perturbation``
    (one count per perturbation) replaces the constant ``n_cells_per_perturbation``.
    Everything is drawn from generators seeded by ``seed``; the default arguments reproduce the
    screens of earlier versions exactly.

    Returns
    -------
    anndata.AnnData
        ``X`` ``[n_cells, n_genes]`` float32 counts; ``obs["perturbation"]`` (``"control"``,
        ``"p00"``, ``"p01"``..., ``"p00+p03"``); ``obsm["z_true"]`` ``[n_cells, n_latent]``;
        ``obs["true_library"]`` (the drawn library sizes); ``uns["true_dispersion"]`` (``inf``: Poisson);
        ``uns["true_targets"]`` ``[n_perturbations, n_latent]`` bool and ``uns["true_shifts"]``
        (float), rows in the order of ``uns["perturbation_names"]``; ``uns["true_decoder"]`` (read by
        :func:`true_log_mean`); with combinations, ``uns["combinations"]`` (labels) and
        ``uns["interaction_shifts"]`` ``[n_combinations, n_latent]``.
    """
    if not 1 <= min_targets <= max_targets <= n_latent:
        raise ValueError(f"Expected 1 <= min_targets <= max_targets <= n_latent={n_latent}, but got "
                         f"min_targets={min_targets}, max_targets={max_targets}.")
    if decoder_layers < 1:
        raise ValueError(f"Expected decoder_layers >= 1, but got {decoder_layers}.")
    if decoder_activation not in ACTIVATIONS:
        raise ValueError(f"Expected decoder_activation to be one of {list(ACTIVATIONS)}, but got "
                         f"{decoder_activation!r}.")
    if not decoder_bias >= 0:
        raise ValueError(f"Expected decoder_bias >= 0, but got {decoder_bias}.")
    rng = np.random.default_rng(seed)
    # options added after the first release draw from their own stream, so the defaults keep
    # reproducing earlier screens draw for draw
    extra = np.random.default_rng([seed, 1])
    width = len(str(n_perturbations - 1))
    names = [f"p{i:0{width}d}" for i in range(n_perturbations)]  # zero-padded: sorted order = index order
    targets = np.zeros((n_perturbations, n_latent), dtype=bool)
    for p in range(n_perturbations):
        k = rng.integers(min_targets, max_targets + 1)
        targets[p, rng.choice(n_latent, size=k, replace=False)] = True
    sign = rng.choice([-1.0, 1.0], size=targets.shape)
    shifts = targets * sign * rng.normal(shift_size, 0.5, size=targets.shape)

    if cells_per_perturbation is None:
        sizes = [n_cells_per_perturbation] * n_perturbations
    else:
        sizes = [int(n) for n in cells_per_perturbation]
        if len(sizes) != n_perturbations or min(sizes) < 1:
            raise ValueError(f"Expected cells_per_perturbation to hold {n_perturbations} counts >= 1, "
                             f"but got {len(sizes)} (min {min(sizes) if sizes else None}).")
    labels = ["control"] * n_control + [n for n, size in zip(names, sizes) for _ in range(size)]
    mean_rows = [np.zeros(n_latent)] * n_control + [shifts[p] for p, size in enumerate(sizes) for _ in range(size)]
    pairs = _combination_pairs(extra, n_perturbations, n_combinations) if n_combinations else []
    interaction_shifts = np.zeros((len(pairs), n_latent))
    for c, (a, b) in enumerate(pairs):
        if interaction:
            interaction_shifts[c, extra.integers(n_latent)] = extra.choice([-1.0, 1.0]) * interaction * shift_size
        labels += [f"{names[a]}+{names[b]}"] * n_cells_per_perturbation
        mean_rows += [shifts[a] + shifts[b] + interaction_shifts[c]] * n_cells_per_perturbation
    labels = np.array(labels)
    mean = np.array(mean_rows).reshape(len(labels), n_latent)
    z = mean + rng.normal(size=mean.shape)

    weights = _injective_decoder(rng, n_latent, n_genes, max(n_hidden, n_latent), slope=SLOPE,
                                 n_layers=decoder_layers)
    biases = centre = None
    standardise = decoder_activation != "leaky_relu" or decoder_bias > 0
    if standardise:  # (own stream: the default draws are unchanged)
        weights, biases = _standardised(weights, z, decoder_activation, decoder_bias, np.random.default_rng([seed, 2]))
    logits = decode(z, weights, slope=SLOPE, activation=decoder_activation, biases=biases)
    if standardise:
        centre = logits.mean(axis=0)
        logits = logits - centre
    logit_scale = logits.std()
    logits /= logit_scale
    baseline = extra.normal(0.0, gene_baseline_sd, size=n_genes) if gene_baseline_sd else np.zeros(n_genes)
    logits = logits + baseline
    proportions = np.exp(logits - logits.max(axis=1, keepdims=True))
    proportions /= proportions.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(library_size), library_sd, size=(len(z), 1))
    mu = library * proportions
    rate = mu if dispersion is None else rng.gamma(dispersion, mu / dispersion)
    counts = rng.poisson(rate).astype(np.float32)

    order = rng.permutation(len(z))
    adata = anndata.AnnData(
        X=counts[order],
        obs=pd.DataFrame({"perturbation": pd.Categorical(labels[order])}, index=[f"cell{i}" for i in range(len(z))]),
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]),
    )
    adata.obsm["z_true"] = z[order].astype(np.float32)
    adata.obs["true_library"] = library[order, 0].astype(np.float32)
    adata.uns["true_targets"] = targets
    adata.uns["true_shifts"] = shifts.astype(np.float32)
    adata.uns["perturbation_names"] = np.array(names)
    adata.uns["true_decoder"] = {**{f"w{i}": w for i, w in enumerate(weights)}, "n_weights": len(weights),
                                 "slope": SLOPE, "logit_scale": float(logit_scale), "baseline": baseline,
                                 "activation": decoder_activation,
                                 **({f"b{i}": b for i, b in enumerate(biases)} if biases is not None else {}),
                                 **({"centre": centre} if centre is not None else {})}
    adata.uns["true_dispersion"] = np.inf if dispersion is None else float(dispersion)  # inf: Poisson
    if pairs:
        adata.uns["combinations"] = np.array([f"{names[a]}+{names[b]}" for a, b in pairs])
        adata.uns["interaction_shifts"] = interaction_shifts.astype(np.float32)
    return adata
