"""Trace collection: run an MoE model over prompts and record, for every MoE layer and every prompt token,
the output of `input_layernorm` (the predictor's input), the router's affinity scores and its true top-k.

Works on any already-loaded transformers MoE model object (plain, offloaded by the engine, or a synthetic
random-weight model): it only adds forward hooks on each MoE layer's `input_layernorm` (output) and router
(outputs[0] = logits -> affinity = softmax in float32; outputs[2] = the true top-k indices), found with
`engine.model.model_map.find_moe_layers`, and removes them afterwards. Writing goes through `traces.TraceWriter`.
`load_model_for_tracing` is the one place that loads a model from disk for the CLI.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from engine.model.fingerprint import model_essentials, model_fingerprint, router_params
from engine.model.model_map import find_moe_layers
from predictors.traces import TraceWriter

log = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "prompt", "instruction", "question", "input")
TORCH_DTYPES = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "float32": torch.float32}


# ---------------------------------------------------------------- prompts


def format_mmlu(row: list[str]) -> str:
    """An MMLU row (question, A, B, C, D[, answer]) as a prompt: the question, lettered options, 'Answer:'."""
    question, *options = row[:5]
    lines = [question.strip()] + [
        f"{letter}. {opt.strip()}" for letter, opt in zip("ABCD", options, strict=False)
    ]
    return "\n".join(lines) + "\nAnswer:"


def _render_messages(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def _prompt_from_record(rec: dict) -> str | None:
    if isinstance(rec.get("messages"), list):
        return _render_messages(rec["messages"])
    if isinstance(rec.get("turns"), list):  # MT-Bench / Vicuna-Bench
        return "\n".join(str(t) for t in rec["turns"])
    for name in TEXT_FIELDS:
        value = rec.get(name)
        if isinstance(value, str) and value.strip():
            instances = rec.get("instances")
            if name == "instruction" and isinstance(instances, list) and instances:
                extra = str(instances[0].get("input", "")).strip()
                if extra:
                    return f"{value}\n\n{extra}"
            return value
    return None


def _read_jsonl(path: Path) -> list[str]:
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        text = _prompt_from_record(rec) if isinstance(rec, dict) else None
        if text is None:
            raise ValueError(f"{path}:{n}: no text field ({', '.join(TEXT_FIELDS)}, messages or turns)")
        prompts.append(text)
    return prompts


def _read_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "question" in header:
        q = header.index("question")
        return [row[q] for row in rows[1:] if len(row) > q and row[q].strip()]
    if all(len(row) >= 5 for row in rows):  # headerless MMLU layout
        return [format_mmlu(row) for row in rows]
    raise ValueError(
        f"{path}: a CSV needs a 'question' column or the headerless MMLU layout (question, A-D, answer)"
    )


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSONL file, a CSV file, or a directory of CSV files (e.g. MMLU's test/), in file order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise ValueError(f"{path}: no .csv files in this directory")
        return [p for f in files for p in _read_csv(f)]
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise ValueError(f"{path}: prompt files are .jsonl or .csv (or a directory of .csv)")


def encode_prompt(tokenizer, text: str, *, chat_template: bool, max_tokens: int) -> list[int]:
    """Token ids of one prompt, wrapped as a user message when asked and the tokenizer has a template."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
    return list(ids)[:max_tokens]


# ---------------------------------------------------------------- model loading


