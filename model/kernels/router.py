"""MoE router (fact sheet §2.6): logits = x · Wᵀ in fp32 over the routed experts, scores =
softmax | sigmoid | sqrt(softplus), experts = top-k of (scores + bias) or tid2eid[token] on the
hash-routed layers, weights = scores at those experts (renormalised unless softmax) × route_scale.

Triton (``route_triton``): one fused kernel, one program per block of tokens. The program holds
the block's logits for every expert in registers ([BLOCK_T × BLOCK_E] fp32, BLOCK_E = 256 at
V4-Flash) while it streams the gate weight along dim, then does the whole epilogue on them —
score function, + bias, k rounds of (row max, lowest index holding it, mask it out), gather,
normalise, scale — and writes only the k weights and indices per token. Why it should be fast:
the torch path launches about ten kernels (GEMM, score, add, topk, gather, sum, div, mul) and
writes/reads the [n × experts] scores between them; here nothing but the [n × k] result leaves
the chip. In prefill each token block re-reads the 2 MiB gate weight, mostly from L2, and the
product runs on tensor cores (``tl.dot`` on bf16 x and W: exact products, fp32 accumulation, so
the reference's fp32 GEMM up to summation order; an IEEE fp32 dot when x is not bf16).

Decode (fewer than ``SPLIT_BELOW_TOKENS`` tokens, where ``tl.dot``'s M ≥ 16 does not fit anyway)
is memory-bound on that one weight read, and a single program per token would stream all of it
through one SM. So by default it is split over experts, in one launch: ``_gate_route_kernel``'s
program (token, ``SPLIT_EXPERT_ROWS`` experts) — 128 programs at V4-Flash — loads its whole
16 KB slice of the weight at once, sums its logits into an fp32 [n × experts] buffer (1 KiB per
token), and the token's last program to arrive runs the epilogue on them. Until session 19 this
was two launches, the GEMV in 8 steps of 4 KB per program, each waiting for its loads and
summing across lanes (run 3: 9.2 µs). Deterministic: each logit is summed by one program. The
fused one-token-per-program GEMV stays available (``split=False``); which is faster at 1–15
tokens is for the GPU measurement to say (decision ``router_decode``).

Ties: each selection round takes the row maximum and then the lowest expert index holding it, so
equal biased scores come out in ascending expert order. torch.topk does not document its tie
order; on tie-free scores both give the same experts in the same (descending) order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model.kernels.launch import (
    arrivals,
    grid_entry,
    grid_entry_prefetching,
    interpreter_fp32,
    last_to_arrive,
    pdl,
)

SCORE_FUNCS = {"softmax": 0, "sigmoid": 1, "sqrtsoftplus": 2}  # anything else: sqrtsoftplus, as Gate


def gate_scores(x: torch.Tensor, weight: torch.Tensor, score_func: str) -> torch.Tensor:
    """fp32 [n, experts]: the score function of the fp32 gate logits."""
    logits = F.linear(x.float(), weight.float())
    if score_func == "softmax":
        return logits.softmax(dim=-1)
    if score_func == "sigmoid":
        return logits.sigmoid()
    return F.softplus(logits).sqrt()


def route_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    input_ids: torch.Tensor, tid2eid: torch.Tensor | None, topk: int,
                    score_func: str, route_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, dim], weight [experts, dim], bias [experts] fp32 (score routing) or tid2eid
    [vocab, k] (hash routing, ``input_ids`` [n]) → (weights fp32 [n, k], indices int64 [n, k])."""
    scores = gate_scores(x, weight, score_func)
    if tid2eid is not None:
        indices = tid2eid[input_ids].long()
    else:
        indices = (scores + bias.float()).topk(topk, dim=-1).indices
    weights = scores.gather(1, indices)
    if score_func != "softmax":
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * route_scale, indices


@triton.jit
def _log1p(u):
    """log(1 + u) for u ≥ 0, accurate for tiny u without libdevice (the (1+u)−1 correction)."""
    w = 1.0 + u
    exact = w == 1.0
    return tl.where(exact, u, tl.log(w) * (u / tl.where(exact, 1.0, w - 1.0)))


