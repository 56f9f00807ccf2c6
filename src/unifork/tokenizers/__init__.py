"""Text (subword BPE) and image (VQ-VAE) tokenizers."""
