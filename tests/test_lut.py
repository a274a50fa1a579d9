"""Latency lookup tables: recording (resumable), prediction with coverage and calibration, the CLI,
and one-line errors for every kind of bad LUT. Tiny models, few runs: a few seconds per recording."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hwcompress.devices import descriptor_from_dict
from hwcompress.errors import UserError
from hwcompress.lut.keys import TIMING_KERNELS, LayerConfig
from hwcompress.lut.predict import calibration_ratio, ratio_digits
from hwcompress.lut.profiler import LutPredictor
from hwcompress.lut.record import ensure_lut, record_lut
from hwcompress.lut.recorder import QUANTUM_PROBE_PASSES, Recorder, fit_quantum, new_provenance
from hwcompress.lut.table import LatencyTable
from hwcompress.lut.units import channel_grid, grid_configs, model_units
from hwcompress.measure.contract import ModelArtifact, ProfileSettings
from hwcompress.model.analysis import analyze

SHAPE = (1, 3, 16, 16)
SETTINGS = ProfileSettings(runs=3, warmup=1, threads=1, per_layer=False)
CPU = descriptor_from_dict({"name": "cpu", "profiler": "onnxruntime", "channel_multiple": 8, "detect": {"always": True}})
GRID = {"points": 3, "quantum": 8}  # quantum given: no detection probe in tests

TINYNETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def tiny(c1=16, c2=32):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1, groups=c2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, 10),
        ).eval()

    def half():
        return tiny(8, 16)
    """
)
namespace: dict = {}
exec(TINYNETS, namespace)
tiny = namespace["tiny"]


def ort_profiler():
    from hwcompress_profiler_onnxruntime import OnnxRuntimeProfiler

    return OnnxRuntimeProfiler()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A LUT of the tiny net on this CPU (recorded once for the module; tests copy it)."""
    path = tmp_path_factory.mktemp("lut") / "tiny.lut.json"
    record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, path, model_name="tiny", widths=(0.5,), **GRID)
    return path


@pytest.fixture
def tinynets(tmp_path, monkeypatch) -> str:
    """``lut_tinynets:tiny`` importable as a ``--model`` factory."""
    (tmp_path / "lut_tinynets.py").write_text(TINYNETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "lut_tinynets:tiny"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The real CLI entry point, in process: (exit code, stdout, stderr)."""
    from hwcompress.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------------
# Pure parts


def test_channel_grid_covers_the_search_range():
    assert channel_grid(64, 8, 16, 5, 0.2) == [8, 16, 32, 48, 64]
    assert channel_grid(24, 8, 16, 5, 0.2) == [8, 16, 24]  # below a block: timed, not inferred
    assert channel_grid(3, 8, 16, 5, 0.2) == [3]
    assert channel_grid(512, 8, 16, 5, 0.2, fixed=True) == [512]
    grid = channel_grid(1280, 8, 16, 5, 0.2)
    assert grid[0] == 256 and grid[-1] == 1280 and len(grid) == 5 and all(c % 16 == 0 for c in grid)


def test_fit_quantum_finds_channel_blocks():
    counts = [64 + 8 * i for i in range(9)]
    staircase = [1.0 + 0.01 * math.ceil(c / 16) * 16 for c in counts]
    linear = [1.0 + 0.01 * c for c in counts]
    assert fit_quantum(counts, staircase, 8) == 16
    assert fit_quantum(counts, linear, 8) == 8


def test_units_fuse_norms_and_identical_layers_are_recorded_once():
    """A digits-size (32x32) network of repeated identical blocks: few distinct configurations."""
    blocks = [nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()) for _ in range(3)]
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    units = model_units(model, (1, 3, 32, 32))
    assert [u.fused for u in units] == [("ReLU",), ("BatchNorm2d", "ReLU"), ("BatchNorm2d", "ReLU"), ("BatchNorm2d", "ReLU"), ()]
    assert units[0].cin_fixed and not units[0].cout_fixed and units[-1].cout_fixed
    assert len({u.config.key() for u in units}) == 3
    configs = grid_configs(units, multiple=8, quantum=8, points=3)
    keys = [c.key() for c, _ in configs]
    assert len(keys) == len(set(keys))
    # stem: cout {8, 16}; blocks: {8, 16} x {8, 16} once for all three; Linear: cin {8, 16}.
    assert len(keys) == 2 + 4 + 2


