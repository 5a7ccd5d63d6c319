"""Fault injection for tests/test_distributed_predict.py, through Python's ``sitecustomize`` hook.

Python imports this at start-up in every process that has this folder on ``PYTHONPATH``. The tests put
it there only for Ray's model actors (``runtime_env`` ``env_vars``), so the actors of one job, and no
other process, get a :class:`~gpt2clf.distributed.predict.PredictBatches` that misbehaves:

* ``GPT2CLF_FAULT=exit``: on its ``GPT2CLF_FAULT_AT``-th batch an actor calls ``os._exit(1)``, once per job
  (the first actor to get there creates ``GPT2CLF_FAULT_MARKER``; restarted actors find it and go on);
* ``GPT2CLF_FAULT=slow``: every batch first writes the actor's pid to ``GPT2CLF_FAULT_MARKER`` and sleeps
  ``GPT2CLF_FAULT_SLEEP`` seconds, so that a test can SIGKILL the actor mid-run.
"""

import os

if os.environ.get("GPT2CLF_FAULT"):
    import time

    from gpt2clf.distributed import predict

    _original = predict.PredictBatches.__call__
    _calls = [0]

    def _faulty_call(self, batch):  # type: ignore[no-untyped-def]
        _calls[0] += 1
        marker = os.environ["GPT2CLF_FAULT_MARKER"]
        if os.environ["GPT2CLF_FAULT"] == "exit" and _calls[0] == int(os.environ["GPT2CLF_FAULT_AT"]):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        elif os.environ["GPT2CLF_FAULT"] == "slow":
            with open(marker + ".tmp", "w") as handle:
                handle.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)
            time.sleep(float(os.environ["GPT2CLF_FAULT_SLEEP"]))
        return _original(self, batch)

    predict.PredictBatches.__call__ = _faulty_call
