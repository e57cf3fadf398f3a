#!/usr/bin/env python3
"""Reference privacy figures from Google's dp-accounting (PyPI `dp-accounting==0.6.0`) for
pupil's RDP accountant (runtime/pupil-sync/src/dp/rdp.rs): for each case, the RDP of a
Poisson-sampled Gaussian mechanism composed `steps` times at dp-accounting's default orders,
and ε at δ with the order that gives it. Tested by runtime/pupil-sync/tests/dp.rs. Writes tests/reference/dp_epsilon.json.

    python3 -m venv /tmp/dp && /tmp/dp/bin/pip install dp-accounting==0.6.0
    /tmp/dp/bin/python tests/reference/dp_epsilon.py
"""
import json
import math
import os

import dp_accounting
from dp_accounting import rdp

# (sampling rate q, noise multiplier z, steps, delta): DP-SGD-like, DP-FedAvg-like
# (q = 0.1 of 100 devices, 100 rounds), unsampled, and extreme ones.
CASES = [
    (0.01, 1.1, 1000, 1e-5),
    (0.1, 1.0, 100, 1e-5),
    (0.05, 0.8, 50, 1e-6),
    (1.0, 5.0, 10, 1e-5),
    (0.25, 2.0, 30, 1e-3),
    (0.001, 0.6, 10000, 1e-5),
    (0.5, 0.3, 5, 1e-5),
]

out = []
for q, z, steps, delta in CASES:
    acc = rdp.RdpAccountant()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    acc.compose(event)
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    out.append(
        {
            "q": q,
            "noise": z,
            "steps": steps,
            "delta": delta,
            "epsilon": eps,
            "order": float(order),
            "orders": [float(o) for o in acc.orders],
            # JSON has no infinity: an order whose series diverges is null.
            "rdp": [float(r) if math.isfinite(r) else None for r in acc.rdp],
        }
    )

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dp_epsilon.json")
with open(path, "w") as f:
    json.dump({"dp_accounting": "0.6.0", "cases": out}, f, indent=1)
print(f"wrote {path}: {len(out)} cases")
