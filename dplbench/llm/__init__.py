"""The LLM prompt source's offline step: caching the frozen LLM's knowledge (build.py) and a tiny
stand-in LLM for tests (tiny.py). Imports transformers; nothing in training imports this."""
