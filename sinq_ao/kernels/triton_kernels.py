"""Triton kernels for y = [s ⊙ (Q − z)] (t ⊙ x) + b with bit-packed Q (layout v2, see sinq_ao.packing).

For the power-of-two code widths (2, 4, 8 bits) a packed word holds PER = 32 / BITS codes, interleaved within
32-column chunks: code p of word f is column k = (f // BITS) · 32 + p · BITS + f mod BITS, so code position p of
consecutive words meets consecutive columns. One or two activation rows (decode) run the CUDA-core GEMV, one
launch:

``sinq_gemv_kernel`` streams the packed words once. A step covers GROUPS_PER_STEP whole groups of BLOCK_N rows as
a [BLOCK_N, GROUPS, WORDS_PER_GROUP] tile (split [BLOCK_N / THREAD_ROWS, THREAD_ROWS, ...] to choose the register
layout), so the scale and zero-point are loaded once per (row, group). It loads x and t for each code position as
[1, (THREAD_ROWS,) GROUPS, WORDS_PER_GROUP] tiles (contiguous, one step ahead of their use),
forms xs_p = (t ⊙ x)_p · 2^(85 − d(p)) in fp32, and per word f and row n accumulates

    s[n, g] · (Σ_p Q[n, k_p] 2^(d(p) − 149) · xs_p − 2^-64 z[n, g] Σ_p (t ⊙ x)_p) = 2^-64 s Σ_p (Q − z)(t ⊙ x)

(k_p the column of code p), the dot starting at the last term; the [row, group, word] accumulator is reduced
once, after the loop, and scaled by 2^64.

Codes become floats without an int->float conversion, a subtraction, or a shift per code: a code's field, with
the exponent bits zero, is the subnormal float Q · 2^(d(p) − 149), so one `and` per code makes it. The fields
that end at bit 22 or below (the first 23 // BITS of a word) are masked in place (d(p) = BITS · p); the others
come from the word shifted right once by (23 // BITS) · BITS. Products Q · 2^(d − 149) · xs are exact, so
nothing of the fp32 sums is lost to a bias. The 2^-64 centres the range on typical activations: xs stays finite
for |t ⊙ x| below 2^43 (about 8.8e12; beyond, the output is inf or NaN), and only terms |Q · (t ⊙ x)| below
2^-62 (about 2e-19) become subnormal products, with an absolute error below 2^-85 (the tensor-core kernels still
use the biased 2^23 + Q form below, whose fma folds the bias away). Subnormals need the fp32 arithmetic not to
flush them to zero, which is how Triton compiles (no .ftz; tests/test_kernels.py checks the sm_90 build). All
activation rows of a block (BLOCK_M of them) share each unpacked code, so small batches read the weight once. With
SPLIT_K > 1, K slices (whole groups) write fp32 partial sums, and the last slice of each block to finish adds them
up in slice order (deterministic; one counter per block, zeroed by the launcher; no reduction launch).

Up to MMA_MAX_M rows at 4 bits (2 bits with groups of 128 or more) run ``sinq_mma_kernel`` on the tensor cores,
the codes unscaled as the register operand (its docstring), after ``mma_activations_kernel``: two launches.
Other formats and more rows run ``sinq_gemm_kernel`` (its docstring), which dequantizes the codes with one fma
each: each byte of a word is shifted once to bits 15..22, one ``lop3`` per code keeps the code's field, at bit
e(p) = 15 + BITS · (p mod 8/BITS), and sets the bits of 2^23, giving the float 2^23 + Q · 2^e(p) exactly, and
the fma with s · 2^-e and −s · (z + 2^(23 − e)) per group removes the bias (codes of several bit planes: the
GEMV's merged fields, a window of them shifted to bits 15..22 at a time, _dequantized_plane_tile); split-K
slices are reduced with ``splitk_reduce_kernel``.
``sinq_tile_kernel`` (after ``tile_activations_kernel``) takes 4-bit products of many rows on wide weights with the
product not swapped (its docstring). ``dequantize_kernel`` unpacks a whole weight for the eager path beyond that.
"""

import triton
import triton.language as tl


