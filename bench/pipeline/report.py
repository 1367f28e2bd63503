"""The chart of a benchmark result: throughput, latency, memory, against the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, latency, memory) = plt.subplots(1, 3, figsize=(16, 5))
    stream = result["stream"]
    fig.suptitle(
        f"popsync bench: {stream['events']:,} events (seed {stream['seed']}), "
        f"{result['machine']['cpus']} CPUs, {result['date']}"
    )

    speeds = result["events_per_second"]
    names = list(speeds)
    bars = rates.bar(names, [speeds[n] for n in names], color=_colors(names))
    rates.bar_label(bars, labels=[f"{speeds[n]:,.0f}" for n in names])
    rates.axhline(0.5 * speeds["floor"], ls="--", c="grey", label="target: 50% of floor")
    rates.axhline(5 * speeds["naive"], ls=":", c="black", label="target: 5x naive")
    rates.set_yscale("log")
    rates.set_ylabel("events/s (log)")
    rates.set_title(
        f"throughput: popsync/floor {result['ratio_popsync_to_floor']:.1%}, "
        f"popsync/naive {result['ratio_popsync_to_naive']:.1f}x"
    )
    rates.legend(loc="upper right", fontsize=8)

    measured = result["phases"]["latency"]
    lat = result["latency_ms"]
    latency.hist(measured["histogram_ms"], bins=60, color="tab:blue")
    for q, style in (("p50_ms", "-"), ("p99_ms", "--")):
        latency.axvline(lat[q], ls=style, c="black", label=f"{q[:3]} {lat[q]:,.0f} ms")
    latency.axvline(500, c="red", label="target p99 500 ms")
    latency.set_xlabel("publication to store, ms")
    latency.set_title(f"latency at {lat['rate_achieved']:,.0f} events/s")
    latency.legend(fontsize=8)

    rss = result["peak_rss_mb"]
    labels = list(rss)
    bars = memory.bar(labels, [rss[k] for k in labels], color="tab:green")
    memory.bar_label(bars, labels=[f"{rss[k]:.0f}" for k in labels])
    memory.axhline(300, c="red", ls="--", label="target 300 MB")
    memory.set_ylabel("peak RSS, MB")
    memory.set_title("peak RSS per worker (1 instance each)")
    memory.tick_params(axis="x", labelrotation=20, labelsize=8)
    memory.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _colors(names: list[str]) -> list[str]:
    return [
        "tab:gray" if n == "floor" else "tab:red" if n == "naive" else "tab:blue" for n in names
    ]
