# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Posterior predictive checks: does the model reproduce its data?
#
# A model's intervention targets are only worth reading if the model fits the counts. This
# tutorial draws replicated data from a fitted model, compares the statistics a single-cell
# analyst looks at (per-gene mean, variance and zero fraction; per-perturbation expression
# shifts), exports everything to ArviZ, and shows what a misfit looks like: a Poisson
# likelihood on overdispersed counts. Set `PYRO_SVAE_TUTORIAL_FAST=1` for a tiny run.

# %%
import os

import arviz as az
import matplotlib.pyplot as plt
import pandas as pd

import pyro_svae

fast = os.environ.get("PYRO_SVAE_TUTORIAL_FAST") == "1"
screen = dict(n_perturbations=12, n_latent=4, n_genes=80, n_cells_per_perturbation=40 if fast else 150,
              n_control=80 if fast else 300, max_targets=2, library_size=300, dispersion=2.0, seed=0)
adata = pyro_svae.datasets.simulate(**screen)  # negative binomial counts, inverse dispersion 2
epochs = 5 if fast else "auto"
model = pyro_svae.fit(adata, n_latent=4, max_epochs=epochs, progress=False)

# %% [markdown]
# ## Replicated counts and summary statistics
#
# `posterior_predictive` draws `z ~ q(z | x)` for each cell and then counts from the decoder,
# with the cell's own library size: an array `[num_samples, n_cells, n_genes]`.
# `ppc_summary` turns the draws into a tidy table: every statistic with its observed value and
# 90% predictive interval.

# %%
replicated = model.posterior_predictive(num_samples=50)
print(replicated.shape)
summary = model.ppc_summary(num_samples=50)
summary.groupby("statistic")["inside"].mean().round(2)

# %% [markdown]
# Observed against predicted per gene: points on the diagonal and short bars mean a good fit.

# %%
pyro_svae.pl.ppc(summary)
plt.show()

# %% [markdown]
# ## ArviZ
#
# `to_arviz` builds `InferenceData` with the posterior of the global sites (named by
# perturbation and latent), the replicated and observed counts, per-cell log-likelihoods and
# the perturbation label of each cell. Select genes and cells to keep it small.

# %%
idata = model.to_arviz(num_samples=50, genes=adata.var_names[:20])
az.plot_ppc(idata, data_pairs={"counts": "counts"}, num_pp_samples=20)
plt.show()
az.summary(idata, var_names=["delta"], kind="stats").head()

# %% [markdown]
# ## What a misfit looks like
#
# The same data with a Poisson likelihood: the Poisson variance equals its mean, so it cannot
# produce the extra variance and zeros of overdispersed counts. The variance panel falls below
# the diagonal and the predicted zero fractions are too small.

# %%
poisson = pyro_svae.fit(adata, n_latent=4, likelihood="poisson", max_epochs=epochs, progress=False)
misfit = poisson.ppc_summary(num_samples=50)
pd.DataFrame({
    name: {**s.groupby("statistic")["inside"].mean().round(2).add_prefix("coverage ").to_dict(),
           "zero fraction: observed - predicted": round(float(
               (s["observed"] - s["predicted"])[s["statistic"] == "gene_zero_fraction"].mean()), 3)}
    for name, s in (("negative binomial", summary), ("Poisson", misfit))})

# %%
pyro_svae.pl.ppc(misfit)
plt.show()

# %% [markdown]
# ## Results in the AnnData
#
# `write` puts the latents in `obsm["X_svae"]` and the targets and shifts in `uns["svae"]`,
# which `pl.latent` reads: each latent's distribution in the control cells and in the most
# shifted perturbations.

# %%
model.write(adata)
pyro_svae.pl.latent(model, adata, n_perturbations=4)
plt.show()
