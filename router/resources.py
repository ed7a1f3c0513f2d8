"""What policies use besides the tiers, loaded once per router or SDK client: the
tokenizer, the cascade scorer and (when its head is trained) the prompt router."""

from __future__ import annotations

from tandem.router.config import RouterConfig
from tandem.router.policies.base import PolicyResources
from tandem.router.scorers import DEFAULT_ROUTE_HEAD, PromptRouter, create_scorer
from tandem.shared.models import load_tokenizer, resolve_model


def build_resources(config: RouterConfig, state: object) -> PolicyResources:
    """Tokenizer, scorer and (when trained) the prompt router, loaded once."""
    tokenizer = load_tokenizer(resolve_model(config.model))
    needs_encoder = config.scorer == "learned" or DEFAULT_ROUTE_HEAD.is_file()
    encoder = None
    if needs_encoder:
        from tandem.router.embeddings import SentenceEncoder

        encoder = SentenceEncoder()
    prompt_router = PromptRouter.load(encoder=encoder) if DEFAULT_ROUTE_HEAD.is_file() else None
    return PolicyResources(tokenizer, state, create_scorer(config.scorer, encoder),  # type: ignore[arg-type]
                           prompt_router)
