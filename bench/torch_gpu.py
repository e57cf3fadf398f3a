"""PyTorch on the GPU at the shapes of `pupil bench` (bench/gpu runs it): one JSON object.

Matmul with TF32 off (pupil's f32 kernels round like f32), the MLP AdamW step, the
MiniLM-shaped encoder forward and training step, each timed with CUDA events."""
import json, sys
import torch
import torch.nn as nn

quick = "--quick" in sys.argv
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)


def ms(f, warm=3, reps=20):
    """Median milliseconds of f(), synchronised."""
    for _ in range(warm):
        f()
    times = []
    for _ in range(reps):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); f(); e.record(); torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            import time
            t = time.perf_counter(); f(); times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
for dtype, name in ((torch.float32, "f32"), (torch.float16, "f16")):
    for n in ((64, 129) if quick else (1024, 4096)):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        t = ms(lambda: a @ b)
        out[f"matmul_{name}_{n}"] = {"ms": t, "gflops": 2 * n**3 / t / 1e6}

batch, hidden = (16, 64) if quick else (512, 1024)
mlp = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                    nn.Linear(hidden, 10)).to(dev)
opt = torch.optim.AdamW(mlp.parameters(), 1e-3)
x = torch.randn(batch, 784, device=dev)
y = torch.randint(0, 10, (batch,), device=dev)


def mlp_step():
    opt.zero_grad()
    nn.functional.cross_entropy(mlp(x), y).backward()
    opt.step()


out["train_mlp"] = {"ms": ms(mlp_step), "batch": batch, "hidden": hidden}

layers = 1 if quick else 6
layer = nn.TransformerEncoderLayer(384, 12, 1536, dropout=0.0, activation="gelu",
                                   batch_first=True, norm_first=False)
enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(dev)
emb = nn.Embedding(30522, 384).to(dev)
for (B, S) in ((2, 8),) if quick else ((32, 128), (8, 64)):
    ids = torch.randint(0, 30522, (B, S), device=dev)
    enc.eval()
    with torch.inference_mode():
        t = ms(lambda: enc(emb(ids)).mean(1))
    out[f"embed_b{B}_s{S}"] = {"ms": t, "sentences_per_s": B / t * 1e3}
B, S = (2, 8) if quick else (8, 64)
enc.train()
eopt = torch.optim.AdamW(list(enc.parameters()) + list(emb.parameters()), 1e-4)
ids = torch.randint(0, 30522, (B, S), device=dev)
labels = torch.randint(0, 384, (B,), device=dev)


def enc_step():
    eopt.zero_grad()
    nn.functional.cross_entropy(enc(emb(ids)).mean(1), labels).backward()
    eopt.step()


out[f"train_encoder_b{B}_s{S}"] = {"ms": ms(enc_step, 3, 10)}
print(json.dumps(out, indent=1))
