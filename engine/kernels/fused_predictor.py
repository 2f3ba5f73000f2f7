"""A pre-attention predictor (`engine.prefetch.nets`) as one Triton kernel, for the tap inside a decode step,
where torch's path is a chain of small launches (linear, activation, linear, top-k) whose latency, not the
weights' bytes, sets its cost.

Shape legend: T = tokens, d = model hidden size, H = predictor hidden size, E = routed experts, M = ids
kept per row.

One launch, one program per block of BLOCK_N hidden units (and of BLOCK_T rows):
1. h = act(W1[block] x + b1[block]) for the program's rows: fp32 sums (`tl.dot`), rounded to the weights'
   dtype after the linear and after the activation as the unfused ops round. Arch 2's SiLU, or Arch 1's
   GELU (erf) after its BatchNorm, which `fold_batchnorm` folds into W1 and b1 once (eval mode: Dropout is
   the identity).
2. The block's share of the logits, W2[:, block] h, is added (fp32 atomics, relaxed: the counter's
   release after a barrier orders them) into a scratch [T, E]: each hidden unit's contribution is computed
   once, so W1 and W2 are each read once per launch.
3. The program that finishes last (an atomic counter) reads the scratch back (atomically, at L2 where the
   adds landed), zeroes it for the next launch, adds b2, and writes the fp32 logits and/or each row's M
   best ids (ties to the lowest id).

Where a batch-1 launch spends its time, on an H200 at the Qwen3-30B-A3B shape (`bench/predictor_anatomy.py`,
9.2 µs in all): the launch 1.1 µs, the first linear 5.1 (reading W1's 8 MB at 1.6 TB/s: latency-bound), the
second linear and its atomics 0.3, the counter and the last program's read-back 1.9, the ranking 0.8.
A one-row variant without `tl.dot` (1-D sums, ranking by counting in one reduction) measured 9.5-12.6 µs,
no faster, and was dropped. Relaxed rather than acq_rel atomics on the partial logits saved 0.4-0.6 µs.

So the weights are read once, by about as many programs as the GPU has SMs (H / BLOCK_N), and nothing
waits between launches. The logits are fp32 sums in the order the atomics land: the predictor's up to
rounding (BatchNorm folded, the sums' order), so ids can differ from torch's at a near tie, and between
two launches on the same input where the last bit of a sum decides; predictions steer copies only, never
outputs. The scratch and the counter belong to one `PredictorKernels` and one CUDA stream, and are zero
between launches: one launch at a time per predictor and stream (the tap of a layer runs once per step).

Imports torch and (where it runs) Triton only.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # Triton is absent from CPU builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None

SILU, GELU = 0, 1
MAX_EXPERTS, MAX_IDS = 256, 16
BLOCK_T = 16  # rows per program (tl.dot's smallest tile side); more rows add programs along grid axis 1

if triton is not None:

    @triton.jit
    def _predictor_kernel(
        x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, acc_ptr, count_ptr, scores_ptr, ids_ptr,
        T, D, H, E, stride_xt, stride_w1, stride_w2, stride_it,
        ACT: tl.constexpr, M: tl.constexpr, WRITE_SCORES: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        pid_n, pid_t = tl.program_id(0), tl.program_id(1)
        dt = w1_ptr.dtype.element_ty
        rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < H
        offs_e = tl.arange(0, BLOCK_E)
        e_ok = offs_e < E
        # 1. z = x W1[block]^T + b1[block], [BLOCK_T, BLOCK_N] in fp32
        z = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < D
            x = tl.load(
                x_ptr + rows[:, None].to(tl.int64) * stride_xt + offs_k[None, :],
                mask=row_ok[:, None] & k_ok[None, :], other=0.0,
            ).to(dt)  # fmt: skip
            w = tl.load(
                w1_ptr + offs_n[None, :].to(tl.int64) * stride_w1 + offs_k[:, None],
                mask=n_ok[None, :] & k_ok[:, None], other=0.0,
            )  # [BLOCK_K, BLOCK_N]: W1's rows as columns  # fmt: skip
            if IEEE:
                z = tl.dot(x, w, z, input_precision="ieee")
            else:
                z = tl.dot(x, w, z)
        z += tl.load(b1_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        z = z.to(dt).to(tl.float32)  # the linear's output, rounded
        if ACT == 0:
            a = z * tl.sigmoid(z)
        else:
            a = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        h = tl.where(n_ok[None, :], a, 0.0).to(dt)  # the activation's output, rounded
        # 2. this block's share of the logits, h W2[:, block]^T, [BLOCK_T, BLOCK_E], added into the scratch
        w2 = tl.load(
            w2_ptr + offs_e[None, :].to(tl.int64) * stride_w2 + offs_n[:, None],
            mask=e_ok[None, :] & n_ok[:, None], other=0.0,
        )  # [BLOCK_N, BLOCK_E]  # fmt: skip
        if IEEE:
            part = tl.dot(h, w2, input_precision="ieee")
        else:
            part = tl.dot(h, w2)
        cell = rows[:, None] * BLOCK_E + offs_e[None, :]
        tl.atomic_add(acc_ptr + cell, part, mask=row_ok[:, None] & e_ok[None, :], sem="relaxed")
        # 3. the last program to finish reads every row's logits back (zeroing them) and ranks them
        tl.debug_barrier()  # every thread's adds are issued before the counter's release
        done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
        if done == tl.num_programs(0) * tl.num_programs(1) - 1:
            b2 = tl.load(b2_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)
            for t0 in range(0, T, BLOCK_T):
                r = t0 + tl.arange(0, BLOCK_T)
                r_ok = r < T
                ok = r_ok[:, None] & e_ok[None, :]
                cells = acc_ptr + r[:, None] * BLOCK_E + offs_e[None, :]
                s = tl.atomic_add(
                    cells, tl.zeros((BLOCK_T, BLOCK_E), tl.float32), mask=ok, sem="relaxed"
                )  # read at L2
                tl.store(cells, tl.zeros((BLOCK_T, BLOCK_E), tl.float32), mask=ok)
                s = s + b2[None, :]
                if WRITE_SCORES:
                    tl.store(scores_ptr + r[:, None] * E + offs_e[None, :], s, mask=ok)
                s = tl.where(ok, s, float("-inf"))
                for i in tl.static_range(M):
                    best = tl.max(s, axis=1)
                    pick = tl.min(tl.where(s == best[:, None], offs_e[None, :], BLOCK_E), axis=1)
                    tl.store(ids_ptr + r * stride_it + i, pick.to(tl.int64), mask=r_ok)
                    s = tl.where(offs_e[None, :] == pick[:, None], float("-inf"), s)
            tl.atomic_xchg(count_ptr, 0)


def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of Linear then BatchNorm in eval mode as one linear, folded in float32, in the linear's dtype."""
    w, b = linear.weight.float(), linear.bias.float()
    scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)  # [H]
    folded_b = (b - bn.running_mean.float()) * scale + bn.bias.float()
    return (w * scale[:, None]).to(linear.weight.dtype), folded_b.to(linear.weight.dtype)