@triton.jit
def _score(logits, valid, SCORE: tl.constexpr):
    """Score function over [BLOCK_T, BLOCK_E] fp32 logits; padded experts (¬valid) score 0."""
    if SCORE == 0:  # softmax over the real experts
        z = tl.where(valid, logits, float("-inf"))
        e = tl.exp(z - tl.max(z, 1)[:, None])
        s = e / tl.sum(e, 1)[:, None]
    elif SCORE == 1:
        s = 1.0 / (1.0 + tl.exp(-logits))
    else:  # sqrt(softplus): softplus = max(x, 0) + log1p(exp(-|x|)), stable for any x
        s = tl.sqrt(tl.maximum(logits, 0.0) + _log1p(tl.exp(-tl.abs(logits))))
    return tl.where(valid, s, 0.0)


@triton.jit
def _gate_logits(x_ptr, w_ptr, offs_t, mask_t, offs_e, mask_e, D,
                 BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
                 USE_DOT: tl.constexpr, DOT_BF16: tl.constexpr, PREC: tl.constexpr):
    """fp32 [BLOCK_T, BLOCK_E] = x[offs_t] · W[offs_e]ᵀ, streaming dim BLOCK_D at a time."""
    acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
    x_rows = offs_t.to(tl.int64)[:, None] * D
    w_rows = offs_e.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        x = tl.load(x_ptr + x_rows + offs_d[None, :], mask=mask_t[:, None] & mask_d[None, :],
                    other=0.0)
        w = tl.load(w_ptr + w_rows + offs_d[None, :], mask=mask_e[:, None] & mask_d[None, :],
                    other=0.0)
        if USE_DOT:
            if DOT_BF16:
                acc = tl.dot(x.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)), acc)
            else:
                acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc,
                             input_precision=PREC)
        else:
            prod = x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
            acc += tl.sum(prod, 2)
    return acc


@triton.jit
def _argmax_lowest(values, offs_e, BLOCK_E: tl.constexpr):
    """Per row of [BLOCK_T, BLOCK_E]: the lowest column holding the row maximum. Written as max
    then min-index rather than ``tl.argmax(tie_break_left=True)``: the interpreter ignores that
    flag, so the tie rule is the same, and tested, on CPU and GPU."""
    best = tl.max(values, 1)
    return tl.min(tl.where(values == best[:, None], offs_e[None, :], BLOCK_E), 1)


@triton.jit
def _pick(values, offs_e, expert):
    """values[t, expert[t]] for each row t of [BLOCK_T, BLOCK_E]."""
    return tl.sum(tl.where(offs_e[None, :] == expert[:, None], values, 0.0), 1)


@triton.jit
def _route_epilogue(logits, offs_t, mask_t, offs_e, mask_e, bias_ptr, ids_ptr, tid2eid_ptr,
                    out_w_ptr, out_i_ptr, route_scale, K: tl.constexpr, K_PAD: tl.constexpr,
                    SCORE: tl.constexpr, HASH: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_E: tl.constexpr):
    """Scores, expert choice, gather, normalise, scale and store for [BLOCK_T, BLOCK_E] logits
    (every expert of the block's tokens)."""
    valid = mask_e[None, :] & (offs_t[:, None] >= 0)  # [BLOCK_T, BLOCK_E]
    scores = _score(logits, valid, SCORE)
    offs_k = tl.arange(0, K_PAD)
    weights = tl.zeros([BLOCK_T, K_PAD], dtype=tl.float32)
    experts = tl.zeros([BLOCK_T, K_PAD], dtype=tl.int64)
    if HASH:
        ids = tl.load(ids_ptr + offs_t, mask=mask_t, other=0).to(tl.int64)
        for r in tl.static_range(K):
            expert = tl.load(tid2eid_ptr + ids * K + r, mask=mask_t, other=0).to(tl.int64)
            weights = tl.where(offs_k[None, :] == r, _pick(scores, offs_e, expert)[:, None],
                               weights)
            experts = tl.where(offs_k[None, :] == r, expert[:, None], experts)
    else:
        bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        biased = tl.where(valid, scores + bias[None, :], float("-inf"))
        for r in tl.static_range(K):
            expert = _argmax_lowest(biased, offs_e, BLOCK_E).to(tl.int64)
            weights = tl.where(offs_k[None, :] == r, _pick(scores, offs_e, expert)[:, None],
                               weights)
            experts = tl.where(offs_k[None, :] == r, expert[:, None], experts)
            biased = tl.where(offs_e[None, :] == expert[:, None], float("-inf"), biased)
    if SCORE != 0:
        weights = weights / tl.sum(weights, 1)[:, None]
    out = offs_t.to(tl.int64)[:, None] * K + offs_k[None, :]
    mask_out = mask_t[:, None] & (offs_k[None, :] < K)
    tl.store(out_w_ptr + out, weights * route_scale, mask=mask_out)
    tl.store(out_i_ptr + out, experts, mask=mask_out)


