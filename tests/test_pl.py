"""Plots draw what they promise (Agg backend) and return their Axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pyro_svae import pl


def test_training_curve_has_both_lines(fitted):
    model, _ = fitted
    ax = pl.training(model)
    assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]
    assert np.allclose(ax.get_lines()[0].get_ydata(), model.history["train_elbo"])
    plt.close("all")


def test_targets_heatmap_clusters_rows_with_shared_targets():
    table = pd.DataFrame([[1, 0, 0], [0, 1, 0], [0.9, 0, 0.1], [0, 0.95, 0]],
                         index=["a", "b", "c", "d"], columns=[0, 1, 2])
    fig, ax = plt.subplots()
    assert pl.targets(table, ax=ax) is ax
    image = ax.get_images()[0].get_array()
    assert image.shape == (4, 3)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == ["a", "b", "c", "d"]
    # rows sharing a target are adjacent after clustering
    assert abs(labels.index("a") - labels.index("c")) == 1 and abs(labels.index("b") - labels.index("d")) == 1
    plt.close(fig)
