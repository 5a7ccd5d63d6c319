"""Text in, tokens and batches out: the first stage of the data flow.

* :mod:`~gpt2clf.data.corpora`: labelled text from 20 Newsgroups, a CSV/TSV/JSONL/Parquet file or a
  Hugging Face dataset, split into train, validation and test;
* :mod:`~gpt2clf.data.batching`: tokenization, windows of long documents, padded batches, samplers;
* :mod:`~gpt2clf.data.json_tokenizer`: a fast tokenizer read straight from ``tokenizer.json``;
* :mod:`~gpt2clf.data.stats`: documents, classes and token lengths of a dataset.

Data code never prints or exits, and imports nothing of the model, training or the command line.
"""
