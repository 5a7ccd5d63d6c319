"""Serving: ``gpt2clf serve``, an HTTP API and a web page over a model folder.

* :mod:`~gpt2clf.serve.microbatch`: concurrent requests merged into shared model calls (asyncio only);
* :mod:`~gpt2clf.serve.app`: the FastAPI app (routes, OpenAPI schema, ``create_app``, ``serve``) and the
  page in ``web/``, assembled from :mod:`~gpt2clf.serve.schemas` (request and response bodies),
  :mod:`~gpt2clf.serve.http_errors` (the JSON error body), :mod:`~gpt2clf.serve.limits` (413s),
  :mod:`~gpt2clf.serve.metrics` (Prometheus), :mod:`~gpt2clf.serve.auth` (the API key and the rule
  that nothing listens beyond loopback without one) and :mod:`~gpt2clf.serve.service` (the model side);
* :mod:`~gpt2clf.serve.extra`: the one error for a missing ``serve`` extra.
"""
