"""ONNX export is opset 17 through the TorchScript exporter and agrees with PyTorch."""

import onnx
import pytest
import torch
import torchvision

from hwcompress.errors import UserError
from hwcompress.model.export import OPSET, export_onnx, node_module_path


def test_export_matches_torch_and_records_opset(tmp_path):
    model = torchvision.models.mobilenet_v2().eval()
    info = export_onnx(model, (1, 3, 64, 64), tmp_path / "m.onnx")
    graph = onnx.load(info.path)
    assert info.opset == OPSET == 17
    assert graph.opset_import[0].version == 17
    assert "dynamo=False" in info.exporter
    assert info.max_abs_diff is not None and info.max_abs_diff < 1e-4
    assert not list(tmp_path.glob("*.tmp"))


def test_unexportable_operator_is_named(tmp_path):
    class Fancy(torch.nn.Module):
        def forward(self, x):
            return torch.special.airy_ai(x)

    with pytest.raises(UserError, match="airy_ai"):
        export_onnx(Fancy(), (1, 4), tmp_path / "f.onnx")
    assert not (tmp_path / "f.onnx").exists()


def test_node_names_map_to_module_paths():
    assert node_module_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert node_module_path("/conv1/Conv") == "conv1"
    assert node_module_path("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    assert node_module_path("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert node_module_path("Conv_3") is None