def test_analysis_reads_which_layers_feed_which():
    """Each convolution's sources are the layers whose outputs reach its input through non-layer ops:
    a projection after a squeeze-excitation is fed by the depthwise convolution and the excitation, a
    convolution after a residual add by both branches, the first one by the network's input only."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.bn = nn.BatchNorm2d(16)
            self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
            self.project = nn.Conv2d(16, 16, 1)
            self.after = nn.Conv2d(16, 8, 1)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x).relu()
            y = self.bn(self.dw(x)).relu()
            y = y * self.fc2(self.fc1(y.mean((2, 3), keepdim=True)).relu()).sigmoid()
            x = x + self.project(y)
            return self.head(self.after(x).mean((2, 3)))

    block = Block()
    rows = {r.name: r for r in analyze(block, (1, 3, 8, 8)).layers}
    assert rows["stem"].sources == () and rows["dw"].sources == ("stem",) and rows["fc1"].sources == ("dw",)
    assert rows["project"].sources == ("dw", "fc2") and rows["after"].sources == ("project", "stem")
    assert rows["head"].sources == ("after",) and rows["bn"].sources is None
    assert "sources" not in rows["bn"].to_dict() and rows["project"].to_dict()["sources"] == ("dw", "fc2")
    for parameter in block.parameters():  # frozen weights: the graph still comes from the input
        parameter.requires_grad_(False)
    assert {r.name: r.sources for r in analyze(block, (1, 3, 8, 8)).layers} == {n: r.sources for n, r in rows.items()}

    class Shared(nn.Module):  # one convolution called twice: its second output feeds the last layer
        def __init__(self) -> None:
            super().__init__()
            self.first, self.twice, self.last = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.last(self.twice(self.twice(self.first(x)).relu()))

    shared = {r.name: r.sources for r in analyze(Shared(), (1, 3, 4, 4)).layers}
    assert shared == {"first": (), "twice": ("first",), "last": ("twice",)}


def test_layout_conversions_follow_the_graph():
    """A conversion is charged where a layer feeds a convolution in the other layout (one of the two
    off the blocked path), once per converted source, by the reader's input: here the off-path ``b``
    converts ``a``'s blocked output and ``c`` converts ``b``'s plain output back, while ``side`` (a
    branch reading ``a``) converts nothing. Forward order (rows without sources, as ONNX analyses
    give) charged ``side`` instead of ``c``."""
    import dataclasses

    from hwcompress.model.analysis import LayerSpec

    def conv(name: str, cin: int, hw: int, sources: tuple[str, ...]) -> LayerSpec:
        return LayerSpec(name, "Conv2d", (1, cin, hw, hw), (1, 32, hw, hw), cin=cin, cout=32, kernel=(1, 1), stride=(1, 1),
                         padding=(0, 0), groups=1, macs=cin * 32 * hw * hw, sources=sources)

    rates = {"to_plain": {"intercept_ms": 0.002, "ms_per_element": 1e-6},
             "to_blocked": {"intercept_ms": 0.003, "ms_per_element": 2e-6}}
    table = LatencyTable({"device": "cpu", "quantum": 8, "facts": {"channel_block": 16, "channel_alignment": 4},
                          "cache_flush_mb": 16, "off_path_cache_flush_mb": 0, "layout_conversions": rates})
    specs = [conv("a", 32, 8, ()), conv("b", 30, 8, ("a",)), conv("side", 32, 8, ("a",)), conv("c", 32, 8, ("b", "side")),
             conv("d", 32, 8, ("b", "c"))]
    predictor = table.predictor
    assert [predictor.off_path(predictor._config_of(s)[0]) for s in specs] == [False, True, False, False, False]
    # Each charged by the elements its reader takes in (b reads 30 channels, c 32), d not again: the
    # runtime reordered b's output once, for c.
    assert predictor.layout_conversion_ms(specs) == pytest.approx({"b": 0.002 + 1e-6 * 30 * 64, "c": 0.003 + 2e-6 * 32 * 64})
    forward = predictor.layout_conversion_ms([dataclasses.replace(s, sources=None) for s in specs])
    assert set(forward) == {"b", "side"}
    # Around a grouped convolution (RegNet's, 8 channels per group) nothing is charged, either way: charging
    # it put torch-pruned regnet_x_400mf variants 17.5% over their measurement, 9.8% without.
    grouped = dataclasses.replace(specs[1], name="g", groups=2, macs=specs[1].macs // 2)  # 30 in, 15 per group
    assert predictor._config_of(grouped)[0].grouped and predictor.off_path(predictor._config_of(grouped)[0])
    around = [specs[0], grouped, dataclasses.replace(specs[3], sources=("g",))]
    assert predictor.layout_conversion_ms(around) == {}
    plain = [specs[0], specs[1], dataclasses.replace(specs[3], sources=("b",))]  # the same chain ungrouped pays both
    assert set(predictor.layout_conversion_ms(plain)) == {"b", "c"}


def test_a_squeeze_excitation_block_off_the_path_is_credited_the_conversions_it_no_longer_pays():
    """The broadcast multiply of a squeeze-excitation block runs in plain NCHW, so on the blocked path the
    runtime converts the depthwise output out of NCHWc and the multiply's output back in for the
    projection (ONNX Runtime's optimised mobilenet_v3_small: three reorders per block). The calibration
    has those; a block whose depthwise convolution and projection run off the path pays neither, and is
    credited them. Nothing is charged on the squeeze path itself (the pooled 1x1 tensors)."""
    import dataclasses

    from hwcompress.model.analysis import LayerSpec

    def se_block(c: int) -> list[LayerSpec]:
        def conv(name, cin, cout, hw, sources, groups=1, kernel=1):
            return LayerSpec(name, "Conv2d", (1, cin, hw, hw), (1, cout, hw, hw), cin=cin, cout=cout, kernel=(kernel, kernel),
                             stride=(1, 1), padding=(kernel // 2,) * 2, groups=groups,
                             macs=cin // groups * cout * hw * hw * kernel * kernel, sources=sources)
        return [conv("expand", 32, c, 8, ()), conv("dw", c, c, 8, ("expand",), groups=c, kernel=3),
                conv("fc1", c, 8, 1, ("dw",)), conv("fc2", 8, c, 1, ("fc1",)), conv("project", c, 32, 8, ("dw", "fc2"))]

    rates = {"to_plain": {"intercept_ms": 0.002, "ms_per_element": 1e-6},
             "to_blocked": {"intercept_ms": 0.003, "ms_per_element": 2e-6}}
    table = LatencyTable({"device": "cpu", "quantum": 8, "facts": {"channel_block": 16, "channel_alignment": 4},
                          "cache_flush_mb": 16, "off_path_cache_flush_mb": 0, "layout_conversions": rates})
    predictor = table.predictor
    aligned, narrowed = se_block(32), se_block(30)
    assert predictor.layout_conversion_ms(aligned) == {}
    off = [predictor.off_path(predictor._config_of(s)[0]) for s in narrowed]
    assert off == [False, True, True, False, True]  # fc2 reads 8 channels: under a block, on the path
    got = predictor.layout_conversion_ms(narrowed)
    # dw pays converting expand's blocked output and is credited the conversion of its own output it no
    # longer needs (the two cancel here); project is credited its input's conversion back in.
    assert got == pytest.approx({"dw": 0.0, "project": -(0.003 + 2e-6 * 30 * 64)})
    predictor.squeeze_credit = False  # the rule before: the projection charged like any reader
    try:
        assert predictor.layout_conversion_ms(narrowed)["project"] > 0
    finally:
        predictor.squeeze_credit = True
    # Without sources (ONNX analyses) the projection follows fc2 in row order: still on the squeeze path.
    forward = predictor.layout_conversion_ms([dataclasses.replace(s, sources=None) for s in narrowed])
    assert forward["project"] < 0
    # A credit larger than the layer's own time is cut at it: no layer priced below zero, and the layers
    # still add up to the whole.
    from hwcompress.lut.keys import LayerConfig, LutEntry

    for spec in narrowed:
        table.add(LutEntry(LayerConfig.from_spec(spec), 0.001, 0.0011, 0.0, 10))
    detail = table.predict_detail(narrowed)
    assert detail.per_layer_ms["project"] == pytest.approx(0.0) and min(detail.per_layer_ms.values()) >= 0
    assert detail.layout_conversion_ms == pytest.approx(-0.001)
    assert sum(detail.per_layer_ms.values()) == pytest.approx(detail.total_ms)


# --------------------------------------------------------------------------------------------------
# Recording and prediction


def test_calibration_points_priced_alike_are_the_first_recorded():
    # The full model and its half-width copy at one layer sum (their channels fill the same blocks): the
    # full model's ratio stands for both, whichever measured faster; distinct sums still interpolate.
    model = {"scale": 0.8, "points": [{"width": 1.0, "layer_sum_ms": 1.0, "ratio": 0.8},
                                      {"width": 0.5, "layer_sum_ms": 1.0, "ratio": 0.6}]}
    assert [calibration_ratio(model, x) for x in (0.5, 1.0, 2.0)] == [0.8, 0.8, 0.8]
    model["points"].append({"width": 0.25, "layer_sum_ms": 0.5, "ratio": 0.4})
    assert calibration_ratio(model, 0.75) == pytest.approx(0.6) and calibration_ratio(model, 1.0) == 0.8


def test_calibration_is_summed_against_the_table_as_it_stands(recorded):
    """A calibration point stores its layers, and predictions sum it against the entries as they stand: an
    entry timed again later (a merge keeps the faster timing) reprices the calibrating model's layers, and
    the calibrated predictions of the model and of its copy still equal their measurements. A point
    without its layers (recorded before) keeps its stored sum, which then misses."""
    import dataclasses

    from hwcompress.lut.keys import spec_from_record, spec_record
    from hwcompress.model.analysis import LayerSpec

    table = LatencyTable.load(recorded)
    points = table.models[0]["points"]
    for point in points:  # what lies outside the layers (a bare parameter) is a row without shapes
        point["specs"].append(spec_record(LayerSpec("(other)", "(other)", None, None, params=7)))
    copies = [[spec_from_record(s) for s in p["specs"]] for p in points]
    assert copies[0][-1] == LayerSpec("(other)", "(other)", None, None, params=7)
    assert [sum(s.macs for s in specs) for specs in copies] == [p["macs"] for p in points]
    keys = [LayerConfig.from_spec(s).key() for s in copies[0] if s.op == "Conv2d"]
    key = max(keys, key=lambda k: table.entries[k].median)  # the full model's slowest convolution
    table.add(dataclasses.replace(table.entries[key], median=table.entries[key].median * 0.5))
    for specs, point in zip(copies, points):
        assert table.predict_detail(specs).total_ms == pytest.approx(point["measured_ms"], rel=1e-6)
    shown = table.summary()["models"][0]
    assert shown["layer_sum_ms"] < points[0]["layer_sum_ms"] and shown["scale"] > points[0]["ratio"]
    for point in points:
        del point["specs"]
    table.invalidate()
    stale = table.predict_detail(copies[0]).total_ms
    assert stale < points[0]["measured_ms"] * 0.99  # the stored ratio times the smaller sum


def test_lut_file_has_one_entry_per_line(recorded, tmp_path):
    """A LUT is written with each entry and each stored layer row on one line (strict JSON all the same:
    NaN as null), and reads back as the document it was."""
    import json

    from hwcompress.files import dumps, dumps_rows

    table = LatencyTable.load(recorded)
    path = table.save(tmp_path / "t.lut.json")
    lines = path.read_text().splitlines()
    document = json.loads(path.read_text())
    assert document == json.loads(dumps(table.to_dict()))  # the same document as one value per line
    assert sum(line.strip().startswith('{"op": ') for line in lines) == len(table.entries) == len(document["entries"])
    assert sum(line.strip().startswith('{"name": ') for line in lines) == sum(len(p["specs"]) for p in document["models"][0]["points"])
    assert json.loads(dumps_rows({"a": [float("nan"), 1.5], "b": [{"c": float("inf")}] * 300})) == {"a": [None, 1.5], "b": [{"c": None}] * 300}


def test_prediction_coverage_and_calibration(recorded):
    table = LatencyTable.load(recorded)
    assert table.provenance["device"] == "cpu" and table.provenance["timing"] == TIMING_KERNELS
    assert table.provenance["runtime"] == "onnxruntime" and table.provenance["recorder"].startswith("hwcompress ")
    assert len(table) == 14
    assert all(e.median >= 0 and e.runs == 3 for e in table.entries.values())

    full = table.predict_detail(analyze(tiny(), SHAPE))
    coverage = full.coverage()
    assert (coverage["layers"], coverage["exact"], coverage["interpolated"], coverage["missing"], coverage["fused"]) == (4, 4, 0, 0, 2)
    # The calibration recorded with the LUT is applied: measured whole model / sum of its layers.
    model = table.models[0]
    assert model["name"] == "tiny" and [p["width"] for p in model["points"]] == [1.0, 0.5]
    assert model["measured_ms"] > 0 and model["scale"] == pytest.approx(model["measured_ms"] / model["layer_sum_ms"], rel=1e-3)
    assert full.scale == pytest.approx(calibration_ratio(model, full.layer_sum_ms))
    assert full.total_ms == pytest.approx(full.scale * full.layer_sum_ms)
    # ... and prices the calibrating model at exactly its stored measurement (a scale kept to six
    # decimals missed it by up to 1.2e-6 of itself, which failed a CI run).
    assert full.total_ms == pytest.approx(model["measured_ms"], rel=1e-9)
    assert 2 * ratio_digits(0.0123456789 / 2) == pytest.approx(0.0123456789, rel=1e-9)
    assert 2 * round(0.0123456789 / 2, 6) != pytest.approx(0.0123456789, rel=1e-5)
    assert sum(full.per_layer_ms.values()) == pytest.approx(full.total_ms)
    total, per_layer, coverage_tuple = table.predict(analyze(tiny(), SHAPE))
    assert total == pytest.approx(full.total_ms) and coverage_tuple["calibration_model"] == "tiny"
    assert table.predict(analyze(tiny(), SHAPE), calibration="none").total_ms == pytest.approx(full.layer_sum_ms)

    pruned = table.predict_detail(analyze(tiny(8, 24), SHAPE))
    assert pruned.status == {"0": "exact", "1": "fused", "3": "interpolated", "4": "fused", "6": "interpolated", "10": "interpolated"}
    # Not "pruned < full": at 16x16 ORT's kernels below a 16-channel block take a slower path, so 8
    # channels can cost more than 16 (measured); the prediction must follow the table, not MACs.
    assert pruned.total_ms > 0
    assert pruned.total_ms == pytest.approx(pruned.scale * pruned.layer_sum_ms + pruned.offset_ms)
    ms, status = table.predict_layer(analyze(tiny(8, 24), SHAPE).layers[2])
    assert status == "interpolated" and ms > 0

    other_size = table.predict_detail(analyze(tiny(), (1, 3, 20, 20)))
    assert other_size.coverage()["missing"] == 3 and other_size.status["10"] == "exact"  # Linear has no H x W
    assert other_size.coverage()["missing_layers"] == ["0", "3", "6"]
    assert all(other_size.per_layer_ms[n] > 0 for n in ("0", "3", "6"))  # nearest configuration, scaled by MACs


def test_entries_are_priced_net_of_the_node_profilers_cost_per_kernel(recorded, tmp_path, capsys):
    """ONNX Runtime's node profiler adds a fixed cost to every kernel it times, which a network run whole
    does not pay: the recorder stores how many kernels each unit ran, measures the cost on the full model
    before the calibration, and entries are priced net of it once per kernel (never below a quarter of
    their timing); a table whose entries count no kernels keeps its prices."""
    from dataclasses import replace

    from hwcompress.lut.predict import KERNEL_FLOOR

    table = LatencyTable.load(recorded)
    overhead = table.provenance["kernel_overhead_ms"]  # measured: the entries count their kernels
    assert 0 <= overhead < 0.05
    if overhead == 0:  # a kernel sum against a median timed apart: a busy moment can cancel it on a tiny model
        overhead = table.provenance["kernel_overhead_ms"] = 0.0015
        table.invalidate()
    entries = list(table.entries.values())
    assert entries and all(isinstance(e.kernels, int) and e.kernels >= 1 for e in entries)
    predictor = table.predictor
    on_path = [e for e in entries if not predictor.off_path(e.config)]
    assert predictor.kernel_overhead_applied and on_path and table.summary()["entries_priced_per_kernel"] == len(on_path)
    for entry in on_path:
        assert predictor._entry_ms(entry) == pytest.approx(max(entry.median - entry.kernels * overhead, KERNEL_FLOOR * entry.median))
    # The arithmetic, on an entry of three kernels (a hardswish unit: convolution, HardSigmoid, Mul).
    predictor.kernel_overhead_ms = 0.0015
    three = replace(entries[0], median=0.010, kernels=3)
    assert predictor._entry_ms(three) == pytest.approx(0.010 - 3 * 0.0015)
    assert predictor._entry_ms(replace(three, median=0.005)) == pytest.approx(KERNEL_FLOOR * 0.005)  # the floor
    assert predictor._entry_ms(replace(three, kernels=None)) == 0.010  # recorded before counts: as timed
    # An entry in another precision than the table's is priced by that precision's calibration: kept.
    assert predictor._entry_ms(replace(three, config=three.config.with_precision("int8"))) == 0.010
    # Saved and loaded, the counts stay.
    path = tmp_path / "again.lut.json"
    table.save(path)
    assert [e.kernels for e in LatencyTable.load(path).entries.values()] == [e.kernels for e in entries]

    # A table recorded before (no kernel_counts switch) prices every entry as timed, counts or not, and
    # entries recorded into it later store none: one table never prices alike entries two ways.
    from hwcompress.lut.calibration import may_measure_kernel_overhead

    old = LatencyTable.load(recorded)
    del old.provenance["kernel_counts"]
    old.invalidate()
    assert not old.predictor.kernel_overhead_applied
    assert all(old.predictor._entry_ms(e) == e.median for e in old.entries.values())
    older = tmp_path / "older.lut.json"
    for key in list(old.entries)[:3]:
        del old.entries[key]
    for entry in old.entries.values():
        entry.kernels = None  # as it was recorded
    old.save(older)
    resumed = record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, older, model_name="tiny", widths=(0.5,), **GRID)
    assert len(resumed) == len(entries) and all(e.kernels is None for e in resumed.entries.values())
    # ... and the two do not merge (one line, exit code 2), nor does a calibration summed as timed get
    # repriced by a probe that succeeds later.
    code, _, err = run_main(capsys, "lut", "merge", str(recorded), str(older), "--out", str(tmp_path / "m.lut.json"))
    assert code == 2 and "net of the node profiler's cost per kernel" in error_line(err) and str(older) in err
    failed = LatencyTable.load(recorded)
    del failed.provenance["kernel_overhead_ms"]  # as if its probe had failed before the calibration
    assert failed.models and not may_measure_kernel_overhead(failed)
    failed.models = []
    assert may_measure_kernel_overhead(failed)


def test_recording_resumes_without_re_measuring(tmp_path):
    path = tmp_path / "resume.lut.json"
    first: list[str] = []

    def interrupt_after_four(done: int, total: int, label: str) -> None:
        if label:
            first.append(label)
            if len(first) == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, path, calibrate=False, progress=interrupt_after_four, **GRID)
    kept = LatencyTable.load(path)
    assert sorted(e.config.key() for e in kept.entries.values()) == sorted(first)

    second: list[str] = []
    table = record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, path, calibrate=False,
                           progress=lambda d, t, label: second.append(label) if label else None, **GRID)
    assert len(table) == 14 and not set(first) & set(second) and len(first) + len(second) == 14
    third: list[str] = []
    record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, path, calibrate=False,
                   progress=lambda d, t, label: third.append(label) if label else None, **GRID)
    assert third == []

    # The node profiler's own cost is measured on the whole model once per table that records off-path
    # entries (priced net of it), whether or not a calibration is recorded: a table recorded before the
    # probe existed gets it when recorded again; one with neither off-path entries nor a calibration
    # never pays the probe (a calibrated one does: the calibration is summed net of it).
    assert "kernel_overhead_ms" not in LatencyTable.load(path).provenance
    off = tmp_path / "off.lut.json"
    table = record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, off, calibrate=False, off_path=True, **GRID)
    if int(table.predictor.layout[1] or 1) == 1:
        pytest.skip("ONNX Runtime on this CPU reported no channel alignment: nothing is recorded off the path")
    assert isinstance(table.provenance["kernel_overhead_ms"], float)
    del table.provenance["kernel_overhead_ms"]
    table.save(off)
    again = record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, off, calibrate=False, off_path=True, **GRID)
    assert isinstance(again.provenance["kernel_overhead_ms"], float) and len(again) == len(table)
    again.provenance["kernel_overhead_ms"] = 0.5  # one that has it keeps it
    again.save(off)
    kept = record_lut(tiny(), SHAPE, CPU, ort_profiler(), SETTINGS, off, widths=(), off_path=True, **GRID)
    assert kept.provenance["kernel_overhead_ms"] == 0.5


def test_resume_refuses_other_settings(tmp_path, recorded):
    path = tmp_path / "t.lut.json"
    path.write_text(recorded.read_text())
    other = ProfileSettings(runs=3, warmup=1, threads=2, per_layer=False)
    with pytest.raises(UserError, match="threads"):
        record_lut(tiny(), SHAPE, CPU, ort_profiler(), other, path, **GRID)


def test_lut_predictor_follows_the_profiler_contract(recorded, tmp_path):
    """resolve_timing hands out a LutPredictor for --lut FILE: a prediction with runs = 0, per-layer
    rows, coverage, and a refusal for an ONNX-only model (it needs the layers)."""
    from hwcompress.measure.resolve import resolve_timing
    from hwcompress.model.export import export_onnx

    timing = resolve_timing(CPU, recorded)
    assert timing.source == "lut" and not timing.measured and isinstance(timing.profiler, LutPredictor)
    model = tiny()
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, SHAPE, onnx_path, verify=False)
    measurement = timing.profiler.measure(ModelArtifact(onnx_path, SHAPE, model, "tiny"), SETTINGS)
    assert measurement.source == "lut" and measurement.latency.runs == 0 and measurement.latency.median > 0
    assert measurement.latency.p90 >= measurement.latency.median
    assert measurement.coverage["layers"] > 0 and set(measurement.layer_ms) >= {"0", "3"}
    with pytest.raises(UserError, match="needs the model's layers"):
        timing.profiler.measure(ModelArtifact(onnx_path, SHAPE, None, "tiny"), SETTINGS)


def test_onnx_runtime_reports_its_channel_block_and_alignment():
    """The ONNX Runtime plugin reads the NCHWc block and alignment off the runtime's own graph optimiser;
    a new table takes the block as its quantum (source ``runtime``) instead of a timing probe."""
    from hwcompress_profiler_onnxruntime import _runs_blocked, nchwc_layout

    block, alignment = nchwc_layout()
    if block == 1:
        pytest.skip("ONNX Runtime on this CPU has no NCHWc path")
    assert block in (4, 8, 16, 32, 64) and alignment in (1, 2, 4, 8, 16, 32, 64) and alignment <= block
    assert _runs_blocked(block)[1] and not _runs_blocked(block // 2)[1]  # from one block up, reordered
    assert _runs_blocked(block + alignment)[0]
    if alignment > 1:
        assert not _runs_blocked(block + alignment // 2)[0]
    provenance = new_provenance(CPU, ort_profiler(), SETTINGS, 1, TIMING_KERNELS)
    assert provenance["channel_quantum"] == block and provenance["channel_quantum_source"] == "runtime"


def test_layers_off_the_blocked_path_are_named(recorded, tmp_path):
    """A convolution fed a channel count off the runtime's alignment (from one block up), or a grouped
    one of such a count, is named in the coverage and the notes."""
    from hwcompress.lut.keys import LayerConfig
    from hwcompress.lut.predict import between_blocks
    from hwcompress.model.export import export_onnx

    conv = LayerConfig("Conv2d", 1, (8, 8), 18, 16, (3, 3), (1, 1), (1, 1), 1)
    assert between_blocks(conv, 16, 4) and not between_blocks(conv, 16, 2) and not between_blocks(conv, 16, None)
    assert not between_blocks(conv.with_channels(14, 20), 16, 4)  # fewer input channels than a block: read directly
    depthwise = LayerConfig("Conv2d", 1, (8, 8), 18, 18, (3, 3), (1, 1), (1, 1), 18)
    assert between_blocks(depthwise, 16, 4) and not between_blocks(depthwise.with_channels(20, 20), 16, 4)

    table = LatencyTable.load(recorded)
    facts = table.provenance["facts"]
    block, alignment = int(facts.get("channel_block") or 1), int(facts.get("channel_alignment") or 1)
    if alignment == 1:
        pytest.skip("ONNX Runtime on this CPU reported no channel alignment")
    predictor = LutPredictor(table, CPU)
    odd = block + 1
    for (c1, c2), expected in (((block, 2 * block), []), ((odd, odd), ["3", "6"])):
        model = namespace["tiny"](c1, c2)
        path = tmp_path / f"tiny{c1}.onnx"
        export_onnx(model, SHAPE, path, verify=False)
        measurement = predictor.measure(ModelArtifact(path, SHAPE, model, "tiny"), SETTINGS)
        assert measurement.coverage["between_blocks_layers"] == expected
        named = [n for n in measurement.notes if f"not multiples of {alignment}" in n]
        assert bool(named) == bool(expected)
        if expected:
            assert "(3, 6)" in named[0] and "off its blocked path" in named[0]


def test_off_path_recordings_price_counts_off_the_alignment(tmp_path):
    """``lut record --off-path`` adds each convolution one input channel off the alignment; such
    layers are then priced from those entries (their own family, raw counts), not from the blocked
    grid, and are no longer named as unvouched; aligned layers are priced as before."""
    from hwcompress.lut.keys import LayerConfig
    from hwcompress.lut.predict import OFF_PATH, between_blocks
    from hwcompress.model.export import export_onnx

    units = model_units(tiny(32, 32), SHAPE)
    plain = grid_configs(units, 8, 8, points=3)
    added = grid_configs(units, 8, 8, points=3, off_path=(16, 4))
    extra = [c for c, _ in added if c.key() not in {p.key() for p, _ in plain}]
    assert extra and all(between_blocks(c, 16, 4) for c in extra)
    assert {(c.cin + 1, c.cout) for c in extra if not c.depthwise} <= {(p.cin, p.cout) for p, _ in plain}
    assert all(c.cin == c.cout == c.groups for c in extra if c.depthwise)
    assert not [c for c in extra if c.op == "Linear"]

    path = tmp_path / "off.lut.json"
    table = record_lut(tiny(32, 32), SHAPE, CPU, ort_profiler(), SETTINGS, path, model_name="tiny", widths=(0.5,),
                       off_path=True, **GRID)
    facts = table.provenance["facts"]
    block, alignment = int(facts.get("channel_block") or 1), int(facts.get("channel_alignment") or 1)
    if alignment == 1:
        pytest.skip("ONNX Runtime on this CPU reported no channel alignment")
    off = [e for e in table.entries.values() if between_blocks(e.config, block, alignment)]
    assert off, "no off-path entries were recorded"
    families = table.predictor._families()
    assert any(name.endswith(OFF_PATH) for name in families)
    config = off[0].config
    # Exactly recorded: read as it was measured, less what the node profiler adds to each kernel it
    # times (measured on the whole model before the calibration; a whole-model run does not pay it).
    overhead = table.provenance["kernel_overhead_ms"]
    assert 0 <= overhead < 0.05 and table.predictor.kernel_overhead_ms == overhead
    assert table.summary()["kernel_overhead_applied_ms"] == overhead  # lut show says it is taken off
    query = config.with_channels(config.cin, config.cout)
    assert table.lookup(query)[0] == pytest.approx(max(off[0].median - overhead, 0.5 * off[0].median))
    on = next(e for e in table.entries.values() if e.config.op == "Conv2d" and not between_blocks(e.config, block, alignment))
    # Blocked-path entries count their kernels (the recorder read them off the unit's nodes): the cost
    # comes off each, and the calibration was summed with it off (its points were taken after the probe).
    from hwcompress.lut.predict import KERNEL_FLOOR

    assert on.kernels is not None and on.kernels >= 1
    assert table.lookup(on.config)[0] == pytest.approx(max(on.median - on.kernels * overhead, KERNEL_FLOOR * on.median))
    odd = block + 1
    model = tiny(odd, odd)
    onnx_path = tmp_path / "odd.onnx"
    export_onnx(model, SHAPE, onnx_path, verify=False)
    measurement = LutPredictor(table, CPU).measure(ModelArtifact(onnx_path, SHAPE, model, "tiny"), SETTINGS)
    assert measurement.coverage["between_blocks_layers"] == []  # priced from off-path recordings
    assert measurement.coverage["non_layer_ms"] > 0  # its global pool, and a note says so
    assert any("of work between layers" in note for note in measurement.notes)
    # A table recorded with --off-path before the probe: its ratio carries that work, and a note says how
    # to add it (recording the same model again with --off-path).
    older = LatencyTable.from_dict(table.to_dict())
    del older.provenance["non_layer_costs"]
    measured_before = LutPredictor(older, CPU).measure(ModelArtifact(onnx_path, SHAPE, model, "tiny"), SETTINGS)
    assert measured_before.coverage["non_layer_ms"] == 0
    assert any("recorded with --off-path before that work was timed on its own" in n and "--off-path adds it" in n
               for n in measured_before.notes)
    # Off-path entries were timed warm, as the layer runs inside the network: priced as timed, outside
    # the calibration's scale (fitted on blocked-path models, whose flushed layers it corrects).
    from hwcompress.model.analysis import analyze

    specs = analyze(model, SHAPE).layers
    detail = table.predict_detail(specs)
    configs = {s.name: LayerConfig.from_spec(s) for s in specs}
    off_rows = [n for n, c in configs.items() if c is not None and between_blocks(c, block, alignment)]
    on_rows = [n for n, c in configs.items() if c is not None and c.op == "Conv2d" and n not in off_rows]
    assert off_rows and on_rows and detail.scale != pytest.approx(1.0)
    # The calibration's ratio is read at the model's width: its off-path layers counted at the blocked
    # price of the counts above them, not left out (which read it as a narrower model).
    from hwcompress.lut.predict import calibration_ratio

    width = detail.layer_sum_ms - sum(table.lookup(configs[n])[0] for n in off_rows)
    blocked = [table.predictor.blocked_price(configs[n], -1.0) for n in off_rows]
    assert all(b > 0 for b in blocked)
    assert detail.scale == pytest.approx(calibration_ratio(detail.calibration, width + sum(blocked)))
    # Leaving the blocked layout before the first off-path layer (and re-entering it after the last)
    # costs its network a conversion, timed warm at recording and added where the layout changes.
    conversions = table.provenance["layout_conversions"]
    assert conversions["to_plain"]["ms_per_element"] > 0 and conversions["to_blocked"]["ms_per_element"] > 0
    converting = table.predictor.layout_conversion_ms(specs)
    assert list(converting) == [off_rows[0]] and detail.layout_conversion_ms == pytest.approx(converting[off_rows[0]])
    to_plain = conversions["to_plain"]  # its intercept was timed under the node profiler too
    elements = math.prod(specs[[s.name for s in specs].index(off_rows[0])].in_shape)
    assert converting[off_rows[0]] == pytest.approx(max(to_plain["intercept_ms"] - overhead, 0.0) + to_plain["ms_per_element"] * elements)
    for name in off_rows:
        assert detail.per_layer_ms[name] == pytest.approx(table.lookup(configs[name])[0] + converting.get(name, 0.0))
    for name in on_rows:
        assert detail.per_layer_ms[name] == pytest.approx(table.lookup(configs[name])[0] * detail.scale)
    unscaled = sum(table.lookup(configs[n])[0] for n in off_rows)
    # The work between layers (here the global pool before the classifier) is priced from its own
    # probe, outside the scale (hwcompress.lut.nonlayer), and in the total.
    pool = table.provenance["non_layer_costs"]["global_pool"]
    last = [s for s in specs if s.op == "Conv2d"][-1]
    assert detail.non_layer_ms == pytest.approx(max(pool["intercept_ms"] - overhead, 0.0) + pool["per_channel_ms"] * last.out_shape[1]
                                                + pool["per_element_ms"] * math.prod(last.out_shape)) and detail.non_layer_ms > 0
    assert detail.total_ms == pytest.approx((detail.layer_sum_ms - unscaled) * detail.scale + unscaled + detail.layout_conversion_ms
                                            + detail.non_layer_ms)
    # Taken out of the calibration's ratio and added back: the calibrating model is still predicted at
    # its measurement, with the work between its layers priced or (the switch off) carried by the ratio.
    calibrating = analyze(tiny(32, 32), SHAPE).layers
    measured = table.models[0]["measured_ms"]
    priced = table.predict_detail(calibrating)
    assert priced.non_layer_ms > 0 and priced.total_ms == pytest.approx(measured, rel=1e-6)
    table.predictor.price_non_layer = False
    try:
        unpriced = table.predict_detail(calibrating)
        assert unpriced.non_layer_ms == 0 and unpriced.total_ms == pytest.approx(measured, rel=1e-6)
        assert unpriced.scale > priced.scale  # the ratio carried the pool
    finally:
        table.predictor.price_non_layer = True
    aligned = LayerConfig("Conv2d", 1, config.in_hw, block * 2, config.cout, config.kernel, config.stride, config.padding, 1)
    assert not between_blocks(aligned, block, alignment)

    # Off-path layers are timed without the cache flush (a cold start they do not pay in the network);
    # a table recorded before that rule keeps one flush for all its entries.
    from hwcompress.lut.recorder import DEFAULT_CACHE_FLUSH_MB, OFF_PATH_CACHE_FLUSH_MB, Recorder

    assert table.provenance["off_path_cache_flush_mb"] == OFF_PATH_CACHE_FLUSH_MB != DEFAULT_CACHE_FLUSH_MB
    recorder = Recorder(table, ort_profiler(), SETTINGS)
    try:
        assert recorder.settings_for(config).options["cache_flush_mb"] == OFF_PATH_CACHE_FLUSH_MB
        assert recorder.settings_for(aligned).options["cache_flush_mb"] == DEFAULT_CACHE_FLUSH_MB
    finally:
        recorder.close()
    del table.provenance["off_path_cache_flush_mb"]
    recorder = Recorder(table, ort_profiler(), SETTINGS)
    try:
        assert recorder.settings_for(config).options["cache_flush_mb"] == DEFAULT_CACHE_FLUSH_MB
    finally:
        recorder.close()


def grouped_net(width: int = 16, groups: int = 4):
    """A RegNet-like stage: 1x1, a grouped 3x3 (``groups`` groups of ``width`` channels), 1x1."""
    torch.manual_seed(0)
    c = width * groups
    return nn.Sequential(
        nn.Conv2d(3, c, 1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def test_grouped_convolutions_run_blocked_only_on_whole_blocks_per_group():
    """ONNX Runtime runs a grouped (not depthwise) convolution in its blocked layout only when every
    group's input and output channels are whole blocks: RegNet's 16-channel groups that torch-pruning
    narrows to 8 fall off the path on 16-channel blocks although 8 is a multiple of the alignment.
    ``between_blocks`` says what the runtime's optimised graph does."""
    from hwcompress_profiler_onnxruntime import _runs_blocked, nchwc_layout

    from hwcompress.lut.keys import LayerConfig
    from hwcompress.lut.predict import between_blocks

    grouped = LayerConfig("Conv2d", 1, (8, 8), 32, 32, (3, 3), (1, 1), (1, 1), 2)
    assert grouped.grouped and grouped.diagonal and not grouped.depthwise
    assert not between_blocks(grouped, 16, 4)
    assert between_blocks(grouped.with_channels(16, 16), 16, 4)  # 8 per group: aligned, but half a block
    assert between_blocks(grouped.with_channels(40, 40), 16, 4)  # 20 per group
    assert between_blocks(grouped.with_channels(32, 48), 16, 4)  # outputs 24 per group
    assert not between_blocks(grouped.with_channels(16, 16), 8, 4)  # on 8-channel blocks (AVX2) 8 per group is whole
    block, alignment = nchwc_layout()
    if block == 1 or alignment == 1:
        pytest.skip("ONNX Runtime on this CPU has no NCHWc path")
    for groups, width in ((2, block), (2, block // 2), (2, block + alignment), (3, 2 * block), (3, block // 2 + 1)):
        config = LayerConfig("Conv2d", 1, (8, 8), groups * width, groups * width, (3, 3), (1, 1), (1, 1), groups)
        assert _runs_blocked(groups * width, groups)[0] == (not between_blocks(config, block, alignment)), (groups, width)


def test_grouped_convolutions_are_recorded_over_group_widths(tmp_path):
    """A grouped convolution's grid keeps its groups and narrows each of them (what pruning it does), on
    one axis; ``--off-path`` adds each group one channel narrower, and every pair of input and output
    group widths (torch-pruning narrows a group's inputs and outputs apart). A narrowed grouped layer is
    then priced from those entries: not extrapolated, not named as unvouched."""
    from hwcompress.model.export import export_onnx

    units = model_units(grouped_net(16, 4), SHAPE)
    grouped = [c for c, _ in grid_configs(units, 8, 16, points=3) if c.grouped]
    assert {(c.cin, c.cout, c.groups) for c in grouped} == {(32, 32, 4), (64, 64, 4)}
    added = [c for c, _ in grid_configs(units, 8, 16, points=3, off_path=(16, 4)) if c.grouped]
    widths = {7, 8, 15, 16}
    assert {(c.cin // c.groups, c.cout // c.groups) for c in added} == {(a, b) for a in widths for b in widths}

    path = tmp_path / "grouped.lut.json"
    table = record_lut(grouped_net(16, 4), SHAPE, CPU, ort_profiler(), SETTINGS, path, model_name="grouped", widths=(0.5,),
                       points=3, quantum=16, off_path=True)
    facts = table.provenance["facts"]
    block, alignment = int(facts.get("channel_block") or 1), int(facts.get("channel_alignment") or 1)
    if block != 16 or alignment == 1:
        pytest.skip(f"ONNX Runtime on this CPU blocks {block} channels (alignment {alignment}); the case is 16")
    narrowed = grouped_net(8, 4)  # 8 channels per group: off the blocked path, recorded on the grid
    onnx_path = tmp_path / "narrowed.onnx"
    export_onnx(narrowed, SHAPE, onnx_path, verify=False)
    recorded_narrow = next(e.config for e in table.entries.values() if e.config.grouped and e.config.cin == 32)
    assert table.lookup(recorded_narrow)[2:] == ("exact", False)
    assert table.lookup(recorded_narrow.with_channels(48, 48))[2:] == ("interpolated", False)  # 12 per group: between 8 and 15
    # 8 in and 16 out per group (torch-pruning's regnet_x_400mf): recorded, not scaled from 8 -> 8 by its work
    assert table.lookup(recorded_narrow.with_channels(32, 64))[2:] == ("exact", False)
    assert table.lookup(recorded_narrow.with_channels(48, 60))[2:] == ("interpolated", False)  # 12 in, 15 out
    # On the blocked path every group is padded to a whole block: 8 or 15 channels per group run as 16.
    whole_blocks = table.lookup(recorded_narrow.with_channels(64, 64))
    assert whole_blocks[2] == "exact" and not table.predictor.off_path(recorded_narrow.with_channels(64, 64))
    for cin, cout in ((32, 32), (32, 64), (60, 60)):
        assert table.predictor.blocked_price(recorded_narrow.with_channels(cin, cout), -1.0) == pytest.approx(whole_blocks[0])
    # A calibration model with a layer off the path (8 per group): its point is stored at the sum a
    # prediction reads the ratio at, its ratio over the layers the scale multiplies.
    from hwcompress.lut.calibration import calibration_record
    from hwcompress.measure.contract import LatencyStats
    from hwcompress.model.analysis import analyze

    specs = analyze(grouped_net(8, 4), SHAPE).layers
    detail = table.predict_detail(specs, calibration="none")
    assert detail.as_timed_ms > 0 and detail.ratio_sum_ms > detail.layer_sum_ms - detail.as_timed_ms
    whole = LatencyStats.from_samples([0.05, 0.05, 0.05])
    record = calibration_record(table, SHAPE, "narrow", "f", [{"width": 1.0, "macs": 1, "specs": specs, "wholes": [whole]}], [])
    point = record["points"][0]
    assert point["layer_sum_ms"] == pytest.approx(detail.ratio_sum_ms, abs=1e-6)
    assert point["ratio"] == pytest.approx((0.05 - detail.as_timed_ms) / (detail.layer_sum_ms - detail.as_timed_ms), rel=1e-3)
    predictor = LutPredictor(table, CPU)
    measurement = predictor.measure(ModelArtifact(onnx_path, SHAPE, narrowed, "grouped"), SETTINGS)
    assert measurement.coverage["between_blocks_layers"] == []
    assert measurement.coverage["extrapolated"] == 0

    # A grouped layer narrowed apart (8 in, 16 out per group) is exact here; a table without those widths
    # (recorded before --off-path took every pair) scales it by work, and says how to record them.
    apart = nn.Sequential(nn.Conv2d(3, 32, 1), nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.Conv2d(64, 16, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    artifact = ModelArtifact(onnx_path, SHAPE, apart, "grouped")
    assert not any("apart" in note for note in LutPredictor(table, CPU).measure(artifact, SETTINGS).notes)
    for key in [k for k, e in table.entries.items() if e.config.grouped and e.config.cin != e.config.cout]:
        del table.entries[key]
    table.invalidate()
    notes = LutPredictor(table, CPU).measure(artifact, SETTINGS).notes
    assert any("1 grouped convolutions narrow" in note and "lut record --off-path" in note for note in notes), notes


# --------------------------------------------------------------------------------------------------
# Command line


def test_show_and_merge(recorded, tmp_path, capsys):
    code, out, err = run_main(capsys, "lut", "show", str(recorded), "--json", "-")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["entries"] == 14 and summary["provenance"]["device"] == "cpu" and summary["models"][0]["name"] == "tiny"
    code, out, _ = run_main(capsys, "lut", "show", str(recorded))
    assert code == 0 and "channel quantum" in out and "calibration" in out

    small = tmp_path / "small.lut.json"
    record_lut(tiny(), (1, 3, 8, 8), CPU, ort_profiler(), SETTINGS, small, calibrate=False, points=1, quantum=8)
    merged = tmp_path / "merged.lut.json"
    code, _, err = run_main(capsys, "lut", "merge", str(recorded), str(small), "--out", str(merged))
    assert code == 0, err
    table = LatencyTable.load(merged)
    assert len(table) == 14 + len(LatencyTable.load(small)) - 1  # the Linear 32 -> 10 is in both
    assert [m["name"] for m in table.models] == ["tiny"]
    # What the device measured (the node profiler's own cost) is adopted from the other table where
    # this one lacks it (recorded before the probe existed), and kept where both have it.
    lacking, having = LatencyTable.load(recorded), LatencyTable.load(small)
    # A calibrated recording measures it (its entries count their kernels; the calibration is summed net
    # of it); the one without a calibration has no whole model to measure it on.
    assert "kernel_overhead_ms" in lacking.provenance and "kernel_overhead_ms" not in having.provenance
    del lacking.provenance["kernel_overhead_ms"]
    having.provenance["kernel_overhead_ms"] = 0.0015
    # A table that prices per kernel, whose calibration was summed without it (its probe failed), does
    # not take it up: its entries would be priced two ways.
    assert "kernel_overhead_ms" not in lacking.merge(having).provenance
    for table_ in (lacking, having):  # as tables recorded before kernel counts (and the probe) existed
        del table_.provenance["kernel_counts"]
    assert lacking.merge(having).provenance["kernel_overhead_ms"] == 0.0015
    having.provenance["kernel_overhead_ms"] = 0.002
    with pytest.warns(UserWarning, match="kernel_overhead_ms"):
        assert lacking.merge(having).provenance["kernel_overhead_ms"] == 0.0015  # its own is kept

    document = json.loads(small.read_text())
    document["provenance"]["threads"] = 2
    small.write_text(json.dumps(document))
    code, _, err = run_main(capsys, "lut", "merge", str(recorded), str(small), "--out", str(merged))
    assert code == 2 and "threads differs" in error_line(err) and str(small) in err



def test_merge_never_replaces_a_file_it_did_not_write(recorded, tmp_path, capsys):
    """`lut merge --out` writes a new file, one of its inputs (which then takes the others in), or an existing
    LUT with --overwrite. A file that is not a LUT is refused in one line before anything is written; it
    was replaced ("wrote notes.txt: 14 entries"), and replacing an input or another LUT was silent."""
    document = json.loads(recorded.read_text())
    first, second = tmp_path / "first.lut.json", tmp_path / "second.lut.json"
    first.write_text(json.dumps({**document, "entries": document["entries"][:5]}))
    second.write_text(json.dumps({**document, "entries": document["entries"][5:], "models": []}))
    inputs = [str(first), str(second)]

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    other = tmp_path / "other.lut.json"
    other.write_bytes(recorded.read_bytes())
    for target, extra, expected in ((notes, (), "is not a hwcompress LUT"), (other, (), "--overwrite"),
                                    (notes, ("--overwrite",), "is not a hwcompress LUT")):
        before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
        code, _, err = run_main(capsys, "lut", "merge", *inputs, "--out", str(target), *extra)
        line = error_line(err)
        assert code == 2 and str(target) in line and expected in line and "another --out" in line
        assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # nothing written, no temporary file

    code, _, err = run_main(capsys, "lut", "merge", *inputs, "--out", str(other), "--overwrite")
    assert code == 0 and f"wrote {other} (replacing the LUT there)" in err
    assert len(LatencyTable.load(other)) == 14 and LatencyTable.load(other).provenance["merged_from"] == inputs

    code, _, err = run_main(capsys, "lut", "merge", *inputs, "--out", str(first))  # into one of its inputs: said, and safe
    assert code == 0 and f"wrote {first} (it was one of the 2 files: it now holds their merge)" in err
    merged = LatencyTable.load(first)
    assert len(merged) == 14 and [m["name"] for m in merged.models] == ["tiny"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["first.lut.json", "notes.txt", "other.lut.json", "second.lut.json"]


def test_lut_show_names_the_precisions_it_holds(recorded, tmp_path, capsys):
    """A table with fp32 and int8 entries showed only "precision fp32" and three identical-looking calibration
    rows (fp32, int8, transitions): the header now counts the entries per precision, and every calibration
    row names its precision."""
    document = json.loads(recorded.read_text())
    model = document["models"][0]
    document["schema"] = "hwcompress.lut/2"
    document["entries"] += [{**e, "precision": "int8", "median": e["median"] / 2} for e in document["entries"][:9]]
    transitions = {**{k: v for k, v in model.items() if k != "points"}, "precision": "transitions", "ms_per_element": 2e-6}
    document["models"] += [{**model, "precision": "int8"}, transitions]
    path = tmp_path / "mixed.lut.json"
    path.write_text(json.dumps(document))

    code, out, err = run_main(capsys, "lut", "show", str(path))
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    assert "fp32 (base) 14 entries, int8 9 entries" in rows["precisions"] and "base precision fp32" in rows["settings"]
    labels = [[cell.strip() for cell in line.split("│")[1:3]] for line in out.splitlines() if line.startswith("│ tiny")]
    assert labels == [["tiny", "fp32"], ["tiny", "int8"], ["tiny", "transitions (mixed)"]]
    assert "tiny transitions: the model timed with float and int8 layers mixed" in out and "2.000 ms per million elements" in out

    code, out, err = run_main(capsys, "lut", "show", str(path), "--json", "-")
    assert code == 0 and json.loads(out)["precision_entries"] == {"fp32": 14, "int8": 9}, err
    # An int8 copy of a shape is the same layer shape (it counted twice before).
    assert json.loads(out)["families"] == LatencyTable.load(recorded).summary()["families"]
    code, out, _ = run_main(capsys, "lut", "show", str(recorded))  # one precision: said as well
    assert "fp32 (base) 14 entries" in out and "base precision" not in out
    # Merged, one model timed in fp32, int8 and mixed is one calibrated model with three records.
    merged = tmp_path / "merged.lut.json"
    code, _, err = run_main(capsys, "lut", "merge", str(path), str(recorded), "--out", str(merged))
    assert code == 0 and "1 calibrated model(s) (3 whole-model records)" in err, err


@pytest.mark.parametrize("content", ['{"entries": []}', '{"schema": "other"}', "[1, 2]"])
def test_a_file_that_is_not_a_lut_names_both_schemas(content, tmp_path, capsys):
    path = tmp_path / "notes.json"
    path.write_text(content)
    code, _, err = run_main(capsys, "lut", "show", str(path))
    line = error_line(err)
    assert code == 2 and str(path) in line and "not a hwcompress LUT" in line
    assert "hwcompress.lut/1" in line and "hwcompress.lut/2" in line


def _mutations():
    def provenance(key, value):
        def apply(doc):
            if value is None:
                del doc["provenance"][key]
            else:
                doc["provenance"][key] = value
        return apply

    def entry(key, value):
        def apply(doc):
            if value is None:
                del doc["entries"][0][key]
            else:
                doc["entries"][0][key] = value
        return apply

    return {
        "wrong schema": (lambda doc: doc.update(schema="hwcompress.lut/9"), "schema"),
        "not a LUT": (lambda doc: doc.update(schema="something-else"), "not a hwcompress LUT"),
        "no provenance field": (provenance("runtime_version", None), "runtime_version"),
        "bad provenance type": (provenance("batch", "one"), "batch"),
        "entry without median": (entry("median", None), "median"),
        "negative latency": (entry("median", -1.0), "median"),
        "NaN latency": (entry("p90", float("nan")), "p90"),
        "entry with bad cin": (entry("cin", "16"), "cin"),
        "entry with no kernels": (entry("kernels", 0), "kernels"),
        # fields the entry's key is built from: once silently keyed to what no layer matches
        "entry with a string kernel": (entry("kernel", "3"), "field 'kernel'"),
        "entry with a short in_hw": (entry("in_hw", [16]), "field 'in_hw'"),
        "entry with a fractional stride": (entry("stride", [1.5, 1.5]), "field 'stride'"),
        "entry with a negative padding": (entry("padding", [-1, -1]), "field 'padding'"),
        "no entries": (lambda doc: doc.pop("entries"), "entries"),
        "another device": (provenance("device", "raspberry-pi-5"), "recorded for device 'raspberry-pi-5'"),
        "another runtime version": (provenance("runtime_version", "0.0.1"), "0.0.1"),
        "another precision": (provenance("precision", "fp16"), "precision"),
        "other threads": (provenance("threads", 4), "thread"),
        "other batch": (provenance("batch", 8), "batch"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_bad_luts_are_one_line_errors(case, recorded, tmp_path, capsys, tinynets):
    mutate, expected = _mutations()[case]
    document = json.loads(recorded.read_text())
    mutate(document)
    path = tmp_path / "bad.lut.json"
    path.write_text(json.dumps(document))
    code, _, err = run_main(capsys, "profile", "--device", "cpu", "--lut", str(path), "-m", tinynets, "--input-shape", "1,3,16,16", "-q")
    line = error_line(err)
    assert code == 2 and expected in line and str(path) in line


@pytest.mark.parametrize("content", ["", "not json", '{"schema": "hwcompress.lut/1", "provenance": {', "[1, 2]", None, "folder"])
def test_unreadable_luts_are_one_line_errors(content, recorded, tmp_path, capsys, tinynets):
    path = tmp_path / "broken.lut.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content if content != "not json" else recorded.read_text()[: len(recorded.read_text()) // 2])
    commands = [["lut", "show", str(path)], ["lut", "merge", str(path), str(recorded), "--out", str(tmp_path / "m.json")]]
    if content != "folder":  # `profile --lut` rejects a folder in click's own usage message
        commands.append(["profile", "--lut", str(path), "-m", tinynets, "--input-shape", "1,3,16,16", "-q"])
    for args in commands:
        code, _, err = run_main(capsys, *args)
        assert code == 2 and str(path) in error_line(err)


def test_profile_jetson_needs_a_lut_recorded_there(cli, tmp_path, tinynets):
    result = cli("profile", "--device", "jetson", "-m", tinynets, "--input-shape", "1,3,16,16", cwd=tmp_path)
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "needs a LUT recorded on the device" in line and "hwcompress lut record --device jetson" in line


def test_lut_record_off_path_from_the_cli_stores_layout_conversions(tmp_path, capsys, tinynets):
    """The CLI's profiler is the plugin behind a guard: the guard must pass the optional
    ``layout_conversions`` probe through (it once hid it, so CLI recordings had no conversion rates
    while a test calling the plugin directly had them)."""
    from hwcompress.devices import resolve_device
    from hwcompress.lut.record import valid_conversion_rates
    from hwcompress.measure.resolve import resolve_timing

    guarded = resolve_timing(resolve_device("cpu")).profiler
    assert callable(getattr(guarded, "layout_conversions", None))
    fit = {"intercept_ms": 0.002, "ms_per_element": 2e-7}
    assert valid_conversion_rates({"to_plain": fit, "to_blocked": fit})
    assert not valid_conversion_rates({"to_plain": 0.2, "to_blocked": fit})  # stored, it broke every prediction
    assert not valid_conversion_rates({"to_plain": {**fit, "ms_per_element": float("nan")}, "to_blocked": fit})
    table_path = tmp_path / "cpu-off.lut.json"
    code, _, err = run_main(capsys, "lut", "record", "--device", "cpu", "-m", tinynets, "--input-shape", "1,3,16,16",
                            "--out", str(table_path), "--runs", "3", "--warmup", "1", "--points", "2", "--quantum", "8",
                            "--calibration-widths", "0.5", "--off-path", "-q")
    assert code == 0, err
    provenance = LatencyTable.load(table_path).provenance
    if not provenance["facts"].get("channel_alignment"):
        pytest.skip("ONNX Runtime on this CPU reported no blocked layout")
    rates = provenance["layout_conversions"]
    assert rates["to_plain"]["ms_per_element"] > 0 and rates["to_blocked"]["ms_per_element"] > 0
    from hwcompress.lut.nonlayer import valid_non_layer_rates

    assert callable(getattr(guarded, "non_layer_costs", None)) and valid_non_layer_rates(provenance["non_layer_costs"])


def test_profile_jetson_with_a_lut(tmp_path, capsys, tinynets, recorded):
    # A named stand-in for the absent board: the Jetson's name, measured here with ONNX Runtime.
    board = tmp_path / "fake-jetson.toml"
    board.write_text(
        'name = "jetson-orin-nano"\nprofiler = "onnxruntime"\ndetect = { always = true }\n'
        '[settings]\nthreads = 1\nprecision = "fp32"\n'
    )
    table = tmp_path / "jetson.lut.json"
    code, _, err = run_main(capsys, "lut", "record", "--device-file", str(board), "-m", tinynets, "--input-shape", "1,3,16,16",
                            "--out", str(table), "--runs", "3", "--warmup", "1", "--points", "2", "--quantum", "8",
                            "--calibration-widths", "0.5", "-q")
    assert code == 0, err
    assert LatencyTable.load(table).provenance["device"] == "jetson-orin-nano"

    code, out, err = run_main(capsys, "profile", "--device", "jetson", "--lut", str(table), "-m", tinynets,
                              "--input-shape", "1,3,16,16", "--precision", "fp32", "--json", "-", "-q")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["latency_ms"]["source"] == "lut" and doc["latency_ms"]["runs"] == 0 and doc["latency_ms"]["median"] > 0
    assert doc["device"]["name"] == "jetson-orin-nano" and doc["profiler"] == "lut"
    assert doc["coverage"]["exact"] == 4 and doc["coverage"]["missing"] == 0
    assert any("tensorrt" in note for note in doc["notes"]) and any(note.startswith("calibrated with") for note in doc["notes"])
    assert all(row["latency_ms"] is not None for row in doc["layers"])

    # The catalog's Jetson runs fp16: a fp32 LUT is refused unless fp32 is asked for explicitly.
    code, _, err = run_main(capsys, "profile", "--device", "jetson", "--lut", str(table), "-m", tinynets, "--input-shape", "1,3,16,16", "-q")
    assert code == 2 and "precision fp32" in error_line(err)
    # A LUT recorded on this CPU is not a Jetson's.
    code, _, err = run_main(capsys, "profile", "--device", "jetson", "--lut", str(recorded), "-m", tinynets,
                            "--input-shape", "1,3,16,16", "--precision", "fp32", "-q")
    assert code == 2 and "recorded for device 'cpu'" in error_line(err)
    # Recording for the real Jetson from here is refused with the command to run there.
    code, _, err = run_main(capsys, "lut", "record", "--device", "jetson", "-m", tinynets, "--out", str(tmp_path / "x.json"), "-q")
    assert code == 2 and "run it there" in error_line(err)


def test_ensure_lut_caches_and_replaces_stale_tables(tmp_path):
    path = tmp_path / "cache.lut.json"
    first = ensure_lut(tiny(), SHAPE, CPU, SETTINGS, path=path, profiler=ort_profiler(), calibrate=False, points=1, quantum=8)
    assert len(first) == 4 and path.exists()
    stale = json.loads(path.read_text())
    stale["provenance"]["runtime_version"] = "0.0.1"
    path.write_text(json.dumps(stale))
    again = ensure_lut(tiny(), SHAPE, CPU, SETTINGS, path=path, profiler=ort_profiler(), calibrate=False, points=1, quantum=8)
    assert again.provenance["runtime_version"] != "0.0.1" and len(again) == 4


def test_plan_is_timed_without_pytorch(tmp_path, capsys, tinynets):
    """`lut plan` exports here; `lut record --plan` times it where PyTorch is missing (a phone)."""
    import subprocess
    import sys

    plan = tmp_path / "plan"
    code, _, err = run_main(capsys, "lut", "plan", "-m", tinynets, "--input-shape", "1,3,16,16", "--out", str(plan),
                            "--points", "3", "--quantum", "8", "--calibration-widths", "0.5")
    assert code == 0, err
    out = tmp_path / "planned.lut.json"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None          # any `import torch` now fails, as on a device without it
        from hwcompress.cli import main
        main(["lut", "record", "--plan", {str(plan)!r}, "--out", {str(out)!r}, "--runs", "3", "--warmup", "1", "-q"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = LatencyTable.load(out)
    assert len(table) == 14 and table.provenance["plan"]["model"] == "lut_tinynets:tiny"
    assert [p["width"] for p in table.models[0]["points"]] == [1.0, 0.5]
    coverage = table.predict_detail(analyze(tiny(), SHAPE)).coverage()
    assert coverage["exact"] == 4 and coverage["missing"] == 0

    (plan / "units" / "0000.onnx").unlink()
    code, _, err = run_main(capsys, "lut", "record", "--plan", str(plan), "--out", str(tmp_path / "x.json"), "-q")
    assert code == 2 and "0000.onnx is missing" in error_line(err)


def test_compare_predicts_from_a_lut(recorded, tinynets):
    """Off the device, `compare` predicts every model from the LUT: a ratio of predictions."""
    from hwcompress.measure.compare import compare_models
    from hwcompress.measure.profile import profile_model

    models = [tinynets, tinynets.replace(":tiny", ":half")]
    doc = compare_models(models, lut=str(recorded), input_shape=SHAPE).to_dict()
    assert doc["schema"] == "hwcompress.compare/1" and doc["source"] == "lut" and doc["rounds"] == 0
    full, half = doc["models"]
    # Not "half < full": at 16x16, ONNX Runtime's kernels below a 16-channel block take a slower path.
    predicted = [profile_model(m, lut=str(recorded), input_shape=SHAPE, per_layer=False).latency.median for m in models]
    assert [full["latency_ms"], half["latency_ms"]] == pytest.approx(predicted)
    assert full["ratio"] == 1.0 and half["ratio"] == pytest.approx(predicted[1] / predicted[0])
    assert half["macs"] < full["macs"] and half["params"] < full["params"]


def test_quantum_probe_takes_the_median_of_three_passes(monkeypatch):
    """One stray timing in one pass would turn a 16-channel staircase into a step of 8."""
    from hwcompress.measure.contract import LatencyStats

    calls = {"n": 0}

    def staircase(self, config, source=None):
        calls["n"] += 1
        time = 0.3 + 0.1 * ((config.cout + 15) // 16)
        if calls["n"] == 4:  # the first pass's 88-channel point comes out fast
            time -= 0.06
        return LatencyStats.from_samples([time])

    monkeypatch.setattr(Recorder, "time_config", staircase)
    table = LatencyTable(new_provenance(CPU, ort_profiler(), SETTINGS, 1, TIMING_KERNELS))
    quantum, times = Recorder(table, ort_profiler(), SETTINGS).detect_quantum(1, 8)
    assert calls["n"] == 9 * QUANTUM_PROBE_PASSES and quantum == 16


def test_quantum_fit_is_not_decided_by_one_stray_point():
    """Probes recorded on the development machine (ONNX Runtime, AVX-512: blocks of 16 channels), each
    with one point off the staircase, which a least-squares fit read as a step of 8."""
    counts = [64 + 8 * i for i in range(9)]
    one_low = [0.344, 0.439, 0.452, 0.496, 0.505, 0.505, 0.562, 0.63, 0.632]
    one_high = [0.3205, 0.436, 0.438, 0.4455, 0.482, 0.587, 0.6, 0.6355, 0.673]
    assert fit_quantum(counts, one_low, 8) == 16 and fit_quantum(counts, one_high, 8) == 16
    linear_with_a_stray = [1.0 + 0.01 * c + (0.03 if c == 88 else 0.0) for c in counts]
    assert fit_quantum(counts, linear_with_a_stray, 8) == 8


def test_a_calibration_checks_itself():
    """A calibration whose narrower copies measured slower, whose whole-model timings wandered, or whose
    ratios disagree across widths says so (like the issue's recording: x1.57 / 1.70 / 0.53 / 0.41)."""
    from hwcompress.lut.calibration import _unsettled, calibration_checks

    def row(width, measured, layer_sum, measurements):
        return {"width": width, "measured_ms": measured, "layer_sum_ms": layer_sum, "ratio": measured / layer_sum,
                "measurements_ms": measurements}

    good = {"points": [row(1.0, 2.0, 2.2, [1.9, 2.0, 2.1]), row(0.75, 1.5, 1.7, [1.4, 1.5, 1.6]),
                       row(0.5, 1.0, 1.2, [1.0, 1.0, 1.1]), row(0.3, 0.7, 0.9, [0.7, 0.7, 0.8])]}
    assert calibration_checks(good) == []
    bad = {"points": [row(1.0, 1.57, 1.0, [1.5, 1.6]), row(0.75, 1.80, 1.0, [1.8, 1.8]),
                      row(0.5, 0.53, 1.0, [0.3, 1.8]), row(0.3, 0.41, 1.0, [0.4, 0.42])]}
    problems = calibration_checks(bad)
    assert any("width 0.75 measured slower" in p for p in problems)
    assert any("varied 6.0x" in p for p in problems)
    assert any("ratios across widths range 0.41-1.80" in p for p in problems)

    class Timing:
        def __init__(self, median):
            self.median = median

    settled = [{"width": 1.0, "wholes": [Timing(2.0), Timing(2.05), Timing(1.98)]},
               {"width": 0.5, "wholes": [Timing(1.0), Timing(1.02), Timing(0.99)]}]
    assert not _unsettled(settled)
    assert _unsettled([{**settled[0]}, {"width": 0.5, "wholes": [Timing(1.0), Timing(1.6), Timing(1.0)]}])  # wandered
    assert _unsettled([{"width": 1.0, "wholes": [Timing(1.0)] * 3}, {"width": 0.5, "wholes": [Timing(1.5)] * 3}])  # order


def test_lut_show_warns_about_a_calibration_that_failed_its_checks(recorded, tmp_path, capsys):
    doc = json.loads(Path(recorded).read_text())
    assert isinstance(doc["models"][0]["checks"], list)  # recorded with its checks
    # What other processes on this machine took during the recording (hwcompress/measure/competition.py).
    competition = doc["models"][0]["competition"]
    from hwcompress.measure.competition import MIN_SECONDS

    assert competition["cores"] >= 1 and competition["seconds"] > 0
    assert (competition["other_cpu_cores"] is None) == (competition["seconds"] < MIN_SECONDS)  # too short to judge: None
    # A half-width copy measured slower than the full model, and a recording beside a busy process: the checks
    # (re-evaluated on the calibration as predictions read it) flag both.
    points = doc["models"][0]["points"]
    points[1]["measured_ms"] = points[0]["measured_ms"] * 1.5
    doc["models"][0]["competition"] = {**competition, "waited_share": 0.4, "other_cpu_cores": 1.2}
    path = tmp_path / "flagged.lut.json"
    path.write_text(json.dumps(doc))
    code, out, err = run_main(capsys, "lut", "show", str(path))
    assert code == 0, err
    text = " ".join((out + err).split())
    assert "measured slower" in text and "--passes 2" in text
    assert "waited 40% of its time for a CPU held by other processes" in text and "quieter machine" in text


def test_a_rows_time_scale_charges_its_share(recorded):
    """The cost model's rows below a runtime block carry ``time_scale``; the prediction charges that share
    of the looked-up time (and the report's own rows, at 1.0, are unchanged)."""
    import dataclasses

    table = LatencyTable.load(recorded)
    rows = analyze(tiny(), (1, 3, 8, 8)).layers
    whole = table.predict_detail(rows, calibration="none")
    halved = table.predict_detail([dataclasses.replace(r, time_scale=0.5) for r in rows], calibration="none")
    assert halved.layer_sum_ms == pytest.approx(whole.layer_sum_ms / 2) and whole.layer_sum_ms > 0
    assert "time_scale" not in rows[0].to_dict()


# --------------------------------------------------------------------------------------------------
# Refusals found by the user audit (lut plan/record options, plan folders, far predictions, --runs)


@pytest.mark.parametrize("command", ["plan", "record"])
@pytest.mark.parametrize("option", [("--quantum", "-8"), ("--quantum", "0"), ("--min-ratio", "0"), ("--min-ratio", "5"),
                                    ("--points", "0"), ("--calibration-widths", "1.5,-1")])
def test_plan_and_record_refuse_bad_grid_options(command, option, tmp_path, capsys, tinynets):
    """`lut plan` checks its grid options as `lut record` does (one helper), and both refuse a quantum below 1,
    which once wrote a LUT every reader then refused."""
    out = tmp_path / ("plan" if command == "plan" else "x.lut.json")
    code, _, err = run_main(capsys, "lut", command, "-m", tinynets, "--input-shape", "1,3,16,16", "--out", str(out), *option,
                            "--no-calibration")
    assert code == 2 and option[0] in error_line(err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["lut_tinynets.py"]


def test_plan_never_replaces_files_it_did_not_write(tmp_path, capsys, tinynets, monkeypatch):
    """`lut plan --out` writes a new or empty folder, or replaces an earlier plan; a folder holding anything
    else is refused before anything is written, and a failed export leaves nothing behind."""
    import hwcompress.lut.record as record_module

    args = ["lut", "plan", "-m", tinynets, "--input-shape", "1,3,16,16", "--points", "1", "--quantum", "8", "--no-calibration"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"my": "own manifest"}')
    code, _, err = run_main(capsys, *args, "--out", str(mine))
    assert code == 2 and str(mine) in error_line(err) and "manifest.json" in error_line(err)
    assert (mine / "manifest.json").read_text() == '{"my": "own manifest"}' and sorted(p.name for p in mine.iterdir()) == ["manifest.json"]

    plan = tmp_path / "plan"
    plan.mkdir()  # empty: fine
    assert run_main(capsys, *args, "--out", str(plan))[0] == 0
    first = json.loads((plan / "manifest.json").read_text())
    assert run_main(capsys, *args, "--out", str(plan), "--points", "2")[0] == 0  # an earlier plan is replaced
    again = json.loads((plan / "manifest.json").read_text())
    assert again["grid"]["points"] == 2 and len(again["units"]) > len(first["units"])
    assert all((plan / unit["onnx"]).is_file() for unit in again["units"])

    (plan / "units" / "notes.txt").write_text("mine")  # a plan with a file of the user's in it
    code, _, err = run_main(capsys, *args, "--out", str(plan))
    assert code == 2 and "units/notes.txt" in error_line(err) and (plan / "units" / "notes.txt").read_text() == "mine"
    assert json.loads((plan / "manifest.json").read_text()) == again

    def broken(*_args, **_kwargs):
        raise UserError("the model cannot be exported to ONNX: boom")

    monkeypatch.setattr(record_module, "export_onnx", broken)
    (plan / "units" / "notes.txt").unlink()
    code, _, err = run_main(capsys, *args, "--out", str(tmp_path / "new" / "plan"))
    assert code == 2 and "boom" in error_line(err) and not (tmp_path / "new").exists()
    code, _, err = run_main(capsys, *args, "--out", str(plan))
    assert code == 2 and json.loads((plan / "manifest.json").read_text()) == again  # the earlier plan as it was
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["lut_tinynets.py", "mine", "plan"]


FARNETS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from lut_tinynets import tiny

    def uncovered():  # no layer of a shape the tiny net's LUT holds, or within 10x of one by work
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 64, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1000)).eval()

    def wide_head():  # the tiny net's layers, but 1000 classes: its Linear lies 100x beyond the recorded 32 -> 10
        model = tiny()
        model[-1] = nn.Linear(32, 1000)
        return model
    """
)


def test_profile_refuses_a_lut_that_covers_none_of_the_model(recorded, tmp_path, capsys, tinynets):
    """A prediction resting on no measured configuration of the model (every layer missing, or scaled by work
    from entries more than 10x away) is refused with the recording to make; one that rests partly on such
    layers names them in a warning (it came back ~600x too high with only a coverage note)."""
    (tmp_path / "lut_farnets.py").write_text(FARNETS)
    common = ["--device", "cpu", "--lut", str(recorded), "--input-shape", "1,3,16,16", "-q"]
    code, _, err = run_main(capsys, "profile", *common, "-m", "lut_farnets:uncovered")
    line = error_line(err)
    assert code == 2 and "covers none of the 2 layers" in line
    assert f"hwcompress lut record --device cpu --model lut_farnets:uncovered --input-shape 1,3,16,16 --out {recorded}" in line
    code, _, err = run_main(capsys, "compare", "lut_farnets:uncovered", tinynets, *common)
    assert code == 2 and "covers none" in error_line(err)

    with pytest.warns(UserWarning, match=r"1 of the 4 layers of lut_farnets:wide_head .* \(10 100x\)") as warned:
        code, out, err = run_main(capsys, "profile", *common, "-m", "lut_farnets:wide_head", "--json", "-")
    assert code == 0, err
    assert len(warned) == 1 and str(warned[0].message) in json.loads(out)["notes"]
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # the model the LUT was recorded for: no such warning
        warnings.simplefilter("always")
        code, _, err = run_main(capsys, "profile", *common, "-m", tinynets, "--json", str(tmp_path / "p.json"))
    assert code == 0 and not [w for w in caught if "scaled by work" in str(w.message)], err


def test_record_into_a_lut_keeps_its_runs(tmp_path, capsys, tinynets):
    """Recording into an existing LUT times new entries with the table's --runs and --warmup; another value
    is refused (it was taken for a resume: nothing re-timed, the provenance still saying the old runs)."""
    table = tmp_path / "t.lut.json"
    args = ["lut", "record", "-m", tinynets, "--input-shape", "1,3,16,16", "--out", str(table), "--points", "1",
            "--quantum", "8", "--calibration-widths", "", "-q"]
    assert run_main(capsys, *args, "--runs", "3", "--warmup", "1")[0] == 0
    recorded = table.read_bytes()
    for option in (("--runs", "5"), ("--warmup", "2")):
        code, _, err = run_main(capsys, *args, *option)
        line = error_line(err)
        assert code == 2 and f"recorded with {option[0]} " in line and f"drop {option[0]}" in line and "--overwrite" in line
        assert table.read_bytes() == recorded
    code, _, err = run_main(capsys, *[a.replace(":tiny", ":half") for a in args])  # another model, no --runs: the table's
    assert code == 0, err
    extended = LatencyTable.load(table)
    assert len(extended) > len(LatencyTable.from_dict(json.loads(recorded))) and extended.provenance["runs"] == 3
    assert {e.runs for e in extended.entries.values()} == {3}


def test_lut_record_never_replaces_or_extends_a_file_that_is_not_a_lut(tmp_path, capsys, tinynets):
    """`lut record --overwrite` replaced any --out (the table was saved over it unread); now a file that
    is not a LUT is refused before anything is timed, with or without --overwrite, and left as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main(capsys, "lut", "record", "--device", "cpu", "-m", tinynets, "--input-shape", "1,3,16,16",
                                "--out", str(notes), "--runs", "3", "--warmup", "1", "--points", "2", "--quantum", "8", "-q", *extra)
        assert code == 2 and "is not a hwcompress LUT" in error_line(err) and "give another --out" in error_line(err)
        assert notes.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["lut_tinynets.py", "notes.txt"]
