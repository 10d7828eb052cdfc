"""Evaluation: CounterFact/zsRE loaders (``data``), LM scoring (``score``), GLUE checks
(``glue``), single and sequential runs (``runner``, with ``config``, ``case_scoring``,
``snapshots``, ``degraded``, ``resume``, ``collapse``, ``summary``), tables and plots
(``report``) and regression gates (``gates``); ``cli`` holds ``rome eval`` and ``rome gate``."""
