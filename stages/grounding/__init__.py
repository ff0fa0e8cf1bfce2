"""Grounded Diffusion's grounding module (model) and its training loop (train)."""
