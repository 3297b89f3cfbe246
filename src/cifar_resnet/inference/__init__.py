"""Using a trained model: running it on images (``evaluation``), what its predictions
amount to (``metrics``), loading it and predicting (``predict``), tables for the
terminal, and exporting it (``export``: ONNX, TorchScript; ``hub``: a safetensors folder
with a model card). The public names are importable from ``cifar_resnet``."""
