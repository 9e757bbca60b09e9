"""Stage ``domains``: same-layer similarity of the two models on in-domain and out-of-domain inputs."""

from __future__ import annotations

import pytest
import torch

from tunescope._io import read_csv
from tunescope.data import get_task
from tunescope.errors import InputError, UnknownNameError
from tunescope.extract import extract
from tunescope.models import load_encoder
from tunescope.pipeline import AnalyzeConfig, analyze, read_manifest
from tunescope.similarity import bootstrap_ci, bootstrap_linear_cka, linear_cka, percentile_interval, rsa
from tunescope.stages.domains import CHANGE_COLUMNS, COLUMNS, MEAN, default_ood_tasks, ood_tasks
from tunescope.stages.domains.section import change_sentence, merchant_verdict
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

VADER = ("movie-sentiment", "amazon-sentiment", "nyt-sentiment", "tweet-sentiment")


def _save(folder, seed):
    return save_model(tiny_model("bert", num_layers=3, seed=seed), folder)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tiny-bert-domains-base"), 0)


@pytest.fixture(scope="module")
def tuned_folder(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tiny-bert-domains-tuned"), 1)


def _config(tmp_path, model, tuned, **kwargs):
    options = {"limit": 40, "batch_size": 16, "device": "cpu", "stages": ("domains",), "finetune": False}
    return AnalyzeConfig(out=tmp_path / "run", model=model, tuned=tuned, **{**options, **kwargs})


def test_default_ood_tasks_are_the_other_vader_domains():
    assert default_ood_tasks("movie-sentiment") == ("amazon-sentiment", "nyt-sentiment", "tweet-sentiment")
    assert default_ood_tasks("tweet-sentiment") == ("movie-sentiment", "amazon-sentiment", "nyt-sentiment")
    assert default_ood_tasks("sst2") == () and default_ood_tasks("bbc-topic") == ()
    assert ood_tasks("movie-sentiment", ["NYT-Sentiment", "nyt-sentiment"]) == ("nyt-sentiment",)
    with pytest.raises(InputError, match="the analysed task itself"):
        ood_tasks("movie-sentiment", ["movie-sentiment"])


def test_values_equal_linear_cka_and_rsa_on_each_domain(tmp_path, base_folder, tuned_folder):
    root = analyze(_config(tmp_path, base_folder, tuned_folder), progress=False)
    rows = read_csv(root / "results" / "domains.csv")
    assert tuple(rows[0]) == ("pooling", *COLUMNS)
    assert {r["domain"] for r in rows} == set(VADER)
    assert {r["domain"] for r in rows if r["in_domain"] == "True"} == {"movie-sentiment"}
    assert {r["measure"] for r in rows} == {"linear_cka", "rsa_correlation_spearman"}
    assert {r["n_examples"] for r in rows} == {"40"}
    assert len(rows) == 4 * 4 * 2  # domains x layers 0..3 x measures
    base, tuned = load_encoder(base_folder), load_encoder(tuned_folder)
    for domain in VADER:
        examples = get_task(domain).load("validation", limit=40)
        options = {"pooling": "mean", "batch_size": 16, "max_length": 128, "progress": False}
        a, b = extract(base, examples, **options), extract(tuned, examples, **options)
        for row in (r for r in rows if r["domain"] == domain):
            layer = int(row["layer"])
            if row["measure"] == "linear_cka":
                expected = float(linear_cka(a[layer], b[layer]))
            else:
                expected = float(rsa(a[layer], b[layer], rdm="correlation", compare="spearman"))
            assert float(row["value"]) == pytest.approx(expected, abs=1e-12), (domain, layer)
    html = (root / "report.html").read_text()
    assert "In-domain vs out-of-domain change" in html
    assert "in-domain inputs more than out-of-domain ones" in html
    assert "Merchant et al. (2020)" in html and "RSA is not bootstrapped" in html
    for name in ("domains_linear_cka", "domains_rsa_correlation_spearman", "domains_gap"):
        assert (root / "figures" / f"{name}.png").exists()


def test_sets_cut_to_the_smallest_and_constant_layers_dropped(tmp_path, base_folder, tuned_folder):
    # no limit: the in-domain split has 1003 examples, nyt-sentiment's 281
    config = _config(
        tmp_path,
        base_folder,
        tuned_folder,
        limit=None,
        pooling="cls",
        options={"similarity": {"rsa": None}, "domains": {"ood_tasks": ("nyt-sentiment",)}},
    )
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "domains.csv")
    n = len(get_task("nyt-sentiment").load("validation"))
    assert {r["n_examples"] for r in rows} == {str(n)}
    assert {r["domain"] for r in rows} == {"movie-sentiment", "nyt-sentiment"}
    assert {r["measure"] for r in rows} == {"linear_cka"}
    assert {int(r["layer"]) for r in rows} == {1, 2, 3}  # layer 0 is one vector for every input under cls
    notes = " ".join(read_manifest(root)["notes"])
    assert "layer(s) 0 give the same vector" in notes and f"first {n} examples" in notes


