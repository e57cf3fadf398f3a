"""One markdown table from the JSON files bench/gpu writes (argument: that folder)."""
import json, os, sys

folder = sys.argv[1]


def load(name):
    try:
        with open(os.path.join(folder, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


torch = load("torch") or {}
rows = []
adapter = None
for name, dtype, config in (("matmul_f32", "f32", ""), ("matmul_f16", "f16", ""),
                            ("matmul_f32_tile64", "f32", ", PUPIL_MATMUL=tile64"),
                            ("matmul_f16_tile64", "f16", ", PUPIL_MATMUL=tile64")):
    r = load(name)
    if r:
        adapter = r["adapter"]
        for x in r["results"]:
            t = torch.get(f"matmul_{dtype}_{x['n']}")
            rows.append((f"{dtype} matmul {x['n']}{config}", f"{x['ms']:.3f} ms ({x['gflops'] / 1e3:.2f} TFLOP/s)",
                         t and f"{t['ms']:.3f} ms ({t['gflops'] / 1e3:.2f} TFLOP/s)"))
r = load("train_mlp")
if r:
    t = torch.get("train_mlp")
    rows.append((f"MLP 784-{r['hidden']}-{r['hidden']}-10 AdamW step, batch {r['batch']}",
                 f"{r['ms_per_step']:.3f} ms", t and f"{t['ms']:.3f} ms"))
for name in ("embed", "embed_b8"):
    r = load(name)
    if r:
        t = torch.get(f"embed_b{r['batch']}_s{r['seq']}")
        rows.append((f"MiniLM-shape forward {r['batch']} x {r['seq']} ({r['layers']} layers)",
                     f"{r['ms_per_batch']:.3f} ms", t and f"{t['ms']:.3f} ms"))
r = load("train_encoder")
if r:
    t = torch.get(f"train_encoder_b{r['batch']}_s{r['seq']}")
    rows.append((f"MiniLM-shape training step {r['batch']} x {r['seq']}",
                 f"{r['ms_per_step']:.3f} ms", t and f"{t['ms']:.3f} ms"))
for name in ("generate", "generate_f32"):
    r = load(name)
    if r:
        rows.append((f"SmolLM2-135M shape, {r['weights']}: prefill {r['prompt_tokens']} / decode",
                     f"{r['prefill_tokens_per_s']:.0f} / {r['decode_tokens_per_s']:.1f} tokens/s", None))
print(f"adapter: {adapter}; PyTorch: {torch.get('device')} {torch.get('torch', '')}\n")
print("| measure | pupil | PyTorch, same card |\n|---|---|---|")
for what, ours, theirs in rows:
    print(f"| {what} | {ours} | {theirs or '-'} |")
try:
    with open(os.path.join(folder, "op_tests.txt")) as f:
        results = [l for l in f if l.startswith("test result")]
    print(f"\nop tests: {results[-1].strip() if results else 'no result line'}")
except OSError:
    pass
