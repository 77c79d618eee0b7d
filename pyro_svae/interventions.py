"""Predictions under interventions: new cells for any combination of known perturbations, and
counterfactuals of observed cells under another perturbation.

Both go through the generative model's pieces: effective shifts drawn from the guide (masks
sampled; each predicted cell gets its own draw of its members' shifts, vectorised), ``z = shift +
noise``, then counts from the decoder and the count likelihood
(:func:`~pyro_svae.likelihoods.count_distribution`).
Every function here runs inside the model's param scope (``SVAE`` enters it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence, Union

import anndata
import numpy as np
import pandas as pd
import torch

from .data import encode_perturbations
from .factory import Components
from .guide import encode
from .likelihoods import count_distribution, dispersion_param, sample_counts
from .model import cell_shifts
from .posterior import MAX_DRAW_ELEMENTS, draw_globals

__all__ = ["encode_labels", "predict", "draw_slots", "simulate_cells", "counterfactual_counts"]


def encode_labels(components: Components, labels: Sequence[str]) -> np.ndarray:
    """Member codes ``[n, M]`` of perturbation labels; a clear error for unknown members."""
    c = components.config
    try:
        return encode_perturbations(list(labels), components.layout.perturbations, c.control, c.separator)
    except ValueError as err:
        raise ValueError(f"{err} Expected labels made of the model's perturbations (joined by {c.separator!r}) "
                         f"or {c.control!r}; for perturbations the model has not seen, use SVAE.transfer first.") from None


def _batch_codes(batches, batch, n: int, rng: np.random.Generator) -> Optional[np.ndarray]:
    if not batches:
        if batch is not None:
            raise ValueError(f"batch={batch!r} given, but the model was fitted without batches.")
        return None
    if batch is None:  # spread the cells over the training batches
        return rng.integers(len(batches), size=n)
    if batch not in batches:
        raise ValueError(f"batch={batch!r} is not one of the model's batches {list(batches)}.")
    return np.full(n, list(batches).index(batch))


def _library_sizes(library, n: int, rng: np.random.Generator) -> np.ndarray:
    library = np.atleast_1d(np.asarray(library, dtype=np.float32))
    if (library <= 0).any() or not np.isfinite(library).all():
        raise ValueError("library sizes must be positive and finite.")
    return library if len(library) == n else rng.choice(library, size=n)


def predict(components: Components, perturbations: Union[str, Sequence[str]], n_cells: int, batch: Optional[str],
            library, device, seed: Optional[int] = None) -> anndata.AnnData:
    """See :meth:`pyro_svae.SVAE.predict`; ``library`` is a number or the sizes to draw from."""
    labels = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, but got {n_cells}.")
    rng = np.random.default_rng(seed)
    cell_labels = np.repeat(np.asarray(labels, dtype=object), n_cells)
    codes = encode_labels(components, cell_labels)
    n = len(cell_labels)
    layout = components.layout
    batch_codes = _batch_codes(layout.batches, batch, n, rng)
    library_sizes = _library_sizes(library, n, rng)
    counts, z, shift = simulate_cells(components, codes, batch_codes, library_sizes, device)
    key = components.config.perturbation_key
    obs = pd.DataFrame({key: pd.Categorical(cell_labels, categories=list(dict.fromkeys(labels))),
                        "library_size": library_sizes}, index=[f"predicted{i}" for i in range(n)])
    if batch_codes is not None:
        obs[components.config.batch_key or "batch"] = np.asarray(layout.batches, dtype=object)[batch_codes]
    result = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=list(layout.genes)))
    result.obsm["z"] = z
    result.obsm["shift"] = shift
    return result


#: Cells whose counts are drawn with one generator of their own (see :func:`_decode_in_blocks`).
SAMPLING_BLOCK = 2048


def _decode(components: Components, z: torch.Tensor, batch: Optional[torch.Tensor], library: torch.Tensor):
    dispersion = dispersion_param(components.likelihood, components.nets.n_genes)
    return count_distribution(components.nets.decoder, components.likelihood, z, batch, library, dispersion).sample()


def _decode_in_blocks(components: Components, z: torch.Tensor, batch: Optional[torch.Tensor], library: torch.Tensor):
    """Counts ``[c, G]`` of cells ``z`` ``[c, K]``, decoded and drawn in blocks of :data:`SAMPLING_BLOCK`
    cells on torch's intra-op threads at once (the count samplers run on one thread each).

    Each block draws from a generator of its own, seeded from torch's global one in block order: the counts
    depend on the seed and on ``SAMPLING_BLOCK``, not on the number of threads. The blocks of a
    likelihood :func:`~pyro_svae.likelihoods.sample_counts` does not know are drawn afterwards, in
    block order, by their distribution's ``.sample()``.
    """
    dispersion = dispersion_param(components.likelihood, components.nets.n_genes)  # read here: no Pyro in threads
    starts = range(0, len(z), SAMPLING_BLOCK)
    seeds = torch.randint(0, 2**62, (len(starts),)).tolist()

    def block(start: int, seed: int):
        rows = slice(start, start + SAMPLING_BLOCK)
        counts = count_distribution(components.nets.decoder, components.likelihood, z[rows],
                                    None if batch is None else batch[rows], library[rows], dispersion)
        return sample_counts(counts, seed), counts

    with ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(starts)))) as pool:
        blocks = list(pool.map(block, starts, seeds))
    # a distribution without a generator-driven sampler: drawn here from the global generator, not decoded again
    return torch.cat([counts.sample() if values is None else values for values, counts in blocks])


def draw_slots(codes: np.ndarray, n_perturbations: int):
    """A draw of the global sites for each cell, shared only where no perturbation's row is used twice.

    ``codes`` ``[n, M]`` are member codes (``n_perturbations`` pads). Returns ``(slot [n], n_draws)``:
    the cells of one label get distinct draws, and cells of labels without a common member (``"A"``
    and ``"B"``, not ``"A"`` and ``"A+B"``) may share one, each reading its own members' rows. Each
    label's cells are then independent draws from the posterior predictive, as with one draw per
    cell, for ``n_draws`` (about ``n_cells`` per label times the labels that overlap) draws instead of
    ``n``. Cells of different labels that share a draw are correlated only through sites common to
    all perturbations (none in the built-in priors but the horseshoe's global scale).
    """
    labels, inverse = np.unique(np.asarray(codes), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    used, group = [], np.empty(len(labels), dtype=np.int64)  # greedy colouring: overlapping labels apart
    for index, row in enumerate(labels):
        members = set(row[row < n_perturbations].tolist())
        group[index] = next((g for g, taken in enumerate(used) if not taken & members), len(used))
        if group[index] == len(used):
            used.append(set())
        used[group[index]] |= members
    sizes = np.bincount(inverse, minlength=len(labels))
    order = np.argsort(inverse, kind="stable")
    rank = np.empty(len(inverse), dtype=np.int64)  # position of each cell among the cells of its label
    rank[order] = np.arange(len(inverse)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    draws_per_group = np.zeros(len(used), dtype=np.int64)
    np.maximum.at(draws_per_group, group, sizes)
    offsets = np.concatenate([[0], np.cumsum(draws_per_group)[:-1]])
    return offsets[group[inverse]] + rank, int(draws_per_group.sum())


def simulate_cells(components: Components, codes: np.ndarray, batch: Optional[np.ndarray], library: np.ndarray,
                   device, cells_per_chunk: int = 8192):
    """Cells under the perturbations ``codes`` ``[n, M]``: ``(counts [n, G], z [n, K], shift [n, K])``.

    Each cell gets its own draw of its members' shifts (masks sampled; :func:`draw_slots`), the
    draws made for a chunk at once; at most :data:`~pyro_svae.posterior.MAX_DRAW_ELEMENTS` shift
    values and ``cells_per_chunk`` decoded cells are held.
    """
    n, n_perturbations = len(codes), components.n_perturbations
    slot, n_draws = draw_slots(codes, n_perturbations)
    by_slot = np.argsort(slot, kind="stable")
    bounds = np.searchsorted(slot[by_slot], np.arange(0, n_draws + 1))  # cells of draw d: by_slot[bounds[d]:bounds[d+1]]
    chunk = max(1, min(cells_per_chunk, MAX_DRAW_ELEMENTS // max(1, n_perturbations * components.config.n_latent)))
    counts = np.empty((n, components.nets.n_genes), dtype=np.float32)
    latents = np.empty((n, components.config.n_latent), dtype=np.float32)
    shifts = np.empty_like(latents)
    with torch.no_grad():
        for first in range(0, n_draws, chunk):
            last = min(first + chunk, n_draws)
            masked = draw_globals(components, last - first, device).masked_shifts()  # [d, P, K]
            padded = torch.cat([masked, masked.new_zeros(masked.shape[0], 1, masked.shape[-1])], dim=1)
            cells_of_chunk = by_slot[bounds[first]:bounds[last]]
            for part in range(0, len(cells_of_chunk), cells_per_chunk):
                cells = cells_of_chunk[part:part + cells_per_chunk]
                draw = torch.as_tensor(slot[cells] - first, device=device)
                members = torch.as_tensor(codes[cells], device=device)  # [c, M]
                shift = padded[draw[:, None], members].sum(-2)  # [c, K]
                z = shift + torch.randn_like(shift)
                b = None if batch is None else torch.as_tensor(batch[cells], device=device)
                lib = torch.as_tensor(library[cells], device=device)
                counts[cells] = _decode_in_blocks(components, z, b, lib).cpu().numpy()
                latents[cells], shifts[cells] = z.cpu().numpy(), shift.cpu().numpy()
    return counts, latents, shifts


def counterfactual_counts(components: Components, minibatches, n_cells: int, target: torch.Tensor,
                          num_samples: int, device) -> np.ndarray:
    """Counts ``[S, n_cells, G]`` of observed cells with their shift swapped for ``target``'s.

    ``minibatches`` yields ``(positions, batch)`` of the cells; ``target`` is ``[1, M]`` member
    codes. The masks of each of the ``num_samples`` global draws are sampled once, for all cells.
    """
    draws = draw_globals(components, num_samples, device)
    shifts = draws.masked_shifts()  # [S, P, K]
    out = None
    with torch.no_grad():
        for index, batch in minibatches:
            q = encode(components.nets, batch, draws.delta)  # batch [B] (conjugate: [S, B], each draw's)
            z = q.expand((num_samples,) + q.batch_shape[-1:]).sample()  # [S, B, K] abduction
            # per draw s of the globals: remove the cell's own shift, add that of the target
            own = cell_shifts(shifts, batch["perturbations"])  # [S, B, K]
            new = cell_shifts(shifts, target.expand(len(index), -1))
            counts = _decode(components, z - own + new, batch["batch"], batch["library"])
            if out is None:
                out = np.empty((num_samples, n_cells, counts.shape[-1]), dtype=np.int32)
            out[:, index] = counts.round().cpu().numpy().astype(np.int32)
    return out
