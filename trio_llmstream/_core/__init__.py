"""The sans-IO core: synchronous, deterministic, and free of trio and httpx.

Everything here takes bytes or values and returns values; the trio/httpx shell around it only
moves bytes and cancellation. A test checks that nothing in this package imports an I/O library.
"""
