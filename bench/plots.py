"""PNG plots of the latest bench results (docs/bench/*.json) for docs/benchmarks.md.

    python -m bench.plots

- throughput.png: images/s against batch size, the bare pipeline's sweep with the
  stack's bursts at max_batch 1 and 8 (bench.batching);
- latency.png: p50/p99 API latency per load level (bench.api), and p50/p95 completion
  of a 32-job burst, classic design against Kiln (bench.baseline).

A plot whose numbers are missing is skipped with a note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def throughput(plt: Any, data: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype, rates in data["bare_sweep"].items():
        sweep = {int(b): v for b, v in rates.items()}
        ax.plot(list(sweep), list(sweep.values()), "o-", label=f"bare pipeline, {dtype}")
    best = data["best"]
    ax.plot(
        [1, 8], [best["stack1"], best["stack8"]], "s--", label="through Kiln, fp32 (32-job burst)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sweep), [str(b) for b in sweep])
    ax.set_xlabel("batch size (max_batch)")
    ax.set_ylabel("images / s")
    ax.set_title(f"tiny-sd {data['size']}², {data['steps']} steps, 2-core CPU")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, "throughput.png")


def latency(plt: Any, api: dict[str, Any] | None, baseline: dict[str, Any] | None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if api:
        levels = [k for k in api if k.startswith("POST-")]
        labels = [k.removeprefix("POST-").replace("-paced", "\npaced") for k in levels]
        closed = [i for i, k in enumerate(levels) if not k.endswith("paced")]
        paced = [i for i, k in enumerate(levels) if k.endswith("paced")]
        x = range(len(levels))
        for method, marker in (("POST", "o"), ("GET", "s")):
            for q, style, color in (("p50_ms", "-", "C0"), ("p99_ms", "--", "C1")):
                color = color if method == "POST" else ("C2" if q == "p50_ms" else "C3")
                ys = [api.get(k.replace("POST", method), {}).get(q) for k in levels]
                axes[0].plot(
                    closed,
                    [ys[i] for i in closed],
                    marker + style,
                    color=color,
                    label=f"{method} {q.removesuffix('_ms')}",
                )
                axes[0].plot(paced, [ys[i] for i in paced], marker, color=color)
        axes[0].set_xticks(list(x), labels)
        axes[0].set_yscale("log")
        axes[0].axhline(20, color="grey", lw=0.8, ls=":")
        axes[0].set_xlabel("clients (closed loop unless paced)")
        axes[0].set_ylabel("latency, ms (log)")
        axes[0].set_title("API latency, no worker")
        axes[0].legend(fontsize=8)
    if baseline:
        groups = [
            (dt, name, r)
            for dt, bursts in baseline["results"].items()
            for name, r in bursts.items()
        ]
        width = 0.2
        for i, (design, q) in enumerate(
            [("classic", "p50_s"), ("classic", "p95_s"), ("kiln", "p50_s"), ("kiln", "p95_s")]
        ):
            axes[1].bar(
                [n + (i - 1.5) * width for n in range(len(groups))],
                [r[design][q] for _, _, r in groups],
                width,
                label=f"{design} {q.removesuffix('_s')}",
            )
        axes[1].set_xticks(
            range(len(groups)), [f"{dt}\n{name.split(' (')[0]}" for dt, name, _ in groups]
        )
        axes[1].set_ylabel("completion after submit, s")
        axes[1].set_title(f"burst of {baseline['jobs']} jobs: classic vs Kiln")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, "latency.png")


def save(fig: Any, name: str) -> Path:
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batching, api, baseline = load("batching"), load("api"), load("baseline")
    if batching and "bare_sweep" in batching:
        print("wrote", throughput(plt, batching))
    else:
        print("no batching sweep yet: python -m bench.batching")
    if api or baseline:
        print("wrote", latency(plt, api, baseline))
    else:
        print("no api or baseline results yet: python -m bench.api / bench.baseline")


if __name__ == "__main__":
    main()
