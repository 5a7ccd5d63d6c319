"""gpt2clf beyond one machine, on Ray: batch prediction with Ray Data, training with Ray Train.

Ray is an optional extra (``pip install "gpt2clf[ray]"``), imported lazily: nothing here is imported by
``import gpt2clf``, and ``--engine ray`` without Ray says in one line how to install it.
"""
