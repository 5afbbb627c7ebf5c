"""Agreement of hwsim's SCALE-Sim memory mode and compute cycles with SCALE-Sim 3.0.0 itself.

Runs SCALE-Sim (USER bandwidth mode, 10 words/cycle per operand) on every distinct layer of CIFAR
ResNet-20 and MobileNetV2 (qexport.zoo; a depthwise layer is one group's 1-channel, 1-filter conv, as
SCALE-Sim has no groups; the linear layers are 1x1 convs on a 1x1 input) in 18 configurations: 8x8,
16x16 and 32x32 arrays, os/ws/is, 1024 kB and 256 kB SRAMs. Compares per layer, against
hwsim.cost.scalesim_memory: stall cycles, ifmap and filter DRAM reads, ofmap DRAM writes, and the
stall-free compute cycles of hwsim.cost.systolic. Also sums hwsim's own memory model's stalls for
contrast. Writes the `scalesim_agreement` section of docs/benchmarks.md; exits 1 if a layer's stalls or
DRAM traffic differ by more than 5% or its compute cycles by more than 1%.

SCALE-Sim runs in its own virtual environment (numpy 2.4 breaks scalesim 3.0.0; CI does not run this):

    python -m venv ~/.cache/qexport-scalesim-venv
    ~/.cache/qexport-scalesim-venv/bin/pip install scalesim==3.0.0 "numpy==2.3.*"

(created like that on first use if missing; QEXPORT_SCALESIM_VENV names another one). SCALE-Sim is
slow on big layers: 44 minutes for the 666 runs, 2 at a time, on a shared 2-core machine; results are cached in
~/.cache/qexport-scalesim-results.json as they come (--fresh ignores the cache).

    python benchmarks/scalesim_agreement.py [--fresh] [--jobs N] [--no-write] [--cached-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import write_section  # noqa: E402

from hwsim.cost.scalesim_memory import ScaleSimMemoryConfig, scalesim_memory_cost  # noqa: E402
from hwsim.cost.systolic import DATAFLOWS, ConvShape, MemoryConfig, compute_cycles, memory_cost  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
VENV = Path(os.environ.get("QEXPORT_SCALESIM_VENV", CACHE / "qexport-scalesim-venv"))
RESULTS = CACHE / "qexport-scalesim-results.json"
REQUIREMENTS = ("scalesim==3.0.0", "numpy==2.3.*")  # numpy 2.4 breaks scalesim 3.0.0
ARRAYS = (8, 16, 32)
SRAM_KB = (1024, 256)
WORDS_PER_CYCLE = 10
NETWORKS = ("resnet20", "mobilenetv2")
TOLERANCE = 0.05  # stalls and DRAM traffic, per layer
COMPUTE_TOLERANCE = 0.01

DRIVER = r'''
import contextlib, io, json, sys, tempfile
from pathlib import Path
from scalesim.scale_sim import scalesim

CONFIG = """[general]
run_name = run

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {sram_kb}
FilterSramSzkB: {sram_kb}
OfmapSramSzkB: {sram_kb}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth : {bw}
Dataflow : {dataflow}
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: {bw}
IfmapSRAMBankNum: 1
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: {bw}
FilterSRAMBankNum: 1
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""

job = json.loads(sys.argv[1])
work = Path(tempfile.mkdtemp(prefix="scalesim-"))
(work / "scale.cfg").write_text(CONFIG.format(**job))
h, w, kh, kw, c, n, s = job["layer"]
(work / "topo.csv").write_text(
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
    f"layer, {h}, {w}, {kh}, {kw}, {c}, {n}, {s},\n")
(work / "layout.csv").write_text("Layer name,\n")
with contextlib.redirect_stdout(io.StringIO()):
    sim = scalesim(save_disk_space=True, verbose=False, config=str(work / "scale.cfg"),
                   topology=str(work / "topo.csv"), layout=str(work / "layout.csv"))
    sim.run_scale(top_path=str(work))
