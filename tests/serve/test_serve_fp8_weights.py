"""FP8 weights (TUNEBENCH_WEIGHT_DTYPE=fp8, `tunebench.serve.weights`), on the CPU, where torch emulates
`_scaled_mm` exactly: the layer equals its arithmetic written out, the right layers are replaced, the engine
applies the setting before it sizes the cache and then generates what the quantized model generates, and bad
values and GPUs without FP8 tensor cores are refused with the fix. Whether the GPU's FP8 matmuls are faster is
benchmarks/fp8_matmul.py's job."""

from __future__ import annotations

import copy

import pytest
import torch

from tunebench.errors import SettingError, UserError
from tunebench.serve import weights
from tunebench.serve.offline import offline_engine, run_offline
from tunebench.serve.requests import GenerationRequest
from tunebench.serve.sampling import SamplingParams
from tunebench.serve.weights import FP8, Fp8Linear, quantize_linears, quantized

TEXTS = ["The engine makes a rattling noise", "Plant the tomato seedlings", "Anna: are we still on for lunch?",
         "Solder the resistor to the board", "The rocket reached orbit", "Simmer the onions in butter"]


def test_the_layer_is_its_arithmetic_written_out_and_close_to_the_original():
    """Per-row activation scales, per-output-channel weight scales, the bias after the matmul: exactly that on the
    CPU; within a few percent of the unquantized layer (3 mantissa bits; measured ~3.5%), and not trivially so."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = Fp8Linear(linear)
    assert layer.weight.dtype == FP8 and layer.weight_scale.shape == (1, 48)
    assert not list(layer.parameters())  # buffers: a model's dtype is read from its parameters
    x = torch.randn(3, 5, 64)
    x[0, 0, 0] = 1e4  # one outlier row: its own scale, the other rows unaffected
    with torch.no_grad():
        got, exact = layer(x), linear(x)
        q, scale = quantized(x.reshape(-1, 64))
        written_out = (q.float() * scale) @ (layer.weight.float() * layer.weight_scale.reshape(-1, 1)).T + linear.bias
    assert got.shape == (3, 5, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, written_out.reshape(3, 5, 48), rtol=0, atol=0)
    relative = ((got - exact).norm() / exact.norm()).item()
    assert 0.005 < relative < 0.06
    rest = ((got[1:] - exact[1:]).norm() / exact[1:].norm()).item()
    assert rest < 0.06


def test_a_layer_without_bias_and_a_bfloat16_layer():
    linear = torch.nn.Linear(32, 16, bias=False, dtype=torch.bfloat16)
    layer = Fp8Linear(linear)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x)
    assert layer.bias is None and got.dtype == torch.bfloat16
    assert ((got.float() - linear(x).float()).norm() / linear(x).float().norm()).item() < 0.06


@pytest.mark.parametrize("fixture", ["neox", "llama"])
def test_every_projection_is_replaced_but_the_lm_head(fixture, request):
    model = copy.deepcopy(request.getfixturevalue(fixture).model)
    linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    counts = quantize_linears(model)
    replaced = [n for n, m in model.named_modules() if isinstance(m, Fp8Linear)]
    assert counts == {"fp8": len(linears) - 1, "kept": 0} and len(replaced) == len(linears) - 1
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    assert model.dtype == torch.float32  # read from the embeddings, as before


def test_lora_matrices_and_odd_shapes_keep_their_dtype(neox):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(neox.model), LoraConfig(r=4, target_modules=["query_key_value"]))
    model.base_model.model.extra = torch.nn.Linear(24, 40)  # 24: not a multiple of 16 (unused by forward)
    counts = quantize_linears(model)
    names = {n: type(m) for n, m in model.named_modules()}
    assert counts["kept"] == 1 and type(model.base_model.model.extra) is torch.nn.Linear
    assert all(t is torch.nn.Linear for n, t in names.items() if ".lora_A." in n or ".lora_B." in n)
    assert any(n.endswith("query_key_value.base_layer") and t is Fp8Linear for n, t in names.items())
    with torch.inference_mode():  # peft's layer runs the FP8 base and its bf16/fp32 matrices
        model(input_ids=torch.tensor([[5, 6, 7]]))


def run(model, tok, monkeypatch, setting: str):
    monkeypatch.setenv("TUNEBENCH_WEIGHT_DTYPE", setting)
    engine = offline_engine(model, tok, longest=96, slots=4)
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=12, ignore_eos=True))
                for t in TEXTS]
    completions = run_offline(engine, requests)
    return engine, [[(t.id, round(t.logprob, 5)) for t in c.tokens] for c in completions]


@pytest.mark.parametrize("fixture", ["neox", "llama"])
def test_the_engine_quantizes_before_sizing_and_generates_what_the_quantized_model_does(fixture, request,
                                                                                        monkeypatch):
    """4 slots for 6 prompts: rows join, leave and move. The engine with the setting equals the engine on a model
    quantized beforehand (so it is applied, once, to every layer it names), and differs from the fp32 engine."""
    served = request.getfixturevalue(fixture)
    engine, fp8 = run(copy.deepcopy(served.model), served.tokenizer, monkeypatch, "fp8")
    assert engine.weight_dtype == "fp8" and any(isinstance(m, Fp8Linear) for m in engine.model.modules())
    prepared = copy.deepcopy(served.model)
    quantize_linears(prepared)
    _, expected = run(prepared, served.tokenizer, monkeypatch, "auto")
    _, plain = run(served.model, served.tokenizer, monkeypatch, "auto")
    assert fp8 == expected
    assert fp8 != plain
    assert not any(isinstance(m, Fp8Linear) for m in served.model.modules())  # "auto" changes nothing


def test_bad_values_and_gpus_without_fp8_are_refused_with_the_fix(neox, monkeypatch):
    monkeypatch.delenv("TUNEBENCH_WEIGHT_DTYPE", raising=False)
    assert weights.weight_dtype() == "auto"
    monkeypatch.setenv("TUNEBENCH_WEIGHT_DTYPE", " FP8 ")
    assert weights.weight_dtype() == "fp8"
    monkeypatch.setenv("TUNEBENCH_WEIGHT_DTYPE", "int4")
    with pytest.raises(SettingError, match=r"TUNEBENCH_WEIGHT_DTYPE='int4'; allowed: auto, fp8") as bad:
        offline_engine(copy.deepcopy(neox.model), neox.tokenizer, longest=16, slots=1)
    assert "unset TUNEBENCH_WEIGHT_DTYPE" in bad.value.fix
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(UserError, match=r"compute capability 8.9 or newer .* A100-SXM4-80GB has 8.0") as old:
        weights.check_device(torch.device("cuda"))
    assert "unset TUNEBENCH_WEIGHT_DTYPE" in old.value.fix
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (9, 0))
    weights.check_device(torch.device("cuda"))  # an H100 passes
