"""Layer probes: planted layers, scikit-learn agreement, control tasks, selectivity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tunescope.probing
from tunescope.errors import DataError, InputError
from tunescope.intervals import difference_interval, metric_interval
from tunescope.probing import (
    INTERVAL_COLUMNS,
    LayerProbes,
    ProbeTask,
    _batched_lbfgs,
    _Rows,
    control_labels,
    fit_probe_tasks,
    fit_probes,
    probe_layers,
)
from tunescope.testing.reference_probing import (
    consistent_per_group,
    label_distribution,
    sklearn_probes,
    sklearn_score,
)


def classes_in_gaussians(
    n: int, d: int, n_classes: int, separation: float, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Overlapping Gaussian classes with unequal sizes (a probe problem with a non-trivial optimum)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    y = rng.choice(n_classes, size=n, p=np.linspace(2, 1, n_classes) / np.linspace(2, 1, n_classes).sum())
    means = torch.randn(n_classes, d, generator=g) * separation
    scale = torch.linspace(0.5, 3.0, d)  # unequal feature scales: standardisation matters
    x = (torch.randn(n, d, generator=g) + means[torch.from_numpy(y)]) * scale + 4.0
    return x, y


def splits(x: torch.Tensor, y: np.ndarray, n_train: int, n_val: int) -> tuple:
    a, b = slice(0, n_train), slice(n_train, n_train + n_val)
    c = slice(n_train + n_val, None)
    return x[a], y[a], x[b], y[b], x[c], y[c]


def test_planted_separable_layer_reaches_one_random_layer_chance() -> None:
    g = torch.Generator().manual_seed(0)
    y = np.arange(600) % 4
    separable = torch.randn(600, 8, generator=g) * 0.3 + 3 * torch.eye(8)[torch.from_numpy(y)]
    layers = {0: torch.randn(600, 8, generator=g), 1: separable}
    x_tr = {k: v[:300] for k, v in layers.items()}
    x_va = {k: v[300:400] for k, v in layers.items()}
    x_te = {k: v[400:] for k, v in layers.items()}
    probes = LayerProbes().fit(x_tr, y[:300], x_va, y[300:400])
    accuracy = probes.score(x_te, y[400:])
    assert accuracy[1] >= 0.99
    assert accuracy[0] < 0.25 + 0.12
    assert probes.layers_ == (0, 1) and list(probes.classes_) == [0, 1, 2, 3]
    assert probes.coef_[1].shape == (4, 8) and probes.intercept_[1].shape == (4,)


def test_random_labels_give_chance() -> None:
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    x = {1: torch.randn(900, 16, generator=g)}
    y = rng.integers(0, 3, size=900)
    probes = LayerProbes().fit({1: x[1][:500]}, y[:500], {1: x[1][500:650]}, y[500:650])
    assert abs(probes.score({1: x[1][650:]}, y[650:])[1] - 1 / 3) < 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_within_one_point(seed: int) -> None:
    layers, y = {}, None
    for layer, separation in ((0, 0.4), (1, 0.8)):
        layers[layer], y = classes_in_gaussians(1400, 12, 4, separation, seed)
    assert y is not None
    parts = [splits(x, y, 700, 300) for x in layers.values()]
    train = {k: p[0] for k, p in zip(layers, parts, strict=True)}
    val = {k: p[2] for k, p in zip(layers, parts, strict=True)}
    test = {k: p[4] for k, p in zip(layers, parts, strict=True)}
    y_tr, y_va, y_te = parts[0][1], parts[0][3], parts[0][5]
    grid = (1e-3, 1e-2, 1e-1)
    ours = LayerProbes(l2_grid=grid).fit(train, y_tr, val, y_va)
    theirs = sklearn_probes(train, y_tr, val, y_va, l2_grid=grid)
    ours_test, theirs_test = ours.score(test, y_te), sklearn_score(theirs, test, y_te)
    for layer in layers:
        assert abs(ours_test[layer] - theirs_test[layer]) <= 0.01
        for l2 in grid:  # the same objective: the same validation accuracy at every strength
            assert (
                abs(ours.validation_accuracy_[layer][l2] - theirs[layer]["validation_accuracy"][l2]) <= 0.01
            )


def test_coefficients_match_sklearn_on_original_features() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = classes_in_gaussians(600, 5, 3, 1.0, seed=4)
    probes = LayerProbes(l2_grid=(1e-2,), tol=1e-6, max_iter=500, dtype=torch.float64).fit(
        {2: x}, y, {2: x}, y
    )
    z = ((x - x.mean(0)) / x.std(0, correction=0)).double().numpy()
    model = LogisticRegression(C=1 / (1e-2 * 600), tol=1e-8, max_iter=1000).fit(z, y)
    std = x.std(0, correction=0).double().numpy()
    np.testing.assert_allclose(probes.coef_[2], model.coef_ / std, rtol=2e-3, atol=2e-4)
    logits = probes.decision_function({2: x})[2].numpy()
    np.testing.assert_allclose(logits - logits.mean(1, keepdims=True), model.decision_function(z), atol=2e-3)


def test_binary_matches_sklearn_with_doubled_c() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = classes_in_gaussians(500, 4, 2, 0.6, seed=5)
    probes = LayerProbes(l2_grid=(0.05,), tol=1e-7, max_iter=500, dtype=torch.float64).fit(
        {1: x}, y, {1: x}, y
    )
    z = ((x - x.mean(0)) / x.std(0, correction=0)).double().numpy()
    model = LogisticRegression(C=2 / (0.05 * 500), tol=1e-9, max_iter=1000).fit(z, y)
    w = probes.coef_[1] * x.std(0, correction=0).double().numpy()
    np.testing.assert_allclose(w[1] - w[0], model.coef_[0], rtol=1e-3, atol=1e-5)


def test_picked_l2_is_sensible() -> None:
    # few rows, many noise features: weak penalties overfit, validation picks a strong one
    g = torch.Generator().manual_seed(6)
    y = np.arange(440) % 2
    x = torch.randn(440, 120, generator=g)
    x[:, 0] += torch.from_numpy(2.0 * y - 1.0)
    probes = LayerProbes().fit({1: x[:40]}, y[:40], {1: x[40:]}, y[40:])
    assert probes.l2_[1] >= 1e-1
    best = max(probes.validation_accuracy_[1].values())
    assert probes.validation_accuracy_[1][probes.l2_[1]] == best
    assert probes.n_iter_[1][1.0] <= probes.n_iter_[1][1e-4]


def test_string_labels_and_unseen_validation_label() -> None:
    x, y = classes_in_gaussians(300, 4, 3, 2.0, seed=7)
    names = np.array(["NOUN", "VERB", "ADJ"])[y]
    val_names = names[200:].copy()
    val_names[0] = "INTJ"  # never seen in training: counts as an error, not a crash
    probes = LayerProbes().fit({1: x[:200]}, names[:200], {1: x[200:]}, val_names)
    assert set(probes.predict({1: x[200:]})[1]) <= {"NOUN", "VERB", "ADJ"}


def test_batched_lbfgs_solves_independent_quadratics() -> None:
    # f_p(w) = 0.5 sum_j a_pj (w_j - b_pj)^2: minimum at b, whatever the conditioning of each problem
    g = torch.Generator().manual_seed(8)
    a = torch.logspace(-2, 2, 6, dtype=torch.float64).repeat(3, 1) * torch.rand(
        3, 1, generator=g, dtype=torch.float64
    )
    b = torch.randn(3, 6, generator=g, dtype=torch.float64)

    def fn(w: torch.Tensor, needed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.5 * (a * (w - b).square()).sum(1), a * (w - b)

    w, n_iter = _batched_lbfgs(fn, torch.zeros(3, 6, dtype=torch.float64), max_iter=200, tol=1e-10)
    torch.testing.assert_close(w, b, rtol=0, atol=1e-8)
    assert (n_iter < 200).all()


def test_batched_lbfgs_rows_of_different_sizes_take_the_steps_they_take_alone() -> None:
    # quadratics of 4, 6 and 9 unknowns in one flat vector: each comes out as solved on its own, bit for bit
    g = torch.Generator().manual_seed(3)
    sizes = (4, 6, 9)
    a = [
        torch.logspace(-2, 2, m, dtype=torch.float64) * torch.rand(2, 1, generator=g, dtype=torch.float64)
        for m in sizes
    ]
    b = [torch.randn(2, m, generator=g, dtype=torch.float64) for m in sizes]

    def quadratic(a_: torch.Tensor, b_: torch.Tensor):
        return lambda w, needed: (0.5 * (a_ * (w - b_).square()).sum(1), a_ * (w - b_))

    options = {"max_iter": 60, "tol": 1e-9}
    pairs = list(zip(a, b, strict=True))
    alone = [_batched_lbfgs(quadratic(ai, bi), torch.zeros_like(bi), **options) for ai, bi in pairs]
    rows = _Rows((2, 2, 2), sizes)

    def together(w: torch.Tensor, needed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [quadratic(ai, bi)(blk, needed) for (ai, bi), blk in zip(pairs, rows.blocks(w), strict=True)]
        return torch.cat([f for f, _ in parts]), torch.cat([grad.reshape(-1) for _, grad in parts])

    start = torch.zeros(sum(2 * m for m in sizes), dtype=torch.float64)
    w, n_iter = _batched_lbfgs(together, start, rows=rows, **options)
    for block, (w_alone, n_alone), i in zip(rows.blocks(w), alone, range(3), strict=True):
        assert torch.equal(block, w_alone) and torch.equal(n_iter[2 * i : 2 * i + 2], n_alone)


def _token_tasks(seed: int) -> tuple[dict, dict]:
    """Two "models" (different features, the same words) with a 3-class and a 5-class label set each, and a
    third model on other words: five tasks, three feature sets."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(60)])
    ids = rng.integers(0, 60, size=700)
    words, pos = vocabulary[ids], rng.integers(0, 3, size=60)[ids]  # the pos label: a property of each type
    dep = (pos + rng.integers(0, 3, size=700)) % 5
    g = torch.Generator().manual_seed(seed)

    def model(scale: float, n: int) -> dict[int, torch.Tensor]:
        signal = torch.eye(6)[torch.from_numpy(pos[:n])]
        return {layer: torch.randn(n, 6, generator=g) + scale * layer * signal for layer in (0, 1, 2)}

    features = {"base": model(1.0, 700), "tuned": model(0.6, 700), "other": model(0.8, 400)}
    tasks, alone = {}, {}
    for name, x in features.items():
        n = next(iter(x.values())).shape[0]
        train = {k: v[: n - 150] for k, v in x.items()}
        test = {k: v[n - 150 :] for k, v in x.items()}
        for label_set, y in (("pos", pos[:n]), ("dep", dep[:n])):
            if name == "other" and label_set == "dep":
                continue
            types = (list(words[: n - 150]), list(words[n - 150 : n]))
            tasks[name, label_set] = ProbeTask(train, y[: n - 150], test, y[n - 150 :], word_types=types)
            alone[name, label_set] = fit_probes(
                train, y[: n - 150], test, y[n - 150 :], word_types=types, seed=seed
            )
    return tasks, alone


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_probe_tasks_equals_fitting_each_task_alone(seed: int) -> None:
    # the same splits, controls and choices; weights equal up to the rounding of matrix products of other
    # widths (a BLAS may sum tiny products in another order), which the optimiser's tolerance absorbs
    tasks, alone = _token_tasks(seed)
    together = fit_probe_tasks(tasks, seed=seed)
    assert list(together) == list(tasks)
    for key, result in together.items():
        want = alone[key]
        np.testing.assert_array_equal(result.labels, want.labels)
        np.testing.assert_array_equal(result.control_labels, want.control_labels)
        for probes, expected in ((result.probes, want.probes), (result.control_probes, want.control_probes)):
            assert probes is not None and expected is not None
            assert probes.l2_ == expected.l2_ and probes.validation_accuracy_ == expected.validation_accuracy_
            for layer in probes.layers_:
                close = {"rtol": 0, "atol": 2e-3 * np.abs(expected.coef_[layer]).max()}
                np.testing.assert_allclose(probes.coef_[layer], expected.coef_[layer], **close)
                np.testing.assert_allclose(probes.intercept_[layer], expected.intercept_[layer], **close)
        for layer in result.layers:
            np.testing.assert_array_equal(result.predictions[layer], want.predictions[layer])
            np.testing.assert_array_equal(result.control_predictions[layer], want.control_predictions[layer])
        assert result.rows(n_boot=200) == want.rows(n_boot=200), key


