"""What embedding costs, for the report: what a run spent, and what a dry run forecasts the
upgrade will spend (tokens, money at ``embedder.price_per_million_tokens``, time at the throughput
the sample was embedded with)."""

from __future__ import annotations

from typing import Any

from embedmig.embedders.base import Usage, estimate_tokens


def spent(usage: Usage, price: float | None) -> dict[str, Any]:
    """A run's embedding: requests, input tokens, texts embedded and from the cache, and cost."""
    return {
        **usage.as_dict(),
        "price_per_million_tokens": price,
        "cost": _money(usage.tokens, price),
    }


def forecast(
    usage: Usage, texts: list[str], population: int, price: float | None
) -> dict[str, Any]:
    """The full corpus's embedding, from a sample: ``usage`` is what embedding the sample's
    ``texts`` spent (nothing, if the cache had them all) and ``population`` the corpus size.

    Tokens per document: counted on the sample when it was embedded (the tokenizer or the
    endpoint's count), else estimated from its text. Time: the sample's throughput; unknown when
    the cache served the whole sample.
    """
    if usage.texts and usage.tokens and not usage.cached:
        per_doc, estimated = usage.tokens / usage.texts, usage.estimated
    else:
        per_doc = sum(map(estimate_tokens, texts)) / max(len(texts), 1)
        estimated = True
    tokens = round(per_doc * population)
    rate = usage.texts / usage.seconds if usage.texts and usage.seconds > 0 else None
    return {
        **spent(usage, price),
        "forecast_tokens": tokens,
        "forecast_tokens_estimated": estimated,
        "forecast_cost": _money(tokens, price),
        "forecast_seconds": population / rate if rate else None,
        "texts_per_second": rate,
    }


def _money(tokens: int, price: float | None) -> float | None:
    return None if price is None else tokens / 1e6 * price
