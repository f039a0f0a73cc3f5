"""Ask an MLLM about an image, in text:

    python -m vistok.mllm.chat --model runs/mllm_vocab_shapes32 --image a.png "what is in this picture?"

The image is center-cropped and resized to the tokenizer's resolution (the ADM crop the data pipeline uses),
tokenized, and the LLM answers (greedy unless --temperature > 0). Without --image the question goes to the LLM as
plain chat.
"""

from __future__ import annotations

import argparse
import sys

from vistok.cli.common import add_device_option
from vistok.errors import VistokError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an MLLM folder (save_pretrained / a finished mllm run)")
    p.add_argument("--image", action="append", default=[], help="an image file; repeat to ask about several")
    p.add_argument("question", help="the question, e.g. 'what is in this picture?'")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=0)
    add_device_option(p)
    args = p.parse_args(argv)
    if not args.question.strip():
        print("chat: error: the question is empty; ask something, e.g. 'what is in this picture?'", file=sys.stderr)
        return 2
    try:
        import torch

        from vistok.data.imageio import center_crop_resize, load_rgb, pil_to_tensor
        from vistok.mllm.sample import is_mllm_folder, load_mllm
        from vistok.training.loop import pick_device

        if not is_mllm_folder(args.model):
            raise VistokError(f"--model {args.model}: not an MLLM folder (no config.json of kind 'mllm')")
        model = load_mllm(args.model, pick_device(args.device))
        sample = {"do_sample": args.temperature > 0, "temperature": args.temperature or 1.0, "seed": args.seed}
        if not args.image:
            print(model.chat_text(args.question, max_new_tokens=args.max_new_tokens, **sample))
            return 0
        res = model.image_tokenizer.resolution
        images = torch.stack([pil_to_tensor(center_crop_resize(load_rgb(path), res)) for path in args.image])
        for path, answer in zip(args.image, model.answer(images, args.question, max_new_tokens=args.max_new_tokens,
                                                           **sample)):
            print(f"{path}: {answer}" if len(args.image) > 1 else answer)
    except (VistokError, ValueError, OSError) as e:
        print(f"chat: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
