"""Tests of the NVIDIA GPU profiler plugin (``tensorrt`` and ``cuda``).

Most tests need no GPU: engine-cache keys, option and precision validation, availability reasons,
NVML facts without NVML (and with a fake NVML), Jetson facts from fake board files, per-layer time
aggregation, the real entry point and CLI. Tests marked ``gpu`` / ``tensorrt`` build and time real
engines; conftest.py skips them, with the reason, where there is no GPU or no TensorRT.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from importlib import metadata
from pathlib import Path

import hwcompress_profiler_tensorrt as plugin
import pytest
from hwcompress_profiler_tensorrt import engine, gpu_facts, jetson
from hwcompress_profiler_tensorrt.engine_cache import EngineCache, engine_cache_dir, engine_cache_key
from hwcompress_profiler_tensorrt.layer_times import (
    LayerTimeRecorder,
    aggregate_layer_times,
    layer_nodes,
    primary_node,
    unit_run_times,
)
from hwcompress_profiler_tensorrt.options import GpuOptions, check_precision, parse_options
from hwcompress_profiler_tensorrt.timing import coefficient_of_variation_note, warm_up

from hwcompress.errors import UserError
from hwcompress.measure.contract import ModelArtifact, ProfileSettings

TRT_REASON = "tensorrt is not installed; pip install 'hwcompress-profiler-tensorrt[tensorrt]'"
GPU_REASON = "no NVIDIA GPU visible (torch.cuda.is_available() is False)"


# ----------------------------------------------------------------------------------------------
# small ONNX files built with onnx.helper (no export, no torch)


def conv_onnx(path: Path, *, qdq: bool = False, dynamic_batch: bool = False, cin: int = 3, cout: int = 8, hw: int = 16) -> Path:
    """A one-Conv ONNX model, like the LUT recorder's single-layer files; optionally Q/DQ-quantized."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((cout, cin, 3, 3)).astype(np.float32), "w")
    initializers = [weight]
    nodes = []
    conv_input = "input"
    if qdq:
        initializers += [
            numpy_helper.from_array(np.array(0.05, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"], name="/quant/QuantizeLinear"),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="/quant/DequantizeLinear"),
        ]
        conv_input = "dq"
    nodes.append(helper.make_node("Conv", [conv_input, "w"], ["output"], name="/conv/Conv", pads=[1, 1, 1, 1]))
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes,
        "one_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, cin, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, cout, hw, hw])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------------------------
# engine cache


KEY_ARGS = dict(
    onnx_sha256="a" * 64,
    tensorrt_version="10.13.3.9",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    workspace_bytes=1 << 30,
    input_shape=(1, 3, 224, 224),
)


def test_cache_key_is_stable_and_hex():
    first = engine_cache_key(**KEY_ARGS, extra={"a": 1, "b": None, "c": "x"})
    second = engine_cache_key(**{**KEY_ARGS, "input_shape": [1, 3, 224, 224]}, extra={"c": "x", "a": 1})
    assert first == second  # list vs tuple, extra order and None entries do not matter
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("onnx_sha256", "b" * 64),
        ("tensorrt_version", "10.13.2.6"),
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", "8.0"),
        ("precision", "fp32"),
        ("workspace_bytes", None),
        ("input_shape", (8, 3, 224, 224)),
    ],
)
def test_cache_key_changes_with_every_setting(field, value):
    assert engine_cache_key(**KEY_ARGS) != engine_cache_key(**{**KEY_ARGS, field: value})


def test_cache_key_changes_with_extra_build_inputs():
    base = engine_cache_key(**KEY_ARGS, extra={"optimization_level": None})
    assert base == engine_cache_key(**KEY_ARGS)
    assert base != engine_cache_key(**KEY_ARGS, extra={"optimization_level": 5})
    assert engine_cache_key(**KEY_ARGS, extra={"calibration": "cache:1"}) != engine_cache_key(**KEY_ARGS, extra={"calibration": "cache:2"})


