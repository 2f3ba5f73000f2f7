"""Pre-attention expert predictors: architectures, losses, trace collection, training, evaluation, bundles.

One small MLP per MoE layer reads that layer's `input_layernorm` output and ranks the experts its router
will pick (arXiv 2511.10676). This package trains and checks them offline; the engine only loads a bundle
(`predictors.bundle.load_bundle`) and calls `PredictorBank.forward_layer` on the hot path.
Importing any module here has no side effects.
"""
