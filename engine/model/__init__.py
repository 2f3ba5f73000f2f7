"""The model and how it is loaded: `loader` (a checkpoint or the built-in model, offloaded: expert weights
to the store, everything else to the device), `model_map` (where each family keeps its MoE layers,
routers and experts), `presets` (real models' shapes), `builtin` (the shipped model; its files are in
`assets/`), `devices`, and the transformers patches, all listed in `patches` (whose `install` applies
the runner's): `offload` (the offloaded experts forward), `decode_attention` (the decode attention
implementation), `patch_norm`, `patch_router`, `patch_rope` (the fused kernels' forwards).

Imports `engine.experts`, `engine.kernels` and `engine.api`.
"""
