"""MACs and parameters match torchvision's model cards; per-layer rows add up to the whole."""

import pytest
import torch
import torchvision

from hwcompress.model.analysis import OTHER, analyze

CARDS = {  # name: (GMACs on the torchvision card, exact params)
    "resnet18": (1.81, 11_689_512),
    "resnet50": (4.09, 25_557_032),
    "mobilenet_v2": (0.30, 3_504_872),
}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_counts_match_model_cards(name):
    gmacs, params = CARDS[name]
    analysis = analyze(torchvision.models.get_model(name), (1, 3, 224, 224))
    assert analysis.params == params
    assert abs(analysis.macs / 1e9 - gmacs) / gmacs < 0.01
    assert analysis.flops == 2 * analysis.macs
    assert sum(layer.macs for layer in analysis.layers) == analysis.macs
    assert sum(layer.params for layer in analysis.layers) == analysis.params


def test_layer_rows_describe_convolutions():
    analysis = analyze(torchvision.models.resnet18(), (1, 3, 224, 224))
    conv1 = next(layer for layer in analysis.layers if layer.name == "conv1")
    assert (conv1.cin, conv1.cout, conv1.kernel, conv1.stride, conv1.groups) == (3, 64, (7, 7), (2, 2), 1)
    assert conv1.in_shape == (1, 3, 224, 224) and conv1.out_shape == (1, 64, 112, 112)
    assert conv1.macs == 64 * 3 * 7 * 7 * 112 * 112
    assert all(layer.name != OTHER for layer in analysis.layers)  # every MAC sits in a leaf layer


def test_work_outside_leaves_lands_in_other_row():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)
            self.scale = torch.nn.Parameter(torch.ones(4, 4))

        def forward(self, x):
            return self.fc(x) @ self.scale  # a matmul outside any leaf

    analysis = analyze(Odd(), (2, 8))
    other = next(layer for layer in analysis.layers if layer.name == OTHER)
    assert other.macs == 2 * 4 * 4 and other.params == 16
    assert sum(layer.macs for layer in analysis.layers) == analysis.macs == 2 * 8 * 4 + 2 * 4 * 4


def test_attention_is_counted_like_the_model_card():
    """Under no_grad nn.MultiheadAttention takes a fused path the counter cannot see (11.27 G for
    vit_b_16); the analysis counts the plain path, and an attention block is one row."""
    analysis = analyze(torchvision.models.vit_b_16(), (1, 3, 224, 224))
    assert analysis.macs / 1e9 == pytest.approx(17.56, abs=0.01)
    attention = [row for row in analysis.layers if row.op == "MultiheadAttention"]
    assert len(attention) == 12 and all(row.macs > 0 and row.cin == 768 for row in attention)


def test_fused_and_relaid_nodes_land_on_their_layers(tmp_path):
    """ONNX Runtime names Conv+ReLU after the ReLU's output (NCHWc) and MatMul+Add with a suffix; both
    map back to the layer that leads them, and layout reorders to (other)."""
    from hwcompress.measure.profile import map_node_times
    from hwcompress.model.export import export_onnx

    model = torchvision.models.resnet18().eval()
    path = tmp_path / "r.onnx"
    export_onnx(model, (1, 3, 32, 32), path, verify=False)
    analysis = analyze(model, (1, 3, 32, 32))
    rows = map_node_times({"/layer1/layer1.0/relu/Relu_output_0_nchwc": 1.0, "/layer1/layer1.0/conv2/Conv_output_0_nchwc": 2.0,
                           "/fc/Gemm/MatMulAddFusion": 3.0, "ReorderOutput": 4.0, "/relu/Relu_output_0_nchwc": 5.0},
                          analysis, path)
    assert rows == {"layer1.0.conv1": 1.0, "layer1.0.conv2": 2.0, "fc": 3.0, "(other)": 4.0, "conv1": 5.0}
