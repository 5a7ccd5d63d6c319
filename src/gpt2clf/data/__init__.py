"""Text in, tokens and batches out: the first stage of the data flow.

* :mod:`~gpt2clf.data.text_dataset`: labelled texts in memory and the stratified splits cut from them;
* one module per source, as litgpt has: :mod:`~gpt2clf.data.newsgroups` (20 Newsgroups),
  :mod:`~gpt2clf.data.labelled_files` (CSV/TSV/JSONL/Parquet), :mod:`~gpt2clf.data.hub` (Hugging Face datasets);
* :mod:`~gpt2clf.data.splits`: a :class:`~gpt2clf.data.splits.DataSource` read into train, validation
  and test sets;
* :mod:`~gpt2clf.data.batching`: tokenization, windows of long documents, padded batches, samplers;
* :mod:`~gpt2clf.data.json_tokenizer`: a fast tokenizer read straight from ``tokenizer.json``;
* :mod:`~gpt2clf.data.stats`: documents, classes and token lengths of a dataset.

Data code never prints or exits, and imports nothing of the model, training or the command line.
"""
