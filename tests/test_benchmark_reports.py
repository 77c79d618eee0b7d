"""The grid benchmark's bookkeeping (``benchmarks/recovery_grid.py``): its per-screen figures and
how a re-run of one method replaces that method's runs. No fits: rows made by hand."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def recovery_grid():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import recovery_grid
    finally:
        sys.path.remove(str(BENCHMARKS))
    return recovery_grid


def _row(screen, screen_seed, fit_seed, method, mcc):
    return {"screen": screen, "screen_seed": screen_seed, "fit_seed": fit_seed, "method": method, "mcc": mcc}


def test_per_screen_averages_the_screen_seeds_of_the_grid_fits_only(recovery_grid):
    runs = pd.DataFrame([_row("base", 0, 0, "a", 0.9), _row("base", 1, 1, "a", 0.8),
                         _row("base", 0, 1, "a", 0.1),  # the seed-agreement fit: not a grid fit
                         _row("paper", 0, 0, "a", 0.5), _row("base", 0, 0, "b", 0.7)])
    table = recovery_grid.per_screen(runs, ["mcc"])
    assert table.index.names == ["screen", "method"]
    assert table.loc[("base", "a"), "mcc"] == pytest.approx(0.85)
    assert table.loc[("paper", "a"), "mcc"] == 0.5 and table.loc[("base", "b"), "mcc"] == 0.7
    assert len(table) == 3


def test_take_runs_replaces_the_runs_of_the_methods_the_other_file_has(recovery_grid, tmp_path):
    page, rerun = tmp_path / "grid_runs.jsonl", tmp_path / "rerun_runs.jsonl"
    page.write_text("".join(json.dumps(r) + "\n" for r in [
        _row("base", 0, 0, "spike_and_slab", 0.9), _row("paper", 0, 0, "spike_and_slab", 0.8),
        _row("base", 0, 0, "none", 0.5)]))
    rerun.write_text(json.dumps(_row("base", 0, 0, "spike_and_slab", 0.95)) + "\n")
    recovery_grid.take_runs(page, rerun)
    runs = recovery_grid.read_runs(page)
    assert sorted(map(tuple, runs[["screen", "method"]].to_numpy())) == [("base", "none"), ("base", "spike_and_slab")]
    assert np.allclose(runs.set_index("method").loc[["none", "spike_and_slab"], "mcc"], [0.5, 0.95])
    assert rerun.read_text().count("\n") == 1  # the other file is read, not changed


def test_by_part_splits_rows_by_grid_part_in_order(recovery_grid):
    runs = pd.DataFrame([_row("fresh3", 0, 0, "a", 0.9), _row("held_out0", 0, 0, "a", 0.8),
                         _row("base", 0, 0, "a", 0.7), _row("paper", 1, 1, "a", 0.6)])
    parts = list(recovery_grid.by_part(runs))
    assert [name for name, _ in parts] == ["development", "held-out", "fresh held-out"]
    assert [sorted(rows["screen"]) for _, rows in parts] == [["base", "paper"], ["held_out0"], ["fresh3"]]
    assert [name for name, _ in recovery_grid.by_part(runs.iloc[:1])] == ["fresh held-out"]


def test_papalexi_skip_selection_keeps_the_earlier_selection_table_marked_as_earlier(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from papalexi import previous_selection
    finally:
        sys.path.remove(str(BENCHMARKS))
    page = tmp_path / "papalexi.md"
    assert previous_selection(page) == []  # no earlier page
    page.write_text("# P\n\n## Calls\n\ntext\n\n## Choosing n_latent\n\nhow\n\n| a |\n|---|\n| 6 |\n\n## Later\n\nx\n")
    kept = previous_selection(page)
    assert kept[0] == "## Choosing n_latent" and kept[2].startswith("Kept from an earlier run")
    assert kept[4:] == ["how", "", "| a |", "|---|", "| 6 |", ""]  # the section only, not the next one
    page.write_text("\n".join(kept))  # kept twice: marked once
    assert previous_selection(page) == kept
    page.write_text("# P\n\n## Calls\n")
    assert previous_selection(page) == []


def test_decoder_gain_sides_swap_when_a_latent_and_its_decoder_weights_are_mirrored():
    """``benchmarks/decoder_gain.side_gains``: the decoder of ``-z_k`` with latent k's input weights
    negated is the same map, so latent k's low and high sides (and its flat side) swap exactly and
    nothing else changes."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import decoder_gain
    finally:
        sys.path.remove(str(BENCHMARKS))
    from pyro_svae.datasets import simulate

    adata = simulate(n_perturbations=8, n_latent=3, n_genes=30, n_cells_per_perturbation=40, n_control=40,
                     decoder_layers=2, seed=3)
    before = decoder_gain.side_gains(adata, n_cells=200)
    mirrored = adata.copy()
    mirrored.obsm["z_true"][:, 1] *= -1
    mirrored.uns["true_decoder"] = {**adata.uns["true_decoder"], "w0": adata.uns["true_decoder"]["w0"].copy()}
    mirrored.uns["true_decoder"]["w0"][1] *= -1
    after = decoder_gain.side_gains(mirrored, n_cells=200)
    assert after.loc[1, "gain_low"] == pytest.approx(before.loc[1, "gain_high"])
    assert after.loc[1, "gain_high"] == pytest.approx(before.loc[1, "gain_low"])
    assert after.loc[1, "flatness"] == pytest.approx(before.loc[1, "flatness"])
    assert {after.loc[1, "flat_side"], before.loc[1, "flat_side"]} == {"low", "high"}
    pd.testing.assert_frame_equal(after.drop(index=1), before.drop(index=1))
    assert (before["flatness"] == before[["gain_low", "gain_high"]].min(1) / before["gain_centre"]).all()


