"""Triton GEMV for y = [s ⊙ (Q − z)] (t ⊙ x) + b with bit-packed Q (layout v1, see sinq_ao.packing).

For power-of-two code widths (2, 4, 8 bits) a packed word holds PER = 32 / BITS consecutive codes. The kernel loads
a [BLOCK_N, BLOCK_WORDS] tile of words, contiguous along K, and takes the PER code positions of every word one at a
time (``(words >> p * BITS) & mask``): each slice keeps the words' register layout, so unpacking is elementwise and
nothing is reshaped or transposed in registers. With BLOCK_WORDS = 4 x 32 x num_warps the whole CTA spreads along
K and every thread holds all BLOCK_N rows of its columns, so each gathered activation (code p of word f is column
f * PER + p) is loaded once and used for BLOCK_N rows. The column scale t multiplies the activations as they are
loaded, and the dequantized weight never touches memory.

Per word, y += s (Σ_p Q_p x'_p − z Σ_p x'_p): scale and zero-point are applied per word, not per code, and the
per-word products are reduced across the tile once, at the end. With SPLIT_K > 1, K slices write fp32 partial sums
that ``splitk_reduce_kernel`` adds up (deterministic: no atomics).
"""

import triton
import triton.language as tl


@triton.jit
def sinq_gemv_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, t_ptr, bias_ptr, out_ptr,
    N, K, stride_xm, stride_qn, stride_sn, stride_om, stride_osplit, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_WORDS: tl.constexpr,
):  # fmt: skip
    PER: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    split, m = tl.program_id(1), tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = (rows < N)[:, None]
    n_words = tl.cdiv(K, 32) * BITS
    first = split * words_per_split
    last = tl.minimum(first + words_per_split, n_words)
    row_ptrs = q_ptr + rows[:, None].to(tl.int64) * stride_qn
    sz_ptrs = rows[:, None] * stride_sn
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_WORDS), dtype=tl.float32)
    for w0 in range(first, last, BLOCK_WORDS):
        f = w0 + tl.arange(0, BLOCK_WORDS)
        mask = row_mask & (f < last)[None, :]
        words = tl.load(row_ptrs + f[None, :], mask=mask, other=0)
        groups = (f * PER // GROUP)[None, :]
        s = tl.load(s_ptr + sz_ptrs + groups, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + sz_ptrs + groups, mask=mask, other=0.0).to(tl.float32)
        dot = tl.zeros((BLOCK_N, BLOCK_WORDS), dtype=tl.float32)
        x_sum = tl.zeros((BLOCK_WORDS,), dtype=tl.float32)
        for p in tl.static_range(PER):
            k = f * PER + p
            k_mask = (k < K) & (f < last)
            xk = tl.load(x_row + k, mask=k_mask, other=0.0).to(tl.float32)
            xk = xk * tl.load(t_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            dot += ((words >> (p * BITS)) & MASK).to(tl.float32) * xk[None, :]
            x_sum += xk
        acc += s * (dot - z * x_sum[None, :])
    y = tl.sum(acc, axis=1)
    if PARTIAL:
        tl.store(out_ptr + split * stride_osplit + m * stride_om + rows, y, mask=rows < N)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + m * stride_om + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def splitk_reduce_kernel(partial_ptr, bias_ptr, y_ptr, M, N, stride_ym, SPLIT_K: tl.constexpr,
                         HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """y[m, n] = Σ_s partial[s, m, n] (+ bias[n]), cast to y's dtype; partial is contiguous (SPLIT_K, M, N)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        acc += tl.load(partial_ptr + split * M * N + i, mask=mask, other=0.0)
    n = i % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + (i // N) * stride_ym + n, acc.to(y_ptr.dtype.element_ty), mask=mask)
