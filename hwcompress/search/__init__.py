"""The search: agents (AMC, N2N, uniform, random, plugins') pick a student under a budget on a cost
model priced by the device, and the pipeline measures, repairs, fine-tunes and reports it.

Entry points: :func:`hwcompress.search.run.run_search` and :func:`~hwcompress.search.run.resume_search`
(the Python API's :func:`hwcompress.compress` calls them); the agent protocol is
:mod:`hwcompress.search.agent`.
"""
