"""Head gates: forward pre-hooks on each layer's attention output projection."""

from __future__ import annotations

import pytest
import torch
import transformers

from tunescope.errors import InputError
from tunescope.models import Encoder, HeadGates, get_adapter, mask_heads
from tunescope.testing.tiny import tiny_config, tiny_model

pytestmark = pytest.mark.models

TF5 = int(transformers.__version__.split(".")[0]) >= 5


def _batch(enc: Encoder, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(enc.tokenizer(texts, padding=True, return_tensors="pt"))


def _out(enc: Encoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return enc.model(**batch).last_hidden_state


def _zero_columns(enc: Encoder, layer: int, head: int) -> None:
    """Zero head ``head``'s input columns of layer ``layer``'s output projection, in place."""
    proj = enc.adapter.attention_output(enc.model, layer)
    d = enc.head_dim
    with torch.no_grad():
        proj.weight[:, head * d : (head + 1) * d] = 0.0


def test_all_ones_change_nothing(tiny_base: Encoder, texts: list[str]) -> None:
    batch = _batch(tiny_base, texts)
    reference = _out(tiny_base, batch)
    with HeadGates(tiny_base) as gates:
        assert gates.active
        torch.testing.assert_close(_out(tiny_base, batch), reference, rtol=1e-6, atol=1e-6)
    assert not gates.active


def test_zeroing_a_head_equals_zeroing_its_weight_columns(family: str, texts: list[str]) -> None:
    enc = tiny_model(family, num_layers=3)
    batch = _batch(enc, texts)
    shared = enc.adapter.shared_layers()
    # one head per layer; a shared projection can only be compared with the head gated in every layer
    heads = [(layer, 2) for layer in (1, 2, 3)] if shared else [(1, 0), (2, 3), (3, 1)]
    with mask_heads(enc, heads):
        gated = _out(enc, batch)
    reference = _out(enc, batch)
    assert not torch.allclose(gated, reference, atol=1e-4)
    for layer, head in heads:
        _zero_columns(enc, layer, head)
    torch.testing.assert_close(gated, _out(enc, batch), rtol=1e-5, atol=1e-5)


def test_fractional_gate_scales_the_head(texts: list[str]) -> None:
    enc = tiny_model("mpnet")
    batch = _batch(enc, texts)
    gates = torch.ones(2, 4)
    gates[1, 2] = 0.25
    with HeadGates(enc, gates):
        gated = _out(enc, batch)
    proj = enc.adapter.attention_output(enc.model, 2)
    with torch.no_grad():
        proj.weight[:, 16:24] *= 0.25
    torch.testing.assert_close(gated, _out(enc, batch), rtol=1e-5, atol=1e-5)


def test_gradients_wrt_gates_exist(tiny_classifier: Encoder, texts: list[str]) -> None:
    enc = tiny_classifier
    batch = _batch(enc, texts)
    labels = torch.tensor([0, 1, 1, 0])
    gates = torch.ones(enc.num_layers, enc.num_heads, requires_grad=True)
    with HeadGates(enc, gates):
        loss = enc.model(**batch, labels=labels).loss
    loss.backward()
    assert gates.grad is not None and gates.grad.shape == (enc.num_layers, enc.num_heads)
    assert torch.isfinite(gates.grad).all()
    assert (gates.grad.abs().sum(dim=1) > 0).all()  # every layer's heads matter


def test_gate_gradient_matches_finite_differences(texts: list[str]) -> None:
    enc = tiny_model("bert")
    enc.model.double()
    batch = _batch(enc, texts)

    def loss_at(g: torch.Tensor) -> torch.Tensor:
        with HeadGates(enc, g):
            return enc.model(**batch).last_hidden_state.pow(2).mean()

    gates = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)
    loss_at(gates).backward()
    assert gates.grad is not None
    eps = 1e-6
    for layer, head in [(0, 1), (1, 3)]:
        step = torch.zeros(2, 4, dtype=torch.float64)
        step[layer, head] = eps
        with torch.no_grad():
            numeric = (loss_at(1 + step) - loss_at(1 - step)) / (2 * eps)
        torch.testing.assert_close(gates.grad[layer, head], numeric, rtol=1e-5, atol=1e-9)


def test_hooks_removed_after_the_context_even_on_error(texts: list[str]) -> None:
    enc = tiny_model("distilbert")
    batch = _batch(enc, texts)
    reference = _out(enc, batch)
    with mask_heads(enc, [(1, 0), (2, 1)]):
        assert not torch.allclose(_out(enc, batch), reference)
    torch.testing.assert_close(_out(enc, batch), reference, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"), mask_heads(enc, [(1, 0)]):
        raise RuntimeError("boom")
    torch.testing.assert_close(_out(enc, batch), reference, rtol=0, atol=0)
    proj = enc.adapter.attention_output(enc.model, 1)
    assert not proj._forward_pre_hooks


def test_gates_follow_dtype_and_are_read_at_each_forward(texts: list[str]) -> None:
    enc = tiny_model("roberta")
    enc.model.double()
    batch = _batch(enc, texts)
    gates = torch.ones(2, 4)  # float32 gates on a float64 model
    with HeadGates(enc, gates):
        first = _out(enc, batch)
        assert first.dtype == torch.float64
        with torch.no_grad():
            gates[0, 0] = 0.0
        second = _out(enc, batch)
    assert not torch.allclose(first, second)
    _zero_columns(enc, 1, 0)
    torch.testing.assert_close(second, _out(enc, batch), rtol=1e-10, atol=1e-10)


def test_albert_applies_one_row_per_application(texts: list[str]) -> None:
    enc = tiny_model("albert", num_layers=3)
    batch = _batch(enc, texts)
    reference = _out(enc, batch)
    outputs = []
    for layer in (1, 2, 3):
        with mask_heads(enc, [(layer, 0)]):
            outputs.append(_out(enc, batch))
            torch.testing.assert_close(_out(enc, batch), outputs[-1], rtol=0, atol=0)  # counter resets
    for out in outputs:
        assert not torch.allclose(out, reference, atol=1e-4)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)
    assert not torch.allclose(outputs[1], outputs[2], atol=1e-4)


def test_albert_row_i_gates_the_ith_application(texts: list[str]) -> None:
    """Shared ALBERT with row 2 gated == an unshared copy (two identical groups) with group 2 cut."""
    enc = tiny_model("albert", num_layers=2)
    config = tiny_config("albert", num_layers=2)
    config.num_hidden_groups = 2
    unshared = transformers.AlbertModel(config).eval()
    state = enc.model.state_dict()
    for key, value in list(state.items()):
        if ".albert_layer_groups.0." in f".{key}":
            state[key.replace("albert_layer_groups.0.", "albert_layer_groups.1.")] = value
    unshared.load_state_dict(state)
    twin = Encoder(unshared, enc.tokenizer, get_adapter(unshared))
    batch = _batch(enc, texts)
    torch.testing.assert_close(_out(twin, batch), _out(enc, batch), rtol=1e-6, atol=1e-6)
    with mask_heads(enc, [(2, 1)]), torch.no_grad():
        gated = enc.model(**batch, output_hidden_states=True).hidden_states
    plain = twin.model(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(gated[1], plain[1], rtol=1e-6, atol=1e-6)  # layer 1 untouched
    _zero_columns(twin, 2, 1)
    torch.testing.assert_close(gated[2], _out(twin, batch), rtol=1e-5, atol=1e-5)


def test_albert_hidden_groups(texts: list[str]) -> None:
    config = tiny_config("albert", num_layers=4)
    config.num_hidden_groups = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AlbertModel(config).eval()
    enc = Encoder(model, tiny_model("albert").tokenizer, get_adapter(model))
    batch = _batch(enc, texts)
    with mask_heads(enc, [(3, 1), (4, 1)]):
        gated = _out(enc, batch)
    _zero_columns(enc, 3, 1)  # layers 3 and 4 share group 2's projection
    torch.testing.assert_close(gated, _out(enc, batch), rtol=1e-5, atol=1e-5)


def test_gates_on_a_bare_model_and_invalid_input(texts: list[str]) -> None:
    enc = tiny_model("electra")
    with pytest.raises(InputError, match=r"\(2, 4\)"):
        HeadGates(enc.model, torch.ones(3, 4))
    with pytest.raises(InputError, match="floating-point"):
        HeadGates(enc.model, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(InputError, match="out of range"):
        mask_heads(enc.model, [(0, 1)])
    with pytest.raises(InputError, match="out of range"):
        mask_heads(enc.model, [(1, 4)])
    gates = HeadGates(enc.model)
    with gates, pytest.raises(InputError, match="already active"):
        gates.__enter__()
    assert not gates.active


@pytest.mark.skipif(TF5, reason="head_mask is ignored by transformers 5")
def test_matches_head_mask_of_transformers_4(texts: list[str]) -> None:
    enc = tiny_model("bert", attn_implementation="eager")
    batch = _batch(enc, texts)
    head_mask = torch.ones(2, 4)
    head_mask[0, 1] = head_mask[1, 3] = 0.0
    with torch.no_grad():
        expected = enc.model(**batch, head_mask=head_mask).last_hidden_state
    with HeadGates(enc, head_mask.clone()):
        torch.testing.assert_close(_out(enc, batch), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_minilm_gates(minilm: Encoder, texts: list[str]) -> None:
    batch = _batch(minilm, texts[:2])
    reference = _out(minilm, batch)
    with HeadGates(minilm):
        torch.testing.assert_close(_out(minilm, batch), reference, rtol=1e-5, atol=1e-5)
    with mask_heads(minilm, [(layer, 0) for layer in range(1, 7)]):
        assert not torch.allclose(_out(minilm, batch), reference, atol=1e-4)
    torch.testing.assert_close(_out(minilm, batch), reference, rtol=0, atol=0)


@pytest.mark.gpu
def test_gates_follow_the_cuda_device_and_bf16(texts: list[str]) -> None:
    enc = tiny_model("albert", task="classifier")
    model: torch.nn.Module = enc.model
    model.to(device="cuda", dtype=torch.bfloat16)
    batch = {k: v.cuda() for k, v in _batch(enc, texts).items()}
    gates = torch.ones(enc.num_layers, enc.num_heads, requires_grad=True)  # float32, on the CPU
    with HeadGates(enc, gates):
        logits = enc.model(**batch).logits
    assert logits.dtype == torch.bfloat16 and logits.device.type == "cuda"
    logits.float().pow(2).sum().backward()
    assert gates.grad is not None and gates.grad.device.type == "cpu"
    assert (gates.grad != 0).any()
