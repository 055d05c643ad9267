"""The built-in strategies (CREST, CRAIG, GradMatch, Glister, Random, full data, SGD-truncated).

Each strategy is registered through the ``subsetlab.strategies`` entry point declared in
``pyproject.toml`` and through nothing else (importing a module here registers nothing), the
same door a third-party plugin uses; ``subsetlab`` never imports this package by name.
"""
