"""Triton kernels for y = [s ⊙ (Q − z)] (t ⊙ x) + b with bit-packed Q (layout v1, see sinq_ao.packing).

For the power-of-two code widths (2, 4, 8 bits) a packed word holds PER = 32 / BITS consecutive codes: code p of
word f is column k = f * PER + p. One activation row (decode) runs the CUDA-core GEMV, two kernels:

``prepare_activations_kernel`` (once per call, O(M·K)) multiplies the activations by the column scale t and
writes them *de-interleaved* in chunks of the GEMV's K step, ``xd[m, f // STEP, p, f % STEP] = (t ⊙ x)[m, f·PER
+ p] · 2^-e(p)``, so that the GEMV loads, for each code position p, a contiguous run of activations that lines up
with the words it multiplies (coalesced vector loads at a constant offset from those of p = 0). It also writes the
per-group sums ``gsum[m, 0, g] = Σ_{k in g} (t ⊙ x)[m, k]`` (zero-point term) and ``gsum[m, 1, g] = 2^23 · Σ_{k in
g} xd`` (the codes' bias, below), and zeroes the GEMV's split-K counters.

``sinq_gemv_kernel`` streams the packed words once. A step covers GROUPS_PER_STEP whole groups of BLOCK_N rows as
a [BLOCK_N, GROUPS, WORDS_PER_GROUP] tile, so the scale and zero-point are loaded once per (row, group), and

    y[m, n] += Σ_g s[n, g] (Σ_{k in g} (2^23 + Q[n, k] 2^e) xd[m, k] − gsum[m, 1, g] − z[n, g] gsum[m, 0, g]).

Codes become floats without a shift per code, an int->float conversion or a subtraction: each byte of a word is
shifted once to bits 15..22, and one and-or (a single ``lop3``) per code keeps the code's field, at bit e(p) =
15 + BITS · (p mod 8/BITS), and sets the bits of 2^23, giving the float 2^23 + Q · 2^e(p) exactly. The 2^-e(p)
folded into xd scales the field back, and the bias 2^23 · xd is removed once per group; with the field at bit 15
or above, the bias is at most 2^8 times the code, so the fp32 sums lose at most 8 of their 24 bits. All activation
rows of a block (BLOCK_M of them) share each unpacked code, so small batches read the weight once. With SPLIT_K >
1, K slices (whole groups) write fp32 partial sums, and the last slice of each block to finish adds them up in
slice order (deterministic; one counter per block, no reduction launch).

Two or more rows run ``sinq_gemm_kernel`` on the tensor cores (its docstring), which dequantizes the same codes
with one fma each (s · 2^-e and −s · (z + 2^(23 − e)) per group) and reduces split-K slices with
``splitk_reduce_kernel``. ``dequantize_kernel`` unpacks a whole weight for the eager path beyond that.
"""

import triton
import triton.language as tl


