"""PNG scatter plots of a sweep: accuracy against energy and against latency, one colour per target,
points on the Pareto front (of all objectives) drawn large with a black edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = {
    "accuracy_vs_energy.png": ("energy_nj", "energy per image (nJ, log)"),
    "accuracy_vs_latency.png": ("latency_ms", "latency per image (ms, log)"),
}


def write_plot(rows: list[dict[str, Any]], on_front: set[int], x_key: str, x_label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    targets = sorted({row["target"] for row in rows})
    colours = {target: plt.get_cmap("tab10")(index % 10) for index, target in enumerate(targets)}
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for target in targets:
        members = [i for i, row in enumerate(rows) if row["target"] == target]
        for front, style in ((False, {"s": 14, "alpha": 0.45}), (True, {"s": 46, "edgecolors": "black"})):
            chosen = [i for i in members if (i in on_front) == front]
            if chosen:
                axes.scatter(
                    [rows[i][x_key] for i in chosen],
                    [100 * rows[i]["accuracy"] for i in chosen],
                    color=colours[target],
                    label=None if front else target,
                    **style,
                )
    axes.scatter([], [], s=46, facecolors="none", edgecolors="black", label="Pareto front")
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel(x_label)
    axes.set_ylabel("top-1 accuracy, integer model (%)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    axes.set_title(f"{len(rows)} points, {len(on_front)} on the front", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_plots(rows: list[dict[str, Any]], on_front: set[int], directory: Path) -> list[Path]:
    paths = []
    for name, (x_key, x_label) in PLOTS.items():
        write_plot(rows, on_front, x_key, x_label, directory / name)
        paths.append(directory / name)
    return paths
