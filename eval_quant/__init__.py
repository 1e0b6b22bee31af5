"""Evaluation of quantized artifacts against their FP16 reference (llama-perplexity semantics)."""
