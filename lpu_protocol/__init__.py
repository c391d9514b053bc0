"""What the router and the emulator both speak, so that neither imports the other.

* :mod:`lpu_protocol.openai_api`: the OpenAI request shapes the router reads and the emulator
  serves, and the OpenAI error body (:class:`~lpu_protocol.openai_api.APIError`);
* :mod:`lpu_protocol.json_body`: the one JSON body parser both run, with byte spans;
* :mod:`lpu_protocol.param_policy`: which request parameters a backend accepts;
* :mod:`lpu_protocol.tokens`: prompt token counting;
* :mod:`lpu_protocol.artifact`: the compiled-artifact description and its service times;
* :mod:`lpu_protocol.load_report`: the ``GET /load`` report, in both directions;
* :mod:`lpu_protocol.headers`: the ``x-lpu-*`` header names, who sets each and its unit;
* :mod:`lpu_protocol.histograms`: shared histogram bounds.
"""