def test_tasks_on_one_feature_object_share_one_stack_in_one_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    solves: list[list[int]] = []
    real = tunescope.probing._solve

    def spy(groups, *args, **kwargs):
        solves.append([len(group.tasks) for group in groups])
        return real(groups, *args, **kwargs)

    monkeypatch.setattr(tunescope.probing, "_solve", spy)
    tasks, _ = _token_tasks(0)
    solves.clear()
    fit_probe_tasks(tasks)
    # one optimisation; base and tuned: task and control of pos and dep on one stack each, other: pos
    assert solves == [[4, 4, 2]]


def test_fit_probe_tasks_checks_every_task_before_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = classes_in_gaussians(100, 3, 2, 1.0, seed=0)

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("fitted before every task was checked")

    monkeypatch.setattr(tunescope.probing, "_fit_together", no_fit)
    good = ProbeTask({1: x[:80]}, y[:80], {1: x[80:]}, y[80:])
    with pytest.raises(DataError, match="79 labels for 80 rows"):
        fit_probe_tasks({"good": good, "bad": ProbeTask({1: x[:80]}, y[:79], {1: x[80:]}, y[80:])})
    with pytest.raises(InputError, match="at least one"):
        fit_probe_tasks({})
    with pytest.raises(InputError, match="l2_grid"):
        fit_probe_tasks({"good": good}, l2_grid=(0.0,))


