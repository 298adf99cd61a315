"""The LLM seam: the client every call goes through (``client``), its backends — OpenAI-compatible HTTP, the embedded
llama.cpp model (``local``), the provider batch API (``batch``) — structured output, limits, budget, tokens, prices."""
