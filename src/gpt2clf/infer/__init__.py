"""Running a trained model: logits, probabilities and metrics.

* :mod:`~gpt2clf.infer.runtime`: device and precision choice, the batched inference loop, int8;
* :mod:`~gpt2clf.infer.predictor`: :class:`~gpt2clf.infer.predictor.Predictor`, texts to probabilities;
* :mod:`~gpt2clf.infer.evaluation`: metrics on a labelled split;
* :mod:`~gpt2clf.infer.onnx_runtime`, :mod:`~gpt2clf.infer.export`: ONNX export and ONNX Runtime.
"""