# --- control tasks --------------------------------------------------------------------------------


def test_control_labels_per_example_keep_the_distribution_exactly() -> None:
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    control = control_labels(labels, seed=3)
    assert label_distribution(control) == label_distribution(labels)
    assert (control != labels).any()
    assert (control_labels(labels, seed=3) == control).all()


def test_control_labels_per_word_type() -> None:
    rng = np.random.default_rng(0)
    types = [f"w{i}" for i in rng.integers(0, 3000, size=20000)]
    labels = rng.choice(["NOUN", "VERB", "DET", "ADJ"], p=[0.4, 0.3, 0.2, 0.1], size=20000)
    control = control_labels(labels, groups=types, seed=1)
    assert consistent_per_group(control, types)
    expected = label_distribution(labels)
    for label, share in label_distribution(control).items():
        assert abs(share - expected[label]) < 0.04
    assert not (control_labels(labels, groups=types, seed=2) == control).all()


def test_control_accuracy_near_chance_on_random_features() -> None:
    rng = np.random.default_rng(2)
    g = torch.Generator().manual_seed(2)
    n = 1200
    words = np.array([f"w{i}" for i in rng.integers(0, 300, size=n)])
    labels = np.array([int(w[1:]) % 3 for w in words])  # a property of the word type
    x = {1: torch.randn(n, 16, generator=g)}  # features that know nothing about the word
    rows = probe_layers(
        {1: x[1][:800]}, labels[:800], {1: x[1][800:]}, labels[800:], word_types=(words[:800], words[800:])
    )
    (row,) = rows
    assert row["control_accuracy"] < row["majority_accuracy"] + 0.1
    assert row["accuracy"] < row["majority_accuracy"] + 0.1


