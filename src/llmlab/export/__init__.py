"""Exports for deployment engines: GGUF for llama.cpp (`gguf.py`), ONNX for ONNX Runtime (`onnx.py`)."""
