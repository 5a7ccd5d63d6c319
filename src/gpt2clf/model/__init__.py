"""The network and its folder format: token ids in, logits out.

* :mod:`~gpt2clf.model.gpt2_body`, :mod:`~gpt2clf.model.mpnet_body`: native GPT-2 and MPNet bodies
  (fast start-up, SDPA attention);
* :mod:`~gpt2clf.model.backbone`: the adapter over any Hugging Face backbone;
* :mod:`~gpt2clf.model.folder`: the model-folder format (JSON + safetensors), written and read safely;
* :mod:`~gpt2clf.model.classifier`: our blocks, pooling and head on top of the backbone;
* :mod:`~gpt2clf.model.fusion`: the TF-IDF model whose probabilities are mixed with the network's.

The model knows nothing of training, data files or the command line.
"""
