# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # A real screen: Papalexi et al. 2021 (ECCITE-seq, THP-1 cells)
#
# 25 knockouts of genes around the PD-L1 and interferon-gamma pathways, with non-targeting
# controls, in three biological replicates. We fit the model with the replicate as batch, look
# at which knockouts share latent targets, and transfer to knockouts held out of training.
#
# The file is `../shared/data/papalexi2021_lowmoi.h5ad` relative to the project (see its
# README). Where it is absent, this notebook runs on a simulated screen of the same layout and
# says so below; its numbers then describe the simulation, not the real screen.
# Set `PYRO_SVAE_TUTORIAL_FAST=1` for a tiny run.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import pyro_svae

fast = os.environ.get("PYRO_SVAE_TUTORIAL_FAST") == "1"
candidates = [Path("../shared/data/papalexi2021_lowmoi.h5ad"), Path("../../shared/data/papalexi2021_lowmoi.h5ad")]
path = next((p for p in candidates if p.is_file()), None)
if path is not None:
    adata = pyro_svae.datasets.papalexi2021(path, min_guide_fraction=0.8, min_cells=50)
    source = f"the Papalexi 2021 screen ({path})"
else:  # a stand-in with the same columns, so that the notebook runs anywhere
    adata = pyro_svae.datasets.simulate(n_perturbations=12, n_latent=6, n_genes=100, seed=0)
    adata.obs["bio_rep"] = np.random.default_rng(0).choice(["rep_1", "rep_2", "rep_3"], size=adata.n_obs)
    source = "a SIMULATED stand-in: the Papalexi file is absent here"
if fast:
    adata = adata[:: max(1, adata.n_obs // 3000)].copy()
print(f"{source}: {adata.n_obs} cells x {adata.n_vars} genes, "
      f"{adata.obs['perturbation'].nunique() - 1} perturbations")
adata.obs["perturbation"].value_counts().head()

# %% [markdown]
# ## Fit with the replicate as batch
#
# Two knockouts are held out of training for the transfer below (on the real screen IFNGR2 and
# JAK2, whose pathway partners IFNGR1, STAT1 and IRF1 stay in).

# %%
labels = adata.obs["perturbation"].astype(str)
held_out = ["IFNGR2", "JAK2"] if path is not None else sorted(set(labels) - {"control"})[-2:]
seen = adata[~labels.isin(held_out).to_numpy()].copy()
epochs = 3 if fast else "auto"
model = pyro_svae.fit(seen, n_latent=10 if path is not None else 6, batch_key="bio_rep", max_epochs=epochs,
                      progress=False)
pyro_svae.pl.training(model)
plt.show()

# %% [markdown]
# ## Which knockouts share targets
#
# Targets called with a Bayesian false discovery rate of 10%; knockouts that share a latent
# target act on a common mechanism.

# %%
calls = model.target_calls(fdr=0.1)
shared = calls.groupby("latent")["perturbation"].apply(lambda p: ", ".join(sorted(p)))
shared.to_frame("knockouts targeting it")

# %%
pyro_svae.pl.targets(model)
plt.show()

# %% [markdown]
# ## Transfer to the held-out knockouts
#
# A quarter of each held-out knockout's cells fit its targets and shifts with everything else
# frozen; the other cells measure the held-out likelihood (IWELBO per cell). Before transfer,
# the model can only read those cells as unperturbed.

# %%
held = adata[labels.isin(held_out).to_numpy()].copy()
rng = np.random.default_rng(0)
few = rng.random(held.n_obs) < 0.25
transferred = model.transfer(held[few], max_epochs=20 if fast else "auto")
test = held[~few].copy()
as_control = test.copy()
as_control.obs["perturbation"] = "control"
{"before transfer (read as controls)": model.marginal_log_likelihood(as_control, n_samples=50, seed=0),
 "after transfer": transferred.marginal_log_likelihood(test, n_samples=50, seed=0)}

# %%
transferred.intervention_targets().loc[held_out].round(2)

# %% [markdown]
# ## What the interferon-gamma latent does in gene space
#
# The latent that the IFN-gamma receptor pathway knockouts (IFNGR1, STAT1; IFNGR2 and JAK2 were
# held out) target is read through its gene program: the change of each gene's log mean
# expression per unit of the latent (`SVAE.gene_programs`, the decoder's Jacobian averaged over
# the cells). The study found the knockouts lower the interferon-responsive genes (STAT1, PSMB9,
# UBE2L6, STAT2, ...); on the stand-in, the latent with the most calls is read instead.

# %%
pathway = [p for p in ("IFNGR1", "STAT1", "IRF1") if p in model.perturbation_names]
pips = model.intervention_targets()
rows = pips.loc[pathway] if pathway else pips
ifn_latent = int(rows.sum(0).idxmax())
programs = model.gene_programs()
pyro_svae.interpretation.top_genes(programs, latent=ifn_latent, n=12)

# %%
pyro_svae.pl.gene_programs(programs, latents=[ifn_latent], n_genes=12)
plt.show()

# %% [markdown]
# Scored against a gene set (given here, nothing is downloaded; with `decoupler` installed the
# same univariate linear model runs through it): a negative score means the set's genes go down
# along the latent, a positive one up. The sign of the latent is arbitrary; the knockouts'
# shifts (`model.shifts()`) say which way they move the cells along it.

# %%
responsive = ["STAT1", "PSMB9", "UBE2L6", "STAT2", "IRF1", "GBP1", "GBP2", "GBP4", "GBP5", "IDO1", "CXCL9",
              "CXCL10", "HLA-A", "HLA-B", "HLA-C", "B2M", "TAP1", "PSMB8", "PSMB10", "WARS1", "WARS", "CD274"]
gene_sets = {"IFN-gamma responsive": [g for g in responsive if g in programs.columns]}
if len(gene_sets["IFN-gamma responsive"]) >= 5:
    scores, pvalues = pyro_svae.interpretation.enrichment(programs, gene_sets)
    display = scores.assign(p_value=pvalues.iloc[:, 0]).round(4)
else:  # the stand-in's genes have no names of human genes
    display = f"only {len(gene_sets['IFN-gamma responsive'])} of the genes are in this screen"
display

# %%
model.shifts().loc[pathway or list(pips.index[:3]), [ifn_latent]].round(2)

# %% [markdown]
# The same analysis, with the figures and a one-page report, from the command line:
# `pyro-svae fit screen.h5ad --perturbation-key perturbation --control control --batch-key bio_rep --out results/`
# (see the documentation's command line page).