def test_a_task_without_default_domains_writes_nothing_with_a_note(tmp_path, base_folder, tuned_folder):
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = "".join(f"{'a good' if i % 2 else 'a bad'} film number {i}\t{i % 2}\n" for i in range(16))
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    config = _config(tmp_path, base_folder, tuned_folder, task="sst2", data_dir=str(glue.parent))
    root = analyze(config, progress=False)
    assert not (root / "results" / "domains.csv").exists()
    assert "sst2 has no default; pass --domains.ood-tasks" in " ".join(read_manifest(root)["notes"])
    assert read_manifest(root)["stages"]["domains"]["status"] == "done"


def test_one_model_skips_with_a_note(tmp_path, base_folder):
    root = analyze(_config(tmp_path, base_folder, None), progress=False)
    assert not (root / "results" / "domains.csv").exists()
    assert "domains: needs a fine-tuned model" in " ".join(read_manifest(root)["notes"])


def test_unknown_ood_task_fails_before_anything_is_computed(tmp_path, base_folder, tuned_folder):
    config = _config(
        tmp_path, base_folder, tuned_folder, options={"domains": {"ood_tasks": ("amazon-sentiment", "imdb")}}
    )
    with pytest.raises(UnknownNameError, match="unknown task 'imdb'"):
        analyze(config, progress=False)
    assert not (tmp_path / "run" / "results" / "domains.csv").exists()
    assert not list((tmp_path / "run").glob("cache/*"))  # nothing extracted


def test_intervals_equal_bootstrap_linear_cka_with_each_domain_resampled_on_its_own(
    tmp_path, base_folder, tuned_folder
):
    domains = ("movie-sentiment", "nyt-sentiment", "tweet-sentiment")
    config = _config(
        tmp_path,
        base_folder,
        tuned_folder,
        limit=30,
        n_boot=200,
        confidence=0.9,
        seed=3,
        options={"similarity": {"rsa": None}, "domains": {"ood_tasks": domains[1:]}},
    )
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "domains.csv")
    base, tuned = load_encoder(base_folder), load_encoder(tuned_folder)
    options = {"pooling": "mean", "batch_size": 16, "max_length": 128, "progress": False}
    samples = {}
    for k, domain in enumerate(domains):  # the in-domain set first, then the ood tasks in order: seed + k
        examples = get_task(domain).load("validation", limit=30)
        a, b = extract(base, examples, **options), extract(tuned, examples, **options)
        features = [a[layer] for layer in a.layers] + [b[layer] for layer in a.layers]
        pairs = [(i, i + len(a.layers)) for i in range(len(a.layers))]
        estimate, raw = bootstrap_linear_cka(features, pairs, n_boot=200, seed=3 + k, exact=True)
        draws = (raw - (raw.mean(0) - estimate)).clamp(0, 1)  # 30 examples: exact, centred on the estimate
        for i, layer in enumerate(a.layers):
            samples[domain, layer] = draws[:, i]
            (row,) = [r for r in rows if r["domain"] == domain and int(r["layer"]) == layer]
            low, high = percentile_interval(draws[:, i], 0.9)
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high), abs=1e-12)
            assert row["n_boot"] == "200"
        top = a.layers[-1]  # the obviously-correct reference: linear_cka on resampled rows
        ci = bootstrap_ci(linear_cka, a[top], b[top], n_boot=200, seed=3 + k, level=0.9)
        torch.testing.assert_close(raw[:, -1], ci.samples, rtol=0, atol=1e-6)  # float32 features
    assert not torch.allclose(samples[domains[0], 3], samples[domains[1], 3])  # independent draws
    change = read_csv(root / "results" / "domain_change.csv")
    assert tuple(change[0]) == ("pooling", *CHANGE_COLUMNS)
    assert [r["out_domain"] for r in change] == [d for d in (*domains[1:], MEAN) for _ in range(4)]
    value = {(r["domain"], int(r["layer"])): float(r["value"]) for r in rows}
    for row in change:
        layer, outside = int(row["layer"]), domains[1:] if row["out_domain"] == MEAN else (row["out_domain"],)
        in_change = 1 - value[domains[0], layer]
        out_change = sum(1 - value[d, layer] for d in outside) / len(outside)
        assert float(row["in_change"]) == pytest.approx(in_change, abs=1e-12)
        assert float(row["out_change"]) == pytest.approx(out_change, abs=1e-12)
        assert float(row["difference"]) == pytest.approx(in_change - out_change, abs=1e-12)
        draws = sum(samples[d, layer] for d in outside) / len(outside) - samples[domains[0], layer]
        low, high = percentile_interval(draws, 0.9)
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high), abs=1e-12)


