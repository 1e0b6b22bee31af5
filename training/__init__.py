"""Training: tokenizers, continued pretraining and SFT of Mistral/Llama-architecture models."""
