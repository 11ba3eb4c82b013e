"""Interoperability with transformers: LLaVA folders in and out, and the weight-name maps between them."""