def test_memorising_features_have_low_selectivity() -> None:
    # features = a random vector per word type: the probe can memorise types, so the control task is
    # learnable too (Hewitt & Liang's point); a property-only feature has high selectivity
    rng = np.random.default_rng(3)
    g = torch.Generator().manual_seed(3)
    n, n_types = 1500, 40
    type_ids = rng.integers(0, n_types, size=n)
    words = np.array([f"w{t}" for t in type_ids])
    labels = type_ids % 2
    identity = torch.randn(n_types, 64, generator=g)[torch.from_numpy(type_ids)] + 0.05 * torch.randn(
        n, 64, generator=g
    )
    property_only = torch.from_numpy(labels[:, None] * 4.0).float() + torch.randn(n, 1, generator=g)
    layers = {1: identity, 2: property_only}
    rows = probe_layers(
        {k: v[:1000] for k, v in layers.items()},
        labels[:1000],
        {k: v[1000:] for k, v in layers.items()},
        labels[1000:],
        word_types=(words[:1000], words[1000:]),
        seed=1,
    )
    by_layer = {row["layer"]: row for row in rows}
    assert by_layer[1]["accuracy"] > 0.95 and by_layer[1]["control_accuracy"] > 0.8
    assert by_layer[2]["accuracy"] > 0.95 and by_layer[2]["selectivity"] > 0.3
    assert by_layer[1]["selectivity"] < by_layer[2]["selectivity"]


