"""TiTok's released single-stage VQ tokenizers as vistok ``vit1d`` tokenizers.

Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation", arXiv 2406.07550;
github.com/bytedance/1d-tokenizer (modeling/titok.py, modeling/modules/blocks.py).

    python -m vistok.convert.titok --ckpt tokenizer_titok_bl64_vq8k.bin --out runs/titok_bl64_vq8k

Which releases load: those with ``is_legacy: False, finetune_decoder: False, quantize_mode: vq`` —
``titok_bl64_vq8k``, ``titok_bl128_vq8k``, ``titok_sl256_vq8k`` (ViT encoder → 1×1 conv → VQ; ViT decoder → 1×1 conv
to p·p·3 values per patch → 3×3 conv), which is vistok's ``vit1d`` with ``prefix: none``. The paper's TiTok-L-32,
B-64 and S-128 checkpoints do not, and the converter says so: their decoder (``is_legacy``) predicts logits over
the 1,024 codes of MaskGIT's VQGAN and decodes them with that VQGAN's conv decoder (``pixel_quantize``,
``pixel_decoder``), a second stage ``vit1d`` does not have; and their encoder reinterprets the (tokens × width)
output as (width × tokens) before the 1×1 conv (a reshape, not a transpose), which mixes positions into channels.
The VAE releases (``quantize_mode: vae``) have no codebook. See docs/interop.md.

The architecture is read off the tensors; the attention head count, which no tensor shape carries, is TiTok's for
the width (512 → 8, 768 → 12, 1024 → 16) unless given. TiTok takes and returns images in [0, 1], vistok in
[−1, 1]: the conversion folds x ↦ (x + 1)/2 into the patch embedding and y ↦ 2y − 1 into the last conv (both
exact). Key map: ``transformer.{i}.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`` →
``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``; ``class_embedding`` → ``cls_token``;
``positional_embedding`` → ``pos_embed``; ``latent_token_positional_embedding`` → ``latent_pos_embed``;
``latent_tokens`` → ``encoder.latent_tokens``; ``encoder.conv_out`` → ``quant_proj``; ``decoder.decoder_embed`` →
``post_quant_proj``; ``decoder.ffn.0`` → ``decoder.pixel_head``; ``quantize.embedding`` → ``quantizer.codebook``.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import torch

from vistok.convert.common import KeyMap, converter_parser, read_state_dict, save_converted
from vistok.errors import CheckpointError

TITOK_HEADS = {512: 8, 768: 12, 1024: 16}  # TiTok's small / base / large
BLOCK_NAMES = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
               "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _why_not(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith(("pixel_decoder.", "pixel_quantize.")) for k in state) or "decoder.ffn.2.weight" in state:
        return ("a two-stage (is_legacy) TiTok: its decoder predicts MaskGIT-VQGAN codes and decodes them with "
                "MaskGIT's VQGAN decoder, which vit1d does not have; the single-stage releases titok_bl64_vq8k, "
                "titok_bl128_vq8k and titok_sl256_vq8k convert")
    if "quantize.embedding.weight" not in state and "encoder.conv_out.weight" in state:
        return "a TiTok VAE (quantize_mode: vae): no codebook to map onto a vit1d quantizer"
    if "encoder.patch_embed.weight" not in state or "decoder.ffn.0.weight" not in state:
        return "not a TiTok tokenizer state dict (no encoder.patch_embed / decoder.ffn.0)"
    return None


def architecture(state: dict[str, torch.Tensor], heads: tuple[int, int] | None = None) -> dict[str, Any]:
    """The ``vit1d`` options of a single-stage TiTok VQ state dict (see the module docstring for heads)."""
    if (reason := _why_not(state)) is not None:
        raise CheckpointError(f"cannot convert: this is {reason}")
    patch = state["encoder.patch_embed.weight"].shape[-1]
    grid = round((state["encoder.positional_embedding"].shape[0] - 1) ** 0.5)
    num_tokens, enc_width = state["latent_tokens"].shape
    dec_width = state["decoder.decoder_embed.weight"].shape[0]
    codebook_size, code_dim = state["quantize.embedding.weight"].shape
    if heads is None:
        if enc_width not in TITOK_HEADS or dec_width not in TITOK_HEADS:
            raise CheckpointError(f"widths {enc_width}/{dec_width} are not TiTok's small/base/large; give the "
                                  "attention head counts explicitly (--heads ENC DEC)")
        heads = (TITOK_HEADS[enc_width], TITOK_HEADS[dec_width])
    sizes = []
    for net, width, h in (("encoder", enc_width, heads[0]), ("decoder", dec_width, heads[1])):
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(rf"{net}\.transformer\.(\d+)\.", k)))
        sizes.append(_size_name({"width": width, "depth": depth, "heads": h}))
    return {"resolution": grid * patch, "patch_size": patch, "num_tokens": num_tokens, "encoder_size": sizes[0],
            "decoder_size": sizes[1], "prefix": {"name": "none"},
            # TiTok's quantizer: Euclidean nearest code, on l2-normalized vectors when use_l2_norm (the
            # single-stage releases: off); no tensor records it, so it is an argument
            "quantizer": {"name": "vq", "codebook_size": codebook_size, "code_dim": code_dim, "l2_norm": False}}


def _size_name(size: dict[str, int]) -> str | dict[str, int]:
    from vistok.tokenizers.vit1d import VIT_SIZES

    return next((name for name, s in VIT_SIZES.items() if s == size), size)


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TiTok keys → vistok ViT1DTokenizer keys (every tensor used once), with the [0, 1] ↔ [−1, 1] folds."""
    keys = KeyMap(state, "TiTok")
    out, take = keys.out, keys.take
    for net in ("encoder", "decoder"):
        out[f"{net}.cls_token"] = take(f"{net}.class_embedding")[None]
        out[f"{net}.pos_embed"] = take(f"{net}.positional_embedding")[None]
        out[f"{net}.latent_pos_embed"] = take(f"{net}.latent_token_positional_embedding")[None]
        for ln in ("ln_pre", "ln_post"):
            for p in ("weight", "bias"):
                out[f"{net}.{ln}.{p}"] = take(f"{net}.{ln}.{p}")
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{net}\.transformer\.(\d+)\.", k))}
        for i in sorted(blocks):
            for src, dst in BLOCK_NAMES.items():
                if src.endswith(("_weight", "_bias")):
                    out[f"{net}.blocks.{i}.{dst}"] = take(f"{net}.transformer.{i}.{src}")
                else:
                    for p in ("weight", "bias"):
                        out[f"{net}.blocks.{i}.{dst}.{p}"] = take(f"{net}.transformer.{i}.{src}.{p}")
    out["encoder.latent_tokens"] = take("latent_tokens")[None]
    # TiTok's encoder reads x' = (x + 1) / 2: W·x' + b = (W/2)·x + (b + Σ W/2); no padding, so exact
    w, b = take("encoder.patch_embed.weight"), take("encoder.patch_embed.bias")
    out["encoder.patch_embed.weight"], out["encoder.patch_embed.bias"] = w / 2, b + w.sum(dim=(1, 2, 3)) / 2
    out["decoder.mask_token"] = take("decoder.mask_token")
    out["quant_proj.weight"] = take("encoder.conv_out.weight").flatten(1)
    out["quant_proj.bias"] = take("encoder.conv_out.bias")
    out["post_quant_proj.weight"] = take("decoder.decoder_embed.weight")
    out["post_quant_proj.bias"] = take("decoder.decoder_embed.bias")
    out["decoder.pixel_head.weight"] = take("decoder.ffn.0.weight").flatten(1)
    out["decoder.pixel_head.bias"] = take("decoder.ffn.0.bias")
    # ... and returns y' in [0, 1]; vistok wants 2y' − 1: scale the last conv by 2 (its zero padding scales too)
    out["decoder.conv_out.weight"] = 2 * take("decoder.conv_out.weight")
    out["decoder.conv_out.bias"] = 2 * take("decoder.conv_out.bias") - 1
    out["quantizer.codebook.weight"] = take("quantize.embedding.weight")
    return keys.finish()


