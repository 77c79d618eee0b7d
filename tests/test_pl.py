"""Plots draw what they promise (Agg backend) and return their Axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pyro_svae import pl


def test_training_curve_has_both_lines_and_marks_the_kept_epoch(fitted):
    model, _ = fitted
    ax = pl.training(model)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["train", "validation"] and labels[-1] == f"kept: epoch {model.restored_epoch}"
    assert np.allclose(ax.get_lines()[0].get_ydata(), model.history["train_elbo"])
    plt.close("all")


def test_training_curve_marks_the_end_of_a_warm_start():
    history = pd.DataFrame({"epoch": range(6), "train_elbo": np.arange(6.0), "validation_elbo": np.arange(6.0),
                            "loss": 0.0, "kl_weight": [0.5, 1, 1, 1, 1, 1], "restored": [False] * 4 + [True, False],
                            "stage": ["dense"] * 2 + ["sparse"] * 4})
    ax = pl.training(history)
    labels = [line.get_label() for line in ax.get_lines()]
    assert "dense warm start ends" in labels and "kept: epoch 4" in labels
    assert "KL warm-up" in [p.get_label() for p in ax.patches]  # the warm-up is shaded
    plt.close("all")


def test_targets_heatmap_clusters_rows_with_shared_targets():
    table = pd.DataFrame([[1, 0, 0], [0, 1, 0], [0.9, 0, 0.1], [0, 0.95, 0]],
                         index=["a", "b", "c", "d"], columns=[0, 1, 2])
    fig, ax = plt.subplots()
    assert pl.targets(table, ax=ax, hide_inactive=False) is ax
    image = ax.get_images()[0].get_array()
    assert image.shape == (4, 3)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == ["a", "b", "c", "d"]
    # rows sharing a target are adjacent after clustering
    assert abs(labels.index("a") - labels.index("c")) == 1 and abs(labels.index("b") - labels.index("d")) == 1
    plt.close(fig)


def test_targets_hides_latents_without_targets_and_overlays_the_truth():
    table = pd.DataFrame([[1, 0, 0], [0, 1, 0.1], [0.9, 0, 0.2]], index=["a", "b", "c"], columns=[0, 1, 2])
    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    fig, ax = plt.subplots()
    pl.targets(table, ax=ax, truth=truth)
    assert ax.get_images()[0].get_array().shape == (3, 2)  # latent 2 has no target: hidden
    assert "1 without targets hidden" in ax.get_xlabel()
    dots = ax.collections[0].get_offsets()
    assert len(dots) == 2  # one mark per true target
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # the legend lies below the axis label, covering no cell of the heatmap
    legend, label = ax.get_legend().get_window_extent(renderer), ax.xaxis.label.get_window_extent(renderer)
    assert legend.y1 <= label.y0 + 1 and legend.y1 < ax.get_window_extent(renderer).y0
    plt.close(fig)


def test_signed_targets_and_shift_heatmap_use_the_sign(fitted):
    model, _ = fitted
    ax = pl.targets(model, signed=True, hide_inactive=False)
    values = np.asarray(ax.get_images()[0].get_array())
    assert values.min() >= -1 and values.max() <= 1
    shifts = model.shifts()
    assert (np.sign(values).sum() != 0) or (shifts.to_numpy() == 0).all()
    plt.close("all")
    ax = pl.shifts(model, hide_inactive=False)
    low, high = ax.get_images()[0].get_clim()
    assert low == -high  # symmetric around zero
    plt.close("all")
    table = pd.DataFrame([[2.0, 0.0, 0.1], [0.0, -1.5, 0.0]], index=["a", "b"], columns=[0, 1, 2])
    ax = pl.shifts(table, inclusion=table.abs() > 1)
    assert np.array_equal(np.asarray(ax.get_images()[0].get_array()), table[[0, 1]].to_numpy())  # latent 2 hidden
    assert len(ax.collections[0].get_offsets()) == 2  # the called targets are dotted
    plt.close("all")
    # a called target whose shift is under the threshold keeps its latent on the plot, with its dot
    weak = pd.DataFrame([[2.0, 0.0, 0.3], [0.0, -1.5, 0.0]], index=["a", "b"], columns=[0, 1, 2])
    ax = pl.shifts(weak, inclusion=weak.abs() > 0.2)
    assert ax.get_images()[0].get_array().shape == (2, 3)
    assert len(ax.collections[0].get_offsets()) == 3
    plt.close("all")


def test_gene_programs_plot_shows_each_latents_top_genes():
    programs = pd.DataFrame([[3.0, -2.0, 0.1, 0.0], [0.0, 0.1, -4.0, 1.0]], index=[0, 1],
                            columns=["g0", "g1", "g2", "g3"])
    fig, ax = plt.subplots()
    pl.gene_programs(programs, n_genes=2, ax=ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["g0", "g1", "g2", "g3"]
    assert ax.get_images()[0].get_array().shape == (4, 2)
    plt.close(fig)


def test_target_trace_needs_tracking(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match="track_targets=True"):
        pl.target_trace(model)
    trace = pd.DataFrame({"epoch": [0, 1, 0, 1], "perturbation": ["a", "a", "b", "b"], "latent": [0, 0, 1, 1],
                          "pip": [0.4, 0.9, 0.3, 0.2]})
    ax = pl.target_trace(trace)
    assert len(ax.get_lines()) == 1  # only the pair that ever exceeds 0.5
    plt.close("all")
