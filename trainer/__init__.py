"""The off-board trainer: replay, offline pretraining, online fine-tuning, ONNX export."""
