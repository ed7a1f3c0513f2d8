"""Offline compression tooling for the edge (`tandem compress`, `tandem bench edge`):
recipes that quantize, prune, sparsify and offload the dense model, their calibration, the
pipeline that writes artifacts the runtime loads, and perplexity. Imports the runtime,
never the other way round."""
