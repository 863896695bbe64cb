"""Function tools: defining them, checking a model's calls, running the calls, the tool loop.

One module per job; nothing is re-exported here (the package's public names are re-exported
from ``trio_llmstream``), so importing one module never imports the others it does not need:

- ``_function``: the public API for defining tools — ``FunctionTool``, ``@function_tool``,
  ``ToolRegistry``, ``check_tool_name``;
- ``_schema``: the compiler from a function's signature (annotations, ``Param``) to the JSON
  schema the model sees and the converter of validated arguments back to Python;
- ``_docstrings``: the tool's and its parameters' descriptions, from Google, reST or numpy
  docstrings;
- ``_validate``: the JSON-Schema validator whose messages are written for the model;
- ``_execute``: running one call to exactly one outcome — ``ToolCallHandle``,
  ``run_tool_call``, ``ToolOutcome``, ``ToolOptions``;
- ``_loop``: ``open_tool_loop``, which streams, runs the calls and sends the results back.

Layers: ``_docstrings`` and ``_validate`` depend on nothing here; ``_schema`` on both;
``_function`` on ``_schema`` and ``_docstrings``; ``_execute`` on ``_function``; the runtime
(``_stream``) on ``_function`` and ``_execute``; ``_loop``, alone above the runtime, on
``_stream``, ``_execute`` and ``_function``.
"""
