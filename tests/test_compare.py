"""`hwcompress compare`: interleaved rounds, paired ratios, the JSON document, one-line errors."""

import json
import statistics

from hwcompress.measure.compare import measure_interleaved, paired_ratios
from hwcompress.measure.contract import LatencyStats, Measurement, ModelArtifact, ProfileSettings
from hwcompress.model.embedded import resnet20


class RecordingProfiler:
    """Records the order of the calls; model i takes (i + 1) ms, the machine slowing down each call."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def measure(self, artifact, settings):
        self.calls.append(artifact.name)
        slowdown = 1 + 0.1 * len(self.calls)
        return Measurement(latency=LatencyStats.from_samples([(int(artifact.name) + 1) * slowdown]))


def test_rounds_rotate_the_first_model_and_ratios_pair_each_round():
    profiler = RecordingProfiler()
    artifacts = [ModelArtifact(f"m{i}.onnx", (1, 3, 8, 8), None, str(i)) for i in range(3)]
    results = measure_interleaved(profiler, artifacts, ProfileSettings(runs=1, warmup=0, threads=1), rounds=3)
    assert profiler.calls == ["0", "1", "2", "1", "2", "0", "2", "0", "1"]
    assert [len(r) for r in results] == [3, 3, 3]
    ratios = paired_ratios(results[1], results[0])
    # Round by round, model 1 over model 0, each measured under that round's slowdown.
    assert ratios == [2 * 1.2 / 1.1, 2 * 1.4 / 1.6, 2 * 1.9 / 1.8]


def test_compare_cli_measures_and_writes_json(cli, tmp_path):
    out = tmp_path / "c.json"
    result = cli("compare", "hwcompress.model.embedded:resnet20", "resnet18", "--input-shape", "1,3,32,32",
                 "--runs", "5", "--warmup", "1", "--rounds", "3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "hwcompress.compare/1" and doc["source"] == "measured" and doc["rounds"] == 3
    small, large = doc["models"]
    assert doc["reference"] == small["name"] and small["ratio"] == 1.0
    assert large["params"] == 11_689_512 and small["params"] == sum(p.numel() for p in resnet20().parameters())
    per_round = [b / a for a, b in zip(small["round_medians_ms"], large["round_medians_ms"])]
    assert len(per_round) == 3 and large["ratio"] == statistics.median(per_round)
    assert large["ratio_min"] == min(per_round) and large["ratio_max"] == max(per_round)
    assert large["latency_ms"] == statistics.median(large["round_medians_ms"]) and doc["profiler"] == "onnxruntime"
    assert "resnet18" in result.stdout


def test_compare_bad_input_is_one_line(cli, tmp_path):
    from hwcompress.model.export import export_onnx

    fixed = tmp_path / "small.onnx"  # an ONNX file fixes its input shape: 1x3x32x32
    export_onnx(resnet20().eval(), (1, 3, 32, 32), fixed)
    for args, message in (
        (["resnet18"], "at least two models"),
        (["resnet18", str(fixed)], "different input shapes"),
        (["resnet18", "mobilenet_v2", "--rounds", "0"], "--rounds must be at least 1"),
    ):
        result = cli("compare", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
