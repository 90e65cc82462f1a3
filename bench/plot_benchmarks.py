"""Plot s/image (20 steps, DiT only: 20 x s/step) vs peak VRAM from the device JSON (docs/bench-logs)."""
import json
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
