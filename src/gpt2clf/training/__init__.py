"""Training: run setup and estimate, the feature cache, optimisation, the Lightning loop.

* :mod:`~gpt2clf.training.plan`: the run setup shared by training and ``--dry-run``, what a run will do
  and how long it will take;
* :mod:`~gpt2clf.training.feature_cache`: a frozen backbone's states computed once and read from disk;
* :mod:`~gpt2clf.training.folder_lock`: one writer per cache folder, and dead writers' leftovers removed;
* :mod:`~gpt2clf.training.inputs`: the splits prepared for training and their input pipeline (tokens or
  cached states);
* :mod:`~gpt2clf.training.optimization`: parameter groups, schedules, RNG state;
* :mod:`~gpt2clf.training.loop`: :func:`~gpt2clf.training.loop.fit` and :func:`~gpt2clf.training.loop.train`.
"""