@triton.constexpr_function
def exponent(p, bits):
    """e(p): the bit where code p's field sits once byte (p · bits) // 8 of its word is moved to bits 15..22."""
    return 15 + bits * (p % (8 // bits))


@triton.jit
def _shifted_left(words, SHIFT: tl.constexpr):
    """The words shifted left by SHIFT bits (right by −SHIFT when negative)."""
    if SHIFT >= 0:
        return words << SHIFT
    else:
        return words >> -SHIFT


@triton.jit
def _magic_field(shifted, FIELD: tl.constexpr, ASM: tl.constexpr):
    """The bits of the float 2^23 + Q · 2^e for the field FIELD (a code at bits e..e+bits−1, e >= 15, of the shifted
    words): the field's and-or with 2^23's bits, one lop3 (ptxas splits the plain `&` then `|` into two)."""
    MAGIC: tl.constexpr = 0x4B000000  # the bits of 2.0**23 as a float32
    if ASM:
        return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,n,n", [shifted, FIELD, MAGIC],
                                         dtype=tl.int32, is_pure=True, pack=1)  # fmt: skip
    else:  # the interpreter and AMD GPUs run no PTX
        return (shifted & FIELD) | MAGIC


@triton.jit
def _code_bits(words, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """The bits of the float 2^23 + Q · 2^e(p) for code P of each word: the word shifted so that byte (P · BITS) // 8
    sits at bits 15..22 (one shift per byte, shared by its codes), then _magic_field."""
    FIELD: tl.constexpr = ((1 << BITS) - 1) << exponent(P, BITS)
    return _magic_field(_shifted_left(words, 15 - (P * BITS // 8) * 8), FIELD, ASM)


# Codes of 3, 5, 6 and 7 bits are stored in bit planes (sinq_ao.packing.bit_planes): the widths 8, 4, 2, 1 that
# ``bits`` holds, widest first; a chunk's words of a plane follow the wider planes' words, and its bits sit above
# theirs in the code. The GEMV reads every code in the layout of its widest plane (width w: code position p of
# word j of a chunk is column w · p + j, field p at bit w · p of the word), with the bits of the other planes
# merged into each field, so a field is ``bits`` wide at stride w (codes of one plane: w = bits). plane_widths
# restates bit_planes because Triton's compile-time functions cannot call plain Python functions; a test keeps
# the two in step.


@triton.constexpr_function
def plane_widths(bits):
    """The widths of a ``bits``-wide code's bit planes, widest first: (4, 2, 1) for 7 bits, (4,) for 4."""
    return tuple(width for width in (8, 4, 2, 1) if bits & width)


@triton.constexpr_function
def plane_count(bits):
    """Bit planes of a ``bits``-wide code: one for 1, 2, 4 and 8 bits, two or three otherwise."""
    return len(plane_widths(bits))


@triton.constexpr_function
def plane_width(bits, plane):
    """Width of bit plane ``plane`` (0: the widest): its words hold 32 / width codes, ``width`` words per chunk."""
    return plane_widths(bits)[plane]


@triton.constexpr_function
def plane_start(bits, plane):
    """The plane's first word in each chunk of ``bits`` words, which is also its bits' place in the code: the
    wider planes' widths added up."""
    return sum(plane_widths(bits)[:plane])


@triton.constexpr_function
def low_positions(bits):
    """Code positions whose field (``bits`` wide, at stride w = the widest plane's width) ends at bit 22 or below in
    place: the first (23 − bits) // w + 1 (23 // bits for a code of one plane)."""
    return (23 - bits) // plane_width(bits, 0) + 1


@triton.constexpr_function
def high_shift(bits):
    """The shift right that brings the other positions' fields below bit 23: w bits per low position."""
    return plane_width(bits, 0) * low_positions(bits)


@triton.constexpr_function
def field_bit(p, bits):
    """d(p): the bit where code p's field starts in the GEMV's source word: its place w · p in the (merged) word
    for the low_positions, else its place in the word shifted right by high_shift(bits). A field there, with the
    float's exponent bits zero, is the subnormal float Q · 2^(d(p) − 149)."""
    low = low_positions(bits)
    return plane_width(bits, 0) * (p if p < low else p - low)


@triton.constexpr_function
def merge_mask(bits, plane, parity, high):
    """Where bit plane ``plane`` (>= 1) puts its bits in the merged word of the code positions of one parity, in
    place or (``high``) shifted right by high_shift(bits), as a signed 32-bit value: fields of consecutive positions
    overlap (``bits`` wide at stride w, w < bits < 2w), those of every other position do not."""
    w, width, start = plane_width(bits, 0), plane_width(bits, plane), plane_start(bits, plane)
    shift = high_shift(bits) if high else 0
    mask = 0
    for p in range(parity, 32 // w, 2):
        if w * p + start >= shift:
            mask |= ((1 << width) - 1) << (w * p + start - shift)
    mask &= 0xFFFFFFFF
    return mask - (1 << 32) if mask >> 31 else mask


# The tensor-core kernel dequantizes each code with one fma from the float 2^23 + Q · 2^e, e >= 15 (so that the
# fma's offset −s · (z + 2^(23 − e)) keeps z's fraction to 2^-16): a code of one plane sits at e(p) = 15 + BITS · j
# once its byte is moved to bits 15..22 (j = p mod 8/BITS). Codes of several planes take the GEMV's merged fields
# (_merged_fields: four words, by parity of p, in place or shifted right by high_shift), in which the fields of
# one parity are ``bits`` wide at stride 2w; the byte-wide window at bits 15..22 of such a word, shifted, holds
# window_codes(bits) of them (two at 3 bits, one at 5, 6 and 7), at e = 15 + 2w · j.


@triton.constexpr_function
def window_codes(bits):
    """Fields of one parity of a merged word (``bits`` wide, stride 2w) that fit in bits 15..22 at once."""
    return (8 - bits) // (2 * plane_width(bits, 0)) + 1


@triton.constexpr_function
def code_classes(bits):
    """How many exponents e(p) the tensor-core kernel's codes take: 8 / bits for a code of one plane (one per code
    of a byte), window_codes(bits) otherwise."""
    return 8 // bits if len(plane_widths(bits)) == 1 else window_codes(bits)


@triton.constexpr_function
def class_exponent(j, bits):
    """e of class j: 15 + bits · j (one plane), 15 + 2w · j (several)."""
    return 15 + (bits if len(plane_widths(bits)) == 1 else 2 * plane_width(bits, 0)) * j


@triton.constexpr_function
def merged_source(p, bits):
    """Which of _merged_fields' words holds code p's field: (in place, shifted right) x (even p, odd p), in the
    order (lows[0], lows[1], highs[0], highs[1]); and p's rank among that word's positions."""
    low = low_positions(bits)
    first = p % 2 if p < low else low + (p - low) % 2
    return p % 2 + (0 if p < low else 2), (p - first) // 2


@triton.constexpr_function
def code_class(p, bits):
    """The class j of code p's exponent e(p) = class_exponent(j, bits)."""
    if len(plane_widths(bits)) == 1:
        return p % (8 // bits)
    return merged_source(p, bits)[1] % window_codes(bits)


@triton.constexpr_function
def window_shift(p, bits):
    """The left shift (negative: right) of code p's merged word that puts p's field at bit class_exponent: its
    window's first field moves to bit 15."""
    rank = merged_source(p, bits)[1]
    return 15 - (field_bit(p, bits) - 2 * plane_width(bits, 0) * (rank % window_codes(bits)))


@triton.constexpr_function
def activation_scale(p, bits):
    """2^(85 − d(p)): xs_p = (t ⊙ x)_p · 2^(85 − d(p)) times code p's subnormal float is 2^-64 · Q · (t ⊙ x)_p."""
    return 2.0 ** (85 - field_bit(p, bits))


@triton.constexpr_function
def power_of_two(e):
    """The float 2^e (a compile-time constant)."""
    return 2.0**e


@triton.jit
def _shift_right(words, SHIFT: tl.constexpr, ASM: tl.constexpr):
    """The words shifted right by SHIFT bits (the top bits as the codes' masks leave them). As inline PTX on the
    GPU: a plain shift followed by a field's mask at bit 0 becomes a bit-field extract, which ptxas builds from
    two instructions for that code alone instead of sharing the shift."""
    if ASM:
        return tl.inline_asm_elementwise("shr.u32 $0, $1, $2;", "=r,r,n", [words, SHIFT], dtype=tl.int32,
                                         is_pure=True, pack=1)  # fmt: skip
    else:
        return words >> SHIFT


@triton.jit
def _subnormal_code(words, high, P: tl.constexpr, BITS: tl.constexpr):
    """The float Q · 2^(d(P) − 149) for code P of each word: one `and` (``high`` is the words shifted right by
    high_shift(BITS), shared by the positions whose field does not end below bit 23 in place)."""
    FIELD: tl.constexpr = ((1 << BITS) - 1) << field_bit(P, BITS)
    if P < low_positions(BITS):
        return (words & FIELD).to(tl.float32, bitcast=True)
    else:
        return (high & FIELD).to(tl.float32, bitcast=True)


@triton.jit
def _bit_select(words, bits, MASK: tl.constexpr, ASM: tl.constexpr):
    """``bits`` where MASK is set, ``words`` elsewhere: one lop3 (inline PTX on the GPU)."""
    if ASM:
        return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xD8;", "=r,r,r,n", [words, bits, MASK],
                                         dtype=tl.int32, is_pure=True, pack=1)  # fmt: skip
    else:
        return (words & ~MASK) | (bits & MASK)


@triton.jit
def _merged_fields(words, high, others, lane, BITS: tl.constexpr, ASM: tl.constexpr):
    """The source words of codes of several bit planes, each field holding all bits of its code: per parity of the
    code position (index 0: even), the widest plane's words and ``high`` (shifted right by high_shift) with the
    bits of every other plane merged in. ``others`` holds the other planes' words in the widest plane's layout (for
    each of its words, lane ``lane`` of its chunk, the plane's word that holds the same columns); moving a plane's
    fields to their places in the merged fields is one shift per word, by an amount that depends on the lane alone
    (plane_start − width · (lane // width))."""
    lows = (words, words)
    highs = (high, high)
    for plane in tl.static_range(1, plane_count(BITS)):
        up = plane_start(BITS, plane) - plane_width(BITS, plane) * (lane // plane_width(BITS, plane))
        raw = others[plane - 1].to(tl.uint32, bitcast=True)
        low_bits = (raw << up).to(tl.int32, bitcast=True)
        high_bits = (raw >> (high_shift(BITS) - up)).to(tl.int32, bitcast=True)
        lows = (_bit_select(lows[0], low_bits, merge_mask(BITS, plane, 0, False), ASM),
                _bit_select(lows[1], low_bits, merge_mask(BITS, plane, 1, False), ASM))
        highs = (_bit_select(highs[0], high_bits, merge_mask(BITS, plane, 0, True), ASM),
                 _bit_select(highs[1], high_bits, merge_mask(BITS, plane, 1, True), ASM))
    return lows, highs


@triton.jit
def _window_code_bits(sources, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """The bits of the float 2^23 + Q · 2^e(P) for code P of codes of several bit planes, from _merged_fields'
    words (``sources``): the word shifted so that P's window sits at bits 15..22 (one shift per window, shared by
    its codes), then _magic_field."""
    FIELD: tl.constexpr = ((1 << BITS) - 1) << class_exponent(code_class(P, BITS), BITS)
    return _magic_field(_shifted_left(sources[merged_source(P, BITS)[0]], window_shift(P, BITS)), FIELD, ASM)


@triton.jit
def _step_activations(x_ptr, t_ptr, w0, wi, last, m0, M, K, stride_xm,
                      BITS: tl.constexpr, BLOCK_M: tl.constexpr, EVEN_K: tl.constexpr):  # fmt: skip
    """t and x (as loaded) for the codes of words w0 + wi of the widest bit plane (width W), [1, TR, G, W] tiles: t
    for code positions p = 0..PER-1 (PER = 32 / W), then x for each activation row m0 + mi and p (index PER · (1 +
    mi) + p). Code p of word f multiplies column (f // BITS) · 32 + p · W + f mod BITS (layout v2: a chunk is BITS
    words, the widest plane's first), so for each p consecutive words meet consecutive columns. Zero past ``last``
    and K (masked) unless EVEN_K."""
    W: tl.constexpr = plane_width(BITS, 0)
    PER: tl.constexpr = 32 // W
    cols = (w0 // BITS) * 32 + (wi // BITS) * 32 + wi % BITS  # w0 is a multiple of BITS (whole groups)
    # runs of W consecutive columns, each starting at a multiple of W: vector loads
    cols = tl.max_contiguous(tl.multiple_of(cols, [1, 1, 1, W]), [1, 1, 1, W])
    in_slice = (w0 + wi) < last
    loaded = ()
    for p in tl.static_range(PER):
        loaded = loaded + ((tl.load(t_ptr + cols + p * W) if EVEN_K else
                            tl.load(t_ptr + cols + p * W, mask=in_slice & (cols + p * W < K), other=0.0)),)
    for mi in tl.static_range(BLOCK_M):
        x_row = x_ptr + tl.minimum(m0 + mi, M - 1) * stride_xm
        for p in tl.static_range(PER):
            loaded = loaded + ((tl.load(x_row + cols + p * W) if EVEN_K else
                                tl.load(x_row + cols + p * W, mask=in_slice & (cols + p * W < K), other=0.0)),)
    return loaded


@triton.jit
def _plane_words(gi, BITS: tl.constexpr, GROUP: tl.constexpr, PLANE: tl.constexpr):
    """Offsets from a step's first word, [1, 1, G, E] for the step's groups gi ([1, 1, G, 1]), of the words of
    bit plane PLANE in the widest plane's layout: element e of a group is lane e % w (w = the widest plane's
    width) of chunk e // w, and takes the plane's word that holds that lane's columns (word lane % width of the
    plane's ``width`` in the chunk; for a code of one plane, the group's words themselves, contiguous)."""
    W: tl.constexpr = plane_width(BITS, 0)
    CPG: tl.constexpr = GROUP // 32  # chunks per group
    e = tl.arange(0, CPG * W)[None, None, None, :]
    if plane_count(BITS) == 1:
        return gi * (CPG * BITS) + e
    else:
        return (gi * CPG + e // W) * BITS + plane_start(BITS, PLANE) + e % W % plane_width(BITS, PLANE)


@triton.jit
def _last_slice_to_finish(counts_ptr):
    """Whether this program is the last of its row block's K slices (grid dimension 1) to have stored its partial
    sums: one counter per block (grid dimensions 0 and 2), zeroed before the launch. The barrier and the acq_rel
    atomic order every thread's partial stores before the count, and the count before the last slice's reads."""
    tl.debug_barrier()
    block = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    return tl.atomic_add(counts_ptr + block, 1, sem="acq_rel") == tl.num_programs(1) - 1


@triton.jit
def sinq_gemv_kernel(
    x_ptr, t_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, counts_ptr,
    M, N, K, n_words, stride_xm, stride_qn, stride_sn, stride_om, stride_osplit, stride_ym, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, EVEN_K: tl.constexpr,
    ASM: tl.constexpr, NUM_STAGES: tl.constexpr, THREAD_ROWS: tl.constexpr,
):  # fmt: skip
    """y[m, n] for BLOCK_M activation rows x BLOCK_N output rows; grid (N/BN, SPLIT_K, M/BM). With PARTIAL (K
    split), each program writes its slice's fp32 sums to out[split] and the block's last program writes y."""
    _gemv_block(x_ptr, t_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, counts_ptr, tl.program_id(0),
                M, N, K, n_words, stride_xm, stride_qn, stride_sn, stride_om, stride_osplit, stride_ym,
                words_per_split, BITS, GROUP, HAS_BIAS, PARTIAL, BLOCK_M, BLOCK_N, GROUPS_PER_STEP, EVEN_K, ASM,
                NUM_STAGES, THREAD_ROWS)  # fmt: skip


@triton.jit
def sinq_gemv_group_kernel(
    x_ptr, t0_ptr, q0_ptr, s0_ptr, z0_ptr, y0_ptr, N0, t1_ptr, q1_ptr, s1_ptr, z1_ptr, y1_ptr, N1,
    t2_ptr, q2_ptr, s2_ptr, z2_ptr, y2_ptr, N2,
    M, K, n_words, stride_xm, stride_qn, stride_sn,
    BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUPS_PER_STEP: tl.constexpr, EVEN_K: tl.constexpr, ASM: tl.constexpr, NUM_STAGES: tl.constexpr,
    THREAD_ROWS: tl.constexpr,
):  # fmt: skip
    """The GEMV of two or three weights that share their activations x (e.g. a layer's q, k and v projections) in
    one launch: grid (blocks of weight 0 + of weight 1 + of weight 2, 1, M/BM); each program picks its weight (codes,
    scales, zero-points, column scale t, output and row count) by its block index. Same format and strides for all,
    contiguous (M, N_i) outputs, no bias, no K split (the combined rows fill the GPU). With two weights, pass
    weight 1's inputs again as weight 2 with N2 = 0 (and an unused output)."""
    block = tl.program_id(0)
    blocks0 = tl.cdiv(N0, BLOCK_N)
    blocks01 = blocks0 + tl.cdiv(N1, BLOCK_N)
    in1 = block >= blocks0
    in2 = block >= blocks01
    block -= tl.where(in2, blocks01, tl.where(in1, blocks0, 0))
    n = tl.where(in2, N2, tl.where(in1, N1, N0))
    t_ptr = tl.where(in2, t2_ptr, tl.where(in1, t1_ptr, t0_ptr))
    q_ptr = tl.where(in2, q2_ptr, tl.where(in1, q1_ptr, q0_ptr))
    s_ptr = tl.where(in2, s2_ptr, tl.where(in1, s1_ptr, s0_ptr))
    z_ptr = tl.where(in2, z2_ptr, tl.where(in1, z1_ptr, z0_ptr))
    y_ptr = tl.where(in2, y2_ptr, tl.where(in1, y1_ptr, y0_ptr))
    _gemv_block(x_ptr, t_ptr, q_ptr, s_ptr, z_ptr, y_ptr, y_ptr, y_ptr, y_ptr, block, M, n, K, n_words,
                stride_xm, stride_qn, stride_sn, n, 0, n, n_words, BITS, GROUP, False, False,
                BLOCK_M, BLOCK_N, GROUPS_PER_STEP, EVEN_K, ASM, NUM_STAGES, THREAD_ROWS)  # fmt: skip


@triton.jit
def _gemv_block(
    x_ptr, t_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, counts_ptr, block,
    M, N, K, n_words, stride_xm, stride_qn, stride_sn, stride_om, stride_osplit, stride_ym, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, EVEN_K: tl.constexpr,
    ASM: tl.constexpr, NUM_STAGES: tl.constexpr, THREAD_ROWS: tl.constexpr,
):  # fmt: skip
    """The GEMV's work for output row block ``block`` (its K slice: grid dimension 1)."""
    PER: tl.constexpr = 32 // plane_width(BITS, 0)  # code positions of a word (of the widest bit plane)
    WPG: tl.constexpr = GROUP * BITS // 32  # packed words per group
    E: tl.constexpr = GROUP // PER  # of them in the widest plane: WPG for a code of one plane
    split = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    first = split * words_per_split  # a multiple of WPG: slices hold whole groups
    last = tl.minimum(first + words_per_split, n_words)
    # Tiles are [row, thread row, group, word] (row r · TR + tr of the block), activation tiles [1, TR, group,
    # word]. Triton spreads a load's tile over all threads, so THREAD_ROWS (TR) sets how many columns of x and t
    # each thread loads: with TR = 1 and a small step one (the words then reach that layout through shared
    # memory); with LaunchConfig.thread_rows from vector_thread_rows four, as vector loads in the words' own
    # 16-byte register layout. Per activation row m the kernel keeps its own accumulators (tuples, unrolled over
    # BLOCK_M), and each unpacked code is used for all of them. Rows past N and activation rows past M are
    # clamped, not masked (their results are not stored), so whole steps load without predicates. Codes of several
    # bit planes are read in the widest plane's layout: its words, each with the other planes' words that hold the
    # same columns (_plane_words), merged into whole fields (_merged_fields).
    RPT: tl.constexpr = BLOCK_N // THREAD_ROWS
    tr = tl.arange(0, THREAD_ROWS)[None, :, None, None]
    rows = tl.minimum(block * BLOCK_N + tl.arange(0, RPT)[:, None, None, None] * THREAD_ROWS + tr, N - 1)
    gi = tl.arange(0, GROUPS_PER_STEP)[None, None, :, None]
    wi = _plane_words(gi, BITS, GROUP, 0)  # word offsets within a step, [1, 1, G, E]
    act_wi = wi + 0 * tr  # [1, TR, G, E]
    lane = tl.arange(0, E)[None, None, None, :] % plane_width(BITS, 0)  # of each word within its chunk
    q_rows = q_ptr + rows.to(tl.int64) * stride_qn
    sz_rows = rows * stride_sn
    accs = ()  # per activation row, [RPT, TR, G, E]: reduced over groups and words once, after the loop
    for mi in tl.static_range(BLOCK_M):
        accs = accs + (tl.zeros((RPT, THREAD_ROWS, GROUPS_PER_STEP, E), dtype=tl.float32),)
    STEP: tl.constexpr = GROUPS_PER_STEP * WPG  # words per K step
    # The activations are loaded one step ahead (register double buffering; the words are pipelined by Triton)
    acts = _step_activations(x_ptr, t_ptr, first, act_wi, last, m0, M, K, stride_xm, BITS, BLOCK_M, EVEN_K)
    for w0 in tl.range(first, last, STEP, num_stages=NUM_STAGES):
        f = w0 + wi
        f_ok = f < last  # [1, 1, G, E] (a mask of the words' shape would widen their loads)
        words = tl.load(q_rows + f) if EVEN_K else tl.load(q_rows + f, mask=f_ok & (rows >= 0), other=0)
        others = ()  # the other bit planes' words, in the layout of ``words`` (their chunks hold the same columns)
        for plane in tl.static_range(1, plane_count(BITS)):
            f_plane = w0 + _plane_words(gi, BITS, GROUP, plane)
            others = others + (tl.load(q_rows + f_plane) if EVEN_K else
                               tl.load(q_rows + f_plane, mask=f_ok & (rows >= 0), other=0),)  # fmt: skip
        g = w0 // WPG + gi
        if EVEN_K:
            s = tl.load(s_ptr + sz_rows + g).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g).to(tl.float32)
        else:
            g_ok = (g * WPG < last) & (rows >= 0)
            s = tl.load(s_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
        # the next step's (the last step re-reads its own: in bounds, unused)
        following = _step_activations(x_ptr, t_ptr, tl.minimum(w0 + STEP, last - STEP) if EVEN_K else w0 + STEP,
                                      act_wi, last, m0, M, K, stride_xm, BITS, BLOCK_M, EVEN_K)  # fmt: skip
        xs = ()  # xs = (t ⊙ x) · 2^(85 − d(p)), per activation row mi and code position p (index mi · PER + p)
        for mi in tl.static_range(BLOCK_M):
            for p in tl.static_range(PER):
                t_scaled = acts[p].to(tl.float32) * activation_scale(p, BITS)
                xs = xs + (acts[PER * (1 + mi) + p].to(tl.float32) * t_scaled,)
        acts = following
        # Each word's dot starts at −z · 2^-64 · Σ_p (t ⊙ x)_p (Σ over the word's codes), so that after its codes,
        # each adding Q · 2^(d(p) − 149) · xs_p = 2^-64 · Q · (t ⊙ x)_p, it holds 2^-64 · Σ_p (Q − z) (t ⊙ x)_p.
        z_low = z * power_of_two(-64)
        dots = ()
        for mi in tl.static_range(BLOCK_M):
            x_sum = xs[mi * PER] * (1.0 / activation_scale(0, BITS))
            for p in tl.static_range(1, PER):
                x_sum += xs[mi * PER + p] * (1.0 / activation_scale(p, BITS))
            dots = dots + (-(z_low * x_sum),)
        high = _shift_right(words, high_shift(BITS), ASM)  # the fields that do not fit below bit 23
        if plane_count(BITS) == 1:
            lows, highs = (words,), (high,)
        else:  # per parity of p
            lows, highs = _merged_fields(words, high, others, lane, BITS, ASM)
        for p in tl.static_range(PER):
            code = _subnormal_code(lows[p % len(lows)], highs[p % len(highs)], p, BITS)
            updated = ()
            for mi in tl.static_range(BLOCK_M):
                updated = updated + (dots[mi] + code * xs[mi * PER + p],)
            dots = updated
        updated = ()
        for mi in tl.static_range(BLOCK_M):
            updated = updated + (accs[mi] + s * dots[mi],)
        accs = updated
    rows = block * BLOCK_N + tl.arange(0, RPT)[:, None] * THREAD_ROWS + tl.arange(0, THREAD_ROWS)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    for mi in tl.static_range(BLOCK_M):
        y = tl.sum(tl.sum(accs[mi], axis=3), axis=2) * power_of_two(64)  # [RPT, TR]
        out_mask = (rows < N) & (tl.zeros_like(rows) + (m0 + mi) < M)
        if PARTIAL:
            tl.store(out_ptr + split * stride_osplit + (m0 + mi) * stride_om + rows, y, mask=out_mask)
        else:
            if HAS_BIAS:
                y += bias
            tl.store(out_ptr + (m0 + mi) * stride_om + rows, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    if PARTIAL:  # a compile-time branch: kept apart from the runtime test below  # noqa: SIM102
        # The last of the K slices of this block to finish adds the slices' partial sums up, in slice order (the
        # result does not depend on which one finishes last), so no reduction kernel is launched.
        if _last_slice_to_finish(counts_ptr):
            for mi in tl.static_range(BLOCK_M):
                out_mask = (rows < N) & (tl.zeros_like(rows) + (m0 + mi) < M)
                total = tl.zeros((RPT, THREAD_ROWS), dtype=tl.float32)
                for other in range(tl.num_programs(1)):
                    total += tl.load(out_ptr + other * stride_osplit + (m0 + mi) * stride_om + rows, mask=out_mask,
                                     other=0.0, cache_modifier=".cg")  # fmt: skip
                if HAS_BIAS:
                    total += bias
                tl.store(y_ptr + (m0 + mi) * stride_ym + rows, total.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dequantized_codes(sources, scales, offsets, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """s · (code P of each word − z) in fp32 for a tile of words: the float 2^23 + Q · 2^e(P) (_code_bits, or
    _window_code_bits for codes of several bit planes) times scales[j] = s · 2^-e plus offsets[j] = −s · (z +
    2^(23 − e)), one fma; j = code_class(P) picks e(P). ``sources``: the words (one bit plane) or _merged_fields'
    four merged words."""
    if plane_count(BITS) == 1:
        code = _code_bits(sources[0], P, BITS, ASM).to(tl.float32, bitcast=True)
    else:
        code = _window_code_bits(sources, P, BITS, ASM).to(tl.float32, bitcast=True)
    return code * scales[code_class(P, BITS)] + offsets[code_class(P, BITS)]


@triton.jit
def _unpack_in_order(sources, scales, offsets, P0: tl.constexpr, STRIDE: tl.constexpr, COUNT: tl.constexpr,
                     BITS: tl.constexpr, DTYPE: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """Dequantized codes P0, P0 + STRIDE, ... (COUNT of them) of each word of [R, W] tiles (``sources``, as for
    _dequantized_codes), as [R, W·COUNT] with entry f·COUNT + j = code P0 + j·STRIDE of word f. Built by
    interleaving halves (tl.interleave keeps the new axis within each thread, so the in-order tile needs no
    shuffles); called with P0 = 0, STRIDE = 1 it gives each word's codes in position order."""
    if COUNT == 1:
        return _dequantized_codes(sources, scales, offsets, P0, BITS, ASM).to(DTYPE)
    else:
        evens = _unpack_in_order(sources, scales, offsets, P0, 2 * STRIDE, COUNT // 2, BITS, DTYPE, ASM)
        odds = _unpack_in_order(sources, scales, offsets, P0 + STRIDE, 2 * STRIDE, COUNT // 2, BITS, DTYPE, ASM)
        return tl.interleave(evens, odds)


@triton.jit
def _per_word(values, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WPG: tl.constexpr):
    """A [BLOCK_N, GROUPS] tile of per-group values repeated for each of a group's WPG words: [BLOCK_N, GROUPS·WPG]."""
    return tl.reshape(tl.broadcast_to(values[:, :, None], (BLOCK_N, GROUPS, WPG)), (BLOCK_N, GROUPS * WPG))


@triton.jit
def _dequantized_tile(words, s, z, BITS: tl.constexpr, GROUPS: tl.constexpr, WPG: tl.constexpr, DTYPE: tl.constexpr,
                      ASM: tl.constexpr):  # fmt: skip
    """s · (Q − z) in DTYPE, in column order, for a [BLOCK_N, GROUPS · WPG] tile of packed words of one bit plane
    whose groups' fp32 scales and zero-points are s and z ([BLOCK_N, GROUPS]): one fma per code with s · 2^-e and
    −s · (z + 2^(23 − e)) per e(p) class j (e = 15 + BITS · j), broadcast to each group's words; returns
    [BLOCK_N, GROUPS · WPG · PER]."""
    PER: tl.constexpr = 32 // BITS
    BLOCK_N: tl.constexpr = words.shape[0]
    BLOCK_W: tl.constexpr = GROUPS * WPG
    scales, offsets = _class_scales(s, z, BITS, GROUPS, WPG)
    w = _unpack_in_order((words,), scales, offsets, 0, 1, PER, BITS, DTYPE, ASM)
    # entry f·PER + p holds column (f // BITS)·32 + p·BITS + f mod BITS (layout v2): within each 32-column chunk
    # the order is (word j, position p); put it in column order (p, j), a register relabelling
    return tl.reshape(tl.permute(tl.reshape(w, (BLOCK_N, BLOCK_W // BITS, BITS, PER)), (0, 1, 3, 2)),
                      (BLOCK_N, BLOCK_W * PER))  # fmt: skip


@triton.jit
def _class_scales(s, z, BITS: tl.constexpr, GROUPS: tl.constexpr, E: tl.constexpr):
    """Per e(p) class j: s · 2^-e and −s · (z + 2^(23 − e)) ([BLOCK_N, GROUPS] each) repeated for each of a
    group's E words ([BLOCK_N, GROUPS · E])."""
    BLOCK_N: tl.constexpr = s.shape[0]
    scales = ()
    offsets = ()
    for j in tl.static_range(code_classes(BITS)):
        scales = scales + (_per_word(s * (1.0 / (1 << class_exponent(j, BITS))), BLOCK_N, GROUPS, E),)
        offsets = offsets + (_per_word(-s * (z + (1 << (23 - class_exponent(j, BITS)))), BLOCK_N, GROUPS, E),)
    return scales, offsets


@triton.jit
def _in_lane_order(lanes, J0: tl.constexpr, STRIDE: tl.constexpr, COUNT: tl.constexpr):
    """lanes[J0], lanes[J0 + STRIDE], ... (COUNT [R, C] tiles) interleaved into [R, C · COUNT], entry c · COUNT +
    j from lanes[J0 + j · STRIDE] (tl.interleave: the new axis stays within each thread)."""
    if COUNT == 1:
        return lanes[J0]
    else:
        return tl.interleave(_in_lane_order(lanes, J0, 2 * STRIDE, COUNT // 2),
                             _in_lane_order(lanes, J0 + STRIDE, 2 * STRIDE, COUNT // 2))  # fmt: skip


@triton.jit
def _dequantized_plane_tile(q_ptr, row0, N, stride_qn, w0, last, s, z, BITS: tl.constexpr, GROUP: tl.constexpr,
                            GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_K: tl.constexpr, DTYPE: tl.constexpr,
                            ASM: tl.constexpr):  # fmt: skip
    """s · (Q − z) in DTYPE, in column order, [BLOCK_N, GROUPS · GROUP], for the GROUPS groups of codes of several
    bit planes that start at word w0 of rows row0 .. row0 + BLOCK_N − 1 (clamped to N − 1); words at or past
    ``last`` read as 0 unless EVEN_K. Each of a chunk's BITS words is loaded once, as a [BLOCK_N, chunks] tile from a
    row-major 1-D load, so that neighbouring threads take neighbouring chunks under every Triton version (a 2-D
    load of these strided words leaves the order to a tie, which Triton 3.6 and 3.9 break differently). Per lane j
    of the widest plane (width w: its word j of the chunk holds columns w · p + j), the lane's words of every plane
    merge into whole fields (_merged_fields) and unpack in position order; the lanes are then interleaved, so each
    thread holds its chunks' 32 columns in order (vector stores to the dot's shared-memory tile, as at 4 bits)."""
    W: tl.constexpr = plane_width(BITS, 0)
    CHUNKS: tl.constexpr = GROUPS * (GROUP // 32)
    i = tl.arange(0, BLOCK_N * CHUNKS)  # row-major (row, chunk)
    rows = tl.minimum(row0 + i // CHUNKS, N - 1)
    first = q_ptr + rows.to(tl.int64) * stride_qn + w0 + (i % CHUNKS) * BITS
    ok = w0 + (i % CHUNKS) * BITS < last
    loaded = ()
    for b in tl.static_range(BITS):
        word = tl.load(first + b) if EVEN_K else tl.load(first + b, mask=ok, other=0)
        loaded = loaded + (tl.reshape(word, (BLOCK_N, CHUNKS)),)
    scales, offsets = _class_scales(s, z, BITS, GROUPS, GROUP // 32)
    lanes = ()
    for lane in tl.static_range(W):
        others = ()
        for plane in tl.static_range(1, plane_count(BITS)):
            others = others + (loaded[plane_start(BITS, plane) + lane % plane_width(BITS, plane)],)
        high = _shift_right(loaded[lane], high_shift(BITS), ASM)
        lows, highs = _merged_fields(loaded[lane], high, others, lane, BITS, ASM)
        lanes = lanes + (_unpack_in_order((lows[0], lows[1], highs[0], highs[1]), scales, offsets, 0, 1, 32 // W,
                                          BITS, DTYPE, ASM),)  # fmt: skip
    return _in_lane_order(lanes, 0, 1, W)


@triton.jit
def sinq_gemm_kernel(
    x_ptr, t_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K, n_words, stride_xm, stride_qn, stride_sn, stride_om, stride_osplit, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, EVEN_K: tl.constexpr,
    PRESCALED: tl.constexpr, ASM: tl.constexpr,
):  # fmt: skip
    """Tensor-core product for M > GEMV_MAX_M (where sinq_mma_kernel does not apply): out[m, n] over one K slice;
    grid (N/BN, SPLIT_K, M/BM).

    The operands are swapped (out^T = W x'^T) so that the dequantized weight tile is the left operand, which the
    tensor cores take from registers, and M (often 16..64) is the narrow side of the product. A step loads
    BLOCK_W words per row and each (row, group)'s scale and zero-point once, unpacks every code position p, applies
    s and z with one fp32 fma per code, rounds once to the activations' dtype, interleaves the positions into
    (word, position) order and permutes each 32-column chunk into column order (layout v2): the [BLOCK_N,
    BLOCK_W·PER] tile of one dot. With
    PRESCALED the caller passes t ⊙ x as x (so the activation tile goes from its pipelined shared-memory copy
    straight to the tensor cores); otherwise each step scales its [BLOCK_M, BLOCK_K] slice. Codes of several bit
    planes (BLOCK_W a power of two of whole groups) are unpacked by _dequantized_plane_tile into the same tile.
    """
    WPG: tl.constexpr = GROUP * BITS // 32  # packed words per group
    GROUPS: tl.constexpr = BLOCK_W // WPG  # whole groups per step (the launcher makes BLOCK_W a multiple of WPG)
    tl.static_assert(BLOCK_W == GROUPS * WPG, "BLOCK_W must be whole groups (kernels.gemm_step_words)")
    BLOCK_K: tl.constexpr = GROUPS * GROUP
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
    # The one-plane statements keep the order they had before codes of several planes came in (their sm_90 SASS is
    # byte for byte the same), hence the repeated compile-time branches.
    for w0 in range(first, last, BLOCK_W):
        if plane_count(BITS) == 1:
            f = w0 + tl.arange(0, BLOCK_W)[None, :]  # the step's words (a power of two of them)
        g = w0 // WPG + tl.arange(0, GROUPS)[None, :]  # [1, G]: this step's groups
        if plane_count(BITS) == 1:
            k = w0 * (32 // BITS) + tl.arange(0, BLOCK_K)[None, :]  # [1, BK]: the columns of this step
        else:
            k = (w0 // WPG) * GROUP + tl.arange(0, BLOCK_K)[None, :]
        if EVEN_K:
            if plane_count(BITS) == 1:
                words = tl.load(q_rows + f)  # [BN, BW]
            s = tl.load(s_ptr + sz_rows + g).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g).to(tl.float32)
            x_ok = m_ok & (k >= 0)
        else:  # past the slice: zero codes, scales and zero-points, so the weight tile is 0 there
            if plane_count(BITS) == 1:
                words = tl.load(q_rows + f, mask=(f < last) & (rows >= 0), other=0)  # a full tile (3.9's interpreter)
            g_ok = (g * WPG < last) & (rows >= 0)
            s = tl.load(s_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_rows + g, mask=g_ok, other=0.0).to(tl.float32)
            x_ok = m_ok & (k < K)
        if plane_count(BITS) == 1:
            w = _dequantized_tile(words, s, z, BITS, GROUPS, WPG, x_ptr.dtype.element_ty, ASM)  # [BN, BK]: s · (Q − z)
        else:
            w = _dequantized_plane_tile(q_ptr, tl.program_id(0) * BLOCK_N, N, stride_qn, w0, last, s, z, BITS, GROUP,
                                        GROUPS, BLOCK_N, EVEN_K, x_ptr.dtype.element_ty, ASM)  # fmt: skip
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
    (N / BLOCK_N, K / BLOCK_K). Column k's bits in a plane of width w starting at word (and code bit) b of its chunk
    are field (k mod 32) // w of word (k // 32) · BITS + b + k mod w (layout v2; one plane at 2, 4 and 8 bits);
    output elements are contiguous per thread; each word is read 32 / w times (cached)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    mask = (rows < N) & (k < K)
    q_rows = q_ptr + rows.to(tl.int64) * stride_qn + (k // 32) * BITS
    code = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.int32)
    for plane in tl.static_range(plane_count(BITS)):
        words = tl.load(q_rows + plane_start(BITS, plane) + k % plane_width(BITS, plane), mask=mask, other=0)
        field = words >> ((k % 32) // plane_width(BITS, plane) * plane_width(BITS, plane))
        code |= (field & ((1 << plane_width(BITS, plane)) - 1)) << plane_start(BITS, plane)
    s = tl.load(s_ptr + rows * stride_sn + k // GROUP, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows * stride_sn + k // GROUP, mask=mask, other=0.0).to(tl.float32)
    tl.store(w_ptr + rows.to(tl.int64) * stride_wn + k, (s * (code.to(tl.float32) - z)).to(w_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip


@triton.jit
def _zero_counts(counts_ptr, n_counts, COUNT_BLOCK: tl.constexpr):
    """Zero the n_counts split-K counters of the product launched next (run by one program of an activation pass)."""
    for c0 in range(0, n_counts, COUNT_BLOCK):
        c = c0 + tl.arange(0, COUNT_BLOCK)
        tl.store(counts_ptr + c, tl.zeros((COUNT_BLOCK,), dtype=tl.int32), mask=c < n_counts)


@triton.jit
def _store_sums(acc, rows, ms, split, N, M, bias_ptr, out_ptr, y_ptr, counts_ptr, stride_om, stride_osplit,
                stride_ym, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):  # fmt: skip
    """A tensor-core program's fp32 sums for output rows ``rows`` and activation rows ``ms`` (index tiles that
    broadcast to acc's shape, in either orientation) into y (+ bias); with SPLIT_K > 1 into out[split], and the
    last slice of the block to finish adds all slices up in slice order (unrolled: their loads are all in flight
    at once) into y. Elements past N or M are not stored."""
    out_mask = (rows < N) & (ms < M)
    if SPLIT_K > 1:
        tl.store(out_ptr + split * stride_osplit + ms * stride_om + rows, acc, mask=out_mask)
        if _last_slice_to_finish(counts_ptr):
            total = tl.zeros_like(acc)
            for other in tl.static_range(SPLIT_K):
                total += tl.load(out_ptr + other * stride_osplit + ms * stride_om + rows, mask=out_mask, other=0.0,
                                 cache_modifier=".cg")  # fmt: skip
            if HAS_BIAS:
                total += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
            tl.store(y_ptr + ms * stride_ym + rows, total.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + ms * stride_ym + rows, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.constexpr_function
def code_magic(dtype):
    """Bits of the 16-bit float whose last mantissa bit is 1 (128 in bf16, 1024 in fp16): or-ing a code Q into its
    low bits gives the float OFFSET + Q exactly."""
    return 0x4300 if dtype == tl.bfloat16 else 0x6400


@triton.constexpr_function
def code_offset(dtype):
    """OFFSET, the value of code_magic(dtype) as a float: what the dots' codes carry on top of Q."""
    return 128.0 if dtype == tl.bfloat16 else 1024.0


@triton.constexpr_function
def pair_unpack_asm(shift, bits, magic):
    """PTX for two codes at once: the 32-bit register holding two 16-bit halves of a word, shifted by ``shift``,
    keeps each half's low field and sets the magic bits (one lop3): two 16-bit floats OFFSET + Q."""
    mask = ((1 << bits) - 1) * 0x10001
    magic2 = magic * 0x10001
    if shift == 0:
        return f"lop3.b32 $0, $1, {mask}, {magic2}, 0xEA;"
    return f"{{ .reg .b32 t; shr.u32 t, $1, {shift}; lop3.b32 $0, t, {mask}, {magic2}, 0xEA; }}"


@triton.jit
def _codes_in_halves(halves, A: tl.constexpr, BITS: tl.constexpr, DTYPE: tl.constexpr, ASM: tl.constexpr):
    """OFFSET + Q as 16-bit floats for the field at bits A · BITS of each 16-bit half: elementwise, so the tile
    keeps the tensor cores' register-operand layout it was loaded in (pairs of halves = one packed word)."""
    MAGIC: tl.constexpr = code_magic(DTYPE)
    if ASM:
        return tl.inline_asm_elementwise(pair_unpack_asm(A * BITS, BITS, MAGIC), "=r,r", [halves], dtype=tl.int16,
                                         is_pure=True, pack=2).to(DTYPE, bitcast=True)  # fmt: skip
    else:
        return (((halves >> (A * BITS)) & ((1 << BITS) - 1)) | MAGIC).to(tl.int16).to(DTYPE, bitcast=True)


@triton.jit
def mma_activations_kernel(x_ptr, t_ptr, xp_ptr, xsum_ptr, counts_ptr, K, n_groups, stride_xm, stride_pm,
                           stride_sum, n_counts, BITS: tl.constexpr, GROUP: tl.constexpr, GROUPS: tl.constexpr,
                           COUNT_BLOCK: tl.constexpr):  # fmt: skip
    """For sinq_mma_kernel: x' = t ⊙ x rounded to x's dtype, with each group's columns reordered into the order of
    its dots (dot a, then the 16-bit halves i = 2 f + h of the group's words f), and xsum[m, g] = Σ_group x' in
    fp32. Half h of word f holds code positions p = h · 16/BITS + a (a = 0..16/BITS − 1), and position p of word f
    is column (f // BITS) · 32 + p · BITS + f mod BITS of the group (layout v2). Grid (M, groups / GROUPS).
    The first program also zeroes the n_counts split-K counters of the product that follows (no memset launch)."""
    PER_HALF: tl.constexpr = 16 // BITS
    HPG: tl.constexpr = GROUP * BITS // 16  # 16-bit halves per row and group: the depth of each dot
    m = tl.program_id(0)
    g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)[:, None, None]
    a = tl.arange(0, PER_HALF)[None, :, None]
    i = tl.arange(0, HPG)[None, None, :]
    f = i // 2
    col = g * GROUP + (f // BITS) * 32 + (a + (i % 2) * PER_HALF) * BITS + f % BITS
    ok = (g < n_groups) & (col < K)
    xv = tl.load(x_ptr + m * stride_xm + col, mask=ok, other=0.0).to(tl.float32)
    tv = tl.load(t_ptr + col, mask=ok, other=0.0).to(tl.float32)
    xt = (xv * tv).to(xp_ptr.dtype.element_ty)
    tl.store(xp_ptr + m * stride_pm + g * GROUP + a * HPG + i, xt, mask=g < n_groups)
    xsum = tl.sum(tl.sum(xt.to(tl.float32), axis=2), axis=1)  # [GROUPS]
    gs = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    tl.store(xsum_ptr + m * stride_sum + gs, xsum, mask=gs < n_groups)
    if m + tl.program_id(1) == 0:
        _zero_counts(counts_ptr, n_counts, COUNT_BLOCK)


@triton.jit
def sinq_mma_kernel(
    xp_ptr, xsum_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, counts_ptr,
    M, N, n_groups, stride_pm, stride_sum, stride_qn, stride_sn, stride_om, stride_osplit, stride_ym,
    groups_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, ASM: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Tensor-core product with the weight codes as the register operand: out[m, n] over one K slice (whole
    groups); grid (N/BN, SPLIT_K, M/BM). x' and xsum come from mma_activations_kernel.

    The packed words are read as 16-bit halves: a [BLOCK_N, HPG] tile per group, loaded straight into the layout
    of the wgmma register operand (a thread's pair of halves is one packed word). For each field a of the halves,
    one lop3 per pair gives OFFSET + Q as 16-bit floats, exactly, and one dot with x' columns [a · HPG, (a + 1) ·
    HPG) of the group accumulates D = Σ (OFFSET + Q) x' in fp32; no element is scaled. The group's scale and
    zero-point are applied to the [BLOCK_N, BLOCK_M] result, acc += s · D − s · (z + OFFSET) · xsum, which is
    s · Σ (Q − z) x'. Rows past N and activation rows past M are clamped for loads and not stored. With SPLIT_K >
    1 (grid dimension 1), each program writes its fp32 sums to out[split] and the last slice of a block to finish
    adds them up in slice order into y (counters zeroed by the activation pass), as the GEMV does.
    """
    PER_HALF: tl.constexpr = 16 // BITS
    HPG: tl.constexpr = GROUP * BITS // 16
    DTYPE: tl.constexpr = xp_ptr.dtype.element_ty
    split = tl.program_id(1)
    first = split * groups_per_split
    last = tl.minimum(first + groups_per_split, n_groups)
    rows = tl.minimum(tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
    ms = tl.minimum(tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M), M - 1)
    i = tl.arange(0, HPG)[None, :]
    halves_ptr = q_ptr.to(tl.pointer_type(tl.int16)) + rows.to(tl.int64)[:, None] * (2 * stride_qn) + i
    xp_rows = xp_ptr + ms[:, None] * stride_pm + i
    sz_rows = rows * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    # A step covers GROUPS_PER_STEP groups, each its own load (more than one measured slower on an H100). Groups
    # past the slice re-read its last group and count zero (scale 0).
    for g0 in tl.range(first, last, GROUPS_PER_STEP, num_stages=NUM_STAGES):
        for gi in tl.static_range(GROUPS_PER_STEP):
            g = tl.minimum(g0 + gi, last - 1)
            halves = tl.load(halves_ptr + g * HPG)  # [BN, HPG] int16
            s = tl.load(s_ptr + sz_rows + g).to(tl.float32)
            s = tl.where(g0 + gi < last, s, 0.0)
            z = tl.load(z_ptr + sz_rows + g).to(tl.float32)
            xsum = tl.load(xsum_ptr + ms * stride_sum + g)
            d = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for a in tl.static_range(PER_HALF):
                w = _codes_in_halves(halves, a, BITS, DTYPE, ASM)  # [BN, HPG]: OFFSET + Q
                xt = tl.load(xp_rows + g * GROUP + a * HPG)  # [BM, HPG]
                d = tl.dot(w, tl.trans(xt), d)
            acc += s[:, None] * d
            acc -= (s * (z + code_offset(DTYPE)))[:, None] * xsum[None, :]
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    ms = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    _store_sums(acc, rows, ms, split, N, M, bias_ptr, out_ptr, y_ptr, counts_ptr, stride_om, stride_osplit, stride_ym,
                HAS_BIAS, SPLIT_K)  # fmt: skip


@triton.jit
def tile_activations_kernel(x_ptr, t_ptr, xp_ptr, counts_ptr, K, stride_xm, stride_pm, n_counts,
                            BLOCK: tl.constexpr, COUNT_BLOCK: tl.constexpr):  # fmt: skip
    """For sinq_tile_kernel: x' = t ⊙ x rounded to x's dtype, in column order; grid (M, K / BLOCK). The first
    program also zeroes the n_counts split-K counters of the product that follows (no memset launch)."""
    m = tl.program_id(0)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    xv = tl.load(x_ptr + m * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
    tv = tl.load(t_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    tl.store(xp_ptr + m * stride_pm + k, (xv * tv).to(xp_ptr.dtype.element_ty), mask=k < K)
    if m + tl.program_id(1) == 0:
        _zero_counts(counts_ptr, n_counts, COUNT_BLOCK)


@triton.jit
def sinq_tile_kernel(
    xp_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, counts_ptr,
    M, N, n_words, stride_pm, stride_qn, stride_sn, stride_om, stride_osplit, stride_ym, words_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, ASM: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Tensor-core product for many activation rows: y[m, n] (or out[split] over one K slice of whole steps);
    grid (M/BM, SPLIT_K, N/BN), activation blocks fastest so the programs sharing a weight tile run together.

    Not swapped: the activation tile x' (t ⊙ x from tile_activations_kernel) is the left operand, straight from
    its pipelined shared-memory copy, and the dequantized weight tile, transposed, the right one. A step loads
    BLOCK_W words per weight row, unpacks and scales every code as sinq_gemm_kernel does (_dequantized_tile: one
    lop3 and one fp32 fma per code, each 32-column chunk in column order), and the tile goes through shared memory to the
    tensor cores. The launcher guarantees whole steps (no masks on the K axis). Rows past N and activation rows
    past M are clamped for loads and not stored. With SPLIT_K > 1 the last slice of a block to finish adds the
    slices' fp32 sums in slice order (counters zeroed by the activation pass).
    """
    PER: tl.constexpr = 32 // BITS
    WPG: tl.constexpr = GROUP // PER
    BLOCK_K: tl.constexpr = BLOCK_W * PER
    GROUPS: tl.constexpr = BLOCK_W // WPG
    split = tl.program_id(1)
    first = split * words_per_split
    last = tl.minimum(first + words_per_split, n_words)
    ms = tl.minimum(tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), M - 1)[:, None]
    rows = tl.minimum(tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)[:, None]
    q_rows = q_ptr + rows.to(tl.int64) * stride_qn
    sz_rows = rows * stride_sn
    x_rows = xp_ptr + ms * stride_pm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for w0 in tl.range(first, last, BLOCK_W, num_stages=NUM_STAGES):
        words = tl.load(q_rows + w0 + tl.arange(0, BLOCK_W)[None, :])  # [BN, BW]
        g = w0 // WPG + tl.arange(0, GROUPS)[None, :]
        s = tl.load(s_ptr + sz_rows + g).to(tl.float32)
        z = tl.load(z_ptr + sz_rows + g).to(tl.float32)
        w = _dequantized_tile(words, s, z, BITS, GROUPS, WPG, xp_ptr.dtype.element_ty, ASM)  # [BN, BK]
        xv = tl.load(x_rows + w0 * PER + tl.arange(0, BLOCK_K)[None, :])  # [BM, BK]
        acc = tl.dot(xv, tl.trans(w), acc)
    ms = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    rows = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    _store_sums(acc, rows, ms, split, N, M, bias_ptr, out_ptr, y_ptr, counts_ptr, stride_om, stride_osplit, stride_ym,
                HAS_BIAS, SPLIT_K)  # fmt: skip
