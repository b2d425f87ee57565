"""The papers' studies, one folder each, every folder the same shape: ``config.py`` (a frozen dataclass of
the study's settings, validated in one place), ``study.py`` (the computation, resumable through a results
folder) and ``report.py`` (tables, plots and a generated ``report.md``, rebuilt from the folder's files
alone by ``write_report``).

* ``tradeoff``: [P1, P2] diversity against attribution for every decoder family (``experiments.tradeoff``).
* ``daemon``: [P3] DAEMON against the standard decoders on human text, SR-4 alone, M and τ sweeps
  (``experiments.daemon``).
* ``theory_check``: [P1] the closed forms and ``generate`` against the exact soft-Bellman DP
  (``experiments.theory``).
* ``guidance``: the classifier-guidance head trained on wiki-leads and its topic evaluation
  (``experiments.train_discriminator``, ``experiments.guidance_topic_eval``).

Launchers, notebooks, tests and benchmarks import the studies; the library (``infodec`` and its other
subpackages) never does (``tests/test_layering.py``).
"""
