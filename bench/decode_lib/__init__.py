"""The measurements behind `bench/decode.py`, one job per module, in the order a run makes them:

- `model`     the random-weight model of a preset shape (or the CPU smoke shape) and the benchmark's text;
- `training`  routing traces of the model's own forwards and the predictors trained on them;
- `baseline`  the plain transformers forward, batch 1 and batched (every weight on the GPU);
- `timing`    timing prefill and teacher-forced decode steps on one runner (`Workload`) and its summary;
- `sweep`     every policy at every cache size, and the fast path's ablations;
- `batched`   several rows decoding together on the engine;
- `recall`    the online recall along every prediction path (`--diagnose-recall`);
- `overlap`   a profiler trace of a few decode steps: copy time that overlapped compute;
- `record`    the JSON record (its header, one entry per configuration, the ratios) and the console log;
- `plot`      the PNG of tokens/s against cache size;
- `replay`    `--routing twin:PATH`: a routing twin's routing and predictions replayed on the model;
- `seams`     every way this library changes the engine's configuration, in one place;
- `run`       the whole run, in order, from the CLI's arguments.

Imports `bench.common`, `engine` (through the public seams listed in `seams`) and `predictors`; nothing
imports this package but `bench/decode.py` and its tests. Importing it has no side effects.
"""
