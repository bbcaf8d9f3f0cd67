"""The trigger evaluation suite: clean text from shipped packages, triggers from the literature.

``trigger-firewall eval`` and the threshold calibration both use it; see
``docs/evaluation.md``. Modules, each small and importable on its own:

* :mod:`~firewall.evaluation.data`: clean texts (MR sentences, IMDB openings,
  hand-written hard negatives);
* :mod:`~firewall.evaluation.triggers`: the trigger families and their
  deterministic insertion;
* :mod:`~firewall.evaluation.metrics`: AUROC, thresholds for a target FPR,
  rates and latency statistics, in pure Python;
* :mod:`~firewall.evaluation.suite`: runs everything through the proxy's own
  :class:`~firewall.offline.scanning.Scanner` (``run_suite``, ``thresholds_for_fpr``);
* :mod:`~firewall.evaluation.report`: the report as data, table, JSON and plot;
* :mod:`~firewall.cli.evaluate`: the ``eval`` subcommand.

Nothing is imported here: the CLI imports this package to build its parser,
and must stay fast.
"""