layer = sim.runner.single_layer_sim_object_list[0]
overall, compute, stalls, util, mapping, _ = layer.get_compute_report_items()
detail = layer.get_detail_report_items()
print(json.dumps({
    "compute": int(compute), "stalls": int(stalls), "overall": int(overall),
    "utilization": float(util) / 100, "mapping_efficiency": float(mapping) / 100,
    "ofmap": [int(x) for x in sim.topo.get_layer_ofmap_dims(0)],
    "ifmap_dram_reads": int(detail[11]), "filter_dram_reads": int(detail[14]), "ofmap_dram_writes": int(detail[17]),
}))
'''


def to_shape(module, input_shape) -> ConvShape:
    """ConvShape of a torch Conv2d (no dilation) or Linear."""
    if not hasattr(module, "kernel_size"):
        return ConvShape.linear(module.in_features, module.out_features)
    assert module.dilation == (1, 1), "dilation is not modelled"
    ph, pw = module.padding
    return ConvShape(
        in_h=input_shape[2], in_w=input_shape[3], channels=module.in_channels, filters=module.out_channels,
        kernel_h=module.kernel_size[0], kernel_w=module.kernel_size[1], stride_h=module.stride[0],
        stride_w=module.stride[1], pad=(ph, pw, ph, pw), groups=module.groups,
    )  # fmt: skip


def scalesim_layer(shape: ConvShape) -> list[int]:
    """SCALE-Sim topology row: it never pads, so give it the padded input the windows touch."""
    assert shape.groups == 1 and shape.stride_h == shape.stride_w, "SCALE-Sim: no groups, one stride"
    s = shape
    return [s.touched_h, s.touched_w, s.kernel_h, s.kernel_w, s.channels, s.filters, s.stride_h]


def venv_python() -> Path:
    """Python of the SCALE-Sim virtual environment, creating or repairing it if needed."""
    python = VENV / "bin" / "python"
    probe = "import scalesim, numpy, importlib.metadata as m; assert m.version('scalesim') == '3.0.0'; "
    probe += "assert numpy.__version__.startswith('2.3.')"
    if python.exists() and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
        return python
    print(f"creating SCALE-Sim environment in {VENV}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return python


def run_scalesim(python: Path, driver: Path, job: dict) -> dict:
    """One SCALE-Sim run of one layer; returns its report numbers."""
    done = subprocess.run([python, driver, json.dumps(job)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"SCALE-Sim failed for {job}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def job_key(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Layer:
    network: str
    name: str
    shape: ConvShape  # what SCALE-Sim runs: one group, the touched input


def zoo_layers(network: str) -> list[Layer]:
    """Every Conv2d and Linear of a qexport.zoo CIFAR model with the input it sees, as SCALE-Sim layers."""
    import torch

    from qexport.zoo import build

    model, layers = build(network).eval(), []

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            shape = to_shape(module, inputs[0].shape)
            if shape.groups > 1:  # SCALE-Sim has no groups: one group's conv
                shape = dataclasses.replace(shape, channels=1, filters=1, groups=1)
            single = ConvShape(shape.touched_h, shape.touched_w, shape.channels, shape.filters, shape.kernel_h,
                               shape.kernel_w, shape.stride_h, shape.stride_w)  # fmt: skip
            layers.append(Layer(network, name, single))

        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return layers


def unique_layers(layers: list[Layer]) -> list[Layer]:
    seen: dict[ConvShape, Layer] = {}
    for layer in layers:
        seen.setdefault(layer.shape, layer)
    return list(seen.values())


def job(shape: ConvShape, array: int, dataflow: str, sram_kb: int) -> dict:
    return {"layer": scalesim_layer(shape), "rows": array, "cols": array, "dataflow": dataflow,
            "sram_kb": sram_kb, "bw": WORDS_PER_CYCLE}  # fmt: skip


def configurations() -> list[tuple[int, int, str]]:
    return [(kb, a, df) for kb in SRAM_KB for a in ARRAYS for df in DATAFLOWS]


def job_cycles(j: dict) -> int:
    """Demand rows of a SCALE-Sim job (its run time grows with them)."""
    h, w, kh, kw, c, n, s = j["layer"]
    return compute_cycles(ConvShape(h, w, c, n, kh, kw, s, s), j["rows"], j["cols"], j["dataflow"])


def run_jobs(jobs: list[dict], workers: int, fresh: bool, cached_only: bool = False) -> dict[str, dict]:
    """Run (or reuse from the cache file) every distinct SCALE-Sim job, ``workers`` at a time, cheapest
    first, saving the cache after each run. ``cached_only``: run nothing, return what the cache has."""
    cache = {} if fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    todo = [j for j in {job_key(j): j for j in jobs}.values() if job_key(j) not in cache]
    if cached_only:
        return {job_key(j): cache[job_key(j)] for j in jobs if job_key(j) in cache}
    todo.sort(key=job_cycles)
    if todo:
        python, lock, start = venv_python(), threading.Lock(), time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            driver = Path(tmp) / "scalesim_driver.py"
            driver.write_text(DRIVER)

            def one(item: tuple[int, dict]) -> None:
                i, j = item
                result = run_scalesim(python, driver, j)
                with lock:
                    cache[job_key(j)] = result
                    RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    staged = RESULTS.with_suffix(".tmp")
                    staged.write_text(json.dumps(cache, indent=0, sort_keys=True))
                    staged.replace(RESULTS)
                    where = f"{j['sram_kb']} kB {j['dataflow']} {j['rows']}x{j['cols']} {j['layer']}"
                    elapsed = time.perf_counter() - start
                    print(
                        f"  [{i + 1}/{len(todo)}] {where}: {result['stalls']} stalls ({elapsed:.0f} s)", file=sys.stderr
                    )

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, enumerate(todo)))
    return {job_key(j): cache[job_key(j)] for j in jobs}


def rel(ours: float, theirs: float) -> float:
    """Relative difference; 0 when both are 0, the absolute difference when SCALE-Sim's value is 0."""
    return abs(ours - theirs) / max(theirs, 1)


@dataclass
class Row:
    kb: int
    array: int
    dataflow: str
    layers: int = 0
    stall_errors: list[float] = dataclasses.field(default_factory=list)
    read_errors: list[float] = dataclasses.field(default_factory=list)
    write_errors: list[float] = dataclasses.field(default_factory=list)
    compute_errors: list[float] = dataclasses.field(default_factory=list)
    theirs_stalls: int = 0
    ours_stalls: int = 0
    hwsim_stalls: int = 0
    cycles: int = 0
    stall_shares: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def compare(layers: list[Layer], results: dict[str, dict]) -> tuple[list[Row], list[str]]:
    """Per-configuration summaries and one line per layer beyond tolerance."""
    rows, failures = [], []
    for kb, array, dataflow in configurations():
        row = Row(kb, array, dataflow)
        mem = ScaleSimMemoryConfig(kb << 10, kb << 10, kb << 10, *(WORDS_PER_CYCLE,) * 3)
        own = MemoryConfig(kb << 10, kb << 10, kb << 10, 3 * WORDS_PER_CYCLE, psum_bytes_per_element=4)
        for layer in layers:
            theirs = results.get(job_key(job(layer.shape, array, dataflow, kb)))
            if theirs is None:  # --cached-only and not run yet
                continue
            assert theirs["ofmap"] == [layer.shape.out_h, layer.shape.out_w], (layer, theirs["ofmap"])
            start = time.perf_counter()
            ours = scalesim_memory_cost(layer.shape, array, array, dataflow, mem)
            row.seconds += time.perf_counter() - start
            errors = (
                rel(ours.stall_cycles, theirs["stalls"]),
                max(rel(ours.ifmap_dram_reads, theirs["ifmap_dram_reads"]),
                    rel(ours.filter_dram_reads, theirs["filter_dram_reads"])),
                rel(ours.ofmap_dram_writes, theirs["ofmap_dram_writes"]),
                rel(ours.compute_cycles, theirs["compute"] - theirs["stalls"]),
            )  # fmt: skip
            for bucket, err in zip((row.stall_errors, row.read_errors, row.write_errors, row.compute_errors), errors,
                                   strict=True):  # fmt: skip
                bucket.append(err)
            row.layers += 1
            row.theirs_stalls += theirs["stalls"]
            row.ours_stalls += ours.stall_cycles
            row.hwsim_stalls += memory_cost(layer.shape, array, array, dataflow, own).stall_cycles
            row.cycles += theirs["compute"]
            row.stall_shares.append(theirs["stalls"] / (theirs["compute"] + 1))
            if max(errors[:3]) > TOLERANCE or errors[3] > COMPUTE_TOLERANCE:
                failures.append(f"{kb} kB {array}x{array} {dataflow} {layer.network} {layer.name}: ours {ours}, "
                                f"SCALE-Sim {theirs}")  # fmt: skip
        rows.append(row)
    return rows, failures


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| SRAMs | array | dataflow | layers | max stall err. | mean stall err. | max DRAM-read err. "
        "| max DRAM-write err. | max compute-cycle err. | SCALE-Sim stalls (share of cycles) | our scalesim mode "
        "| hwsim model |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = f"{min(r.stall_shares):.0%}-{max(r.stall_shares):.0%}"
        lines.append(
            f"| {r.kb} kB | {r.array}x{r.array} | {r.dataflow} | {r.layers} | {max(r.stall_errors):.2%} | "
            f"{statistics.mean(r.stall_errors):.2%} | {max(r.read_errors):.2%} | {max(r.write_errors):.2%} | "
            f"{max(r.compute_errors):.2%} | {r.theirs_stalls:,} ({share}) | {r.ours_stalls:,} | {r.hwsim_stalls:,} |"
        )
    return lines


def body(layers: list[Layer], rows: list[Row], ok: bool) -> str:
    counts = {n: sum(1 for layer in layers if layer.network == n) for n in NETWORKS}
    seconds, compared = sum(r.seconds for r in rows), sum(r.layers for r in rows)
    coverage = (
        "all of them in every configuration, no subsampling"
        if compared == len(layers) * len(rows)
        else f"a subsample: only the {compared} of {len(layers) * len(rows)} layer runs SCALE-Sim had finished"
    )
    return "\n".join([
        "## SCALE-Sim agreement: stalls, DRAM traffic and compute cycles (`benchmarks/scalesim_agreement.py`)",
        "",
        "`hwsim.cost.scalesim_memory` (the `scalesim` memory mode) and `hwsim.cost.systolic.compute_cycles` vs",
        f"SCALE-Sim 3.0.0 (numpy 2.3, USER bandwidth mode, {WORDS_PER_CYCLE} words/cycle for each operand, 1-byte",
        "words) on every distinct layer of CIFAR ResNet-20 and MobileNetV2 "
        f"({counts['resnet20']} + {counts['mobilenetv2']} = {len(layers)} layers;",
        f"{coverage}). A depthwise layer is one group's conv, linear layers are 1x1 convs on a 1x1 input,",
        "SCALE-Sim is given the padded input the windows touch. Errors are per layer,",
        "|ours - SCALE-Sim| / SCALE-Sim (absolute when SCALE-Sim's value is 0); DRAM reads: the larger of the",
        "ifmap and filter errors; compute cycles: ours vs SCALE-Sim's cycles less its stalls. Requirement:",
        f"stalls and DRAM traffic within {TOLERANCE:.0%}, compute cycles within {COMPUTE_TOLERANCE:.0%}, per layer. "
        f"Result: **{'pass' if ok else 'FAIL'}**.",
        "The last three columns sum the stalls over the layers: SCALE-Sim's (with the range of its",
        "per-layer stall share of the cycles), the scalesim mode's and hwsim's own model's (one shared",
        f"channel of {3 * WORDS_PER_CYCLE} B/cycle, the raw ifmap in SRAM, ideal reuse, 4-byte partial sums).",
        "",
        *table(rows),
        "",
        f"The scalesim mode took {seconds:.1f} s for the {compared} layer runs (SCALE-Sim: 44 minutes, 2 runs",
        "in parallel on a shared 2-core machine).",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="ignore cached SCALE-Sim results")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel SCALE-Sim runs")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--cached-only", action="store_true", help="run no SCALE-Sim: compare the cached results")
    args = parser.parse_args()
    layers = unique_layers([layer for network in NETWORKS for layer in zoo_layers(network)])
    jobs = [job(layer.shape, a, df, kb) for kb, a, df in configurations() for layer in layers]
    results = run_jobs(jobs, args.jobs, args.fresh, args.cached_only)
    rows, failures = compare(layers, results)
    text = body(layers, rows, not failures)
    print(text)
    for line in failures:
        print(f"beyond tolerance: {line}", file=sys.stderr)
    if not args.no_write:
        write_section("scalesim_agreement", text)
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
