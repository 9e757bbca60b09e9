"""Loading encoders and the architecture adapters, on tiny models of every family and on MiniLM."""

from __future__ import annotations

import ast
import pathlib
import time

import pytest
import torch
import transformers
from torch import nn

import tunescope.models
from tunescope import surgery
from tunescope.errors import (
    InputError,
    ModelLoadError,
    OfflineModelError,
    TokenizerMismatchError,
    UnknownNameError,
    UnsupportedArchitectureError,
)
from tunescope.models import (
    ADAPTERS,
    Encoder,
    from_model,
    get_adapter,
    load_classifier,
    load_encoder,
    model_fingerprint,
)
from tunescope.testing.tiny import FAMILIES, tiny_config, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.models


def _batch(enc: Encoder, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(enc.tokenizer(texts, padding=True, return_tensors="pt"))


def _save(enc: Encoder, folder: pathlib.Path) -> pathlib.Path:
    enc.model.save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------
# registry and adapters
# ------------------------------------------------------------------------------------------------
def test_registry_covers_the_tiny_families() -> None:
    assert set(FAMILIES) == set(ADAPTERS)
    for name, adapter in ADAPTERS.items():
        assert adapter.family == name


@pytest.mark.parametrize("task", ["base", "classifier"])
def test_adapter_finds_every_piece(family: str, task: str, texts: list[str]) -> None:
    enc = tiny_model(family, task=task, num_layers=3)  # type: ignore[arg-type]
    adapter, model, config = enc.adapter, enc.model, enc.model.config
    assert get_adapter(model) is adapter and get_adapter(config) is adapter and get_adapter(enc) is adapter
    assert adapter.base_model(model) is model.base_model
    assert enc.num_layers == 3 and enc.num_heads == 4 and enc.hidden_size == 32 and enc.head_dim == 8
    assert isinstance(adapter.embeddings(model), nn.Module)
    assert len(adapter.layers(model)) == 3
    for layer in range(1, 4):
        proj = adapter.attention_output(model, layer)
        assert isinstance(proj, nn.Linear)
        assert proj.in_features == enc.num_heads * enc.head_dim
        assert proj.out_features == enc.hidden_size
        ffn = adapter.ffn(model, layer)
        assert ffn.owner is adapter.layers(model)[layer - 1]
        assert (ffn.up.in_features, ffn.up.out_features) == (32, 37)
        assert (ffn.down.in_features, ffn.down.out_features) == (37, 32)
        assert tuple(ffn.layer_norm.normalized_shape) == (32,)
        assert ffn.owner.get_submodule(ffn.up_name) is ffn.up
        assert ffn.owner.get_submodule(ffn.down_name) is ffn.down
        assert ffn.owner.get_submodule(ffn.layer_norm_name) is ffn.layer_norm
    assert adapter.intermediate_size(config) == 37
    head = adapter.classifier_head(model)
    if task == "classifier":
        assert head is not None and len(list(head.parameters())) > 0
        assert all(any(m is sub for sub in model.modules()) for m in head.values())
    else:
        assert head is None
    out = model(**_batch(enc, texts), output_hidden_states=True)
    assert len(out.hidden_states) == enc.num_layers + 1


def test_projection_and_ffn_sit_where_the_adapter_says(family: str, texts: list[str]) -> None:
    """The projection gets (n, seq, H*head_dim) once per layer; the FFN norm output is the layer output."""
    enc = tiny_model(family, num_layers=3)
    adapter, model = enc.adapter, enc.model
    proj_inputs: list[torch.Size] = []
    norm_outputs: list[torch.Tensor] = []
    handles = []
    for module in {id(m): m for m in (adapter.attention_output(model, i) for i in (1, 2, 3))}.values():
        handles.append(module.register_forward_pre_hook(lambda m, a: proj_inputs.append(a[0].shape)))
    for norm in {id(m): m for m in (adapter.ffn(model, i).layer_norm for i in (1, 2, 3))}.values():
        handles.append(norm.register_forward_hook(lambda m, a, o: norm_outputs.append(o)))
    batch = _batch(enc, texts)
    try:
        out = model(**batch, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    n, seq = batch["input_ids"].shape
    assert proj_inputs == [torch.Size([n, seq, enc.num_heads * enc.head_dim])] * 3
    assert len(norm_outputs) == 3
    for layer in (1, 2, 3):
        torch.testing.assert_close(norm_outputs[layer - 1], out.hidden_states[layer], rtol=0, atol=0)


def test_shared_layers_only_for_albert(family: str) -> None:
    enc = tiny_model(family, num_layers=3)
    layers = enc.adapter.layers(enc.model)
    if family == "albert":
        assert enc.adapter.shared_layers()
        assert all(layer is layers[0] for layer in layers)
    else:
        assert not enc.adapter.shared_layers()
        assert len({id(layer) for layer in layers}) == 3


def test_albert_hidden_groups_map_positions_like_transformers() -> None:
    config = tiny_config("albert", num_layers=4)
    config.num_hidden_groups = 2
    model = transformers.AlbertModel(config)
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    expected = [model.get_submodule(f"encoder.albert_layer_groups.{g}.albert_layers.0") for g in (0, 0, 1, 1)]
    assert [id(x) for x in layers] == [id(x) for x in expected]


def test_albert_with_several_layers_per_group_is_refused() -> None:
    config = tiny_config("albert")
    config.inner_group_num = 2
    with pytest.raises(UnsupportedArchitectureError, match="inner_group_num"):
        get_adapter(config)


@pytest.mark.parametrize("layer", [0, 3, -1])
def test_layer_out_of_range(layer: int) -> None:
    enc = tiny_model("bert")
    with pytest.raises(InputError, match=r"1\.\.2"):
        enc.adapter.attention_output(enc.model, layer)
    with pytest.raises(InputError):
        enc.adapter.ffn(enc.model, layer)


def test_unsupported_architecture_lists_families() -> None:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300)
    with pytest.raises(UnsupportedArchitectureError, match="supported families: albert, bert"):
        get_adapter(config)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        from_model(transformers.GPT2Model(config), tiny_tokenizer())
    with pytest.raises(UnsupportedArchitectureError):
        get_adapter(nn.Linear(2, 2))


def test_unknown_tiny_family() -> None:
    with pytest.raises(UnknownNameError, match="choose one of"):
        tiny_model("gpt2")


# ------------------------------------------------------------------------------------------------
# tiny models and fingerprints
# ------------------------------------------------------------------------------------------------
def test_tiny_model_is_deterministic_and_leaves_global_rng_alone(family: str) -> None:
    state = torch.random.get_rng_state()
    a, b = tiny_model(family, seed=1), tiny_model(family, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.fingerprint == b.fingerprint
    assert tiny_model(family, seed=2).fingerprint != a.fingerprint
    assert not a.model.training
    assert len(a.tokenizer) == a.model.get_input_embeddings().num_embeddings


def test_fingerprint_stable_and_sensitive(tiny_classifier: Encoder) -> None:
    enc = tiny_classifier
    first = enc.fingerprint
    assert len(first) == 16 and int(first, 16) >= 0
    assert enc.fingerprint == first == model_fingerprint(enc.model)
    weight = enc.adapter.attention_output(enc.model, 2).weight
    with torch.no_grad():
        weight[0, 0] += 1e-3
    changed = enc.fingerprint
    assert changed != first and changed == model_fingerprint(enc.model)
    with torch.no_grad():
        weight[0, 0] -= 1e-3
    # the same bytes again are not guaranteed (float rounding), so only check determinism
    assert enc.fingerprint == model_fingerprint(enc.model)


def test_fingerprint_sees_buffers_config_and_replaced_tensors() -> None:
    enc = tiny_model("bert")
    first = enc.fingerprint
    enc.model.config.layer_norm_eps = 1e-5
    assert model_fingerprint(enc.model) != first
    enc = tiny_model("bert")
    proj = enc.adapter.attention_output(enc.model, 1)
    proj.weight = nn.Parameter(proj.weight.detach().clone() * 2)
    assert enc.fingerprint != first


def test_fingerprint_ignores_call_options_and_survives_save_and_load(tmp_path: pathlib.Path) -> None:
    enc = tiny_model("roberta", task="classifier")
    first = enc.fingerprint
    enc.model.config.output_hidden_states = True
    assert model_fingerprint(enc.model) == first
    enc.model.config.output_hidden_states = False
    loaded = load_classifier(_save(enc, tmp_path))
    assert loaded.fingerprint == first


# ------------------------------------------------------------------------------------------------
# loading from folders
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(family: str, tmp_path: pathlib.Path, texts: list[str]) -> None:
    enc = tiny_model(family, task="classifier", num_labels=3)
    folder = _save(enc, tmp_path)
    clf = load_classifier(folder)
    assert clf.name == str(folder) and clf.path == folder and clf.family == family
    torch.testing.assert_close(clf.model(**_batch(clf, texts)).logits, enc.model(**_batch(enc, texts)).logits)
    base = load_encoder(folder)
    assert (
        isinstance(base.model, transformers.PreTrainedModel)
        and base.adapter.classifier_head(base.model) is None
    )
    info = base.describe()
    assert info["has_classifier_head"] and not info["has_mlm_head"]
    assert info["family"] == family and info["num_layers"] == 2 and info["num_heads"] == 4
    base.model(**_batch(base, texts))  # the saved tokenizer sends only inputs the model accepts


@pytest.mark.parametrize("family", FAMILIES)
def test_has_mlm_head_reads_the_checkpoint(family: str, tmp_path: pathlib.Path) -> None:
    tiny = tiny_model(family)
    mlm = transformers.AutoModelForMaskedLM.from_config(tiny.model.config)
    mlm.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_encoder(tmp_path)
    assert loaded.describe()["has_mlm_head"]
    assert not loaded.describe()["has_classifier_head"]
    assert not tiny.describe()["has_mlm_head"]


def test_load_options(tmp_path: pathlib.Path) -> None:
    folder = _save(tiny_model("bert"), tmp_path)
    enc = load_encoder(folder, dtype="float64", attn_implementation="eager")
    assert next(enc.model.parameters()).dtype == torch.float64
    assert enc.model.config._attn_implementation == "eager"
    assert enc.device == torch.device("cpu")
    with pytest.raises(InputError, match="unknown dtype"):
        load_encoder(folder, dtype="float8")
    with pytest.raises(InputError, match="unknown device"):
        load_encoder(folder, device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            load_encoder(folder, device="cuda")


def test_load_classifier_num_labels_and_problem_type(tmp_path: pathlib.Path) -> None:
    folder = _save(tiny_model("electra", task="classifier", num_labels=2), tmp_path)
    enc = load_classifier(folder, num_labels=5, problem_type="multi_label_classification")
    assert enc.model.config.num_labels == 5
    assert enc.model.config.problem_type == "multi_label_classification"
    head = enc.adapter.classifier_head(enc.model)
    assert head is not None and head.get_submodule("classifier.out_proj").out_features == 5
    with pytest.raises(InputError, match="problem_type"):
        load_classifier(folder, problem_type="ranking")
    with pytest.raises(InputError, match="num_labels"):
        load_classifier(folder, num_labels=0)


# ------------------------------------------------------------------------------------------------
# errors a user can make
# ------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="no model folder at .*config.json"):
        load_encoder(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_encoder("runs/demo/models/tuned-does-not-exist")


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OfflineModelError, match="download it where you are online.*local folder") as info:
        load_encoder("nonexistent-org/nonexistent-model-xyz")
    assert "\n" not in str(info.value)
    with pytest.raises(OfflineModelError):
        load_classifier("nonexistent-model-xyz", num_labels=2)


def test_hub_library_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Offline set only inside huggingface_hub (env var read at its import): still one clear error."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OfflineModelError, match="local folder path"):
        load_encoder("nonexistent-org/nonexistent-model-xyz")


def test_folder_without_config(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_encoder(tmp_path)
    folder = _save(tiny_model("bert"), tmp_path / "model")
    with pytest.raises(ModelLoadError, match="not a model folder.*pass its folder"):
        load_encoder(folder / "config.json")


def test_folder_without_tokenizer(tmp_path: pathlib.Path) -> None:
    tiny_model("bert").model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no tokenizer files.*save_pretrained"):
        load_encoder(tmp_path)


def test_bad_config_json(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ModelLoadError, match="no model_type"):
        load_encoder(tmp_path)


def test_folder_without_weights(tmp_path: pathlib.Path) -> None:
    enc = tiny_model("bert")
    enc.model.config.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="could not load the weights") as info:
        load_encoder(tmp_path)
    assert "\n" not in str(info.value)


def test_tokenizer_mismatch(tmp_path: pathlib.Path) -> None:
    tokenizer = tiny_tokenizer()
    model = transformers.BertModel(tiny_config("bert", vocab_size=50))
    with pytest.raises(TokenizerMismatchError, match=rf"{len(tokenizer)} tokens .* 50 rows"):
        from_model(model, tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TokenizerMismatchError, match="resize_token_embeddings"):
        load_encoder(tmp_path)


def test_unsupported_architecture_folder(tmp_path: pathlib.Path) -> None:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300)
    transformers.GPT2Model(config).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*supported families"):
        load_encoder(tmp_path)


# ------------------------------------------------------------------------------------------------
# the embedded MiniLM
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_loads_offline(minilm: Encoder) -> None:
    info = minilm.describe()
    assert info["family"] == "bert" and info["model_type"] == "bert"
    assert (info["num_layers"], info["num_heads"], info["hidden_size"]) == (6, 12, 384)
    assert info["intermediate_size"] == 1536
    assert 22_500_000 < info["num_parameters"] < 23_000_000
    assert info["has_mlm_head"] is False and info["has_classifier_head"] is False
    assert info["transformers_version"] == transformers.__version__
    assert minilm.path is not None and (minilm.path / "config.json").is_file()
    assert len(minilm.tokenizer) == 30522


@pytest.mark.slow
def test_minilm_fingerprint_is_fast(minilm: Encoder) -> None:
    start = time.perf_counter()
    value = model_fingerprint(minilm.model)
    assert time.perf_counter() - start < 0.5
    assert minilm.fingerprint == value


@pytest.mark.slow
def test_minilm_forward(minilm: Encoder, texts: list[str]) -> None:
    out = minilm.model(**_batch(minilm, texts), output_hidden_states=True)
    assert len(out.hidden_states) == 7
    assert out.last_hidden_state.shape[-1] == 384


def test_adapter_sees_through_a_peft_wrapper(texts: list[str]) -> None:
    peft = pytest.importorskip("peft")
    from tunescope.models import HeadGates

    enc = tiny_model("bert", task="classifier")
    config = peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS")
    wrapped = peft.get_peft_model(enc.model, config)
    adapter = get_adapter(wrapped)
    assert adapter.base_model(wrapped) is enc.model.base_model
    assert len(adapter.layers(wrapped)) == 2
    assert adapter.classifier_head(wrapped) is not None
    batch = _batch(enc, texts)
    reference = wrapped(**batch).logits
    with HeadGates(wrapped, torch.zeros(2, 4)):
        assert not torch.allclose(wrapped(**batch).logits, reference)


def test_models_owns_the_saved_surgery_format_and_never_imports_the_surgery_lens() -> None:
    for file in sorted(pathlib.Path(tunescope.models.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            assert not [n for n in names if n.startswith("tunescope.surgery")], f"{file.name}:{node.lineno}"
    for name in ("REMOVED_FFN_KEY", "apply_saved_surgery", "removed_ffn_layers", "load_trained_classifier"):
        assert getattr(surgery, name) is getattr(tunescope.models, name)  # re-exported where it was
