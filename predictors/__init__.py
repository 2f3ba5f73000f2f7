"""Pre-attention expert predictors: architectures, losses, trace collection, training, evaluation, bundles.

One small MLP per MoE layer reads that layer's `input_layernorm` output and ranks the experts its router
will pick (arXiv 2511.10676). This package trains and checks them offline; the engine owns what runs when
serving (the networks `engine.prefetch.nets`, reading bundles `engine.prefetch.bundle`, the model fingerprint
`engine.model.fingerprint`), and this package imports them from there: the engine never imports it.
Importing any module here has no side effects.
"""
