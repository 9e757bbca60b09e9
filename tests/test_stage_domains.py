"""Stage ``domains``: same-layer similarity of the two models on in-domain and out-of-domain inputs."""

from __future__ import annotations

import pytest

from tunescope._io import read_csv
from tunescope.data import get_task
from tunescope.errors import InputError, UnknownNameError
from tunescope.extract import extract
from tunescope.models import load_encoder
from tunescope.pipeline import AnalyzeConfig, analyze, read_manifest
from tunescope.similarity import linear_cka, rsa
from tunescope.stages.domains import COLUMNS, default_ood_tasks, ood_tasks
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
    assert tuple(rows[0]) == COLUMNS
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
