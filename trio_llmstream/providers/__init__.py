"""Providers: one module per wire protocol, each a thin I/O shell over the sans-IO core."""

from .openai import OpenAILLM as OpenAILLM

__all__ = ["OpenAILLM"]
