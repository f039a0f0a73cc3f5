"""Shared transformer layers (Llama style, no biases): RMSNorm, SwiGLU, 1D/2D RoPE, causal attention, the block."""

from vistok.layers.attention import CausalSelfAttention
from vistok.layers.block import TransformerBlock
from vistok.layers.mlp import SwiGLU, swiglu_hidden_dim
from vistok.layers.norm import RMSNorm
from vistok.layers.rope import RoPE, apply_rope

__all__ = ["CausalSelfAttention", "RMSNorm", "RoPE", "SwiGLU", "TransformerBlock", "apply_rope", "swiglu_hidden_dim"]
