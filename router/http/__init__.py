"""The router's OpenAI-compatible HTTP API (FastAPI on uvicorn, in the router process and
on its event loop): /v1/chat/completions, /v1/completions, /v1/models, /health, /ready
and /metrics. Requests go through the same `Gate` and `RouterCore` as gRPC ones; this
package only converts JSON in and out (convert.py) and maps statuses (errors.py)."""
