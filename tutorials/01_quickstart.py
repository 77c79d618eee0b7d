# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Quickstart: latents and intervention targets of a simulated screen
#
# Simulate a perturbation screen whose truth is known, fit the sparse mechanism shift model, and
# compare the learned latents and targets with the truth. Set `PYRO_SVAE_TUTORIAL_FAST=1` for a
# tiny run (as the tests do).

# %%
import os

import matplotlib.pyplot as plt

import pyro_svae
from pyro_svae.demo import DEMO_SCREEN, recovery

fast = os.environ.get("PYRO_SVAE_TUTORIAL_FAST") == "1"
screen = dict(DEMO_SCREEN, n_cells_per_perturbation=30, n_control=60) if fast else DEMO_SCREEN
adata = pyro_svae.datasets.simulate(**screen)
adata

# %% [markdown]
# Each cell carries a perturbation label (`"control"` for unperturbed cells). The model learns
# `n_latent` latent dimensions and, for every perturbation, which of them it shifts.

# %%
model = pyro_svae.fit(adata, n_latent=screen["n_latent"], max_epochs=5 if fast else "auto", progress=False)
model

# %%
pyro_svae.pl.training(model)
plt.show()

# %% [markdown]
# Posterior inclusion probabilities: perturbations x latents, ordered so that perturbations with
# shared targets form blocks.

# %%
targets = model.intervention_targets()
pyro_svae.pl.targets(targets)
plt.show()

# %% [markdown]
# Against the simulated truth: the mean correlation of matched latents (MCC) and the precision,
# recall and F1 of the targets called at inclusion probability 0.5.

# %%
scores = recovery(model, adata)
{name: round(value, 3) for name, value in scores.items()}
