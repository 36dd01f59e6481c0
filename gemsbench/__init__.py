"""The benchmark harness of the GEMS reproduction suite: data, backbones, training, evaluation, analysis."""
__version__ = "0.1.0"
