"""Integrations with training frameworks (optional dependencies, imported on
demand): ``torch_relu_ext.integrations.lightning``."""
