"""The built-in strategies (CREST, CRAIG, GradMatch, Glister, Random, full data, SGD-truncated).

Each module registers its strategy through the ``subsetlab.strategies`` entry point declared in
``pyproject.toml``, the same door a third-party plugin uses; ``subsetlab`` never imports this
package by name.
"""
