"""The sans-IO core: synchronous, deterministic, and free of trio and httpx.

Everything here takes bytes or values and returns values; the trio/httpx shell around it only
moves bytes and cancellation. A test checks that nothing in this package imports an I/O library.

One module per concern: ``_sse`` decodes an event stream into events, ``_parser`` turns the
bytes of any event-stream body into chunks through a protocol's assembler (and owns the framing
shortcut every protocol shares), one module per wire protocol assembles events into chunks
(``_openai``: chat completions), ``_build`` constructs the public chunk objects cheaply, and
``_retry`` and ``_backoff`` decide about retries.

The core's one error rule: a problem in the stream is *state*, never an exception. Whatever a
server sends, every decoder, assembler and parser here returns what it produced before the
problem and records the problem as ``error`` -- always one of the library's own typed errors
(``StreamProtocolError``, ``ProviderError``, ``StreamTruncatedError``, all ``LLMStreamError``),
kept without a traceback -- and, for assemblers and parsers, sets ``finished``; later input is
ignored. The shell delivers what was returned, then raises ``error``. Only misuse by our own
code raises (a limit below 1, ``feed`` after ``end``). The single exception to the rule is a
public door, not part of the pipeline: ``trio_llmstream.sse.SSEDecoder`` is the same decoder as
``_sse.EventStreamDecoder`` but raises its error, as its documentation has always promised.
"""
