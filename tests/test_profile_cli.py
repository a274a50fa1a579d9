"""`hwcompress profile`, `devices`, `plugins` through the real console script."""

import json

import pytest
import torch
import torchvision

from hwcompress.measure.profile import profile_model
from hwcompress.model.analysis import analyze


def test_profile_json_document(cli, tmp_path):
    out = tmp_path / "r.json"
    result = cli("profile", "-m", "resnet18", "--input-shape", "1,3,64,64", "--runs", "5", "--warmup", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "hwcompress.profile/1"
    lat = doc["latency_ms"]
    assert lat["source"] == "measured" and lat["runs"] == 5
    assert 0 < lat["median"] <= lat["p99"] and lat["std"] >= 0
    assert doc["params"] == 11_689_512 and doc["flops"] == 2 * doc["macs"]
    assert doc["device"]["name"] == "cpu"
    facts = doc["device"]["facts"]
    assert facts["runtime"] == "onnxruntime" and facts["intra_op_threads"] == 1 and facts["logical_cores"] >= 1
    assert doc["model"]["onnx"]["opset"] == 17
    timed = [row for row in doc["layers"] if row["latency_ms"] is not None]
    assert len(timed) >= 15 and any(row["name"] == "layer1.0.conv1" for row in timed)
    # The rows are checked against the whole: where the node profiler's times summed to more than the
    # median, its own cost per node is taken out and the rows (with (other)) sum to the median exactly.
    total = sum(row["latency_ms"] for row in timed)
    assert doc["per_layer"]["node_sum_ms"] > 0
    if any("the node profiler's kernel times summed to" in note for note in doc["notes"]):
        assert total == pytest.approx(lat["median"], rel=1e-6) and doc["per_layer"]["node_sum_ms"] > lat["median"]
        assert doc["per_layer"]["profiler_overhead_ms_per_node"] > 0
    else:
        assert any(f"per-layer times sum to {total:.3f} ms" in note for note in doc["notes"]) and total <= lat["median"] * 1.001
    assert "Examples" not in result.stdout and "resnet18 on cpu" in result.stdout


def test_profile_json_to_stdout_is_pure_json(cli):
    result = cli("profile", "-m", "mobilenet_v2", "--input-shape", "1,3,32,32", "--runs", "3", "--no-per-layer", "--json", "-")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["settings"]["per_layer"] is False and all(r["latency_ms"] is None for r in doc["layers"])


def test_profile_onnx_and_checkpoint_inputs(cli, tmp_path):
    model = torchvision.models.resnet18().eval()
    torch.save(model, tmp_path / "full.pt")
    result = cli("profile", "-m", str(tmp_path / "full.pt"), "--input-shape", "1,3,32,32", "--runs", "3", "--json", "-", "--no-per-layer")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 11_689_512
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17)
    result = cli("profile", "-m", str(tmp_path / "m.onnx"), "--runs", "3", "--json", "-")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"]["input_shape"] == [1, 3, 32, 32] and doc["params"] > 11_000_000
    # An ONNX file is counted from its graph like the PyTorch model, and its nodes' times land on the
    # layers the exporter named (the torchvision card's MACs at 32x32: 1.81 G x (32/224)^2).
    assert doc["macs"] == analyze(model, (1, 3, 32, 32)).macs and doc["model"]["onnx"]["opset"] == 17
    rows = {row["name"]: row for row in doc["layers"]}
    assert rows["conv1"]["op"] == "Conv2d" and rows["conv1"]["cout"] == 64 and rows["conv1"]["latency_ms"] > 0
    assert rows["fc"]["op"] == "Linear" and rows["fc"]["macs"] == 512 * 1000