@triton.jit
def _route_kernel(x_ptr, w_ptr, bias_ptr, ids_ptr, tid2eid_ptr, out_w_ptr, out_i_ptr,
                  T, E, D, route_scale,
                  K: tl.constexpr, K_PAD: tl.constexpr, SCORE: tl.constexpr,
                  HASH: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_D: tl.constexpr, USE_DOT: tl.constexpr, DOT_BF16: tl.constexpr,
                  PREC: tl.constexpr, PDL: tl.constexpr = False):
    """Fused: gate logits of BLOCK_T tokens over all experts, then the epilogue."""
    grid_entry(PDL)
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    logits = _gate_logits(x_ptr, w_ptr, offs_t, mask_t, offs_e, mask_e, D, BLOCK_T, BLOCK_E,
                          BLOCK_D, USE_DOT, DOT_BF16, PREC)
    _route_epilogue(logits, offs_t, mask_t, offs_e, mask_e, bias_ptr, ids_ptr, tid2eid_ptr,
                    out_w_ptr, out_i_ptr, route_scale, K, K_PAD, SCORE, HASH, BLOCK_T, BLOCK_E)


@triton.jit
def _gate_route_kernel(x_ptr, w_ptr, logits_ptr, cnt_ptr, bias_ptr, ids_ptr, tid2eid_ptr,
                       out_w_ptr, out_i_ptr, T, E, D, route_scale, K: tl.constexpr,
                       K_PAD: tl.constexpr, SCORE: tl.constexpr, HASH: tl.constexpr,
                       ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
                       PDL: tl.constexpr = False):
    """Split decode in one launch. Program (token t, expert group g) computes the logits of
    ROWS experts over all of dim — its whole slice of the gate weight loaded in one step when
    BLOCK_D ≥ dim, the products summed once after the loop — and stores them; the last of t's
    programs to arrive (``cnt`` [T], ``launch.arrivals``) reads all of t's logits and runs the
    epilogue. Each logit is summed by one program: deterministic."""
    t = tl.program_id(0)
    offs_r = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    mask_r = offs_r < E
    w_rows = w_ptr + offs_r.to(tl.int64) * D
    # the gate weight is no launch's output: its first bytes may be asked for before the wait
    grid_entry_prefetching(w_rows, D, mask_r, PDL)
    x_row = x_ptr + t.to(tl.int64) * D
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        x = tl.load(x_row + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        w = tl.load(w_rows[:, None] + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :],
                    other=0.0).to(tl.float32)
        acc += x[None, :] * w
    tl.store(logits_ptr + t.to(tl.int64) * E + offs_r, tl.sum(acc, 1), mask=mask_r)
    if last_to_arrive(cnt_ptr + t, tl.num_programs(1)):   # sees every group's logits
        offs_t = t + tl.arange(0, 1)
        offs_e = tl.arange(0, BLOCK_E)
        mask_t = offs_t < T
        mask_e = offs_e < E
        logits = tl.load(logits_ptr + offs_t.to(tl.int64)[:, None] * E + offs_e[None, :],
                         mask=mask_t[:, None] & mask_e[None, :], other=0.0)
        _route_epilogue(logits, offs_t, mask_t, offs_e, mask_e, bias_ptr, ids_ptr, tid2eid_ptr,
                        out_w_ptr, out_i_ptr, route_scale, K, K_PAD, SCORE, HASH, 1, BLOCK_E)


