"""What people read: plots, explanations and the HTML run report.

* :mod:`~gpt2clf.report.plots`: training curves, confusion matrix, token lengths (PNG);
* :mod:`~gpt2clf.report.explain`: per-token attributions and attention routing for one document;
* :mod:`~gpt2clf.report.run_report`: one self-contained HTML report of a finished run;
* :mod:`~gpt2clf.report.progress_bar`: the progress bar evaluate and predict draw on stderr;
* ``templates/``: the Jinja2 templates both pages use.
"""