def _screen_row(screen):
    return {"screen": screen, "value": len(screen)}


def test_run_screens_runs_only_the_screens_the_runs_file_lacks(recovery_grid, tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"screen": "base", "value": -1}) + "\n")
    new = recovery_grid.run_screens(_screen_row, ["base", "latents4"], path, 1, lambda row: row["screen"])
    assert new == [{"screen": "latents4", "value": 8}]
    assert list(recovery_grid.read_runs(path)["value"]) == [-1, 8]  # the earlier row kept as it was


def test_oracle_ceiling_joins_the_seed0_fits_of_the_defaults(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import oracle_ceiling
    finally:
        sys.path.remove(str(BENCHMARKS))
    grid = [{**_row("base", 0, 0, "spike_and_slab", 0.90)}, _row("base", 0, 1, "spike_and_slab", 0.94),
            _row("base", 1, 1, "spike_and_slab", 0.10), _row("base", 0, 0, "none", 0.20)]
    (tmp_path / "recovery_grid_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in grid))
    oracle = pd.DataFrame([{"screen": "base", "part": "dev", "n_latent": 8, "label_only": 0.7, "oracle_map": 0.95,
                            "oracle": 0.96, "median_ess": 100.0}])
    fits = pd.DataFrame([{"screen": "base", "encoder": 0.91, "fitted_posterior": 0.92}])
    table = oracle_ceiling.table(oracle, fits, tmp_path)
    assert table.loc["base", "fit"] == pytest.approx(0.92)  # screen seed 0 of the defaults only
    assert table.loc["base", "fit_over_oracle"] == pytest.approx(0.92 / 0.96)
    assert np.isnan(table.loc["base", "supervised"])  # no ceiling runs in this folder
    assert table.loc["base", "fitted_posterior"] == pytest.approx(0.92)


def test_oracle_ceiling_evidence_section_counts_screens_where_the_truth_is_ahead(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import oracle_ceiling
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = pd.DataFrame([
        {"screen": "base", "part": "dev", "n_latent": 8, "truth_evidence": -300.0, "fit_iwelbo": -300.5,
         "difference": 0.5, "difference_se": 0.1, "train_difference": -0.5, "train_difference_se": 0.1,
         "fit_iwelbo_gain": 0.01, "truth_mcc": 0.98, "fit_mcc": 0.96, "truth_median_ess": 300.0},
        {"screen": "latents20", "part": "dev", "n_latent": 20, "truth_evidence": -250.0, "fit_iwelbo": -250.1,
         "difference": 0.1, "difference_se": 0.1, "train_difference": 0.3, "train_difference_se": 0.1,
         "fit_iwelbo_gain": 0.2, "truth_mcc": 0.92, "fit_mcc": 0.85, "truth_median_ess": 20.0}])
    longer = {**rows.iloc[1].to_dict(), "steps_factor": 2.0, "fit_mcc": 0.88, "train_difference": 0.1, "difference": 0.05}
    rows = pd.concat([rows, pd.DataFrame([longer])], ignore_index=True)  # a --steps-factor run, kept apart
    table = oracle_ceiling.evidence_table(rows)
    assert list(table.index) == ["latents20", "base"]  # lowest fit MCC first
    lines = "\n".join(oracle_ceiling._evidence_lines(table))
    assert "held-out cells better than the fit (difference > 2 SE): 1 of 2" in lines  # latents20's 0.1 is within 2 SE
    assert "+0.100 to +0.500 nats" in lines
    assert "training cells better than the fit (difference > 2 SE): 1 of 2; difference per cell -0.500 to +0.300" in lines
    assert "gains 0.010 to 0.200 nats" in lines
    assert ("latents20 x2: MCC 0.850 -> 0.880, training-cell difference +0.300 -> +0.100, held-out +0.100 -> +0.050"
            in lines)
    assert oracle_ceiling._evidence_lines(None) == []
    oracle = pd.DataFrame([{"screen": "base", "part": "dev", "n_latent": 8, "label_only": 0.7, "oracle_map": 0.95,
                            "oracle": 0.96, "median_ess": 100.0}])
    (tmp_path / "recovery_grid_runs.jsonl").write_text(json.dumps(_row("base", 0, 0, "spike_and_slab", 0.9)) + "\n")
    page = oracle_ceiling.report(oracle_ceiling.table(oracle, pd.DataFrame(), tmp_path), "cmd", tmp_path / "p.md", table)
    assert "## Does the likelihood prefer the truth?" in page and "| latents20 | dev | 20 |" in page


def test_oracle_ceiling_gap_section_names_screens_whose_elbo_prefers_the_fit(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import oracle_ceiling
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = pd.DataFrame([  # paper: the truth's evidence is higher, its mean-field ELBO lower than the fit's
        {"screen": "paper", "part": "dev", "cells": 1000, "truth_evidence": -330.0, "fit_iwelbo": -334.0,
         "truth_elbo": -340.0, "fit_elbo": -339.0, "fit_best_elbo": -338.0, "elbo_difference_se": 0.2,
         "best_elbo_difference_se": 0.2},
        {"screen": "base", "part": "dev", "cells": 1000, "truth_evidence": -290.0, "fit_iwelbo": -290.5,
         "truth_elbo": -291.0, "fit_elbo": -293.0, "fit_best_elbo": -292.0, "elbo_difference_se": 0.2,
         "best_elbo_difference_se": 0.2}])
    table = oracle_ceiling.gap_table(rows)
    assert list(table.index) == ["base", "paper"]  # smallest evidence difference first
    assert table.loc["paper", "evidence_difference"] == pytest.approx(4.0)
    assert table.loc["paper", "best_elbo_difference"] == pytest.approx(-2.0)
    assert table.loc["paper", "truth_gap"] == pytest.approx(10.0) and table.loc["paper", "fit_gap"] == pytest.approx(4.0)
    assert table.loc["base", "amortisation_gap"] == pytest.approx(1.0)
    lines = "\n".join(oracle_ceiling._gap_lines(table))
    assert "(difference > 2 SE): 1 of 2 (base); the fit's higher: 1 (paper); within 2 SE: 0" in lines
    assert "truth 1.00 to 10.00 nats, fit 1.50 to 4.00; the fit's encoder is 1.00 to 1.00 below" in lines
    assert oracle_ceiling._gap_lines(None) == []
    full = pd.DataFrame([{"screen": "paper", "truth_elbo_full": -333.0}, {"screen": "base", "truth_elbo_full": -290.5}])
    table = oracle_ceiling.gap_table(rows, full)
    assert table.loc["paper", "truth_gap_full"] == pytest.approx(3.0)
    assert "full-covariance q (`--gap-full`): 0.50 to 3.00 nats" in "\n".join(oracle_ceiling._gap_lines(table))
    other = rows[rows["screen"] == "paper"].assign(fit_elbo=-338.5, fit_best_elbo=-338.25)  # another encoder's fit
    lines = "\n".join(oracle_ceiling._encoder_gap_lines(table, {"conjugate": oracle_ceiling.gap_table(other)}))
    assert '### `fit(encoder="conjugate")` (`--gap --encoder conjugate`)' in lines
    assert "| paper | -339.00 / -338.50 | -338.00 / -338.25 | 1.00 / 0.25 | -334.00 / -334.00 | -2.00 / -1.75 |" in lines


def test_fit_best_elbo_starts_at_the_encoder_climbs_and_gives_the_encoder_back():
    import pyro_svae

    from .conftest import FAST, make_screen

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import oracle_ceiling
    finally:
        sys.path.remove(str(BENCHMARKS))
    adata = make_screen()
    model = pyro_svae.fit(adata, **FAST)
    cells = adata[:60].copy()
    cells.obs["cell"] = cells.obs_names
    latent = model.get_latent(cells)
    encoder = np.mean([model.elbo(cells, by="cell", seed=s)[cells.obs_names].to_numpy() for s in range(50)], 0)
    start = oracle_ceiling.fit_best_elbo(model, cells, steps=0, n_eval=50)
    best = oracle_ceiling.fit_best_elbo(model, cells, steps=300)
    assert start.shape == (60,) and abs(start.mean() - encoder.mean()) < 0.5  # one draw each: Monte Carlo only
    assert best.mean() > start.mean() + 0.5  # a three-epoch encoder is far from each cell's optimum
    np.testing.assert_array_equal(model.get_latent(cells), latent)  # the encoder is back in place


def test_encoder_speed_table_gives_each_encoder_as_a_ratio_to_the_default():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import encoder_speed
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = [{"threads": 1, "latents": k, "encoder": e, "seconds": s * k / 10}
            for k in (10, 20) for e, s in [("full", 0.015), ("counts", 0.010), ("conjugate", 0.012)]]
    table = encoder_speed.table(rows)
    assert list(table.columns) == ["counts ms", "conjugate ms", "conjugate / counts", "full ms", "full / counts"]
    assert table.loc[(1, 20), "counts ms"] == pytest.approx(20.0) and table.loc[(1, 10), "full / counts"] == pytest.approx(1.5)


def test_truth_start_table_sets_each_screen_beside_the_defaults_seed_0_fit():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import truth_start
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = pd.DataFrame([{"screen": "paper", "mcc_start": 0.93, "mcc_end": 0.92, "target_f1_start": 1.0,
                          "target_f1_end": 0.98, "elbo_start": -335.0, "elbo_end": -329.5, "epochs": 300}])
    defaults = pd.DataFrame([
        {"screen": "paper", "method": "spike_and_slab", "screen_seed": 0, "fit_seed": 0, "mcc": 0.90, "target_f1": 0.96, "elbo": -330.0},
        {"screen": "paper", "method": "spike_and_slab", "screen_seed": 1, "fit_seed": 1, "mcc": 0.5, "target_f1": 0.5, "elbo": -1.0},
        {"screen": "paper", "method": "none", "screen_seed": 0, "fit_seed": 0, "mcc": 0.6, "target_f1": 0.0, "elbo": -2.0}])
    table = truth_start.table(rows, defaults)
    assert list(table.columns[:6]) == ["mcc_start", "mcc_end", "mcc_defaults", "target_f1_start", "target_f1_end",
                                       "target_f1_defaults"]
    assert table.loc["paper", "mcc_defaults"] == pytest.approx(0.90)
    assert table.loc["paper", "elbo_end_minus_defaults"] == pytest.approx(0.5)


def test_start_at_truth_puts_the_latents_and_targets_at_the_simulators():
    import pyro_svae

    from .conftest import make_screen

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import truth_start
    finally:
        sys.path.remove(str(BENCHMARKS))
    adata = make_screen(n_perturbations=6, n_latent=3, seed=2)
    model = pyro_svae.fit(adata, n_latent=3, n_hidden=16, n_layers=1, warm_start=None, max_epochs=1,
                          early_stopping=False, progress=False)
    before = truth_start.scores(model, adata)
    truth_start.start_at_truth(model, adata, steps=300)
    after = truth_start.scores(model, adata)
    assert before["mcc"] < 0.7 and after["mcc"] > 0.9 and after["elbo"] > before["elbo"] + 20
    names = list(adata.uns["perturbation_names"])
    targets = adata.uns["true_targets"][[names.index(p) for p in model.perturbation_names]]
    np.testing.assert_allclose(model.intervention_targets().to_numpy(), np.where(targets, 0.99, 0.01), atol=1e-5)


def test_rerotation_rules_read_each_threshold_and_the_validation_gate_off_one_run_per_screen():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import rerotation
    finally:
        sys.path.remove(str(BENCHMARKS))

    def row(screen, closeness, mcc, validation, settled=True):
        return {"screen": screen, "closeness": closeness, "settled": settled, "mcc_before": mcc[0],
                "mcc_after": mcc[1], "target_f1_before": 0.95, "target_f1_after": 0.95, "elbo_before": -1.0,
                "elbo_after": -1.0, "validation_before": validation[0], "validation_after": validation[1],
                "seconds_before": 100.0, "seconds_after": 50.0}

    runs = pd.DataFrame([row("a", 0.94, (0.85, 0.92), (-2.0, -1.0)),  # rotated under every rule
                         row("b", 0.96, (0.88, 0.91), (-2.0, -1.5)),  # from 0.97 up; the gate keeps it
                         row("c", 0.975, (0.95, 0.90), (-1.0, -1.5)),  # from 0.98 up; the gate rejects it
                         row("d", 0.90, (0.80, 0.99), (-2.0, -1.0), settled=False)])  # never: still moving
    rules = rerotation.rules(runs).set_index("rule")
    assert rules.loc["closeness < 0.95", "rotated again"] == 1
    assert rules.loc["closeness < 0.95", "meeting both bars"] == 2  # a (0.92) and c (0.95)
    assert rules.loc["closeness < 0.98", "rotated again"] == 3
    assert rules.loc["closeness < 0.98", "meeting both bars"] == 3  # a, b and c (0.90)
    assert rules.loc["closeness < 0.98, kept if validation ELBO higher", "rotated again"] == 2
    assert rules.loc["closeness < 0.98, kept if validation ELBO higher", "mean MCC"] == pytest.approx(
        (0.92 + 0.91 + 0.95 + 0.80) / 4)
    assert rules.loc["closeness < 0.98", "extra time"] == pytest.approx(150.0 / 400.0)  # the stages run, gated or not
    assert rules.loc["every settled fit", "rotated again"] == 3
    assert list(rerotation.table(runs)["screen"]) == ["d", "a", "b", "c"]  # by closeness
    # a screen whose second stage was not run (closeness over --second-below) leaves the rules it
    # would decide out, and counts as not rotated under the others
    skipped = {**row("e", 0.995, (0.93, np.nan), (-1.0, np.nan)), "second_below": 0.99}
    more = rerotation.rules(pd.concat([runs, pd.DataFrame([skipped])], ignore_index=True)).set_index("rule")
    assert "every settled fit" not in more.index and "closeness < 0.99" in more.index
    assert more.loc["closeness < 0.99", "rotated again"] == 3
    assert more.loc["closeness < 0.99", "meeting both bars"] == 4  # a, b, c and e (0.93, as fitted)
    # the third-rotation section: sorted by the closeness fit checked, a screen not rotated a third time kept
    # with its fit's scores and no third ones
    third = pd.DataFrame([{"screen": "x", "closeness_checked": 0.90, "rerotated": True, "closeness_fit": 0.93,
                           "mcc_fit": 0.8, "mcc_third": 0.85},
                          {"screen": "y", "closeness_checked": 0.85, "rerotated": True, "closeness_fit": 0.99,
                           "mcc_fit": 0.9}])
    shown = rerotation.third_table(third)
    assert list(shown["screen"]) == ["y", "x"] and np.isnan(shown.loc[0, "mcc_third"]) and shown.loc[1, "mcc_third"] == 0.85
    assert list(shown.columns)[:4] == ["screen", "closeness_checked", "rerotated", "closeness_fit"]


def test_residual_mixing_tells_a_rotated_or_sheared_fit_from_a_folded_one():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import residual_mixing
    finally:
        sys.path.remove(str(BENCHMARKS))
    # shifts of four perturbations moving one true latent alone (both sides of each) and one moving nothing
    true = pd.DataFrame([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0], [0.5, 0.2]])
    sheared = true @ np.array([[1.0, 0.7], [0.0, 1.0]])  # any linear map keeps each latent's sides opposite
    assert all(c == pytest.approx(1.0) for c, _, _ in residual_mixing.fold_cosines(sheared, true).values())
    # the positive side of latent 0 goes where the negative side of latent 1 does: a fold
    folded = pd.DataFrame([[3.0, 0.0], [0.0, -3.0], [0.0, 3.0], [-3.0, 0.0], [0.0, 0.0]])
    folds = residual_mixing.fold_cosines(folded, true)
    assert folds[0][0] == pytest.approx(0.0) and folds[1][0] == pytest.approx(0.0)
    np.testing.assert_allclose(folds[0][1], [3.0, 0.0])  # u+ of latent 0
    # a latent moved alone on one side only has no fold
    assert residual_mixing.fold_cosines(true.iloc[[0, 2, 3]], true.iloc[[0, 2, 3]]).keys() == {1}
    # a perturbation that moves another latent by 1 SD or more is not one that moves a latent alone
    both = pd.concat([true, pd.DataFrame([[3.0, 2.0]])], ignore_index=True)
    fitted = pd.concat([true, pd.DataFrame([[-9.0, 9.0]])], ignore_index=True)
    assert residual_mixing.fold_cosines(fitted, both)[0][0] == pytest.approx(1.0)
    # without controls the shifts are measured from the median perturbation
    no_controls = residual_mixing.shifts_from_origin(np.array([[0.0], [1.0], [5.0]]), np.array(["a", "b", "c"]), False)
    np.testing.assert_allclose(no_controls[0], [-1.0, 0.0, 4.0])
    # the pooled covariance within perturbations ignores where each perturbation's mean is
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "a", "b"], 4000)
    latent = rng.normal(size=(12000, 2)) @ np.array([[1.0, 0.5], [0.0, 1.0]]) + np.repeat([[0, 0], [5, 0], [0, -5]], 4000, 0)
    np.testing.assert_allclose(residual_mixing.within_covariance(latent, labels), [[1.0, 0.5], [0.5, 1.25]], atol=0.06)
    shifts = residual_mixing.shifts_from_origin(latent, labels, has_controls=True)
    np.testing.assert_allclose(shifts.loc["a"], [5.0, 0.0], atol=0.1)


def _linear_view_screen(bend: bool, seed: int = 0):
    """Counts of 3 latents, 6 perturbations moving one latent by +-3 SD each, and controls; log-rates linear
    in the latents, or (``bend``) along other genes on each latent's negative side."""
    rng = np.random.default_rng(seed)
    shifts = np.vstack([np.zeros(3), 3 * np.eye(3), -3 * np.eye(3)])
    labels = np.repeat(["control"] + [f"p{i}" for i in range(6)], 400)
    z = rng.normal(size=(len(labels), 3)) + np.repeat(shifts, 400, 0)
    up, down = rng.normal(scale=0.4, size=(3, 60)), rng.normal(scale=0.4, size=(3, 60))
    rate = np.maximum(z, 0) @ up + np.maximum(-z, 0) @ down if bend else z @ up
    counts = rng.poisson(np.exp(rate + 2.0))
    return counts.astype(float), labels, z


def test_linear_view_recovers_a_linear_screen_and_folds_a_bent_one():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import residual_mixing
    finally:
        sys.path.remove(str(BENCHMARKS))
    from pyro_svae.metrics import mcc

    def fold(bend):
        counts, labels, z = _linear_view_screen(bend)
        latent = residual_mixing.linear_view(counts, labels, 3, has_controls=True)
        assert latent.shape == (len(labels), 3)
        # whitened within perturbations, then rotated: the pooled within-perturbation covariance is I
        np.testing.assert_allclose(residual_mixing.within_covariance(latent, labels), np.eye(3), atol=1e-6)
        folds = residual_mixing.fold_cosines(residual_mixing.shifts_from_origin(latent, labels, True),
                                             residual_mixing.shifts_from_origin(z, labels, True))
        return mcc(latent, z), min(c for c, _, _ in folds.values())

    linear_mcc, linear_fold = fold(bend=False)
    assert linear_mcc > 0.95 and linear_fold > 0.9  # log1p of moderate counts bends a little (0.94-0.97 over seeds 0-2)
    _, bent_fold = fold(bend=True)
    assert bent_fold < 0.7  # 0.47-0.60 over seeds 0-2


def test_papalexi_seeds_agreement_needs_no_matching_of_latents():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import papalexi_seeds
    finally:
        sys.path.remove(str(BENCHMARKS))
    # the same biology on other latent indices: IFNGR1 and JAK2 together, SMAD4 apart
    a = {"IFNGR1": [2], "JAK2": [2], "SMAD4": [0, 5], "MYC": []}
    b = {"IFNGR1": [7], "JAK2": [7], "SMAD4": [1]}
    assert papalexi_seeds.co_targeted(a) == papalexi_seeds.co_targeted(b) == {("IFNGR1", "JAK2")}
    assert papalexi_seeds.jaccard(set(), set()) == 1.0 and papalexi_seeds.jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    table = pd.DataFrame({"n_cells": [900, 800, 400, 70, 500], "n_de_genes": [100, 90, 60, 40, 0],
                          "phenotype": [True, True, True, True, False]},
                         index=["IFNGR1", "JAK2", "SMAD4", "MYC", "CD86"])
    def shifts(myc):
        return {"IFNGR1": 2.0, "JAK2": 2.5, "SMAD4": 1.0, "MYC": myc, "CD86": 0.05}

    def pips(myc, cd86):
        return {"IFNGR1": 1.0, "JAK2": 1.0, "SMAD4": 0.99, "MYC": myc, "CD86": cd86}

    runs = pd.DataFrame([
        {"seed": 0, "n_latent": 10, "min_shift": 0.25, "seconds": 1.0, "calls": a, "max_pip": pips(0.2, 0.0),
         "largest_shift": shifts(0.1)},
        {"seed": 1, "n_latent": 10, "min_shift": 0.25, "seconds": 1.0, "calls": {**b, "CD86": [3]},
         "max_pip": pips(0.4, 0.9), "largest_shift": shifts(0.2)},
        {"seed": 2, "n_latent": 10, "min_shift": 0.25, "seconds": 1.0, "calls": b, "max_pip": pips(0.9, 0.1),
         "largest_shift": shifts(0.6)}])
    agreement = papalexi_seeds.agreement_table(runs).loc[10]
    # knockouts called: a, b+CD86, b -> pairs (3/4, 1, 3/4); co-targeted pairs equal in all three
    assert agreement["pairs"] == 3 and agreement["knockouts (mean)"] == pytest.approx(5 / 6)
    assert agreement["knockouts (min)"] == pytest.approx(3 / 4) and agreement["co-targeted pairs (mean)"] == 1.0
    knockouts = papalexi_seeds.knockout_table(runs, table)
    assert list(knockouts.index) == ["IFNGR1", "JAK2", "SMAD4", "MYC", "CD86"]  # CD86: called once, so shown
    assert knockouts.loc["MYC", "called (10)"] == 0.0 and knockouts.loc["CD86", "called (10)"] == pytest.approx(1 / 3)
    # medians, not means, over the three fits
    assert knockouts.loc["MYC", "max PIP (10)"] == pytest.approx(0.4)
    assert knockouts.loc["MYC", "largest shift (10)"] == pytest.approx(0.2)
    fits = papalexi_seeds.fit_table(runs, table)
    assert list(fits["phenotype called"]) == ["3 of 4"] * 3
    assert list(fits["no phenotype called"]) == ["0 of 1", "1 of 1", "0 of 1"]
    assert list(fits["IFN-gamma shared latent"]) == [False] * 3  # STAT1 and IFNGR2 are never called here


def test_truth_start_seeds_table_picks_the_highest_elbo_over_every_fit_seed():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import truth_start
    finally:
        sys.path.remove(str(BENCHMARKS))
    defaults = pd.DataFrame([
        {"screen": "fresh7", "method": "spike_and_slab", "screen_seed": 0, "fit_seed": 0, "mcc": 0.86, "target_f1": 0.89, "elbo": -409.1},
        {"screen": "fresh7", "method": "spike_and_slab", "screen_seed": 0, "fit_seed": 1, "mcc": 0.85, "target_f1": 0.88, "elbo": -409.2},
        {"screen": "fresh7", "method": "spike_and_slab", "screen_seed": 1, "fit_seed": 0, "mcc": 0.99, "target_f1": 1.0, "elbo": -1.0},
        {"screen": "base", "method": "spike_and_slab", "screen_seed": 0, "fit_seed": 0, "mcc": 0.96, "target_f1": 1.0, "elbo": -290.0}])
    seeds = pd.DataFrame([{"screen": "fresh7", "fit_seed": 3, "mcc": 0.80, "target_f1": 0.80, "elbo": -410.0},
                          {"screen": "fresh7", "fit_seed": 2, "mcc": 0.91, "target_f1": 0.99, "elbo": -408.3},
                          {"screen": "fresh7", "fit_seed": 0, "mcc": 0.1, "target_f1": 0.1, "elbo": -1.0},  # the grid ran it
                          {"screen": "fresh7", "fit_seed": 0, "warm_start_fraction": 0.5, "mcc": 0.99,
                           "target_f1": 1.0, "elbo": -400.0, "seconds": 1.0}])  # another warm start: its own table
    truth = pd.DataFrame([{"screen": "fresh7", "elbo_end": -408.2, "target_f1_end": 1.0}])
    table = truth_start.seeds_table(seeds, defaults, truth)
    assert list(table.index) == ["fresh7"]  # only the screens with extra seeds; the other screen seed is left out
    assert table.loc["fresh7", "fit_seeds"] == "0 1 2 3"  # each seed once, the grid's row for seed 0, in order
    assert table.loc["fresh7", "mcc per seed"] == "0.860 0.850 0.910 0.800"
    assert table.loc["fresh7", "picked seed"] == 2 and table.loc["fresh7", "mcc picked"] == pytest.approx(0.91)
    assert table.loc["fresh7", "elbo from the truth"] == pytest.approx(-408.2)
    seeds = pd.concat([seeds, pd.DataFrame([{"screen": "fresh7", "fit_seed": 0, "warm_start_fraction": 0.3,
                                             "warm_start_prior": "laplace", "mcc": 0.5, "target_f1": 0.5,
                                             "elbo": -300.0, "seconds": 1.0}])], ignore_index=True)
    assert truth_start.seeds_table(seeds, defaults, truth).loc["fresh7", "fit_seeds"] == "0 1 2 3"  # default runs only
    assert truth_start.seeds_table(seeds.iloc[3:], defaults, truth).empty  # no default run: an empty table, no error
    fractions = truth_start.fraction_table(seeds)
    assert list(fractions.index) == [("fresh7", "gaussian", 0.5, 0), ("fresh7", "laplace", 0.3, 0)]
    assert fractions.loc[("fresh7", "gaussian", 0.5, 0), "elbo"] == pytest.approx(-400.0)


def test_linear_readout_reaches_any_affine_map_of_the_learned_latents_and_no_more(recovery_grid):
    rng = np.random.default_rng(0)
    learned = rng.normal(size=(2000, 3))
    oblique = learned @ np.array([[1.0, 0.5], [0.3, -2.0], [0.0, 0.7]]) + 4.0  # an affine map, not orthogonal
    r, coefficients = recovery_grid.linear_readout(learned, oblique)
    np.testing.assert_allclose(r, 1.0, atol=1e-9)
    np.testing.assert_allclose(coefficients[-1], 4.0, atol=1e-9)  # the intercept row
    folded = np.abs(learned[:, :1])  # no linear map of the learned latents reaches a fold
    assert recovery_grid.linear_readout(learned, folded)[0][0] < 0.2


def _import_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks import each other by name, from their folder)."""
    import importlib

    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_dense_fold_observes_fits_dense_stage_and_stops_there():
    dense_fold = _import_benchmark("dense_fold")
    import pyro_svae
    from pyro_svae import warm_start

    from .conftest import FAST, make_screen

    adata = make_screen()
    original = adata.copy()
    train, start = warm_start.train, warm_start.dense_rotated_start
    epochs, ends, after = [], [], []
    with dense_fold.observed_dense_stage(lambda epoch, components, params, config: epochs.append(epoch),
                                         lambda components, params, config, n_dense: ends.append(
                                             (config.max_epochs, n_dense))):
        pyro_svae.fit(adata, **{**FAST, "max_epochs": 10})
        after.append("fit returned")  # never: fit stops once the dense stage is over
    assert after == [] and ends == [(10, 3)] and epochs == [0, 1, 2]  # 0.3 of 10 epochs, then the rotated start
    assert (warm_start.train, warm_start.dense_rotated_start) == (train, start)  # put back
    with pytest.raises(ValueError), dense_fold.observed_dense_stage(lambda *a: None, lambda *a: None):
        raise ValueError("an error in the block")
    assert (warm_start.train, warm_start.dense_rotated_start) == (train, start)

    copied = dense_fold.with_control_copies(adata, 3)
    is_control = adata.obs["perturbation"].astype(str) == "control"
    assert copied.n_obs == adata.n_obs + 2 * is_control.sum() and copied.obs_names.is_unique
    assert (copied.obs["perturbation"].astype(str) == "control").sum() == 3 * is_control.sum()
    assert dense_fold.with_control_copies(adata, 1) is adata
    np.testing.assert_array_equal(adata.X, original.X)
    assert adata.obs_names.equals(original.obs_names)


def test_markdown_keeps_each_columns_type_in_an_all_numeric_row(recovery_grid):
    table = pd.DataFrame({"screens": [26, 8], "median_mcc": [0.96312, 0.5], "name": ["a", "b"]},
                         index=pd.Index(["x", "y"], name="method"))
    lines = recovery_grid.markdown(table).splitlines()
    assert lines[0] == "| method | screens | median_mcc | name |"
    assert lines[2:] == ["| x | 26 | 0.963 | a |", "| y | 8 | 0.500 | b |"]
    numeric = recovery_grid.markdown(table[["screens", "median_mcc"]]).splitlines()  # a row of numbers only
    assert numeric[2] == "| x | 26 | 0.963 |"


def test_dense_fold_shallower_table_sets_a_screen_beside_its_shallower_decoders():
    dense_fold = _import_benchmark("dense_fold")
    runs = pd.DataFrame([
        {"part": "shallower", "screen": "fresh7", "variant": "layers 1", "mcc": 0.95, "target_f1": 0.99, "fold_min": 0.9},
        {"part": "variants", "screen": "fresh7", "variant": "batch 64", "mcc": 0.1, "target_f1": 0.1, "fold_min": 0.1},
    ])
    table = dense_fold.shallower_table(runs)
    # the screen's own fit (3 layers) comes from residual_mixing's committed runs, fitted the same way
    assert list(table.index) == [("fresh7", 1), ("fresh7", 3)]
    assert table.loc[("fresh7", 1)].tolist() == [0.95, 0.99, 0.9]
    assert 0.8 < table.loc[("fresh7", 3), "mcc"] < 0.9


def test_simulator_family_fits_the_grid_screen_with_each_decoder_and_counts_the_bars(monkeypatch):
    family = _import_benchmark("simulator_family")
    from pyro_svae.datasets import simulate

    calls = []

    def fake_run(screen, screen_seed, fit_seed, method, changes=None):
        calls.append((screen, screen_seed, fit_seed, method, changes))
        return {"screen": screen, "method": method, "mcc": 0.5, "target_f1": 0.5, "seconds": 1.0, "unrecorded": 1}

    monkeypatch.setattr(family, "run", fake_run)
    row = family.family_run("latents4", "softplus", "none")
    assert calls == [("latents4", 0, 0, "none", {"decoder_activation": "softplus"})]
    assert row["decoder"] == "softplus" and "unrecorded" not in row and np.isnan(row["closeness"])
    assert {(s, d) for s, d, _ in family.jobs()} == {(s, d) for s in family.SCREENS for d in family.DECODERS}

    # how a decoder bends: tanh (odd, no biases) changes the same genes on both sides of a latent;
    # the bias-free leaky ReLU sends each side along its own ray; both bend (variance beyond any affine map)
    small = dict(n_perturbations=6, n_latent=3, n_genes=30, n_cells_per_perturbation=30, n_control=60,
                 max_targets=1, shift_size=3.0, decoder_layers=2, n_hidden=16, seed=0)
    odd, rays = (family.nonlinearity(simulate(**small, decoder_activation=a)) for a in ("tanh", "leaky_relu"))
    assert odd["side_cosine"] == pytest.approx(1.0) and rays["side_cosine"] < 0.9
    assert 0.02 < odd["nonlinear_share"] < 0.5 and 0.02 < rays["nonlinear_share"] < 0.5
    assert odd["cell_share"] == pytest.approx(1.0) and rays["cell_share"] < 1.0  # only the new decoders are centred

    def fit(screen, decoder, method, mcc, f1, fdp=0.0):
        return {"screen": screen, "decoder": decoder, "method": method, "mcc": mcc, "target_f1": f1,
                "fdp_0.1": fdp, "seconds": 10.0, "side_cosine": 99.0}  # a stale column: replaced

    runs = pd.DataFrame([fit("depth3", "leaky_relu", "spike_and_slab", 0.95, 0.99),
                         fit("depth1", "leaky_relu", "spike_and_slab", 0.97, 0.89, 0.2),  # F1 under the bar
                         fit("depth3", "leaky_relu", "none", 0.70, np.nan), fit("depth1", "leaky_relu", "none", 0.80, np.nan),
                         fit("depth3", "tanh", "spike_and_slab", 0.91, 0.95), fit("depth3", "tanh", "none", 0.60, np.nan)])
    decoders = pd.DataFrame([{"screen": s, "decoder": d, "side_cosine": c, "nonlinear_share": 0.1, "cell_share": 1.0}
                             for s, d, c in [("depth3", "leaky_relu", 0.2), ("depth1", "leaky_relu", 0.4),
                                             ("depth3", "tanh", 1.0)]])
    runs = family.with_decoders(runs, decoders)
    summary = family.summary(runs)
    assert list(summary.index) == ["leaky_relu", "tanh"]
    assert summary.loc["leaky_relu", "meeting both bars"] == 1 and summary.loc["tanh", "meeting both bars"] == 1
    assert summary.loc["leaky_relu", "median MCC over none"] == pytest.approx(np.median([0.25, 0.17]))
    assert summary.loc["leaky_relu", "worst FDP at 0.1"] == 0.2
    assert summary.loc["leaky_relu", "median side cosine"] == pytest.approx(0.3)
    screens = family.per_screen(runs)
    assert list(screens.index) == [("depth1", "leaky_relu"), ("depth3", "leaky_relu"), ("depth3", "tanh")]
    assert screens.loc[("depth3", "tanh"), "none MCC"] == 0.60 and screens.loc[("depth3", "tanh"), "side_cosine"] == 1.0