def test_sentence_level_probe_layers_rows() -> None:
    x, y = classes_in_gaussians(500, 6, 2, 1.5, seed=9)
    rows = probe_layers({3: x[:400]}, y[:400], {3: x[400:]}, y[400:], validation_fraction=0.25)
    (row,) = rows
    assert set(row) >= {"layer", "accuracy", "control_accuracy", "selectivity", "l2", "n_train", "n_test"}
    assert (row["n_train"], row["n_validation"], row["n_test"]) == (300, 100, 100)
    assert row["accuracy"] > 0.9 and row["control_accuracy"] < 0.75
    assert row["selectivity"] == pytest.approx(row["accuracy"] - row["control_accuracy"])
    (no_control,) = probe_layers({3: x[:400]}, y[:400], {3: x[400:]}, y[400:], control=False)
    assert np.isnan(no_control["selectivity"])


@pytest.mark.models
def test_token_level_probe_layers_on_tiny_model() -> None:
    from tunescope.extract import extract
    from tunescope.testing.tiny import tiny_model

    words = [
        ["the", "film", "was", "good"],
        ["a", "story", "is", "bad"],
        ["the", "actor", "was", "fine"],
    ] * 12
    tags = [["DET", "NOUN", "VERB", "ADJ"]] * len(words)
    texts = [" ".join(w) for w in words]
    reps = extract(tiny_model("bert"), texts, pooling="tokens", words=words, word_labels=tags, progress=False)
    flat_words = [w for sentence in words for w in sentence]
    train, test = reps.select(reps.layers), reps.select(reps.layers)
    rows = probe_layers(train, None, test, None, word_types=(flat_words, flat_words), seed=0)
    assert [row["layer"] for row in rows] == list(reps.layers)
    assert all(row["n_classes"] == 4 for row in rows)
    with pytest.raises(InputError, match="word_types"):
        probe_layers(train, None, test, None)


@pytest.mark.gpu
def test_gpu_fit_matches_cpu() -> None:
    x, y = classes_in_gaussians(1000, 10, 3, 0.7, seed=10)
    cpu = LayerProbes().fit({1: x[:600]}, y[:600], {1: x[600:800]}, y[600:800])
    gpu = LayerProbes(device="cuda").fit({1: x[:600].cuda()}, y[:600], {1: x[600:800].cuda()}, y[600:800])
    assert abs(cpu.score({1: x[800:]}, y[800:])[1] - gpu.score({1: x[800:]}, y[800:])[1]) <= 0.01


