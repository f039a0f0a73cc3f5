"""LlamaGen's released VQ tokenizers (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt``) as vistok ``conv2d`` tokenizers.

Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation", arXiv 2406.06525;
github.com/FoundationVision/LlamaGen (tokenizer/tokenizer_image/vq_model.py).

    python -m vistok.convert.llamagen --ckpt vq_ds16_c2i.pt --out runs/llamagen_vq16
    python eval/rfid.py --tokenizer runs/llamagen_vq16 --data /data/imagenet/val --resolution 256 --out m.json

The architecture is read off the checkpoint (channels, channel mults, residual blocks per level, z channels,
codebook size and dimension) and built as ``conv2d`` with ``level_attention`` and ``asymmetric_downsample`` on
(for the two releases: ``size: llamagen_f16`` / ``llamagen_f8``) and an l2-normalized ``vq`` quantizer. Key map:

    LlamaGen                                          vistok
    encoder.conv_blocks.{l}.res.{i}.nin_shortcut      encoder.down.{n}.shortcut      (n: position in the
    encoder.conv_blocks.{l}.attn.{i}.{q,k,v}          encoder.down.{n}.qkv             flat block list)
    encoder.conv_blocks.{l}.attn.{i}.proj_out         encoder.down.{n}.proj
    encoder.conv_blocks.{l}.downsample.conv           encoder.down.{n}
    decoder.conv_blocks.{j}.upsample.conv             decoder.up.{n}                 (j = L − 1 − level)
    {encoder,decoder}.mid.{0,1,2}                     {encoder,decoder}.mid.{0,1,2}
    quant_conv / post_quant_conv                      quant_proj / post_quant_proj
    quantize.embedding.weight                         quantizer.codebook.weight

q, k and v (1×1 convs) are concatenated into vistok's one qkv conv, in that order. LlamaGen's
``quantize.codebook_used`` (a training-time ring buffer of recent indices, not a weight) is the one key dropped.
The checkpoint's ``ema`` weights are used when present, else ``model``, else ``state_dict`` (LlamaGen's own
evaluation scripts choose in the same order).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vistok.convert.common import KeyMap, converter_parser, read_state_dict, save_converted
from vistok.errors import CheckpointError

DROPPED = ("quantize.codebook_used",)
RES_NAMES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "shortcut"}


def _module_pairs(channel_mult: list[int], num_res_blocks: int) -> Iterator[tuple[str, str, str]]:
    """(LlamaGen module, vistok module, kind) for every module with weights, kind in conv | norm | res | attn."""
    levels = len(channel_mult)
    for net in ("encoder", "decoder"):
        yield f"{net}.conv_in", f"{net}.conv_in", "conv"
        for i, kind in enumerate(("res", "attn", "res")):
            yield f"{net}.mid.{i}", f"{net}.mid.{i}", kind
        yield f"{net}.norm_out", f"{net}.norm_out", "norm"
        yield f"{net}.conv_out", f"{net}.conv_out", "conv"
    n = 0  # the encoder's flat block list: res (+ attn at the last level) per block, then the downsampling conv
    for level in range(levels):
        for i in range(num_res_blocks):
            yield f"encoder.conv_blocks.{level}.res.{i}", f"encoder.down.{n}", "res"
            n += 1
            if level == levels - 1:
                yield f"encoder.conv_blocks.{level}.attn.{i}", f"encoder.down.{n}", "attn"
                n += 1
        if level != levels - 1:
            yield f"encoder.conv_blocks.{level}.downsample.conv", f"encoder.down.{n}", "conv"
            n += 1
    n = 0  # the decoder's: res (+ attn at the lowest resolution) per block, then Upsample (no weights) and its conv
    for j, level in enumerate(reversed(range(levels))):
        for i in range(num_res_blocks + 1):
            yield f"decoder.conv_blocks.{j}.res.{i}", f"decoder.up.{n}", "res"
            n += 1
            if level == levels - 1:
                yield f"decoder.conv_blocks.{j}.attn.{i}", f"decoder.up.{n}", "attn"
                n += 1
        if level != 0:
            yield f"decoder.conv_blocks.{j}.upsample.conv", f"decoder.up.{n + 1}", "conv"
            n += 2
    yield "quant_conv", "quant_proj", "conv"
    yield "post_quant_conv", "post_quant_proj", "conv"


def architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ``conv2d`` options a LlamaGen VQ state dict was trained with, read off its tensor shapes."""
    try:
        channels = state["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k)))
        num_res_blocks = 1 + max(int(m.group(1)) for k in state
                                 if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k)))
        mult = [state[f"encoder.conv_blocks.{lv}.res.0.conv1.weight"].shape[0] // channels for lv in range(levels)]
        codebook_size, code_dim = state["quantize.embedding.weight"].shape
        z_channels = state["encoder.conv_out.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a LlamaGen VQ state dict (no {e}); expected the keys of "
                              "tokenizer/tokenizer_image/vq_model.py's VQModel") from e
    return {"channels": channels, "channel_mult": mult, "num_res_blocks": num_res_blocks, "z_channels": z_channels,
            "mid_attention": True, "level_attention": True, "asymmetric_downsample": True,
            "quantizer": {"name": "vq", "codebook_size": codebook_size, "code_dim": code_dim, "l2_norm": True}}


def convert_state_dict(state: dict[str, torch.Tensor], channel_mult: list[int],
                       num_res_blocks: int) -> dict[str, torch.Tensor]:
    """LlamaGen VQModel keys → vistok ConvTokenizer keys; every LlamaGen tensor but :data:`DROPPED` is used once."""
    keys = KeyMap(state, "LlamaGen", DROPPED)
    out, take = keys.out, keys.take
    for src, dst, kind in _module_pairs(channel_mult, num_res_blocks):
        if kind in ("conv", "norm"):
            for p in ("weight", "bias"):
                out[f"{dst}.{p}"] = take(f"{src}.{p}")
        elif kind == "res":
            for name, new in RES_NAMES.items():
                if name == "nin_shortcut" and f"{src}.nin_shortcut.weight" not in state:
                    continue  # equal in/out channels: identity shortcut in both
                for p in ("weight", "bias"):
                    out[f"{dst}.{new}.{p}"] = take(f"{src}.{name}.{p}")
        else:  # attn
            for p in ("weight", "bias"):
                out[f"{dst}.norm.{p}"] = take(f"{src}.norm.{p}")
                out[f"{dst}.qkv.{p}"] = torch.cat([take(f"{src}.{x}.{p}") for x in "qkv"], dim=0)
                out[f"{dst}.proj.{p}"] = take(f"{src}.proj_out.{p}")
    out["quantizer.codebook.weight"] = take("quantize.embedding.weight")
    return keys.finish()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a LlamaGen training checkpoint (``ema`` > ``model`` > ``state_dict``) or of a bare state
    dict, read without unpickling code (see :func:`vistok.convert.common.read_state_dict`)."""
    return read_state_dict(path, "LlamaGen VQ (vq_ds16_c2i.pt or vq_ds8_c2i.pt, huggingface.co/FoundationVision/"
                           "LlamaGen)", containers=("ema", "model", "state_dict"))


def convert(state: dict[str, torch.Tensor], resolution: int = 256):
    """A vistok ``conv2d`` tokenizer holding a LlamaGen VQ state dict (loaded strictly)."""
    import vistok
    from vistok.hub import load_state_dict_strict
    from vistok.tokenizers.conv2d import CONV_SIZES

    options = architecture(state)
    arch = {k: v for k, v in options.items() if k != "quantizer"}
    size = next((name for name, preset in CONV_SIZES.items() if preset == arch), None)
    cfg = {"name": "conv2d", "resolution": resolution, "quantizer": options["quantizer"]}
    cfg.update({"size": size} if size else arch)
    tokenizer = vistok.build("tokenizer", cfg)
    converted = convert_state_dict(state, options["channel_mult"], options["num_res_blocks"])
    load_state_dict_strict(tokenizer, converted, source="the converted LlamaGen checkpoint")
    return tokenizer.eval()


def main(argv: list[str] | None = None) -> int:
    p = converter_parser("llamagen", __doc__, "LlamaGen VQ checkpoint (vq_ds16_c2i.pt, vq_ds8_c2i.pt)")
    p.add_argument("--resolution", type=int, default=256, help="image side the tokenizer takes (default 256)")
    args = p.parse_args(argv)
    return save_converted("llamagen", lambda: convert(read_checkpoint(args.ckpt), args.resolution), args.out,
                          _describe)


def _describe(tokenizer: Any) -> str:
    spec = tokenizer.token_spec
    params = sum(p.numel() for p in tokenizer.parameters())
    return (f"conv2d {tokenizer._hub_mixin_config.get('size') or 'custom'}, {params / 1e6:.1f}M parameters, "
            f"{spec.grid[0]}×{spec.grid[1]} tokens of a {spec.vocab_sizes[0]}-code vocabulary")


if __name__ == "__main__":
    sys.exit(main())
