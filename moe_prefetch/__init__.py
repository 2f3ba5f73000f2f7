"""moe-prefetch: serve Mixture-of-Experts models on one GPU smaller than the model.

This package holds only the glue: the settings class and the command line. The work lives in the
top-level packages `engine` (model, expert store and cache, prefetch, generation), `predictors`
(pre-attention predictors) and `server` (OpenAI-compatible HTTP).
"""

__version__ = "0.1.0"
