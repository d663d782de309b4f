"""The torch-free runtime: an exported graph (RUN_DIR/onnx/) classifying images with onnxruntime,
numpy and Pillow alone, so that `predict`, `detect` and `serve` with an ONNX backend run where only
requirements-serve.txt is installed. Nothing here imports torch, transformers or datasets
(tests/test_runtime.py holds it to that)."""
