"""Render an estimate (and run counters) as a rich table, JSON, or a PNG per-layer breakdown."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from hwsim.cost.model import Estimate

ENERGY_PARTS = ("mult", "add", "shift", "lut", "sram", "dram")


def _si(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{value:.0f}"


def layer_table(estimate: Estimate, title: str) -> Table:
    table = Table(title=title, show_footer=True)
    data = estimate.to_dict()
    totals = data["totals"]
    columns = [
        ("layer", "name", "total"),
        ("op", "op", ""),
        ("MAC", "mac_kind", ""),
        ("MACs", "macs", _si(totals["macs"])),
        ("cycles", "cycles", _si(totals["cycles"])),
        ("util.", "utilization", ""),
        ("DRAM B", "dram_bytes", _si(totals["dram_bytes"])),
        ("energy uJ", "energy_total_pj", f"{totals['energy_total_pj'] / 1e6:.3f}"),
        ("acc bits", "acc_bits", ""),
        ("sat.", "saturations", str(totals["saturations"])),
    ]
    for header, _, footer in columns:
        table.add_column(header, footer=footer, justify="left" if header in ("layer", "op", "MAC") else "right")
    for row in data["layers"]:
        cells = []
        for _, key, _ in columns:
            value = row[key]
            if key == "utilization":
                cells.append(f"{value:.0%}" if row["macs"] else "")
            elif key == "energy_total_pj":
                cells.append(f"{value / 1e6:.3f}")
            elif key in ("macs", "cycles", "dram_bytes"):
                cells.append(_si(value) if value else "")
            elif key == "acc_bits":
                cells.append(str(value) if value else "")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    return table


ADAPTER_KEYS = ("weight_bytes", "macs", "mults", "shifts", "adds", "cycles", "energy_total_pj")


def adapter_totals(estimate: Estimate) -> dict | None:
    """ASQ adapters (nodes ``<quantizer>.adapter.*``) summed per quantizer and in total, with their share of
    the whole network; ``divs`` counts the per-sample divisions of dynamic requantizations. None without adapters."""
    data = estimate.to_dict()
    rows = data["layers"]
    per_quantizer: dict[str, dict] = {}
    for row in rows:
        if row["adapter_of"]:
            entry = per_quantizer.setdefault(row["adapter_of"], dict.fromkeys(ADAPTER_KEYS, 0))
            for key in ADAPTER_KEYS:
                entry[key] += row[key]
    if not per_quantizer:
        return None
    total = {key: sum(entry[key] for entry in per_quantizer.values()) for key in ADAPTER_KEYS}
    whole = {key: sum(row[key] for row in rows) for key in ADAPTER_KEYS}
    share = {key: 100.0 * total[key] / whole[key] if whole[key] else 0.0 for key in ADAPTER_KEYS}
    return {
        "quantizers": per_quantizer,
        "total": total,
        "percent_of_network": share,
        "divs": sum(r["divs"] for r in rows),
    }


def adapter_lines(estimate: Estimate) -> list[str]:
    totals = adapter_totals(estimate)
    if totals is None:
        return []
    total, share = totals["total"], totals["percent_of_network"]
    lines = [
        f"ASQ adapters ({len(totals['quantizers'])}): {total['weight_bytes']:,} weight B "
        f"({share['weight_bytes']:.2f}% of weights), {total['macs']:,} MACs ({share['macs']:.2f}%), "
        f"{total['cycles']:,} cycles ({share['cycles']:.2f}%), {total['energy_total_pj'] / 1e6:.3f} uJ "
        f"({share['energy_total_pj']:.2f}%); dynamic requantization: {totals['divs']:,} divisions"
    ]
    for name, entry in totals["quantizers"].items():
        lines.append(
            f"  {name}.adapter: {entry['weight_bytes']:,} weight B, {entry['macs']:,} MACs, "
            f"{entry['cycles']:,} cycles, {entry['energy_total_pj'] / 1e6:.4f} uJ"
        )
    return lines


def summary_lines(estimate: Estimate) -> list[str]:
    data = estimate.to_dict()
    totals, memory = data["totals"], data["memory"]
    where = f"{data['array'][0]}x{data['array'][1]} {data['dataflow']}" if data["array"] else "vector unit"
    energy = {part: sum(layer["energy_pj"].get(part, 0.0) for layer in data["layers"]) / 1e6 for part in ENERGY_PARTS}
    return [
        f"target {data['target']} ({where}, {data['clock_mhz']:.0f} MHz), batch {data['batch']}",
        f"latency: {totals['cycles']:,} cycles ({totals['compute_cycles']:,} compute + "
        f"{totals['stall_cycles']:,} stall) = {data['latency_ms']:.4f} ms",
        f"memory: weights {memory['weight_bytes']:,} B + LUTs {memory['lut_bytes']:,} B + peak activations "
        f"{memory['peak_activation_bytes']:,} B = {memory['total_bytes']:,} B; DRAM traffic {totals['dram_bytes']:,} B",
        f"ops: {totals['macs']:,} MACs = {totals['mults']:,} mult + {totals['shifts']:,} shift + "
        f"{totals['lut_reads']:,} LUT reads; {totals['adds']:,} adds",
        "energy: "
        + ", ".join(f"{part} {value:.3f}" for part, value in energy.items())
        + f" uJ; total {totals['energy_total_pj'] / 1e6:.3f} uJ",
        f"overflow events: {totals['overflow_events']}, saturated outputs: {totals['saturations']}",
        *adapter_lines(estimate),
    ]


def write_json(estimate: Estimate, path: Path, extra: dict | None = None) -> None:
    adapters = adapter_totals(estimate)
    data = {**estimate.to_dict(), **({"adapters": adapters} if adapters else {}), **(extra or {})}
    Path(path).write_text(json.dumps(data, indent=1))


def write_plot(estimate: Estimate, path: Path) -> None:
    """Three panels per layer: cycles (compute / stall), energy by kind, bytes (weights / activations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = estimate.to_dict()
    layers = [row for row in data["layers"] if row["cycles"] or row["energy_total_pj"]]
    names = [row["name"] for row in layers]
    positions = range(len(layers))
    figure, axes = plt.subplots(1, 3, figsize=(16, max(4, 0.28 * len(layers) + 1.5)), sharey=True)
    compute = [row["compute_cycles"] for row in layers]
    axes[0].barh(positions, compute, label="compute")
    axes[0].barh(positions, [row["stall_cycles"] for row in layers], left=compute, label="stall")
    axes[0].set_title("cycles")
    left = [0.0] * len(layers)
    for part in ENERGY_PARTS:
        values = [row["energy_pj"].get(part, 0.0) / 1e6 for row in layers]
        axes[1].barh(positions, values, left=left, label=part)
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes[1].set_title("energy (uJ)")
    weights = [row["weight_bytes"] + row["lut_bytes"] for row in layers]
    axes[2].barh(positions, weights, label="weights + LUTs")
    axes[2].barh(
        positions,
        [row["input_bytes"] + row["output_bytes"] for row in layers],
        left=weights,
        label="activations in + out",
    )
    axes[2].set_title("bytes")
    axes[0].set_yticks(list(positions), names, fontsize=7)
    axes[0].invert_yaxis()
    for axis in axes:
        axis.legend(fontsize=7)
        axis.grid(axis="x", alpha=0.3)
    where = f"{data['array'][0]}x{data['array'][1]} {data['dataflow']}" if data["array"] else "vector"
    figure.suptitle(
        f"{data['target']} ({where}), batch {data['batch']}: {data['latency_ms']:.3f} ms, "
        f"{data['totals']['energy_total_pj'] / 1e6:.2f} uJ"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
