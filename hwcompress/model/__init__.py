"""Models and data: load what the user names, analyse its layers, export it to ONNX, and the embedded
default (a ResNet-56 on scikit-learn's digits) that runs with no downloads."""
