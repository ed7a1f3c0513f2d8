"""The cloud large-model service: full-quality generation and speculative verification."""