def kernels_available(device: torch.device) -> bool:
    """Whether `PredictorKernels` can run on `device` (a CUDA device, and Triton present)."""
    return triton is not None and device.type == "cuda"


class PredictorKernels:
    """One predictor (`build_predictor`'s Sequential, either architecture, eval mode) as one Triton kernel;
    the weights are views of the module's (Arch 2) or its folded copy (Arch 1)."""

    def __init__(
        self, predictor: nn.Sequential, block_n: int = 16, block_k: int = 512, num_warps: int = 4
    ) -> None:
        if triton is None:
            raise RuntimeError("the predictor kernel needs Triton, which this build of torch lacks")
        first, last = predictor[0], predictor[-1]
        if isinstance(predictor[1], nn.BatchNorm1d):  # Arch 1: Linear, BatchNorm1d, GELU, Dropout, Linear
            self.w1, self.b1 = fold_batchnorm(first, predictor[1])
            self.act = GELU
        elif isinstance(predictor[1], nn.SiLU):  # Arch 2: Linear, SiLU, Linear
            self.w1, self.b1 = first.weight.detach(), first.bias.detach()
            self.act = SILU
        else:
            raise ValueError(f"not a predictor of engine.prefetch.nets: {predictor}")
        self.w2, self.b2 = last.weight.detach(), last.bias.detach()
        self.hidden_size, self.d_model = self.w1.shape
        self.num_experts = self.w2.shape[0]
        if self.num_experts > MAX_EXPERTS:
            raise ValueError(
                f"the predictor kernel ranks at most {MAX_EXPERTS} experts, not {self.num_experts}"
            )
        self.block_n, self.block_k, self.num_warps = max(16, block_n), max(16, block_k), num_warps
        self.block_e = max(16, triton.next_power_of_2(self.num_experts))
        # per CUDA stream: (fp32 scratch [rows, BLOCK_E], int32 counter [1]), both zero between launches. A
        # predictor can run on two streams at once (an eager step's prefetch on the prefetcher's side stream
        # beside a graph's branch), and two launches sharing a scratch would garble each other's logits.
        self._scratches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _scratch(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The current stream's (scratch, counter). Grown outside graph captures (warm-up runs first); a
        stream first seen inside a capture (a capture's own branch stream) gets its pair from the graph's
        pool, kept alive here, and is only ever replayed by that graph."""
        dev = self.w1.device
        key = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
        got = self._scratches.get(key)
        if got is None or got[0].shape[0] < rows:
            cap = max(BLOCK_T, triton.cdiv(rows, BLOCK_T) * BLOCK_T)
            acc = torch.zeros((cap, self.block_e), dtype=torch.float32, device=dev)
            count = got[1] if got is not None else torch.zeros(1, dtype=torch.int32, device=dev)
            got = self._scratches[key] = (acc, count)
        return got

    def run(
        self, x: torch.Tensor, m: int = 0, scores: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits [T, E] fp32 or None, ids [T, m] int64, best first) for x [T, d] (cast to the weights')."""
        if m > MAX_IDS:
            raise ValueError(f"the predictor kernel keeps at most {MAX_IDS} ids a row, not {m}")
        x = x.reshape(-1, self.d_model).contiguous()
        t = x.shape[0]
        dev = self.w1.device
        out = torch.empty((t, self.num_experts), dtype=torch.float32, device=dev) if scores else None
        ids = torch.empty((t, max(m, 1)), dtype=torch.int64, device=dev)
        grid = (triton.cdiv(self.hidden_size, self.block_n), triton.cdiv(t, BLOCK_T))
        acc, count = self._scratch(t)
        _predictor_kernel[grid](
            x, self.w1, self.b1, self.w2, self.b2, acc, count,
            out if scores else ids, ids,
            t, self.d_model, self.hidden_size, self.num_experts, x.stride(0), self.w1.stride(0),
            self.w2.stride(0), ids.stride(0),
            ACT=self.act, M=m, WRITE_SCORES=scores, IEEE=self.w1.dtype == torch.float32,
            BLOCK_T=BLOCK_T, BLOCK_N=self.block_n, BLOCK_K=self.block_k, BLOCK_E=self.block_e,
            num_warps=self.num_warps,
        )  # fmt: skip
        return out, ids[:, :m]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [T, E] (fp32): the predictor's `forward` up to rounding."""
        return self.run(x, 0, scores=True)[0]

    def top_ids(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """The M best expert ids per row [T, M] (int64), best first, ties to the lowest id."""
        return self.run(x, m, scores=False)[1]