def test_engine_cache_round_trip_and_discard(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    assert cache.load("k") is None
    path = cache.store("k", b"\x00engine", {"precision": "fp16"})
    assert path == tmp_path / "engines" / "k.engine"
    assert cache.load("k") == b"\x00engine"
    assert json.loads((tmp_path / "engines" / "k.json").read_text()) == {"precision": "fp16"}
    assert not list((tmp_path / "engines").glob("*.tmp"))  # atomic writes leave nothing behind
    cache.discard("k")
    assert cache.load("k") is None


def test_engine_cache_disabled_reads_and_writes_nothing(tmp_path):
    cache = EngineCache(tmp_path / "engines", enabled=False)
    assert cache.store("k", b"x", {}) is None
    assert cache.load("k") is None
    assert not (tmp_path / "engines").exists()


def test_engine_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HWCOMPRESS_CACHE_DIR", str(tmp_path))
    assert engine_cache_dir() == tmp_path / "trt-engines"
    assert engine_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("HWCOMPRESS_CACHE_DIR")
    import platformdirs

    assert engine_cache_dir() == Path(platformdirs.user_cache_dir("hwcompress")) / "trt-engines"


def test_timing_cache_path_is_per_tensorrt_and_gpu(tmp_path):
    cache = EngineCache(tmp_path)
    one = cache.timing_cache_path("10.13.3.9", "NVIDIA GeForce RTX 4090", "8.9")
    assert one.parent == tmp_path and "/" not in one.name and " " not in one.name
    assert one != cache.timing_cache_path("10.13.3.9", "NVIDIA GeForce RTX 4090", "8.6")
    assert one != cache.timing_cache_path("10.12.0.36", "NVIDIA GeForce RTX 4090", "8.9")


# ----------------------------------------------------------------------------------------------
# options and precision


def test_default_options():
    options = parse_options(ProfileSettings(precision="fp16"))
    assert options == GpuOptions(precision="fp16")
    assert options.workspace_bytes is None and not options.cuda_graph and options.engine_cache


def test_options_are_parsed_and_unknown_ones_reported():
    settings = ProfileSettings(
        precision="FP32",
        options={"cuda_graph": True, "workspace_mb": 512, "builder_optimization_level": 5, "warmup_ms": 0, "cuda_graphs": True, "spin": False},
    )
    options = parse_options(settings)
    assert options.precision == "fp32"
    assert options.cuda_graph and options.workspace_bytes == 512 << 20 and options.builder_optimization_level == 5
    assert options.warmup_ms == 0.0
    assert options.ignored == ("cuda_graphs",)  # a typo is reported; ORT's "spin" is another profiler's


@pytest.mark.parametrize(
    "settings,needle",
    [
        (ProfileSettings(precision="bf8"), "precision 'bf8'"),
        (ProfileSettings(options={"cuda_graph": "yes"}), "'cuda_graph' must be true or false"),
        (ProfileSettings(options={"workspace_mb": 0}), "'workspace_mb' must be an integer >= 1"),
        (ProfileSettings(options={"builder_optimization_level": 6}), "from 0 to 5"),
        (ProfileSettings(options={"warmup_ms": -1}), "'warmup_ms'"),
        (ProfileSettings(options={"device": True}), "'device'"),
        (ProfileSettings(options={"int8_calibration_cache": "/nonexistent/calib.cache"}), "existing file"),
    ],
)
def test_bad_options_are_refused(settings, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_options(settings)


def test_int8_without_calibration_is_refused():
    options = parse_options(ProfileSettings(precision="int8"))
    with pytest.raises(UserError, match="int8 needs calibration") as raised:
        check_precision(options, profiler="tensorrt")
    assert "int8_calibration_cache" in str(raised.value) and "fp16" in str(raised.value)


def test_int8_with_calibration_or_qdq_is_accepted(tmp_path):
    calib = tmp_path / "calib.cache"
    calib.write_bytes(b"TRT-8600-EntropyCalibration2\n")
    with_cache = parse_options(ProfileSettings(precision="int8", options={"int8_calibration_cache": str(calib)}))
    check_precision(with_cache, profiler="tensorrt", tensorrt_major=10)
    check_precision(parse_options(ProfileSettings(precision="int8")), profiler="tensorrt", explicit_quantization=True, tensorrt_major=11)
    with pytest.raises(UserError, match="TensorRT 11 removed implicit INT8 calibration"):
        check_precision(with_cache, profiler="tensorrt", tensorrt_major=11)


def test_cuda_profiler_refuses_int8_and_accepts_floats():
    with pytest.raises(UserError, match="int8 is not available with the cuda"):
        check_precision(parse_options(ProfileSettings(precision="int8")), profiler="cuda", explicit_quantization=True)
    for precision in ("fp32", "fp16"):
        check_precision(parse_options(ProfileSettings(precision=precision)), profiler="cuda")


def test_measure_refuses_int8_before_touching_the_gpu(tmp_path):
    # The real measure() path: the refusal needs neither TensorRT nor a GPU.
    artifact = ModelArtifact(onnx_path=conv_onnx(tmp_path / "conv.onnx"), input_shape=(1, 3, 16, 16))
    with pytest.raises(UserError, match="int8 needs calibration"):
        plugin.TensorRTProfiler().measure(artifact, ProfileSettings(precision="int8"))


def test_qdq_model_is_detected(tmp_path):
    assert engine.has_explicit_quantization(conv_onnx(tmp_path / "q.onnx", qdq=True))
    assert not engine.has_explicit_quantization(conv_onnx(tmp_path / "f.onnx"))


def test_precision_route_names_how_precision_is_obtained():
    assert engine.precision_route("fp16", 10, False) == "fp16 builder flag"
    assert "AutoCast" in engine.precision_route("fp16", 11, False)
    assert engine.precision_route("int8", 10, True) == "int8 from Q/DQ nodes"
    assert engine.precision_route("int8", 10, False) == "int8 with calibration cache"
    assert engine.version_major("10.13.3.9") == 10 and engine.version_major("garbage") == 0


# ----------------------------------------------------------------------------------------------
# availability


def _fake_presence(monkeypatch, *, tensorrt: bool, version: str | None = "10.13.3.9", gpu: bool):
    import torch

    real = plugin._module_present
    monkeypatch.setattr(plugin, "_module_present", lambda name: tensorrt if name == "tensorrt" else real(name))
    monkeypatch.setattr(plugin, "tensorrt_distribution_version", lambda: version if tensorrt else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)


@pytest.mark.parametrize(
    "tensorrt,gpu,expected",
    [
        (False, True, (False, TRT_REASON)),
        (True, False, (False, GPU_REASON)),
        (False, False, (False, f"{TRT_REASON}; {GPU_REASON}")),
        (True, True, (True, "")),
    ],
)
def test_tensorrt_availability_reasons(monkeypatch, tensorrt, gpu, expected):
    _fake_presence(monkeypatch, tensorrt=tensorrt, gpu=gpu)
    assert plugin.TensorRTProfiler().available() == expected


def test_old_tensorrt_is_reported(monkeypatch):
    _fake_presence(monkeypatch, tensorrt=True, version="8.5.3.1", gpu=True)
    ok, reason = plugin.TensorRTProfiler().available()
    assert not ok and "8.5.3.1 is too old" in reason and "pip install" in reason


def test_cuda_availability_and_cpu_only_torch(monkeypatch):
    import torch

    _fake_presence(monkeypatch, tensorrt=False, gpu=True)
    assert plugin.CudaProfiler().available() == (True, "")
    _fake_presence(monkeypatch, tensorrt=False, gpu=False)
    assert plugin.CudaProfiler().available() == (False, GPU_REASON)
    monkeypatch.setattr(torch.version, "cuda", None)
    ok, reason = plugin.CudaProfiler().available()
    assert not ok and "CPU-only build" in reason


def test_measure_without_gpu_says_why(monkeypatch, tmp_path):
    _fake_presence(monkeypatch, tensorrt=False, gpu=False)
    artifact = ModelArtifact(onnx_path=conv_onnx(tmp_path / "conv.onnx"), input_shape=(1, 3, 16, 16))
    with pytest.raises(UserError, match=r"profiler 'tensorrt' is unavailable: tensorrt is not installed"):
        plugin.TensorRTProfiler().measure(artifact, ProfileSettings(precision="fp16"))
    with pytest.raises(UserError, match=r"profiler 'cuda' is unavailable: no NVIDIA GPU visible"):
        plugin.CudaProfiler().measure(artifact, ProfileSettings())


def test_real_availability_here_matches_the_machine():
    import importlib.util

    import torch

    ok, reason = plugin.TensorRTProfiler().available()
    if importlib.util.find_spec("tensorrt") is None:
        assert not ok and TRT_REASON in reason
    if not torch.cuda.is_available():
        assert not ok and "no NVIDIA GPU visible" in reason


# ----------------------------------------------------------------------------------------------
# NVML facts


def test_nvml_absent_gives_unknowns(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with gpu_facts.GpuMonitor(0, jetson_root="/nonexistent") as monitor:
        assert monitor.status.startswith("unavailable: nvidia-ml-py is not installed")
        static, sample = monitor.static_facts(), monitor.sample()
    assert static["driver_version"] == "unknown" and static["power_limit_w"] == "unknown"
    assert set(sample.values()) == {"unknown"}
    assert gpu_facts.throttle_notes(sample, sample) == []


def test_nvml_without_driver_gives_unknowns():
    pytest.importorskip("pynvml")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a driver")
    with gpu_facts.GpuMonitor(0, jetson_root="/nonexistent") as monitor:
        assert monitor.status.startswith("unavailable")
        assert monitor.static_facts()["nvml_gpu"] == "unknown"
        assert monitor.sample()["sm_clock_mhz"] == "unknown"


def _fake_pynvml(**overrides) -> types.ModuleType:
    memory = types.SimpleNamespace(total=80 * 2**30, used=3 * 2**30, free=77 * 2**30)
    module = types.ModuleType("pynvml")
    values = dict(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "580.65.06",
        nvmlSystemGetCudaDriverVersion=lambda: 13000,
        nvmlDeviceGetHandleByIndex=lambda index: ("handle", index),
        nvmlDeviceGetHandleByPciBusId=lambda bus: ("handle", bus),
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700000,
        nvmlDeviceGetMemoryInfo=lambda h: memory,
        nvmlDeviceGetMaxClockInfo=lambda h, clock: {1: 1980, 2: 2619}[clock],
        nvmlDeviceGetClockInfo=lambda h, clock: {1: 1755, 2: 2619}[clock],
        nvmlDeviceGetTemperature=lambda h, sensor: 41,
        nvmlDeviceGetPowerUsage=lambda h: 123456,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x4 | 0x1,
        nvmlDeviceGetPerformanceState=lambda h: 0,
        nvmlDeviceGetPersistenceMode=lambda h: 1,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        NVML_TEMPERATURE_GPU=0,
    )
    values.update(overrides)
    for name, value in values.items():
        setattr(module, name, value)
    return module


def test_nvml_facts_are_read_and_converted(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    with gpu_facts.GpuMonitor(0, pci_bus_id="00000000:19:00.0", jetson_root="/nonexistent") as monitor:
        static, sample = monitor.static_facts(), monitor.sample()
    assert static == {
        "nvml": "ok",
        "nvml_gpu": "NVIDIA H100 80GB HBM3",
        "driver_version": "580.65.06",
        "cuda_driver_version": "13.0",
        "power_limit_w": 700.0,
        "gpu_memory_total_mb": 81920,
        "sm_clock_max_mhz": 1980,
        "mem_clock_max_mhz": 2619,
        "persistence_mode": "on",
    }
    assert sample == {
        "sm_clock_mhz": 1755,
        "mem_clock_mhz": 2619,
        "temperature_c": 41,
        "power_w": 123.5,
        "gpu_memory_used_mb": 3072,
        "clock_event_reasons": "power cap (software)",  # idle (0x1) is not a slow-down
        "performance_state": "P0",
    }


def test_nvml_finds_the_gpu_by_bus_id_and_never_guesses_among_several(monkeypatch):
    def no_such_bus(bus):
        raise RuntimeError("Not Found")

    single = _fake_pynvml(nvmlDeviceGetHandleByPciBusId=no_such_bus, nvmlDeviceGetCount=lambda: 1)
    monkeypatch.setitem(sys.modules, "pynvml", single)
    with gpu_facts.GpuMonitor(0, pci_bus_id="00000000:00:00.0", jetson_root="/nonexistent") as monitor:
        assert monitor.status == "ok" and monitor.sample()["sm_clock_mhz"] == 1755
    several = _fake_pynvml(nvmlDeviceGetHandleByPciBusId=no_such_bus, nvmlDeviceGetCount=lambda: 4)
    monkeypatch.setitem(sys.modules, "pynvml", several)
    with gpu_facts.GpuMonitor(0, pci_bus_id="00000000:00:00.0", jetson_root="/nonexistent") as monitor:
        assert monitor.status.startswith("no NVML handle") and monitor.sample()["sm_clock_mhz"] == "unknown"


def test_nvml_calls_that_fail_become_unknown(monkeypatch):
    def broken(*args):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    fake = _fake_pynvml(nvmlDeviceGetPowerUsage=broken, nvmlDeviceGetEnforcedPowerLimit=broken, nvmlDeviceGetPowerManagementLimit=broken)
    del fake.nvmlDeviceGetCurrentClocksEventReasons  # an old nvidia-ml-py: only the old name exists
    fake.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0x20
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with gpu_facts.GpuMonitor(0, jetson_root="/nonexistent") as monitor:
        static, sample = monitor.static_facts(), monitor.sample()
    assert static["power_limit_w"] == "unknown" and static["driver_version"] == "580.65.06"
    assert sample["power_w"] == "unknown" and sample["clock_event_reasons"] == "thermal (software)"


def test_nvml_init_failure_gives_unknowns(monkeypatch):
    def fail():
        raise RuntimeError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(nvmlInit=fail))
    with gpu_facts.GpuMonitor(0, jetson_root="/nonexistent") as monitor:
        assert monitor.status == "unavailable: Driver Not Loaded"
        assert monitor.sample()["sm_clock_mhz"] == "unknown"


def test_throttle_warning_when_clocks_drop():
    start = {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "clock_event_reasons": "none"}
    assert gpu_facts.throttle_notes(start, dict(start)) == []
    assert gpu_facts.throttle_notes(start, {**start, "sm_clock_mhz": 1950}) == []  # within 5%
    notes = gpu_facts.throttle_notes(start, {**start, "sm_clock_mhz": 1410, "clock_event_reasons": "thermal (software)"})
    assert len(notes) == 1
    assert "SM clock 1980 -> 1410 MHz" in notes[0] and "thermal (software)" in notes[0] and "lock" in notes[0]
    held = gpu_facts.throttle_notes(start, {**start, "clock_event_reasons": "power cap (software)"})
    assert held and "power cap" in held[0]


def test_clock_event_reason_decoding():
    assert gpu_facts.decode_clock_event_reasons(0x4 | 0x40 | 0x1) == ["power cap (software)", "thermal (hardware)"]
    assert gpu_facts.decode_clock_event_reasons("unknown") == []


def test_facts_without_gpu_never_raise(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    _fake_presence(monkeypatch, tensorrt=False, gpu=False)
    for profiler in (plugin.TensorRTProfiler(), plugin.CudaProfiler()):
        facts = profiler.facts(ProfileSettings(precision="fp16"))
        assert facts["profiler"] == profiler.name and facts["gpu"] == "unknown"
        assert "no NVIDIA GPU visible" in facts["gpu_problem"]
        assert facts["sm_clock_mhz"] == "unknown"
    assert plugin.TensorRTProfiler().facts(ProfileSettings())["runtime_version"] == "not installed"


# ----------------------------------------------------------------------------------------------
# Jetson facts


def test_tegra_release_parsing():
    assert jetson.parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64") == "36.3.0"
    assert jetson.parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref") == "35.4.1"
    assert jetson.parse_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004") == "32.7.1"
    assert jetson.parse_tegra_release("something else") is None


def test_nvpmodel_parsing():
    assert jetson.parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == "MAXN (mode 0)"
    assert jetson.parse_nvpmodel("NV Power Mode: 15W\n2\n") == "15W (mode 2)"
    assert jetson.parse_nvpmodel("NV Power Mode: 7W") == "7W"
    assert jetson.parse_nvpmodel("nvpmodel: command not supported") is None


def _fake_board(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("1020000000\n")
    (root / "sys/class/devfreq/3d00000.nvdla0").mkdir()
    zone = root / "sys/class/thermal/thermal_zone1"
    zone.mkdir(parents=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text("48500\n")
    return root


def test_jetson_facts_from_board_files(tmp_path):
    root = _fake_board(tmp_path / "board")
    assert jetson.is_jetson(root)
    assert jetson.jetson_facts(root, run_tools=False) == {
        "jetson_model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
        "l4t_release": "36.4.3",
        "jetpack": "unknown",  # not guessed from the L4T release
        "power_mode": "unknown",
    }
    assert jetson.gpu_clock_mhz(root) == 1020.0
    assert jetson.gpu_temperature_c(root) == 48.5


def test_jetson_facts_missing_are_unknown(tmp_path):
    assert not jetson.is_jetson(tmp_path)
    assert set(jetson.jetson_facts(tmp_path, run_tools=False).values()) == {"unknown"}
    assert jetson.gpu_clock_mhz(tmp_path) == "unknown" and jetson.gpu_temperature_c(tmp_path) == "unknown"


def test_monitor_reads_jetson_sysfs_when_nvml_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    root = _fake_board(tmp_path / "board")
    with gpu_facts.GpuMonitor(0, jetson_root=str(root)) as monitor:
        sample = monitor.sample()
    assert sample["sm_clock_mhz"] == 1020.0 and sample["temperature_c"] == 48.5
    assert sample["power_w"] == "unknown"


# ----------------------------------------------------------------------------------------------
# per-layer times


@pytest.mark.parametrize(
    "name,nodes",
    [
        ("/layer1/layer1.0/conv1/Conv", ["/layer1/layer1.0/conv1/Conv"]),
        ("/conv1/Conv + /relu/Relu", ["/conv1/Conv", "/relu/Relu"]),
        ("PWN(/act/Sigmoid, /act/Mul)", ["/act/Sigmoid", "/act/Mul"]),
        ("PWN(PWN(/a/Sigmoid), /a/Mul) + /b/Conv", ["/a/Sigmoid", "/a/Mul", "/b/Conv"]),
        ("{ForeignNode[/blocks.0/attn/MatMul.../blocks.0/attn/Softmax]}", ["/blocks.0/attn/MatMul", "/blocks.0/attn/Softmax"]),
        ("Reformatting CopyNode for Input Tensor 0 to /conv1/Conv + /relu/Relu", ["/conv1/Conv", "/relu/Relu"]),
        ("reshape_before_/fc/Gemm", ["/fc/Gemm"]),
        ("__myl_MulAdd_myl0_3", ["__myl_MulAdd_myl0_3"]),
        ("7", ["7"]),  # profiling verbosity NONE: the layer index
    ],
)
def test_layer_names_split_into_onnx_nodes(name, nodes):
    assert layer_nodes(name) == nodes
    assert primary_node(name) == nodes[0]


def test_layer_times_aggregate_per_run_then_median():
    recorder = LayerTimeRecorder()
    reports = {
        -1: [("/conv1/Conv + /relu/Relu", 9.0)],  # warm-up: ignored
        0: [("Reformatting CopyNode for Input Tensor 0 to /conv1/Conv", 0.1), ("/conv1/Conv + /relu/Relu", 1.0), ("/fc/Gemm", 0.5)],
        1: [("Reformatting CopyNode for Input Tensor 0 to /conv1/Conv", 0.1), ("/conv1/Conv + /relu/Relu", 3.0), ("/fc/Gemm", 0.7)],
        2: [("Reformatting CopyNode for Input Tensor 0 to /conv1/Conv", 0.1), ("/conv1/Conv + /relu/Relu", 2.0), ("/fc/Gemm", 0.6)],
    }
    for run, layers in reports.items():
        recorder.begin_run(run)
        for name, ms in layers:
            recorder.add(name, ms)
    times = recorder.node_times()
    assert times.keys() == {"/conv1/Conv", "/fc/Gemm"}
    assert times["/conv1/Conv"] == pytest.approx(2.1)  # reformat + fused conv per run, median of 1.1/3.1/2.1
    assert times["/fc/Gemm"] == pytest.approx(0.6)
    assert aggregate_layer_times([]) == {}


def test_unit_time_leaves_out_conversions_at_the_edges_only():
    into = "Reformatting CopyNode for Input Tensor 0 to /conv/Conv + /relu/Relu"
    out_of = "Reformatting CopyNode for Output Tensor 0 to /conv/Conv + /relu/Relu"
    middle = "Reformatting CopyNode for Input Tensor 0 to /fc/Gemm"
    records = [
        (-1, into, 5.0), (-1, "/conv/Conv + /relu/Relu", 5.0),  # warm-up
        (0, into, 0.3), (0, "/conv/Conv + /relu/Relu", 1.0), (0, out_of, 0.2),
        (1, into, 0.3), (1, "/conv/Conv + /relu/Relu", 1.2), (1, middle, 0.1), (1, "/fc/Gemm", 0.4), (1, out_of, 0.2),
        (2, into, 0.4),  # a unit that is nothing but a conversion keeps it
    ]
    assert unit_run_times(records) == pytest.approx([1.0, 1.7, 0.4])
    assert unit_run_times([]) == []


def test_layer_times_map_to_pytorch_modules():
    from hwcompress_profiler_tensorrt.cuda_profiler import module_node_name

    from hwcompress.model.export import node_module_path

    assert node_module_path(primary_node("/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu")) == "layer1.0.conv1"

    class ReLU:  # the class name is all module_node_name reads
        pass

    name = module_node_name("layer1.0.relu", ReLU())
    assert name == "/layer1.0.relu/ReLU" and node_module_path(name) == "layer1.0.relu"
    # torchvision's BasicBlock calls its one ReLU twice per forward: both calls count.
    assert aggregate_layer_times([(0, name, 0.1), (0, name, 0.2), (1, name, 0.3), (1, name, 0.3)]) == {name: pytest.approx(0.45)}


# ----------------------------------------------------------------------------------------------
# shapes, types, timing helpers


def test_input_shapes_static_dynamic_and_mismatch():
    assert engine.resolve_input_shapes([("input", (1, 3, 224, 224))], None) == ({"input": (1, 3, 224, 224)}, False)
    assert engine.resolve_input_shapes([("input", (1, 3, 224, 224))], (1, 3, 224, 224)) == ({"input": (1, 3, 224, 224)}, False)
    assert engine.resolve_input_shapes([("x", (-1, 3, -1, -1))], (4, 3, 64, 64)) == ({"x": (4, 3, 64, 64)}, True)
    with pytest.raises(UserError, match="fixed at 1x3x224x224 but the input shape is 1x3x128x128"):
        engine.resolve_input_shapes([("input", (1, 3, 224, 224))], (1, 3, 128, 128))
    with pytest.raises(UserError, match="has 4 dimensions"):
        engine.resolve_input_shapes([("input", (1, 3, 224, 224))], (3, 224, 224))
    with pytest.raises(UserError, match="'mask' has dynamic dimensions"):
        engine.resolve_input_shapes([("x", (1, 8)), ("mask", (-1, 8))], (1, 8))


def test_tensorrt_types_map_to_torch():
    fake = types.SimpleNamespace(name="HALF")
    assert engine.torch_dtype_name(fake) == "float16"
    assert engine.torch_dtype_name("DataType.FLOAT") == "float32"
    with pytest.raises(UserError, match="no PyTorch equivalent"):
        engine.torch_dtype_name("DataType.FP4")


def test_warm_up_runs_for_count_and_duration():
    calls = []
    stream = types.SimpleNamespace(synchronize=lambda: None)
    assert warm_up(lambda: calls.append(1), stream, 5, 0.0) == 5
    import time

    started = time.perf_counter()
    count = warm_up(lambda: None, stream, 1, 20.0)
    assert count >= 1 and time.perf_counter() - started >= 0.02


def test_unstable_timing_note():
    assert coefficient_of_variation_note([1.0, 1.001, 0.999, 1.0]) == []
    notes = coefficient_of_variation_note([1.0, 1.2, 0.8, 1.0])
    assert notes and "coefficient of variation" in notes[0]


# ----------------------------------------------------------------------------------------------
# engine building against a stand-in for the tensorrt module
#
# The stand-in records what the builder code asks for. It proves the code's own logic (flags per
# version, profiles, cache hits, error messages), not TensorRT's behaviour: the method names it
# offers were checked against the TensorRT 10.13 and 11.4 Python bindings, and the real builds are
# the `tensorrt` tests below.


def fake_tensorrt(version: str = "10.13.3.9", *, parse_ok: bool = True, build_ok: bool = True) -> types.ModuleType:
    import onnx

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    record = trt.calls.append

    class _Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    class Enum:
        def __init__(self, **members):
            self.__dict__.update(members)

    trt.ILogger = ILogger
    trt.Logger = ILogger
    trt.MemoryPoolType = Enum(WORKSPACE="WORKSPACE")
    trt.ProfilingVerbosity = Enum(DETAILED="DETAILED")
    trt.NetworkDefinitionCreationFlag = Enum(EXPLICIT_BATCH=0)
    flags = {"FP16": "FP16", "INT8": "INT8"} if version_major_of(version) < 11 else {}
    trt.BuilderFlag = Enum(**flags, TF32="TF32")

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            record(("parse", Path(path).name))
            if not parse_ok:
                return False
            model = onnx.load(path)
            for value in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(value.name, dims))
            return True

        def get_error(self, index):
            return "In node 0 (Conv): unsupported attribute"

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timing"

    class Config:
        def __init__(self):
            self.flags, self.limits, self.profiles = [], {}, []
            self.int8_calibrator = None
            self.timing = None

        def set_memory_pool_limit(self, pool, size):
            self.limits[pool] = size

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache

        def get_timing_cache(self):
            return self.timing

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (low, opt, high)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            record(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record(("build", config))
            if not build_ok:
                self.logger.log(_Severity.ERROR, "no implementation for /conv/Conv")
                return None
            return b"ENGINE:" + network.inputs[0].name.encode()

    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    return trt


def version_major_of(version: str) -> int:
    return int(version.split(".")[0])


def _build(trt, path, options, shape=(1, 3, 16, 16), **kwargs):
    return engine.engine_for(
        trt, engine.make_logger(trt), path, shape, options,
        explicit_quantization=kwargs.pop("explicit_quantization", False),
        gpu_name="NVIDIA Fake GPU", compute_capability="8.9", **kwargs,
    )


def test_engine_is_built_once_then_loaded_from_the_cache(tmp_path):
    trt = fake_tensorrt()
    path = conv_onnx(tmp_path / "conv.onnx")
    options = parse_options(ProfileSettings(precision="fp16", options={"engine_cache_dir": str(tmp_path / "e"), "workspace_mb": 256}))
    data, facts, cache, key = _build(trt, path, options)
    assert data == b"ENGINE:input" and facts["engine_cache"] == "built" and facts["precision_route"] == "fp16 builder flag"
    config = [c for c in trt.calls if c[0] == "build"][0][1]
    assert config.flags == ["FP16"] and config.limits == {"WORKSPACE": 256 << 20}
    assert config.profiling_verbosity == "DETAILED" and config.profiles == []  # static shape: no profile needed
    assert ("create_network", 0) in trt.calls  # TensorRT 10: explicit batch is the only mode
    assert cache.engine_path(key).read_bytes() == data
    meta = json.loads((tmp_path / "e" / f"{key}.json").read_text())
    assert meta["precision"] == "fp16" and meta["input_shape"] == [1, 3, 16, 16]
    assert list((tmp_path / "e").glob("timing-*.cache"))[0].read_bytes() == b"+timing"

    trt.calls.clear()
    again, facts2, _, key2 = _build(trt, path, options)
    assert again == data and key2 == key and facts2["engine_cache"] == "hit"
    assert trt.calls == []  # nothing parsed or built

    other = parse_options(ProfileSettings(precision="fp32", options={"engine_cache_dir": str(tmp_path / "e")}))
    _, facts3, _, key3 = _build(trt, path, other)
    assert key3 != key and facts3["engine_cache"] == "built"
    # the second build started from the timing cache the first one left
    assert [c for c in trt.calls if c[0] == "build"][0][1].timing.data == b"+timing"


def test_dynamic_input_gets_an_optimisation_profile(tmp_path):
    trt = fake_tensorrt()
    path = conv_onnx(tmp_path / "dyn.onnx", dynamic_batch=True)
    options = parse_options(ProfileSettings(options={"engine_cache": False}))
    _, facts, _, _ = _build(trt, path, options, shape=(4, 3, 16, 16))
    config = [c for c in trt.calls if c[0] == "build"][0][1]
    assert config.profiles[0].shapes == {"input": ((4, 3, 16, 16),) * 3}
    assert facts["engine_cache"] == "disabled"


def test_tensorrt_8_uses_the_explicit_batch_flag(tmp_path):
    trt = fake_tensorrt("8.6.2.3")
    _build(trt, conv_onnx(tmp_path / "c.onnx"), parse_options(ProfileSettings(options={"engine_cache": False})))
    assert ("create_network", 1) in trt.calls


def test_int8_calibration_cache_is_replayed(tmp_path):
    trt = fake_tensorrt()
    calib = tmp_path / "calib.cache"
    calib.write_bytes(b"TRT-1001-EntropyCalibration2\ninput: 3c010a14\n")
    options = parse_options(ProfileSettings(precision="int8", options={"engine_cache": False, "int8_calibration_cache": str(calib)}))
    _, facts, _, _ = _build(trt, conv_onnx(tmp_path / "c.onnx"), options)
    config = [c for c in trt.calls if c[0] == "build"][0][1]
    assert config.flags == ["INT8"] and facts["precision_route"] == "int8 with calibration cache"
    assert config.int8_calibrator.read_calibration_cache() == calib.read_bytes()
    assert config.int8_calibrator.get_batch(["input"]) is None


def test_a_qdq_student_at_a_float_precision_builds_with_int8_too(tmp_path):
    """An int8 student (``--quantize``) is measured at the device's float precision: TensorRT before 11
    quantizes nothing without the INT8 flag, so a Q/DQ model gets it beside FP16 (its float layers in fp16)."""
    for version in ("10.3.0", "8.6.2.3"):
        trt = fake_tensorrt(version)
        options = parse_options(ProfileSettings(precision="fp16", options={"engine_cache": False}))
        _, facts, _, _ = _build(trt, conv_onnx(tmp_path / f"q{version}.onnx", qdq=True), options, explicit_quantization=True)
        config = [c for c in trt.calls if c[0] == "build"][0][1]
        assert sorted(config.flags) == ["FP16", "INT8"] and config.int8_calibrator is None
        assert facts["precision_route"] == "fp16 builder flag, int8 from Q/DQ nodes"
    trt = fake_tensorrt()  # a float model keeps its one flag
    _build(trt, conv_onnx(tmp_path / "f.onnx"), parse_options(ProfileSettings(precision="fp16", options={"engine_cache": False})))
    assert [c for c in trt.calls if c[0] == "build"][0][1].flags == ["FP16"]


def test_the_profiler_offers_symmetric_int8_to_the_search():
    """``--quantize`` needs a profiler with an int8 path; TensorRT's takes only symmetric Q/DQ, and says so in its
    facts, which a LUT recorded there keeps (hwcompress.slim.quantize.symmetric_int8)."""
    from types import SimpleNamespace

    from hwcompress.search.precision import check_int8_path
    from hwcompress.slim.quantize import symmetric_int8

    profiler = plugin.TensorRTProfiler()
    assert "int8" in profiler.precisions
    facts = profiler.facts(ProfileSettings())  # never raises, GPU or not
    assert facts["int8_symmetric"] is True and symmetric_int8(facts)
    assert symmetric_int8({"runtime": "tensorrt"})  # a LUT recorded before the fact existed
    device = SimpleNamespace(name="nvidia-gpu")
    check_int8_path("int8", device, SimpleNamespace(measured=True, profiler=profiler))  # accepted
    with pytest.raises(UserError, match=r"no int8 path \(fp32, fp16\)"):  # seen on an H200 without TensorRT
        check_int8_path("int8", device, SimpleNamespace(measured=True, profiler=plugin.CudaProfiler()))


def test_tensorrt_11_fp16_without_modelopt_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    trt = fake_tensorrt("11.4.0.106")
    options = parse_options(ProfileSettings(precision="fp16", options={"engine_cache": False}))
    with pytest.raises(UserError, match="nvidia-modelopt"):
        _build(trt, conv_onnx(tmp_path / "c.onnx"), options)
    fp32 = parse_options(ProfileSettings(precision="fp32", options={"engine_cache": False}))
    data, _, _, _ = _build(trt, conv_onnx(tmp_path / "c.onnx"), fp32)
    assert data == b"ENGINE:input"
    assert [c for c in trt.calls if c[0] == "build"][0][1].flags == []


def test_parse_and_build_failures_are_one_line_errors(tmp_path):
    path = conv_onnx(tmp_path / "c.onnx")
    options = parse_options(ProfileSettings(options={"engine_cache": False}))
    with pytest.raises(UserError, match=r"TensorRT cannot parse c.onnx: In node 0 \(Conv\)"):
        _build(fake_tensorrt(parse_ok=False), path, options)
    with pytest.raises(UserError, match="could not build an engine for c.onnx at fp32; TensorRT said: no implementation"):
        _build(fake_tensorrt(build_ok=False), path, options)
    with pytest.raises(UserError, match="fixed at 1x3x16x16"):
        _build(fake_tensorrt(), path, options, shape=(1, 3, 32, 32))


def test_measurement_assembly_with_a_stand_in_gpu(monkeypatch):
    """measure_launches' bookkeeping (facts, clocks at start and end, notes) without CUDA."""
    import torch
    from hwcompress_profiler_tensorrt import measuring
    from hwcompress_profiler_tensorrt.timing import CudaTiming

    clocks = iter([1980, 1410])  # SM clock at the start sample, then at the end sample
    fake = _fake_pynvml(nvmlDeviceGetClockInfo=lambda h, clock: next(clocks) if clock == 1 else 2619)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(measuring, "pci_bus_id", lambda index: "00000000:19:00.0")
    monkeypatch.setattr(measuring, "device_facts", lambda index, monitor: {"gpu": "NVIDIA Fake GPU", **monitor.static_facts()})
    seen = {}

    def fake_time(launch, stream, **kwargs):
        seen.update(kwargs)
        return CudaTiming(samples_ms=[1.0, 1.1, 0.9, 1.0], host_ms=[1.2] * 4, warmup_iterations=55, cuda_graph=False, notes=["graph fell back"])

    monkeypatch.setattr(measuring, "time_launches", fake_time)
    settings = ProfileSettings(runs=4, warmup=50, precision="fp16", options={"cuda_graph": True, "cuda_graphs": 1})
    result = measuring.measure_launches(
        profiler="cuda", runtime="torch", runtime_version="2.14.1", launch=lambda: None, stream=None,
        settings=settings, options=parse_options(settings), layer_times=lambda: {"/0/Conv2d": 0.4},
        facts={"cudnn_benchmark": True}, notes=["first"],
    )
    assert seen == {"runs": 4, "warmup": 50, "warmup_ms": 200.0, "cuda_graph": True, "spin_wait": False,
                    "max_rounds": 5, "settle_tolerance": 0.02}
    assert result.latency.median == pytest.approx(1.0) and result.latency.runs == 4
    assert result.node_ms == {"/0/Conv2d": 0.4}
    facts = result.facts
    assert facts["profiler"] == "cuda" and facts["gpu"] == "NVIDIA Fake GPU" and facts["driver_version"] == "580.65.06"
    assert facts["cuda_graph"] is False  # what happened, not what was asked
    assert facts["sm_clock_mhz_start"] == 1980 and facts["sm_clock_mhz_end"] == 1410
    assert facts["host_wall_median_ms"] == 1.2 and facts["warmup_iterations"] == 55 and facts["cudnn_benchmark"] is True
    notes = result.notes
    assert notes[0] == "first" and notes[1] == "graph fell back"
    assert any("GPU throttling" in n and "1980 -> 1410" in n for n in notes)
    assert any("coefficient of variation" in n for n in notes)
    assert any("ignored unknown options cuda_graphs" in n for n in notes)
    json.dumps(facts)  # the report must be able to serialise every fact


# ----------------------------------------------------------------------------------------------
# the real plugin machinery


def test_entry_point_is_installed():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="hwcompress")}
    assert points.get("hwcompress-profiler-tensorrt") == "hwcompress_profiler_tensorrt"


def test_profilers_are_registered_through_the_entry_point():
    from hwcompress import plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", plugins.PluginWarning)  # other plugins' state is not this test's
        profilers = {name: plugins.profilers.get(name) for name in plugins.profilers.names()}
        infos = {info.name: info for info in plugins.plugin_infos()}
    assert isinstance(profilers["tensorrt"], plugin.TensorRTProfiler)
    assert isinstance(profilers["cuda"], plugin.CudaProfiler)
    info = infos["hwcompress-profiler-tensorrt"]
    assert info.error is None and info.distribution == "hwcompress-profiler-tensorrt"
    assert info.provides["profilers"] == ["tensorrt", "cuda"]


def test_importing_the_plugin_loads_no_runtime():
    code = (
        "import sys, hwcompress_profiler_tensorrt as p\n"
        "p.register_profilers(lambda profiler: None)\n"
        "print([m for m in ('torch', 'tensorrt', 'pynvml', 'onnx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _cli(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("hwcompress")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)


def test_cli_shows_nvidia_gpu_unavailable_and_profile_exits_2():
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("this machine can measure nvidia-gpu")
    done = _cli("devices", "--json", "-")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    gpu = rows["nvidia-gpu"]
    assert gpu["status"] == "unavailable"
    _, expected = plugin.TensorRTProfiler().available()
    assert gpu["reason"] == expected
    profiled = _cli("profile", "--device", "nvidia-gpu", "--quiet")
    assert profiled.returncode == 2
    assert f"profiler 'tensorrt' is unavailable: {expected}" in profiled.stderr


# ----------------------------------------------------------------------------------------------
# on a GPU (skipped here, see conftest.py)


def _small_net():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


QUICK = dict(runs=20, warmup=5, options={"warmup_ms": 0})


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_profiler_times_a_module(tmp_path, cuda_graph, precision):
    import torch

    net = _small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    artifact = ModelArtifact(onnx_path=tmp_path / "unused.onnx", input_shape=(1, 3, 32, 32), module=net)
    settings = ProfileSettings(precision=precision, **{**QUICK, "options": {"warmup_ms": 0, "cuda_graph": cuda_graph}})
    measurement = plugin.CudaProfiler().measure(artifact, settings)
    assert measurement.latency.runs == 20 and measurement.latency.median > 0
    facts = measurement.facts
    assert facts["profiler"] == "cuda" and facts["precision"] == precision and facts["cuda_graph"] is cuda_graph
    assert facts["gpu"] == torch.cuda.get_device_name(0)
    assert "sm_clock_mhz_start" in facts and "sm_clock_mhz_end" in facts
    assert "/0/Conv2d" in measurement.node_ms and "/3/Conv2d" in measurement.node_ms
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # caller's module untouched
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.tensorrt
def test_tensorrt_builds_caches_and_maps_layers(tmp_path):
    from hwcompress.measure.profile import map_node_times
    from hwcompress.model.analysis import analyze
    from hwcompress.model.export import export_onnx

    net = _small_net().eval()
    onnx_path = Path(export_onnx(net, (1, 3, 32, 32), tmp_path / "net.onnx", verify=False).path)
    artifact = ModelArtifact(onnx_path=onnx_path, input_shape=(1, 3, 32, 32), module=net)
    settings = ProfileSettings(precision="fp16", runs=20, warmup=5, options={"warmup_ms": 0, "engine_cache_dir": str(tmp_path / "engines")})
    first = plugin.TensorRTProfiler().measure(artifact, settings)
    second = plugin.TensorRTProfiler().measure(artifact, settings)
    assert first.facts["engine_cache"] == "built" and second.facts["engine_cache"] == "hit"
    assert first.facts["engine_key"] == second.facts["engine_key"]
    assert first.facts["profiler"] == "tensorrt"
    assert first.facts["precision_route"] in ("fp16 builder flag", "fp16 ONNX by ModelOpt AutoCast (strong typing)")
    assert second.latency.runs == 20 and second.latency.median > 0
    rows = map_node_times(second.node_ms, analyze(net, (1, 3, 32, 32)))
    assert rows.get("0", 0) > 0  # the first convolution's fused layer is credited to module "0"


@pytest.mark.tensorrt
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_tensorrt_times_a_single_layer_file_like_the_lut_recorder(tmp_path, dynamic_batch):
    path = conv_onnx(tmp_path / "conv.onnx", dynamic_batch=dynamic_batch, cin=32, cout=64, hw=28)
    artifact = ModelArtifact(onnx_path=path, input_shape=(1, 32, 28, 28))
    settings = ProfileSettings(precision="fp32", runs=20, warmup=5, options={"warmup_ms": 0, "cuda_graph": True, "engine_cache_dir": str(tmp_path / "e")})
    measurement = plugin.TensorRTProfiler().measure(artifact, settings)
    assert measurement.latency.runs == 20
    assert measurement.facts["cuda_graph"] is True
    assert "/conv/Conv" in measurement.node_ms


@pytest.mark.tensorrt
def test_tensorrt_unit_timing_for_the_lut_recorder(tmp_path):
    from hwcompress.lut.keys import TIMING_KERNELS
    from hwcompress.lut.recorder import unit_timer

    path = conv_onnx(tmp_path / "conv.onnx", cin=32, cout=64, hw=28)
    artifact = ModelArtifact(onnx_path=path, input_shape=(1, 32, 28, 28))
    settings = ProfileSettings(precision="fp16", runs=30, warmup=5, options={"warmup_ms": 0, "engine_cache_dir": str(tmp_path / "e")})
    profiler = plugin.TensorRTProfiler()
    assert unit_timer(profiler).timing == TIMING_KERNELS
    unit = profiler.measure_unit(artifact, settings)
    whole = profiler.measure(artifact, settings)
    assert unit.latency.runs == 30 and 0 < unit.latency.median
    assert unit.facts["engine_cache"] == "built" and whole.facts["engine_cache"] == "hit"  # one engine for both
    # fp16 conversions at the edges are left out, launch overhead too: the unit is cheaper
    assert unit.latency.median < whole.latency.median


@pytest.mark.tensorrt
def test_tensorrt_refuses_a_contradicting_shape(tmp_path):
    artifact = ModelArtifact(onnx_path=conv_onnx(tmp_path / "conv.onnx"), input_shape=(1, 3, 32, 32))
    with pytest.raises(UserError, match="fixed at 1x3x16x16"):
        plugin.TensorRTProfiler().measure(artifact, ProfileSettings(runs=5, warmup=1, options={"engine_cache": False}))


# ----------------------------------------------------------------------------------------------
# the cuda profiler's stability check and LUT unit timing (pure logic; the GPU runs are below)


def test_rounds_settle_when_two_medians_agree():
    from hwcompress_profiler_tensorrt.timing import settled

    assert not settled([1.0], 0.02)  # one round proves nothing
    assert settled([1.30, 1.01, 1.00], 0.02)  # the clocks ramped up in the first round, then it held
    assert not settled([1.00, 1.10], 0.02)
    assert settled([1.00, 1.019], 0.02) and not settled([0.0, 0.0], 0.02)


def test_cuda_graph_is_the_cuda_profilers_default_and_rounds_are_options():
    from hwcompress_profiler_tensorrt.options import parse_options

    options = parse_options(ProfileSettings())
    assert options.cuda_graph is None and options.max_rounds == 5 and options.settle_tolerance == 0.02
    assert parse_options(ProfileSettings(options={"cuda_graph": False, "max_rounds": 1})).cuda_graph is False
    for bad, message in (({"max_rounds": 0}, "'max_rounds' must be"), ({"settle_tolerance": 2}, "'settle_tolerance' must be")):
        with pytest.raises(UserError, match=message):
            parse_options(ProfileSettings(options=bad))


def test_kernel_events_split_into_runs():
    from hwcompress_profiler_tensorrt.cuda_profiler import split_runs

    # three runs of two kernels each (start us, duration us), out of order as a profiler may list them
    events = [(30.0, 5.0), (0.0, 10.0), (12.0, 4.0), (20.0, 9.0), (33.0, 4.0), (40.0, 11.0)]
    assert split_runs(events, 3) == pytest.approx([0.014, 0.014, 0.015])
    assert split_runs(events[:5], 2) == pytest.approx([0.016, 0.016])  # uneven: every run gets the mean
    assert split_runs([], 3) == []


def test_the_cuda_profiler_offers_unit_timing_for_the_lut_recorder():
    from hwcompress.lut.keys import TIMING_KERNELS
    from hwcompress.lut.recorder import unit_timer

    assert unit_timer(plugin.CudaProfiler()).timing == TIMING_KERNELS
