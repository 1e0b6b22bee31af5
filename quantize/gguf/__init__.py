"""GGUF: our HF → GGUF conversion, llama.cpp's quantizer, and a llama.cpp runner."""