def _change(diffs: dict[int, tuple[float, float, float]]) -> list[dict[str, object]]:
    """Planted ``domain_change`` rows of a 6-layer model: layer -> (difference, ci_low, ci_high)."""
    return [
        {
            "out_domain": MEAN,
            "layer": layer,
            "measure": "linear_cka",
            "difference": d,
            "ci_low": lo,
            "ci_high": hi,
        }
        for layer, (d, lo, hi) in diffs.items()
    ]


FLAT = (0.0, -0.01, 0.01)
MORE_IN = (0.05, 0.021, 0.079)
MORE_OUT = (-0.05, -0.079, -0.021)
CROSSING = (0.05, -0.004, 0.104)


@pytest.mark.parametrize(
    ("top", "says"),
    [
        (
            (FLAT, MORE_IN, MORE_IN),
            "this run agrees: by CKA, in the top layers 4-6, in-domain inputs changed "
            "measurably more at layers 5,6, out-of-domain ones at none.",
        ),
        (
            (FLAT, FLAT, MORE_OUT),
            "this run disagrees: by CKA, in the top layers 4-6, in-domain inputs changed "
            "measurably more at none, out-of-domain ones at layer 6.",
        ),
        (
            (FLAT, FLAT, CROSSING),
            "this run cannot tell: by CKA, in the top layers 4-6, the interval of the "
            "difference in change contains 0 at each of them.",
        ),
        (
            (MORE_OUT, FLAT, MORE_IN),
            "this run cannot tell: by CKA, in the top layers 4-6, in-domain inputs "
            "changed measurably more at layer 6, out-of-domain ones at layer 4.",
        ),
    ],
)
def test_the_merchant_sentence_follows_the_intervals_of_the_top_layers(top, says):
    rows = _change({0: MORE_OUT, 1: MORE_OUT, 2: FLAT, 3: MORE_OUT, 4: top[0], 5: top[1], 6: top[2]})
    sentence = merchant_verdict(rows)
    assert sentence.startswith("Merchant et al. (2020) find that fine-tuning changes in-domain inputs more")
    assert sentence.endswith(says)


def test_the_change_sentence_says_no_measurable_difference_when_the_interval_contains_zero():
    measured = change_sentence(_change({0: FLAT, 1: MORE_OUT, 2: MORE_IN}), "CKA")
    assert measured == (
        "By CKA, in-domain inputs changed measurably more than out-of-domain ones at layer 2 and measurably "
        "less at layer 1; at the top layer (2), in the change 1 − CKA (in hundredths), being in domain adds "
        "5.0 points [2.1, 7.9]."
    )
    crossing = change_sentence(_change({0: FLAT, 1: FLAT, 2: CROSSING}), "CKA")
    assert crossing == (
        "By CKA, no layer shows a measurable difference between in-domain and out-of-domain change; at the "
        "top layer (2), in the change 1 − CKA (in hundredths), being in domain makes no measurable "
        "difference (+5.0 points [-0.4, 10.4])."
    )
    unbootstrapped = change_sentence(_change({0: (0.1, "", ""), 1: (0.05, "", "")}), "RSA")
    assert "is +0.050, with no interval (RSA is not bootstrapped), so this run cannot tell" in unbootstrapped