def load_model_for_tracing(
    path: str | Path, device: str = "cpu", dtype: str = "auto"
) -> tuple[nn.Module, object]:
    """The one place that loads a model for `collect`: (model in eval mode on `device`, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot load a tokenizer ({e})") from e
    model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype])
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- collection


class _Taps:
    """Forward hooks that capture one forward pass's per-layer records (flattened to [B*T, ...])."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = find_moe_layers(model)
        self.x: list[torch.Tensor | None] = [None] * len(self.layers)
        self.scores: list[torch.Tensor | None] = [None] * len(self.layers)
        self.topk: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = []
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.input_layernorm.register_forward_hook(self._norm_hook(i)))
            self._handles.append(layer.router.register_forward_hook(self._router_hook(i)))

    def _norm_hook(self, i: int):
        def hook(_module, _inputs, out):
            self.x[i] = out.detach().reshape(-1, out.shape[-1])  # [B*T, d]

        return hook

    def _router_hook(self, i: int):
        def hook(_module, _inputs, out):
            logits, _weights, idx = out[0], out[1], out[2]
            self.scores[i] = logits.detach().float().reshape(-1, logits.shape[-1]).softmax(dim=-1)  # [B*T, E]
            self.topk[i] = idx.detach().reshape(-1, idx.shape[-1])  # [B*T, k]

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def collect(
    model: nn.Module,
    tokenizer,
    prompts: Iterable[str],
    out_dir: str | Path,
    *,
    max_samples: int | None = None,
    max_prompt_tokens: int = 512,
    shard_size: int = 65536,
    resume: bool = True,
    progress: bool = True,
    chat_template: bool = False,
    batch_size: int = 1,
    x_dtype: str = "bf16",
    scores_dtype: str = "fp16",
) -> dict:
    """Record traces of `model` over `prompts` into `out_dir`; returns the trace manifest.

    Prompt i of `prompts` gets prompt_id i. With `resume`, a directory holding traces of the same model
    continues after its `prompts_done` prompts (the prompt list must be the same). Stops after
    `max_samples` tokens (the last prompt is cut), keeps at most ~`shard_size` samples in memory.
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError("max_samples must be positive")
    layers = find_moe_layers(model)
    ess = model_essentials(model)
    meta = {
        "fingerprint": model_fingerprint(model),
        "model_type": ess["model_type"],
        "num_moe_layers": ess["num_moe_layers"],
        "layer_ids": ess["layer_ids"],
        "num_experts": ess["num_experts"],
        "top_k": ess["top_k"],
        "d_model": ess["hidden_size"],
        "max_prompt_tokens": max_prompt_tokens,
        "chat_template": bool(chat_template and getattr(tokenizer, "chat_template", None)),
    }
    writer = TraceWriter(
        Path(out_dir), meta, shard_size=shard_size, resume=resume, x_dtype=x_dtype, scores_dtype=scores_dtype
    )
    routers = {}
    for i, layer in enumerate(layers):
        for name, p in router_params(layer.router):
            routers[f"router.{i}" if name == "weight" else f"router_bias.{i}"] = p
    writer.write_routers(routers)

    cap = max_samples if max_samples is not None else float("inf")
    skip = writer.prompts_done
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    device = _input_device(model)
    taps = _Taps(model)
    bar = Progress(
        TextColumn("collect"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TimeRemainingColumn(),
        disable=not progress,
    )
    try:
        with bar, torch.inference_mode():
            task = bar.add_task("collect", total=max_samples, completed=min(writer.samples, cap))
            batch: list[tuple[int, list[int]]] = []

            def run_batch() -> None:
                width = max(len(ids) for _, ids in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, T]
                mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
                for b, (_, ids) in enumerate(batch):
                    input_ids[b, : len(ids)] = torch.tensor(ids)
                    mask[b, : len(ids)] = 1
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
                for b, (pid, ids) in enumerate(batch):
                    take = int(min(len(ids), cap - writer.samples))
                    if take <= 0:
                        break
                    rows = slice(b * width, b * width + take)  # this prompt's real tokens in [B*T]
                    writer.add_prompt(
                        pid,
                        [x[rows] for x in taps.x],
                        [s[rows] for s in taps.scores],
                        [t[rows] for t in taps.topk],
                    )
                    writer.end_prompt(pid + 1)
                    bar.update(task, completed=writer.samples)
                batch.clear()

            for pid, text in enumerate(prompts):
                if pid < skip:
                    continue
                if writer.samples >= cap:
                    break
                ids = encode_prompt(
                    tokenizer, text, chat_template=chat_template, max_tokens=max_prompt_tokens
                )
                if ids:
                    batch.append((pid, ids))
                elif not batch:
                    writer.end_prompt(pid + 1)  # an empty prompt is done as soon as everything before it is
                if len(batch) >= batch_size:
                    run_batch()
            if batch:
                run_batch()
            writer.flush()
    finally:
        taps.remove()
    log.info("traces in %s: %d samples from %d prompts", out_dir, writer.samples, writer.prompts_done)
    return writer.manifest