def convert(state: dict[str, torch.Tensor], heads: tuple[int, int] | None = None, l2_norm: bool = False):
    """A vistok ``vit1d`` tokenizer holding a single-stage TiTok VQ state dict (loaded strictly)."""
    import vistok
    from vistok.hub import load_state_dict_strict

    options = architecture(state, heads)
    options["quantizer"]["l2_norm"] = l2_norm
    tokenizer = vistok.build("tokenizer", {"name": "vit1d", **options})
    load_state_dict_strict(tokenizer, convert_state_dict(state), source="the converted TiTok checkpoint")
    return tokenizer.eval()


def main(argv: list[str] | None = None) -> int:
    p = converter_parser("titok", __doc__, "TiTok tokenizer weights (.bin, .safetensors or a hub snapshot)")
    p.add_argument("--heads", type=int, nargs=2, metavar=("ENC", "DEC"), default=None,
                   help="attention heads (default: TiTok's for the width)")
    p.add_argument("--l2-norm", action="store_true", help="the checkpoint was trained with use_l2_norm: True")
    args = p.parse_args(argv)

    def run() -> Any:
        state = read_state_dict(args.ckpt, "TiTok (huggingface.co/yucornetto/tokenizer_titok_bl64_vq8k_imagenet "
                                "and siblings)")
        return convert(state, tuple(args.heads) if args.heads else None, args.l2_norm)

    return save_converted("titok", run, args.out, _describe)


def _describe(tokenizer: Any) -> str:
    spec = tokenizer.token_spec
    return (f"vit1d, {sum(p.numel() for p in tokenizer.parameters()) / 1e6:.1f}M parameters, "
            f"{spec.length} tokens of a {spec.vocab_sizes[0]}-code vocabulary at {tokenizer.resolution}px")


if __name__ == "__main__":
    sys.exit(main())