def test_factory_and_weights(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))\n"
        "def small():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).state_dict()
    weights["0.bias"] = torch.full((4,), 7.0)
    torch.save(weights, tmp_path / "w.pt")
    report = profile_model("mynets:small", input_shape=(1, 3, 8, 8), weights=str(tmp_path / "w.pt"), runs=3, warmup=0)
    assert report.analysis.params == 4 * 3 * 9 + 4 and report.latency.runs == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "toaster"], "unknown device 'toaster'; known devices: android-phone"),
        (["-m", "resnet_nope"], "unknown model 'resnet_nope'"),
        (["-m", "missing.pt"], "checkpoint missing.pt not found"),
        (["--input-shape", "1,3,x"], "malformed input shape"),
        (["--input-shape", "1,-3,4,4"], "malformed input shape"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["-m", "nosuchpkg.mod:fn"], "cannot import 'nosuchpkg.mod'"),
        (["--plot", "layers.txt"], "must end in .png, .svg, .pdf"),
        (["--plot", "no/such/folder/layers.png"], "does not exist"),
        (["--plot", "layers.png", "--no-per-layer"], "drop --no-per-layer"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli, args, message):
    result = cli("profile", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_checkpoint_and_unexportable_model(cli, tmp_path, monkeypatch):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = cli("profile", "-m", str(bad))
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "oddnet.py").write_text(
        "import torch\n"
        "class Airy(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.special.airy_ai(x)\n"
        "def build():\n"
        "    return Airy()\n"
    )
    result = cli("profile", "-m", "oddnet:build", "--input-shape", "1,4", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "cannot be exported to ONNX" in result.stderr and "airy_ai" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(cli):
    result = cli("--debug", "profile", "--device", "toaster")
    # the traceback, and the exit code of a refusal all the same (scripts test for 2)
    assert result.returncode == 2 and "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_version_and_help(cli):
    from hwcompress import __version__

    assert __version__ in cli("--version").stdout
    for command in (["profile"], ["devices"], ["plugins"], []):
        result = cli(*command, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, command


def test_devices_lists_catalog_with_status(cli):
    result = cli("devices", "--json", "-")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"cpu", "nvidia-gpu", "jetson-orin-nano", "raspberry-pi-5", "android-phone"} <= set(rows)
    assert rows["cpu"]["status"] == "measured" and rows["cpu"]["profiler"] == "onnxruntime"
    assert "jetson" in rows["jetson-orin-nano"]["aliases"]
    assert rows["jetson-orin-nano"]["status"] == "unavailable"
    assert "hwcompress lut record --device jetson" in rows["jetson-orin-nano"]["reason"]


def test_plugins_lists_onnxruntime_distribution(cli):
    result = cli("plugins", "--json", "-")
    assert result.returncode == 0, result.stderr
    infos = {row["name"]: row for row in json.loads(result.stdout)}
    ort = infos["hwcompress-profiler-onnxruntime"]
    assert ort["distribution"] == "hwcompress-profiler-onnxruntime" and ort["error"] is None
    assert ort["provides"] == {"profilers": ["onnxruntime"]}


def test_profile_plot_shows_time_and_macs_shares(cli, tmp_path):
    out = tmp_path / "layers.png"
    result = cli("profile", "-m", "mobilenet_v2", "--input-shape", "1,3,64,64", "--runs", "3", "--warmup", "1",
                 "--plot", str(out), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out}" in result.stdout
    assert not list(tmp_path.glob(".*.tmp"))


def test_profile_plot_folds_the_fastest_layers_into_one_bar(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from hwcompress import plots

    layers = [{"name": f"conv{i}", "op": "Conv2d", "macs": 10 * (i + 1), "latency_ms": 0.01 * (i + 1)} for i in range(50)]
    document = {"layers": layers, "model": {"name": "toy"}, "device": {"name": "cpu"},
                "latency_ms": {"median": 12.0, "source": "measured"}}
    drawn = {}
    real_barh = Axes.barh

    def spy(self, y, width, *args, **kwargs):
        drawn.setdefault(kwargs.get("label"), list(width))
        return real_barh(self, y, width, *args, **kwargs)

    monkeypatch.setattr(Axes, "barh", spy)
    plots.profile_layers(document, tmp_path / "toy.svg")
    time_shares = drawn["share of layer time"]
    assert len(time_shares) == plots.MAX_PROFILE_LAYERS + 1  # the slowest 40, then "10 other layers"
    assert sum(time_shares) == pytest.approx(100.0) and sum(drawn["share of MACs"]) == pytest.approx(100.0)
    assert time_shares[-1] == pytest.approx(100 * sum(0.01 * (i + 1) for i in range(10)) / sum(0.01 * (i + 1) for i in range(50)))
    assert (tmp_path / "toy.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(plots.UserError, match="no per-layer times"):
        plots.profile_layers({**document, "layers": [{**r, "latency_ms": None} for r in layers]}, tmp_path / "x.png")


def test_the_python_api_names_a_mistyped_setting_and_reads_a_shape_given_as_text():
    """profile() and compare() refuse keywords they do not take (a misspelt ``runs`` was silently the
    default), and take "1,3,32,32" as the CLI does; a single string is not a list of models."""
    import hwcompress
    from hwcompress.errors import UserError

    with pytest.raises(UserError, match=r"profile\(\) has no setting run;"):
        hwcompress.profile("mobilenet_v3_small", input_shape=(1, 3, 32, 32), run=3)
    with pytest.raises(UserError, match=r"compare\(\) has no setting per_layr;"):
        hwcompress.compare(["mobilenet_v3_small", "mobilenet_v3_small"], per_layr=False)
    with pytest.raises(UserError, match="models must be a list of two or more"):
        hwcompress.compare("resnet18")
    with pytest.raises(UserError, match="positive whole numbers"):
        hwcompress.profile("mobilenet_v3_small", input_shape=(1, 3, 32.5, 32))
    with pytest.raises(UserError, match="agent_options must be a dict"):
        hwcompress.compress(budget=hwcompress.Budget.macs(5e7), agent_options=["delta_decay=0.9"])
    # Latency settings with a MACs budget do nothing: refused by name, as the CLI refuses their flags.
    with pytest.raises(UserError, match=r"^anchors, verdict_rounds apply to latency budgets only .*Budget.macs"):
        hwcompress.compress(budget=hwcompress.Budget.macs(5e7), anchors=3, verdict_rounds=7)
    # The settings' own checks name keywords, not the CLI's flags.
    with pytest.raises(UserError, match=r"^warmup_episodes 10 is more than episodes 2") as refused:
        hwcompress.compress(budget=hwcompress.Budget.macs(5e7), episodes=2, warmup_episodes=10)
    assert "--" not in str(refused.value)
    report = hwcompress.profile("mobilenet_v3_small", input_shape="1,3,32,32", runs=3, warmup=1, per_layer=False).to_dict()
    assert report["model"]["input_shape"] == [1, 3, 32, 32] and report["settings"]["runs"] == 3
