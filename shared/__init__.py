"""Code used by several Tandem parts: configuration, logging, metrics, errors, gRPC
plumbing, model location, tokenization and request validation."""
