"""Is the sparse prior's low few-shot ``pearson_delta`` on Papalexi count noise of the predicted pseudo-bulk?

    python benchmarks/fewshot_prediction_noise.py

One few-shot group of ``fewshot.py`` (BRD4, CUL3, SMAD4: the knockouts that act off the IFN-gamma
latents), ``spike_and_slab``, transferred on k = 5 and 10 cells, scored by
``evaluation.evaluate`` with 500 (``fewshot.py``'s default) and 5000 predicted cells per label,
two prediction seeds each. If the correlation were limited by the noise of 500 sampled cells, it
would rise with 5000. Prints the transferred inclusion probabilities and shifts, and writes
``benchmarks/results/fewshot_prediction_noise.md``.
"""

import time

import numpy as np
import torch

from fewshot import DATA, RESULTS, load, split

GROUP = ["BRD4", "CUL3", "SMAD4"]


def main() -> None:
    import pyro_svae
    from pyro_svae import evaluation

    torch.set_num_threads(2)
    adata = load(str(DATA))
    train, pools, test, part = split(adata, GROUP, 50, 0)
    start = time.perf_counter()
    model = pyro_svae.fit(train, n_latent=10, prior="spike_and_slab", batch_key="bio_rep", seed=0, progress=False)
    lines = ["# Few-shot pearson_delta against the number of predicted cells", "",
             "`python benchmarks/fewshot_prediction_noise.py`", "",
             f"`fit(n_latent=10, batch_key=\"bio_rep\", seed=0)` without {', '.join(GROUP)} ({time.perf_counter() - start:.0f} s), "
             "`transfer` on k of their cells, `pearson_delta` of the model per knockout.", "",
             "| k | predicted cells | prediction seed | " + " | ".join(GROUP) + " | largest PIP per knockout |",
             "|---|---|---|" + "---|" * (len(GROUP) + 1)]
    for k in (5, 10):
        seen = part(np.concatenate([pool[:k] for pool in pools.values()]))
        transferred = model.transfer(seen, seed=0)
        pips = transferred.intervention_targets().loc[GROUP]
        print(f"k={k} inclusion probabilities:\n{pips.round(3).to_string()}", flush=True)
        largest = ", ".join(f"{g} {pips.loc[g].max():.2f}" for g in GROUP)
        for n_cells in (500, 5000):
            for seed in (0, 1):
                table = evaluation.evaluate(transferred, test, train, seen=seen, metrics=["pearson_delta"],
                                            n_cells=n_cells, seed=seed)
                value = table[table.method == "model"].set_index("perturbation")["value"]
                lines.append(f"| {k} | {n_cells} | {seed} | " + " | ".join(f"{value[g]:.3f}" for g in GROUP)
                             + f" | {largest} |")
                print(lines[-1], flush=True)
    (RESULTS / "fewshot_prediction_noise.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