SPLIT_BELOW_TOKENS = 16  # fewer tokens: split the gate GEMV over experts (one launch)
SPLIT_EXPERT_ROWS = 2     # gate rows per program of the split GEMV: 128 programs at 256 experts
SPLIT_TILE = 8192         # a split program's weight elements a step: all of V4-Flash's 2 × 4096


def route_blocks(tokens: int) -> tuple[int, bool]:
    """(tokens per program, use tl.dot) of the fused kernel: 16–32-token dot tiles (tl.dot needs
    M ≥ 16), one token per program (GEMV) below 16 tokens."""
    if tokens < 16:
        return 1, False
    return (16 if tokens <= 2048 else 32), True


def _check_route_args(weight: torch.Tensor, bias: torch.Tensor | None,
                      tid2eid: torch.Tensor | None, topk: int) -> None:
    e = weight.shape[0]
    if not 1 <= topk <= e:
        raise ValueError(f"topk={topk} must be in [1, n_experts={e}]")
    if tid2eid is None and bias is None:
        raise ValueError("score routing needs a bias (hash routing needs tid2eid)")
    if tid2eid is not None and tid2eid.shape[-1] != topk:
        raise ValueError(f"tid2eid has {tid2eid.shape[-1]} experts per token, topk={topk}")


def route_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 input_ids: torch.Tensor, tid2eid: torch.Tensor | None, topk: int,
                 score_func: str, route_scale: float, block_t: int | None = None,
                 split: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``route_reference`` on the GPU (see the module docstring). ``split`` (default: fewer than
    ``SPLIT_BELOW_TOKENS`` tokens and no ``block_t``) runs the split decode pair instead of the
    fused kernel; ``block_t`` sets the fused kernel's tokens per program (≥ 16: tl.dot)."""
    _check_route_args(weight, bias, tid2eid, topk)
    n, d = x.shape
    e = weight.shape[0]
    out_w = torch.empty(n, topk, dtype=torch.float32, device=x.device)
    out_i = torch.empty(n, topk, dtype=torch.int64, device=x.device)
    if n == 0:
        return out_w, out_i
    if interpreter_fp32():
        x, weight = x.float(), weight.float()  # the interpreter mishandles bf16
    x, weight = x.contiguous(), weight.contiguous()
    hashed = tid2eid is not None
    dummy = out_w  # any tensor for the pointer a branch never reads
    epilogue_args = (dummy if hashed else bias.contiguous(),
                     input_ids.reshape(-1).contiguous() if hashed else dummy,
                     tid2eid.contiguous() if hashed else dummy, out_w, out_i)
    common = dict(K=topk, K_PAD=max(2, triton.next_power_of_2(topk)),
                  SCORE=SCORE_FUNCS.get(score_func, 2), HASH=hashed,
                  BLOCK_E=max(16, triton.next_power_of_2(e)))
    overlap = pdl(x.device)   # every launch's options (launch.pdl)
    if split if split is not None else (block_t is None and n < SPLIT_BELOW_TOKENS):
        logits = torch.empty(n, e, dtype=torch.float32, device=x.device)
        rows = min(SPLIT_EXPERT_ROWS, triton.next_power_of_2(e))
        _gate_route_kernel[(n, triton.cdiv(e, rows))](
            x, weight, logits, arrivals(n, x.device), *epilogue_args, n, e, d,
            float(route_scale), ROWS=rows,
            BLOCK_D=min(SPLIT_TILE // rows, triton.next_power_of_2(d)), num_warps=8,
            **common, **overlap)
        return out_w, out_i
    bt, use_dot = route_blocks(n)
    if block_t is not None:
        bt, use_dot = block_t, block_t >= 16
    _route_kernel[(triton.cdiv(n, bt),)](
        x, weight, *epilogue_args, n, e, d, float(route_scale), BLOCK_T=bt,
        BLOCK_D=64 if use_dot else 32, USE_DOT=use_dot,
        DOT_BF16=x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16, PREC="ieee",
        **common, **overlap)
    return out_w, out_i