@triton.jit
def _exponent(p, BITS: tl.constexpr):
    """e(p): the bit where code p's field sits once byte (p · BITS) // 8 of its word is moved to bits 15..22."""
    return 15 + BITS * (p % (8 // BITS))


@triton.jit
def _byte_at_bit15(words, BYTE: tl.constexpr):
    """The words shifted so that byte BYTE sits at bits 15..22 (the fields of its codes at bits e(p))."""
    if BYTE * 8 <= 15:
        return words << (15 - BYTE * 8)
    else:
        return words >> (BYTE * 8 - 15)


@triton.jit
def _xd_offsets(f, p, PER: tl.constexpr, CHUNK: tl.constexpr):
    """Offsets of xd[·, p, f] within an activation row: words in chunks of CHUNK (the GEMV's words per K step),
    xd[m, f // CHUNK, p, f % CHUNK], so that the activations of code p are contiguous within a step (coalesced
    vector loads) and sit a constant p · CHUNK from those of code 0 (an immediate address offset)."""
    return (f // CHUNK) * (CHUNK * PER) + p * CHUNK + f % CHUNK


@triton.jit
def prepare_activations_kernel(
    x_ptr, t_ptr, xd_ptr, gsum_ptr, counts_ptr, K, stride_xm, n_words, n_chunks, n_groups, n_counts,
    BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """xd[m, f // CHUNK, p, f % CHUNK] = (t ⊙ x)[m, f·PER + p] · 2^-e(p) (0 past K), and per group g the sums
    gsum[m, 0, g] = Σ (t ⊙ x) and gsum[m, 1, g] = 2^23 · Σ xd (the bias of the GEMV's magic-number codes);
    grid (cdiv(K_pad, BLOCK_K), M). The first program also zeroes the GEMV's n_counts split-K counters."""
    PER: tl.constexpr = 32 // BITS
    if tl.program_id(0) + tl.program_id(1) == 0:
        for c0 in range(0, n_counts, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            tl.store(counts_ptr + c, tl.zeros_like(c), mask=c < n_counts)
    m = tl.program_id(1)
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    inside = k < K
    xt = tl.load(x_ptr + m * stride_xm + k, mask=inside, other=0.0).to(tl.float32)
    xt = xt * tl.load(t_ptr + k, mask=inside, other=0.0).to(tl.float32)
    p = k % PER
    e = _exponent(p, BITS)
    xs = xt * ((127 - e) << 23).to(tl.float32, bitcast=True)  # exactly xt · 2^-e(p)
    xd_row = xd_ptr + m * (n_chunks * CHUNK * PER)
    tl.store(xd_row + _xd_offsets(k // PER, p, PER, CHUNK), xs, mask=k < n_words * PER)
    groups = tl.program_id(0) * (BLOCK_K // GROUP) + tl.arange(0, BLOCK_K // GROUP)
    sums = tl.sum(tl.reshape(xt, (BLOCK_K // GROUP, GROUP)), axis=1)
    tl.store(gsum_ptr + m * 2 * n_groups + groups, sums, mask=groups < n_groups)
    bias_terms = xt * ((150 - e) << 23).to(tl.float32, bitcast=True)  # exactly xt · 2^(23 - e(p)) = 2^23 · xs
    biases = tl.sum(tl.reshape(bias_terms, (BLOCK_K // GROUP, GROUP)), axis=1)
    tl.store(gsum_ptr + (m * 2 + 1) * n_groups + groups, biases, mask=groups < n_groups)


@triton.jit
def _code_bits(words, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """The bits of the float 2^23 + Q · 2^e(p) for code P of each word: one shift per byte (shared by its codes),
    then the field's and-or with 2^23's bits, one lop3 (ptxas splits the plain `&` then `|` into two)."""
    MASK: tl.constexpr = (1 << BITS) - 1
    MAGIC: tl.constexpr = 0x4B000000  # the bits of 2.0**23 as a float32
    FIELD: tl.constexpr = MASK << (15 + BITS * (P % (8 // BITS)))  # _exponent(P, BITS), as a constexpr
    shifted = _byte_at_bit15(words, P * BITS // 8)
    if ASM:
        return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,n,n", [shifted, FIELD, MAGIC],
                                         dtype=tl.int32, is_pure=True, pack=1)  # fmt: skip
    else:  # the interpreter and AMD GPUs run no PTX
        return (shifted & FIELD) | MAGIC


@triton.jit
def sinq_gemv_kernel(
    xd_ptr, gsum_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, counts_ptr,
    M, N, n_words, n_chunks, n_groups, stride_qn, stride_sn, stride_om, stride_osplit, stride_ym, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, EVEN_K: tl.constexpr,
    ASM: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """y[m, n] for BLOCK_M activation rows x BLOCK_N output rows; grid (N/BN, SPLIT_K, M/BM). With PARTIAL (K
    split), each program writes its slice's fp32 sums to out[split] and the block's last program writes y."""
    PER: tl.constexpr = 32 // BITS
    WPG: tl.constexpr = GROUP // PER  # packed words per group
    STEP: tl.constexpr = GROUPS_PER_STEP * WPG  # words per K step, the CHUNK of xd
    split = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    first = split * words_per_split  # a multiple of WPG: slices hold whole groups
    last = tl.minimum(first + words_per_split, n_words)
    # Tiles are [row, group, word]; activation tiles are [1, group, word] so that every tile shares the words'
    # register layout (no shuffles through shared memory). Per activation row m the kernel keeps its own
    # accumulators (tuples, unrolled over BLOCK_M), and each unpacked code is used for all of them. Rows past N
    # and activation rows past M are clamped, not masked (their results are not stored), so whole steps load
    # without predicates.
    rows = tl.minimum(tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)[:, None, None]
    gi = tl.arange(0, GROUPS_PER_STEP)[None, :, None]
    wi = gi * WPG + tl.arange(0, WPG)[None, None, :]  # word offsets within a step
    q_rows = q_ptr + rows.to(tl.int64) * stride_qn
    sz_rows = rows * stride_sn
    accs = ()
    for mi in tl.static_range(BLOCK_M):
        accs = accs + (tl.zeros((BLOCK_N, GROUPS_PER_STEP, 1), dtype=tl.float32),)
    for w0 in tl.range(first, last, GROUPS_PER_STEP * WPG, num_stages=NUM_STAGES):
        f = w0 + wi
        f_ok = f < last  # [1, G, W] like the activation tiles (a [BN, G, W] mask would widen their loads)
        words = tl.load(q_rows + f) if EVEN_K else tl.load(q_rows + f, mask=f_ok & (rows >= 0), other=0)
        dots = ()
        for mi in tl.static_range(BLOCK_M):
            dots = dots + (tl.zeros((BLOCK_N, GROUPS_PER_STEP, WPG), dtype=tl.float32),)
        xd_words = xd_ptr + _xd_offsets(f, 0, PER, STEP)  # xd[0, ·, 0, f]; code p adds p · STEP (an immediate)
        for p in tl.static_range(PER):
            # The float 2^23 + Q · 2^e(p): xd carries the 2^-e(p), and the group's gsum[m, 1] = 2^23 · Σ xd
            # removes the bias after the sum.
            code = _code_bits(words, p, BITS, ASM).to(tl.float32, bitcast=True)
            updated = ()
            for mi in tl.static_range(BLOCK_M):
                xd_p = xd_words + tl.minimum(m0 + mi, M - 1) * (n_chunks * STEP * PER) + p * STEP
                xp = tl.load(xd_p) if EVEN_K else tl.load(xd_p, mask=f_ok, other=0.0)
                updated = updated + (dots[mi] + code * xp,)
            dots = updated
        g = w0 // WPG + gi
        g_ok = (g * WPG < last) & (rows >= 0)
        if EVEN_K:
            s = tl.load(s_ptr + sz_rows + g).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g).to(tl.float32)
        else:
            s = tl.load(s_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
        updated = ()
        for mi in tl.static_range(BLOCK_M):
            sums = gsum_ptr + tl.minimum(m0 + mi, M - 1) * 2 * n_groups + g
            gs = tl.load(sums) if EVEN_K else tl.load(sums, mask=g_ok, other=0.0)
            bs = tl.load(sums + n_groups) if EVEN_K else tl.load(sums + n_groups, mask=g_ok, other=0.0)
            updated = updated + (accs[mi] + s * (tl.sum(dots[mi], axis=2, keep_dims=True) - bs - z * gs),)
        accs = updated
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    for mi in tl.static_range(BLOCK_M):
        y = tl.sum(tl.sum(accs[mi], axis=2), axis=1)  # [BLOCK_N]
        out_mask = (rows < N) & (tl.zeros_like(rows) + (m0 + mi) < M)
        if PARTIAL:
            tl.store(out_ptr + split * stride_osplit + (m0 + mi) * stride_om + rows, y, mask=out_mask)
        else:
            if HAS_BIAS:
                y += bias
            tl.store(out_ptr + (m0 + mi) * stride_om + rows, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    if PARTIAL:
        # The last of the K slices of this block to finish adds the slices' partial sums up, in slice order (the
        # result does not depend on which one finishes last), so no reduction kernel is launched. The counters
        # were zeroed by prepare_activations_kernel; the barrier and the acq_rel atomic order the partial stores
        # of every thread before the count, and the count before the reads.
        tl.debug_barrier()
        block = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
        if tl.atomic_add(counts_ptr + block, 1, sem="acq_rel") == tl.num_programs(1) - 1:
            for mi in tl.static_range(BLOCK_M):
                out_mask = (rows < N) & (tl.zeros_like(rows) + (m0 + mi) < M)
                total = tl.zeros((BLOCK_N,), dtype=tl.float32)
                for other in range(tl.num_programs(1)):
                    total += tl.load(out_ptr + other * stride_osplit + (m0 + mi) * stride_om + rows, mask=out_mask,
                                     other=0.0, cache_modifier=".cg")  # fmt: skip
                if HAS_BIAS:
                    total += bias
                tl.store(y_ptr + (m0 + mi) * stride_ym + rows, total.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dequantized_codes(words, scales, offsets, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """s · (code P of each word − z) in fp32 for a tile of words: the float 2^23 + Q · 2^e(P) (_code_bits) times
    scales[j] = s · 2^-e plus offsets[j] = −s · (z + 2^(23 − e)), one fma; j = P mod (8 / BITS) picks e(P)."""
    code = _code_bits(words, P, BITS, ASM).to(tl.float32, bitcast=True)
    return code * scales[P % (8 // BITS)] + offsets[P % (8 // BITS)]


@triton.jit
def _unpack_in_order(words, scales, offsets, P0: tl.constexpr, STRIDE: tl.constexpr, COUNT: tl.constexpr,
                     BITS: tl.constexpr, DTYPE: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """Dequantized codes P0, P0 + STRIDE, ... (COUNT of them) of each word of a [R, W] tile, as [R, W·COUNT] with
    entry f·COUNT + j = code P0 + j·STRIDE of word f. Built by interleaving halves (tl.interleave keeps the new
    axis within each thread, so the in-order tile needs no shuffles); called with P0 = 0, STRIDE = 1 it gives the
    weight row in column order."""
    if COUNT == 1:
        return _dequantized_codes(words, scales, offsets, P0, BITS, ASM).to(DTYPE)
    else:
        evens = _unpack_in_order(words, scales, offsets, P0, 2 * STRIDE, COUNT // 2, BITS, DTYPE, ASM)
        odds = _unpack_in_order(words, scales, offsets, P0 + STRIDE, 2 * STRIDE, COUNT // 2, BITS, DTYPE, ASM)
        return tl.interleave(evens, odds)


@triton.jit
def _per_word(values, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WPG: tl.constexpr):
    """A [BLOCK_N, GROUPS] tile of per-group values repeated for each of a group's WPG words: [BLOCK_N, GROUPS·WPG]."""
    return tl.reshape(tl.broadcast_to(values[:, :, None], (BLOCK_N, GROUPS, WPG)), (BLOCK_N, GROUPS * WPG))


@triton.jit
def sinq_gemm_kernel(
    x_ptr, t_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K, n_words, stride_xm, stride_qn, stride_sn, stride_om, stride_osplit, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, EVEN_K: tl.constexpr,
    PRESCALED: tl.constexpr, ASM: tl.constexpr,
):  # fmt: skip
    """Tensor-core product for M > GEMV_MAX_M: out[m, n] over one K slice; grid (N/BN, SPLIT_K, M/BM).

    The operands are swapped (out^T = W x'^T) so that the dequantized weight tile is the left operand, which the
    tensor cores take from registers, and M (often 16..64) is the narrow side of the product. A step loads
    BLOCK_W words per row and each (row, group)'s scale and zero-point once, unpacks every code position p (code p
    of word f is column f·PER + p), applies s and z with one fp32 fma per code, rounds once to the activations'
    dtype, and interleaves the positions back into the [BLOCK_N, BLOCK_W·PER] column-order tile of one dot. With
    PRESCALED the caller passes t ⊙ x as x (so the activation tile goes from its pipelined shared-memory copy
    straight to the tensor cores); otherwise each step scales its [BLOCK_M, BLOCK_K] slice.
    """
    PER: tl.constexpr = 32 // BITS
    WPG: tl.constexpr = GROUP // PER  # packed words per group
    BLOCK_K: tl.constexpr = BLOCK_W * PER
    GROUPS: tl.constexpr = BLOCK_W // WPG  # whole groups per step (the launcher makes BLOCK_W a multiple of WPG)
    split = tl.program_id(1)
    first = split * words_per_split
    last = tl.minimum(first + words_per_split, n_words)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rows, N - 1)[:, None]  # clamped, not masked: loads stay unmasked; extra rows are not stored
    ms = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    m_ok = ms < M
    q_rows = q_ptr + rows.to(tl.int64) * stride_qn
    sz_rows = rows * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for w0 in range(first, last, BLOCK_W):
        f = w0 + tl.arange(0, BLOCK_W)[None, :]
        g = w0 // WPG + tl.arange(0, GROUPS)[None, :]  # [1, G]: this step's groups
        k = w0 * PER + tl.arange(0, BLOCK_K)[None, :]  # [1, BK]: the columns of this step
        if EVEN_K:
            words = tl.load(q_rows + f)  # [BN, BW]
            s = tl.load(s_ptr + sz_rows + g).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g).to(tl.float32)
            x_ok = m_ok & (k >= 0)
        else:  # past the slice: zero codes, scales and zero-points, so the weight tile is 0 there
            f_ok = (f < last) & (rows >= 0)  # a full tile (Triton 3.9's interpreter wants one)
            words = tl.load(q_rows + f, mask=f_ok, other=0)
            g_ok = (g * WPG < last) & (rows >= 0)
            s = tl.load(s_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
            x_ok = m_ok & (k < K)
        scales = ()  # per e(p) class j and word: s · 2^-e and −s · (z + 2^(23 − e)), e = 15 + BITS · j
        offsets = ()
        for j in tl.static_range(8 // BITS):
            scale = s * (1.0 / (1 << (15 + BITS * j)))
            offset = -s * (z + (1 << (8 - BITS * j)))
            scales = scales + (_per_word(scale, BLOCK_N, GROUPS, WPG),)
            offsets = offsets + (_per_word(offset, BLOCK_N, GROUPS, WPG),)
        w = _unpack_in_order(words, scales, offsets, 0, 1, PER, BITS, x_ptr.dtype.element_ty, ASM)  # s · (Q − z)
        xv = tl.load(x_ptr + ms * stride_xm + k, mask=x_ok, other=0.0)  # [BM, BK]
        if not PRESCALED:
            t = tl.load(t_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            xv = (xv.to(tl.float32) * t).to(x_ptr.dtype.element_ty)
        acc = tl.dot(w, tl.trans(xv), acc)  # [BN, BK] @ [BK, BM]
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    ms = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    out_mask = (rows < N) & (ms < M)
    if PARTIAL:
        tl.store(out_ptr + split * stride_osplit + ms * stride_om + rows, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + ms * stride_om + rows, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


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


@triton.jit
def dequantize_kernel(q_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_qn, stride_sn, stride_wn,
                      BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """w[n, k] = s[n, g] · (Q[n, k] − z[n, g]) in w's dtype, without t (applied to the activations); grid over
    (N / BLOCK_N, K / BLOCK_K). Output elements are contiguous per thread; each word is read PER times (cached)."""
    PER: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    mask = (rows < N) & (k < K)
    words = tl.load(q_ptr + rows.to(tl.int64) * stride_qn + k // PER, mask=mask, other=0)
    code = ((words >> ((k % PER) * BITS)) & MASK).to(tl.float32)
    s = tl.load(s_ptr + rows * stride_sn + k // GROUP, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows * stride_sn + k // GROUP, mask=mask, other=0.0).to(tl.float32)
    tl.store(w_ptr + rows.to(tl.int64) * stride_wn + k, (s * (code - z)).to(w_ptr.dtype.element_ty), mask=mask)
