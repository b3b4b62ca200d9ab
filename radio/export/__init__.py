"""Exports of a RADIO model to other formats: pickle-free safetensors, transformers-native, ONNX."""
