"""Hugging Face interop: pure name and config maps (`maps`), import (`importer`), export (`exporter`)."""