# --- bad input ------------------------------------------------------------------------------------


def test_single_class() -> None:
    x = {1: torch.randn(10, 3)}
    with pytest.raises(DataError, match="two classes"):
        LayerProbes().fit(x, [1] * 10, x, [1] * 10)


def test_label_count_differs_from_rows() -> None:
    x = {1: torch.randn(10, 3)}
    with pytest.raises(DataError, match="9 labels for 10 rows"):
        LayerProbes().fit(x, [0, 1] * 4 + [0], x, [0, 1] * 5)
    with pytest.raises(DataError, match="aligned with words"):
        probe_layers(x, [0, 1] * 5, x, [0, 1] * 4, control=False)


def test_token_labels_misaligned_with_words_in_extract() -> None:
    from tunescope.extract import extract
    from tunescope.testing.tiny import tiny_model

    with pytest.raises(InputError, match="labels must align with words"):
        extract(
            tiny_model("bert"),
            ["a good film"],
            pooling="tokens",
            word_labels=[["DET", "ADJ"]],
            progress=False,
        )


def test_other_bad_inputs() -> None:
    x = {1: torch.randn(10, 3)}
    y = [0, 1] * 5
    with pytest.raises(InputError, match="l2_grid"):
        LayerProbes(l2_grid=(0.0,)).fit(x, y, x, y)
    with pytest.raises(InputError, match="layers"):
        LayerProbes().fit(x, y, {2: torch.randn(10, 3)}, y)
    with pytest.raises(InputError, match="NaN"):
        LayerProbes().fit({1: torch.full((10, 3), float("nan"))}, y, x, y)
    with pytest.raises(InputError, match="not fitted"):
        LayerProbes().predict(x)
    probes = LayerProbes().fit(x, y, x, y)
    with pytest.raises(InputError, match="lacks"):
        probes.predict({2: torch.randn(4, 3)})
    with pytest.raises(InputError, match="validation_fraction"):
        probe_layers(x, y, x, y, validation_fraction=1.5)


def test_docs_example_runs() -> None:
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "probing.md").read_text(encoding="utf-8")
    code = text.split("```python\n")[1].split("```")[0]
    ns: dict = {}
    exec(compile(code, "docs/probing.md", "exec"), ns)
    # layer l adds l * e_y to noise: layer 0 carries no signal, the signal grows with l
    accuracy, values, rows = ns["accuracy"], ns["values"], ns["rows"]
    assert accuracy[0] < 0.45 < 0.9 < accuracy[3]
    assert [accuracy[k] for k in range(4)] == sorted(accuracy[k] for k in range(4))
    assert [values[k] for k in range(4)] == sorted((values[k] for k in range(4)), reverse=True)
    assert [r["layer"] for r in rows] == [0, 1, 2, 3] and abs(rows[0]["selectivity"]) < 0.15
    assert ns["choice"].adapt_layers == (2, 3) and ns["choice"].dropped_layers == ()


# --- intervals over test sentences ----------------------------------------------------------------


