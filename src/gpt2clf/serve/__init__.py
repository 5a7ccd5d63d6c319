"""Serving: ``gpt2clf serve``, an HTTP API and a web page over a model folder.

* :mod:`~gpt2clf.serve.microbatch`: concurrent requests merged into shared model calls (asyncio only);
* :mod:`~gpt2clf.serve.app`: the FastAPI app, its limits, metrics and the page in ``web/``.
"""
