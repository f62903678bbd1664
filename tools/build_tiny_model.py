"""Build the tiny Qwen2 model the demo, end-to-end tests and benchmarks serve with vLLM.

Everything is made locally, offline, in a few seconds, and the same every time:

* a byte-level BPE tokenizer (vocabulary 2048) trained with ``tokenizers`` on lines generated
  from a fixed seed, with the special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``
  and a ChatML chat template, saved as ``PreTrainedTokenizerFast`` files;
* a ``Qwen2ForCausalLM`` config: hidden 128, intermediate 256, 2 layers, 4 attention heads
  (head size 32, the smallest vLLM's CPU attention accepts), 2 KV heads, 512 positions, bf16;
* seeded random weights in ``model.safetensors`` (so ``--load-format dummy`` is not needed and
  every server start computes the same outputs).

Usage::

    python tools/build_tiny_model.py            # prints the model folder (built once, then cached)
    python tools/build_tiny_model.py --out DIR  # build into DIR

The cache folder is ``$OTEL_VLLM_CACHE/models/tiny-qwen2-<hash>`` (default cache
``~/.cache/otel-vllm-ascend``); the hash covers this file and the transformers version, so
editing the builder rebuilds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 20260
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SYLLABLES = (
    "ka ri to ne sa mu lo pe vi da ko shi ta ru me no ha zu gi be ya fu wo se mi "
    "an el or is um ter ven dor pal sin qua lex mon tri fel gor nix"
).split()


def builder_hash() -> str:
    """Cache key of the model: this builder's content and the transformers release that saves
    the files (their bytes differ between releases; each vLLM venv builds its own copy)."""
    from importlib.metadata import version

    key = Path(__file__).read_bytes() + version("transformers").encode()
    return hashlib.sha256(key).hexdigest()[:12]


def default_cache_dir() -> Path:
    root = os.environ.get("OTEL_VLLM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "otel-vllm-ascend")
    return Path(root) / "models" / f"tiny-qwen2-{builder_hash()}"


def make_vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    """Pseudo-words made of syllables: enough distinct pairs for ~1800 BPE merges."""
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def make_corpus(seed: int = SEED, lines: int = 6000) -> list[str]:
    rng = random.Random(seed)
    vocabulary = make_vocabulary(rng)
    corpus = []
    for _ in range(lines):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(4, 24))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        corpus.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return corpus


def build_tokenizer(out: Path) -> int:
    """Train and save the tokenizer; return the id of ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(make_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    _portable_tokenizer_config(out)
    return tokenizer.token_to_id("<|endoftext|>")


def _portable_tokenizer_config(out: Path) -> None:
    """The same files must serve vLLM lines whose transformers is 4.x (0.9-0.11) and 5.x:
    transformers 5 names the class ``TokenizersBackend``, which 4.x cannot load, and may keep
    the chat template in a separate file that 4.x does not read."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_weights(out: Path, vocab_size: int, eos_id: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    # Written explicitly: some transformers versions drop torch_dtype from saved configs.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved["torch_dtype"] = saved.get("torch_dtype") or "bfloat16"
    saved["dtype"] = "bfloat16"
    # transformers 5 moved rope_theta into rope_parameters; 4.x reads only the top-level key.
    saved.setdefault("rope_theta", (saved.get("rope_parameters") or {}).get("rope_theta", 1e6))
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def build(out: Path) -> Path:
    """Build the model into ``out`` (atomically: a half-built folder is never visible)."""
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        eos_id = build_tokenizer(work)
        vocab_size = len(json.loads((work / "tokenizer.json").read_text())["model"]["vocab"])
        build_weights(work, max(vocab_size, VOCAB_SIZE), eos_id)
        (work / "BUILT_BY").write_text(f"tools/build_tiny_model.py {builder_hash()}\n")
        try:
            work.rename(out)
        except OSError:  # another process finished first: use theirs
            if not (out / "config.json").exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out


def ensure_model(out: Path | None = None) -> Path:
    """Return the folder of the tiny model, building it the first time."""
    return build(out or default_cache_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="model folder (default: the shared cache)")
    args = parser.parse_args(argv)
    print(ensure_model(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