def _sentences(n_sentences: int, seed: int) -> tuple[dict[int, torch.Tensor], np.ndarray, np.ndarray]:
    """Rows grouped in sentences of 3-7 words: layer 1 reads the label, layer 2 is noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 8, size=n_sentences)
    groups = np.repeat(np.arange(n_sentences), sizes)
    y = rng.integers(0, 3, size=groups.size)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(groups.size, 4, generator=g) + 1.2 * torch.eye(4)[torch.from_numpy(y)]
    return {1: x1, 2: torch.randn(groups.size, 4, generator=g)}, y, groups


def _fit_on_sentences(seed: int = 0):
    x, y, groups = _sentences(120, seed)
    train, test = groups < 80, groups >= 80
    return fit_probes(
        {k: v[torch.from_numpy(train)] for k, v in x.items()},
        y[train],
        {k: v[torch.from_numpy(test)] for k, v in x.items()},
        y[test],
        test_groups=groups[test],
        seed=seed,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_intervals_are_metric_interval_on_the_stored_predictions(seed: int) -> None:
    result = _fit_on_sentences(seed)
    assert result.groups.max() + 1 == 40 and result.groups.size == result.labels.size
    rows = result.rows(n_boot=300, level=0.9, seed=seed)
    assert set(INTERVAL_COLUMNS) <= set(rows[0])
    for row in rows:
        layer = row["layer"]
        task = metric_interval(
            "accuracy",
            result.predictions[layer],
            result.labels,
            groups=result.groups,
            n_boot=300,
            level=0.9,
            seed=seed,
        )
        control = metric_interval(
            "accuracy",
            result.control_predictions[layer],
            result.control_labels,
            groups=result.groups,
            n_boot=300,
            level=0.9,
            seed=seed,
        )
        assert (row["accuracy"], row["ci_low"], row["ci_high"]) == (task.value, task.low, task.high)
        assert (row["control_accuracy"], row["control_ci_low"], row["control_ci_high"]) == (
            control.value,
            control.low,
            control.high,
        )
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"] and row["n_boot"] == 300
        assert row["selectivity_ci_low"] <= row["selectivity"] <= row["selectivity_ci_high"]
    assert rows[0]["accuracy"] > 0.6 > rows[1]["accuracy"]


def test_selectivity_is_resampled_paired_by_sentence() -> None:
    """By hand: draw sentences, score probe and control on the same draw, take the quantiles."""
    result = _fit_on_sentences(0)
    n_boot, level, layer = 200, 0.95, 1
    got = result.selectivity_interval(layer, n_boot=n_boot, level=level, seed=3)
    right = result.predictions[layer] == result.labels
    control_right = result.control_predictions[layer] == result.control_labels
    n_sentences = int(result.groups.max()) + 1
    draws = np.random.default_rng(3).integers(0, n_sentences, size=(n_boot, n_sentences))  # as intervals
    samples = []
    for draw in draws:
        rows = np.concatenate([np.flatnonzero(result.groups == s) for s in draw])
        samples.append(right[rows].mean() - control_right[rows].mean())
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    assert got.value == pytest.approx(right.mean() - control_right.mean(), abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    # resampling words instead of sentences gives another interval: the unit matters
    words = difference_interval(
        "accuracy",
        control_right.astype(int),
        right.astype(int),
        np.ones(right.size, int),
        n_boot=n_boot,
        seed=3,
    )
    assert (words.low, words.high) != (got.low, got.high)


def test_identical_predictions_give_a_zero_difference() -> None:
    result = _fit_on_sentences(0)
    for layer in result.layers:
        same = result.difference(result, layer, n_boot=200)
        assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    other = _fit_on_sentences(1)  # other sentences, other labels: not a paired comparison
    with pytest.raises(InputError, match="different rows"):
        result.difference(other, 1)


def test_interval_options_are_checked_before_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = classes_in_gaussians(60, 3, 2, 1.0, seed=0)

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("fitted before the options were checked")

    monkeypatch.setattr(tunescope.probing, "_fit_together", no_fit)
    with pytest.raises(InputError, match="n_boot"):
        probe_layers({1: x}, y, {1: x}, y, n_boot=10)
    with pytest.raises(InputError, match="confidence level"):
        probe_layers({1: x}, y, {1: x}, y, n_boot=200, level=1.5)


def test_without_control_the_control_intervals_are_nan() -> None:
    x, y = classes_in_gaussians(300, 4, 2, 1.5, seed=2)
    (row,) = probe_layers({1: x[:200]}, y[:200], {1: x[200:]}, y[200:], control=False, n_boot=200)
    assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert np.isnan(row["control_ci_low"]) and np.isnan(row["selectivity_ci_high"])
