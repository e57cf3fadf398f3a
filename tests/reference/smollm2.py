#!/usr/bin/env python3
"""Reference greedy generations of SmolLM2-135M-Instruct for tests/smollm2.rs.

Loads the same Q4_1 GGUF that pupil converts with transformers (which dequantizes it to
fp32), and for each prompt writes the prompt's token ids, the 30 greedy new token ids (no
stop at end-of-text), the top-5 logits (ids and values) at the prompt's last position, and
the top-5 logits at the last position after the 30 new tokens (the step that would give
token 31) to tests/reference/smollm2.json.

With an argument KIND (Q4_K_M, Q5_K_M or Q6_K) it does the same for the llama.cpp
requantization `models/fetch kquants` makes, writing tests/reference/smollm2-KIND.json.

Setup (PyPI; a few GB):
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch transformers gguf accelerate
    models/fetch smollm2 kquants
    HF_HUB_OFFLINE=1 /tmp/refenv/bin/python tests/reference/smollm2.py [KIND]

The model is read from the pupil cache (${PUPIL_CACHE:-~/.cache/pupil}/smollm2, or
kquants); nothing is downloaded.
"""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 30
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n",
]


def top5(logits):
    values, ids = torch.topk(logits, 5)
    return {"ids": ids.tolist(), "values": [float(v) for v in values]}


def main():
    cache = Path(os.environ.get("PUPIL_CACHE", Path.home() / ".cache" / "pupil"))
    kind = sys.argv[1] if len(sys.argv) > 1 else None
    folder = cache / ("kquants" if kind else "smollm2")
    gguf = f"SmolLM2-135M-Instruct.{kind}.gguf" if kind else GGUF
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf, dtype=torch.float32
    )
    model.eval()
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = list(prompt_ids)
            first = None
            for _ in range(NEW_TOKENS):
                logits = model(torch.tensor([ids])).logits[0, -1]
                if first is None:
                    first = top5(logits)
                ids.append(int(torch.argmax(logits)))
            last = top5(model(torch.tensor([ids])).logits[0, -1])
            out.append(
                {
                    "prompt": prompt,
                    "prompt_ids": prompt_ids,
                    "greedy_ids": ids[len(prompt_ids):],
                    "prompt_top5": first,
                    "final_top5": last,
                    "text": tokenizer.decode(ids[len(prompt_ids):]),
                }
            )
            print(repr(prompt), "->", repr(out[-1]["text"]))
    name = f"smollm2-{kind.lower()}.json" if kind else "smollm2.json"
    path = Path(__file__).with_name(name)
    path.write_text(json.dumps({"model": gguf, "prompts": out}, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
