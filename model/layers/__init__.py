"""One module per DeepSeek-V4 sub-module (reference model.py structure)."""
