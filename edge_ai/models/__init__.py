"""Shipped demo model packages (package data: model.yaml, model.onnx, selftest.npz, README.md)."""
