"""Plots from the device runs (docs/bench-logs):

    python bench/plot_benchmarks.py DIT_JSON OUT_PNG
        s/image (20 steps, DiT only: 20 x s/step) against peak VRAM (issue 5's run final2-dit);
    python bench/plot_benchmarks.py --fast OUT_PNG PROBE_JSONL...
        issue 13's compute recipes: DiT s/step at batch 1 of every recipe bench/step_probe.py measured (fin1, fin2),
        with and without CUDA graphs, anchors in grey; each bar names its run (the log's name up to its first "-").
"""
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(dit_json: str, out_png: str) -> None:
    rows = [r for r in json.load(open(dit_json)) if r.get("batch") == 1 and "s_per_step" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = sorted((r["peak_gib"], 20 * r["s_per_step"]) for r in rows if r["recipe"] == "dit:fluxbot-streamed")
    ax.plot(*zip(*curve), "o-", label="fluxbot streamed, vram_budget_gib 0..16")
    for r in rows:
        if r["recipe"] != "dit:fluxbot-streamed":
            ax.plot(r["peak_gib"], 20 * r["s_per_step"], "s", label=r["recipe"])
    ax.set_xlabel("peak VRAM allocated (GiB), DiT phase, 1024², batch 1")
    ax.set_ylabel("DiT seconds per image (20 steps)")
    ax.set_title("FLUX.1-dev DiT (fp8 all-linear), H100 80GB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def fast(out_png: str, *probe_jsonl: str) -> None:
    rows = [dict(json.loads(line), run=os.path.basename(path).split("-")[0]) for path in probe_jsonl for line in open(path)]
    bars = []
    for r in rows:
        if r.get("batch") != 1 or r.get("part") not in ("steps", "graphs"):
            continue
        anchor = r["recipe"] in ("torchao", "weights-bf16")
        name = {"torchao": "torchao fp8 + compile (anchor)",
                "weights-bf16": "diffusers bf16 + compile (anchor)"}.get(r["recipe"], f"fluxbot {r['recipe']}")
        if r["part"] == "graphs":
            name += " + CUDA graphs"
        name += f" ({r['run']})"
        bars.append((r["s_per_step"], name, anchor))
    bars.sort(reverse=True)
    fig, ax = plt.subplots(figsize=(9.5, 0.45 * len(bars) + 1.4))
    ax.barh([b[1] for b in bars], [b[0] for b in bars], color=["0.6" if b[2] else "tab:blue" for b in bars])
    for y, (value, _, _) in enumerate(bars):
        ax.text(value, y, f" {value:.4f}", va="center", fontsize=8)
    ax.axvline(0.095, color="tab:red", lw=1, ls="--", label="issue 13 target 0.095 (fp8)")
    ax.axvline(0.13, color="tab:orange", lw=1, ls=":", label="issue 13 target 0.13 (bf16 compute)")
    ax.set_xlabel("DiT seconds per step, 1024², batch 1 (median of synced steps)")
    runs = sorted({r["run"] for r in rows})
    ax.set_title(f"FLUX.1-dev DiT compute recipes, H200 (runs {', '.join(runs)})")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlim(0, max(b[0] for b in bars) * 1.75)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


if __name__ == "__main__":
    if sys.argv[1] == "--fast":
        fast(sys.argv[2], *sys.argv[3:])
    else:
        main(sys.argv[1], sys.argv[2])
