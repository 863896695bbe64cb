"""Public helpers for testing code built on trio_llmstream: a scripted in-memory provider,
hypothesis strategies for chunk sequences and fault plans, and a loopback mock server."""

from ._scripted import Fault as Fault
from ._scripted import FaultKind as FaultKind
from ._scripted import ScriptedAttempt as ScriptedAttempt
from ._scripted import ScriptedLLM as ScriptedLLM
from ._scripted import text_chunks as text_chunks

__all__ = [
    "Fault",
    "FaultKind",
    "ScriptedAttempt",
    "ScriptedLLM",
    "text_chunks",
]
