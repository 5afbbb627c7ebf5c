"""From stored rows to the outputs: the Pareto front (CSV and a rich table), plots, the best point's
checkpoint and its export, written all together into the output directory (``qexport.outputs``)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table

from qexport import __version__
from qexport.dse.pareto import front, objective_matrix
from qexport.dse.space import HardwarePoint, Selection, Space, TrialConfig
from qexport.errors import QExportError
from qexport.outputs import REPORT_FILE, export_directory, file_manifest

OBJECTIVE_NAMES = ("accuracy", "latency_ms", "energy_nj", "size_bytes")
TRIAL_FIELDS = ("method", "weight_bits", "act_bits", "first_bits", "last_bits", "post_mac")
HARDWARE_FIELDS = ("array", "dataflow", "ifmap_sram_bytes", "filter_sram_bytes", "ofmap_sram_bytes", "clock_mhz")
CSV_FIELDS = (
    "trial",
    *TRIAL_FIELDS,
    "target",
    *HARDWARE_FIELDS,
    "accuracy",
    "fake_quant_accuracy",
    "latency_ms",
    "cycles",
    "energy_nj",
    "size_bytes",
    "lut",
    "ff",
    "dsp",
    "status",
    "error",
)


class DseError(QExportError):
    """A sweep whose results cannot produce the outputs (nothing succeeded, a best point not reproduced)."""


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row with its trial and hardware configs spread into columns."""
    trial = json.loads(row["trial_config"])
    hardware = HardwarePoint(**json.loads(row["hardware_config"]))
    config = TrialConfig(**trial)
    return {
        **row,
        **{name: trial[name] for name in TRIAL_FIELDS},
        **{name: getattr(hardware, name) for name in HARDWARE_FIELDS},
        "trial": config.label,
        "target": hardware.target_name,
        "hardware": hardware.label,
        "config": config,
        "point": hardware,
    }


def objectives_of(ok: list[dict[str, Any]]) -> tuple[str, ...]:
    """Accuracy, latency, energy, size; and LUTs when every point has them (RTL resources: systolic
    targets with hwsim/cost/resources.json; a CPU target has no LUT count to compare)."""
    if ok and all(row.get("lut") is not None for row in ok):
        return (*OBJECTIVE_NAMES, "lut")
    return OBJECTIVE_NAMES


def pareto_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[int]]:
    """(successful rows, flattened, in a stable order; indices of those on the front of every objective)."""
    ok = sorted(
        (flatten(row) for row in rows if row["status"] == "ok"), key=lambda r: (r["trial_key"], r["hardware_key"])
    )
    return ok, set(front(objective_matrix(ok, objectives_of(ok)))) if ok else set()


def select_best(candidates: list[dict[str, Any]], selection: Selection) -> dict[str, Any]:
    """The lowest ``selection.minimize`` among candidates at or above ``min_accuracy`` (default: the most
    accurate); ties broken by accuracy, then latency, energy, size."""
    if not candidates:
        raise DseError("no successful point to choose the best from")
    floor = selection.min_accuracy
    eligible = [r for r in candidates if floor is None or r["accuracy"] >= floor]
    if not eligible:
        best_accuracy = max(r["accuracy"] for r in candidates)
        raise DseError(f"select.min_accuracy {floor}: no point reaches it (best accuracy {best_accuracy:.4f})")
    if floor is None:
        top = max(r["accuracy"] for r in eligible)
        eligible = [r for r in eligible if r["accuracy"] == top]
    key = {"latency": "latency_ms", "energy": "energy_nj", "size": "size_bytes"}[selection.minimize]
    return min(eligible, key=lambda r: (r[key], -r["accuracy"], r["latency_ms"], r["energy_nj"], r["size_bytes"]))


def front_table(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> Table:
    table = Table(title=f"Pareto front ({len(rows)} points)")
    luts = "lut" in objectives_of(rows)
    for column in ("trial", "hardware", "accuracy", "latency (ms)", "energy (nJ)", "size (B)", "LUTs"):
        if column != "LUTs" or luts:
            table.add_column(column, justify="left" if column in ("trial", "hardware") else "right")
    for row in sorted(rows, key=lambda r: (-r["accuracy"], r["energy_nj"])):
        marker = " *" if best is not None and row is best else ""
        table.add_row(
            row["trial"] + marker,
            row["hardware"],
            f"{row['accuracy']:.2%}",
            f"{row['latency_ms']:.4g}",
            f"{row['energy_nj']:.1f}",
            f"{row['size_bytes']:,}",
            *([f"{row['lut']:,}"] if luts else []),
        )
    return table


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name) for name in CSV_FIELDS})


def write_outputs(
    out_dir: Path,
    space: Space,
    rows: list[dict[str, Any]],
    force: bool = False,
    checkpoint: Any = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write front.csv, points.csv, the plots, best/best.ckpt and best/export/ (via ``run_export``'s writer),
    and report.json, all or nothing. ``checkpoint(config) -> (bytes, accuracy)`` makes the best checkpoint
    (``qexport.dse.evaluate.checkpoint_bytes``, run on a worker); None skips the best point's files."""
    from qexport.dse.plots import write_plots
    from qexport.pipeline import lower_checkpoint, write_export
    from qexport.targets import load_target, with_post_mac

    ok, on_front = pareto_rows(rows)
    if not ok:
        raise DseError(f"{space.source}: no trial succeeded ({len(rows)} failed points; see the results table)")
    front_rows = [ok[i] for i in sorted(on_front)]
    best = select_best(front_rows, space.select)
    everything = sorted((flatten(row) for row in rows), key=lambda r: (r["trial_key"], r["hardware_key"]))
    report: dict[str, Any] = {
        "qexport_version": __version__,
        "space": str(space.source),
        "points": len(rows),
        "ok_points": len(ok),
        "front_points": len(front_rows),
        "objectives": list(objectives_of(ok)),
        **(summary or {}),
    }
    with export_directory(out_dir, force) as staging:
        write_csv(front_rows, staging / "front.csv")
        write_csv(everything, staging / "points.csv")
        write_plots(ok, on_front, staging)
        report["best"] = {key: best[key] for key in (*OBJECTIVE_NAMES, "trial", "hardware")}
        report["best"].update(trial_config=best["config"].to_dict(), hardware_config=best["point"].to_dict())
        (staging / "best").mkdir()  # always written, so a --force run never leaves a stale best/ behind
        if checkpoint is None:
            (staging / "best" / "README.txt").write_text("qexport-dse --no-best: no checkpoint or export written\n")
        else:
            data, accuracy = checkpoint(replace(best["config"], float_weights=space.float_weights))
            if accuracy != best["accuracy"]:
                raise DseError(
                    f"best point {best['trial']}: re-quantized accuracy {accuracy} differs from the sweep's "
                    f"{best['accuracy']} (non-deterministic trial)"
                )
            (staging / "best" / "best.ckpt").write_bytes(data)
            target = load_target(best["point"].target)
            if best["config"].post_mac:
                target = with_post_mac(target, best["config"].post_mac)
            export = lower_checkpoint(staging / "best" / "best.ckpt", target)
            export.report["source"] = "best.ckpt"
            write_export(export, staging / "best" / "export")
        report["files"] = file_manifest(staging)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return {"front": front_rows, "best": best, "ok": ok, "on_front": on_front, "report": report}
