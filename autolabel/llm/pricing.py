"""What a call costs: prices from the maintained ``genai-prices`` data, or the user's overrides.

Rules, in order:

1. ``--price-in X --price-out Y`` (``Settings.price_in``/``price_out``, USD per million prompt / completion
   tokens) price any model: self-hosted, unknown, or a known one at a negotiated rate. They go together.
2. ``local:`` models cost nothing.
3. ``openai:`` models are looked up in the price data bundled with ``genai-prices`` (no network): by provider
   ``openai`` for OpenAI's own endpoint, or by the ``--base-url`` of another provider genai-prices knows
   (OpenRouter, Groq, ...). Prompt tokens served from the provider's cache are billed at its cache-read price
   where the data has one.
4. An ``openai:`` model that genai-prices does not know, served on this machine (a ``--base-url`` on loopback:
   llama.cpp, vLLM, Ollama run locally) costs nothing, as ``local:`` models do; the source line says so (no
   warning on every run). ``--price-in/--price-out`` price it (a local proxy to a paid API).
5. Anything else has no known price: the cost is unknown (``None``, shown as ``n/a`` with a note), never a
   guessed number. A run with ``--max-cost`` then refuses to start, since it could not keep the budget.

``pricer(settings)`` is what ``LLMClient`` takes; ``price(settings)`` is the full answer (``plan``, the CLI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from typing import Any
from urllib.parse import urlparse

from autolabel.errors import ConfigError
from autolabel.llm.client import BackendKind
from autolabel.settings import Settings

MILLION = 1_000_000
OPENAI_HOSTS = ("api.openai.com",)

CostFn = Callable[[int, int, int], float]


@dataclass(frozen=True)
class Price:
    """How one model's calls are priced; ``cost`` is None when no price is known."""

    source: str
    """One line saying where the prices come from (printed by ``plan`` and ``run``)."""
    calc: CostFn | None = None
    """(prompt tokens, completion tokens, cached prompt tokens) -> USD."""

    @property
    def known(self) -> bool:
        return self.calc is not None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float | None:
        """USD for one call; ``cached_tokens`` are the prompt tokens the provider served from its cache."""
        if self.calc is None:
            return None
        return self.calc(prompt_tokens, completion_tokens, min(cached_tokens, prompt_tokens))


def price(settings: Settings) -> Price:
    """The price of ``settings.model`` under the rules in the module docstring."""
    if (settings.price_in is None) != (settings.price_out is None):
        raise ConfigError("--price-in and --price-out go together: give both (USD per million tokens)")
    if settings.price_in is not None and settings.price_out is not None:
        return _override(settings.price_in, settings.price_out)
    try:
        kind = BackendKind(settings.family)
    except ValueError:
        return _unknown(settings, f"unknown model family {settings.family!r}")
    return PRICERS[kind](settings)


def pricer(settings: Settings) -> tuple[Callable[[int, int], float], str]:
    """(prompt tokens, completion tokens) -> USD for ``LLMClient``, and the price source line.

    With no known price the function counts 0 (the source line says the cost is unknown), and a ``--max-cost``
    budget is refused with a ConfigError: it could not be kept.
    """
    p = price(settings)
    if p.calc is None:
        if settings.max_cost is not None:
            raise ConfigError(f"--max-cost needs a price, and {p.source}")
        return (lambda prompt, completion: 0.0), p.source
    calc = p.calc
    return (lambda prompt, completion: calc(prompt, completion, 0)), p.source


# -- the rules ----------------------------------------------------------------------------------------------

def _override(price_in: float, price_out: float) -> Price:
    def calc(prompt: int, completion: int, cached: int) -> float:
        return (prompt * price_in + completion * price_out) / MILLION

    return Price(f"prices from --price-in/--price-out: ${price_in:g}/M prompt, ${price_out:g}/M completion "
                 "tokens", calc)


def _local(settings: Settings) -> Price:
    return Price(f"{settings.model} runs on this machine: no cost", lambda prompt, completion, cached: 0.0)


def _unknown(settings: Settings, why: str) -> Price:
    return Price(f"no price known for {settings.model} ({why}): cost n/a; pass --price-in/--price-out")


def _where(settings: Settings) -> dict[str, Any]:
    """genai-prices' provider selector for the endpoint: OpenAI itself, or the provider at ``base_url``."""
    url = urlparse(settings.base_url) if settings.base_url else None
    if url is None or url.hostname is None or url.hostname in OPENAI_HOSTS:
        return {"provider_id": "openai"}
    # without user:password@ — genai-prices quotes the URL in its messages, and they are printed
    return {"provider_api_url": url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()}


def _openai(settings: Settings) -> Price:
    import genai_prices  # loaded by the commands that look a price up, not by every importer of this module

    where = _where(settings)
    model = settings.model_name
    try:
        usage = genai_prices.Usage(input_tokens=MILLION, output_tokens=MILLION)
        probe = genai_prices.calc_price(usage, model, **where)
        usage = genai_prices.Usage(input_tokens=MILLION, cache_read_tokens=MILLION)
        cached = genai_prices.calc_price(usage, model, **where)
    except LookupError as e:
        if settings.base_url is not None and not settings.is_remote():
            return Price(f"{settings.model} is served on this machine ({settings.endpoint_host()}): no cost "
                         "(--price-in/--price-out price it)", lambda prompt, completion, cached: 0.0)
        return _unknown(settings, f"genai-prices {version('genai-prices')}: {e}")

    def calc(prompt: int, completion: int, cached_tokens: int) -> float:
        usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion,
                                   cache_read_tokens=cached_tokens or None)
        return float(genai_prices.calc_price(usage, model, **where).total_price)

    rates = f"${_g(probe.input_price)}/M prompt, ${_g(probe.output_price)}/M completion"
    if cached.input_price != probe.input_price:
        rates += f", ${_g(cached.input_price)}/M cached prompt"
    return Price(f"prices from genai-prices {version('genai-prices')} (bundled data): {probe.provider.name} "
                 f"{probe.model.id}, {rates} tokens", calc)


def _g(value: Decimal) -> str:
    return f"{float(value):g}"


PRICERS: dict[BackendKind, Callable[[Settings], Price]] = {
    BackendKind.OPENAI: _openai,
    BackendKind.LOCAL: _local,
}
