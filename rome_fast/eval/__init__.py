"""Evaluation: CounterFact/zsRE loaders (``data``), scoring (``score``), GLUE checks
(``glue``), single and sequential runs (``runs``), tables and plots (``report``) and
regression gates (``gates``); ``cli`` holds ``rome eval`` and ``rome gate``."""
