"""Triton kernel for the Sinkhorn normalisation of SPEC §3: all steps of one tile in one program, one launch per call.

The PyTorch reference (``sinq_ao.sinkhorn``) makes ~8 full passes over the tiles per step plus many tiny launches
on the factor vectors. Here each program owns one R x C tile and runs every step itself: per step it streams the
tile once in BLOCK_R x BLOCK_C row blocks, computing A = tile · exp(−u)[:, None] · exp(−v)[None, :] and

- each row's unbiased std exactly (the whole row is in registers: mean first, then squared deviations);
- each column's running mean and sum of squared deviations (M2), one row block at a time, merged by Chan's
  parallel formula (no E[x²] − E[x]² cancellation).

Per-tile state that does not fit in registers lives in global memory: u (R) and the step's row stds (R), both
double-buffered (read from the previous step's half, written to this step's half), and the best row factors,
kept directly in the ``row_factors`` output. v, the best v and the column statistics (C each) stay in registers.
A step's update of u needs that step's imbalance, known only after the whole tile has been read, so it is applied
when the next step reads u back (and the last step's best state is recorded by a short epilogue).

A program stops at its tile's first rise of the imbalance: from there on the reference changes nothing (u and v
stay, so the imbalance stays above the best), so the result is that of all steps. Tiles of random and of
outlier-column weights rise after 3-7 steps on average, so most tiles are read far fewer than ``steps`` times.
"""

import torch
import triton
import triton.language as tl

MAX_TILE_COLUMNS = 1024  # v and the column statistics live in registers; wider tiles would spill
_BLOCK_ELEMENTS = 8192  # elements of a row block (BLOCK_R x BLOCK_C)


@triton.jit
def _log_step(std, tau, STD_LO: tl.constexpr, STD_HI: tl.constexpr, STEP_LO: tl.constexpr, STEP_HI: tl.constexpr):
    """log(clamp(clamp(std, STD_LO, STD_HI) / tau, STEP_LO, STEP_HI)), as sinq_ao.sinkhorn._log_step."""
    ratio = tl.minimum(tl.maximum(std, STD_LO), STD_HI) / tau
    return tl.log(tl.minimum(tl.maximum(ratio, STEP_LO), STEP_HI))


@triton.jit
def sinkhorn_kernel(
    tiles_ptr, work_ptr, row_factors_ptr, col_factors_ptr,
    n_groups, rows, cols, stride_b, stride_g, stride_r, stride_c, steps,
    STD_LO: tl.constexpr, STD_HI: tl.constexpr, STEP_LO: tl.constexpr, STEP_HI: tl.constexpr,
    LOG_LO: tl.constexpr, LOG_HI: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Row and column factors of tile (b, g) = divmod(program, n_groups) of a (B, G, R, C) view; grid (B * G,).

    ``work`` holds 4 x rows floats per tile: u for even and odd steps, then row stds for even and odd steps.
    """
    tile = tl.program_id(0)
    tile_ptr = tiles_ptr + (tile // n_groups).to(tl.int64) * stride_b + (tile % n_groups).to(tl.int64) * stride_g
    work = work_ptr + tile.to(tl.int64) * 4 * rows
    best_row_ptr = row_factors_ptr + tile.to(tl.int64) * rows  # exp(best u), written whenever a step improves
    r_offsets = tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    col_in = c < cols
    offsets = r_offsets[:, None] * stride_r + c[None, :] * stride_c
    row_dof = tl.maximum(cols - 1, 1).to(tl.float32)  # unbiased; a single element has std 0
    col_dof = tl.maximum(rows - 1, 1).to(tl.float32)

    v = tl.zeros([BLOCK_C], dtype=tl.float32)
    best_v = v
    tau = 1.0  # set by the first step from the stds of the original tile
    best_imbalance = 0.0
    improved = True  # the initial best state u = v = 0 is recorded by the first step
    frozen = False
    step = 0
    while (step < steps) & (not frozen):
        u_prev = work + ((step + 1) % 2) * rows
        std_prev = work + (2 + (step + 1) % 2) * rows
        u_here = work + (step % 2) * rows
        std_here = work + (2 + step % 2) * rows
        neg_ev = tl.exp(-v)
        row_low, row_high = float("inf"), 0.0
        col_mean = tl.zeros([BLOCK_C], dtype=tl.float32)
        col_m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        block_ptr = tile_ptr
        for r0 in tl.range(0, rows, BLOCK_R, num_stages=NUM_STAGES):
            r = r0 + r_offsets
            row_in = r < rows
            # u of this step: the previous step's u updated by its row stds (0 at the first step). Not frozen
            # here, so the previous step improved: its u is the best so far.
            u = tl.load(u_prev + r, mask=row_in & (tl.zeros_like(r) + step > 0), other=0.0)
            tl.store(best_row_ptr + r, tl.exp(u), mask=row_in)
            std = tl.load(std_prev + r, mask=row_in & (tl.zeros_like(r) + step > 0), other=1.0)
            stepped = tl.minimum(tl.maximum(u + _log_step(std, tau, STD_LO, STD_HI, STEP_LO, STEP_HI), LOG_LO), LOG_HI)
            u = tl.where(step > 0, stepped, u)
            tl.store(u_here + r, u, mask=row_in)

            inside = row_in[:, None] & col_in[None, :]
            x = tl.load(block_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            block_ptr += BLOCK_R * stride_r
            # The reference divides by exp(u) and exp(v); multiplying by their reciprocals differs by an ulp.
            a = x * tl.exp(-u)[:, None] * neg_ev[None, :]  # 0 outside the tile

            row_mean = tl.sum(a, axis=1) / cols
            deviation = tl.where(inside, a - row_mean[:, None], 0.0)
            row_std = tl.sqrt(tl.sum(deviation * deviation, axis=1) / row_dof)
            tl.store(std_here + r, row_std, mask=row_in)
            row_low = tl.minimum(row_low, tl.min(tl.where(row_in, row_std, float("inf")), axis=0))
            row_high = tl.maximum(row_high, tl.max(tl.where(row_in, row_std, 0.0), axis=0))

            # Chan et al.: merge this block's column mean and M2 into those of the r0 rows before it.
            seen = tl.cast(r0, tl.float32)
            count = tl.minimum(rows - r0, BLOCK_R).to(tl.float32)
            total = seen + count
            block_mean = tl.sum(a, axis=0) / count
            deviation = tl.where(inside, a - block_mean[None, :], 0.0)
            delta = block_mean - col_mean
            col_mean += delta * (count / total)
            col_m2 += tl.sum(deviation * deviation, axis=0) + delta * delta * (seen * count / total)

        col_std = tl.sqrt(col_m2 / col_dof)
        low = tl.minimum(row_low, tl.min(tl.where(col_in, col_std, float("inf")), axis=0))
        high = tl.maximum(row_high, tl.max(tl.where(col_in, col_std, 0.0), axis=0))
        current = high / tl.maximum(low, 1e-12)
        # The first step sees the original tile: it sets tau and the initial best imbalance (and so improves on it).
        tau = tl.where(step == 0, tl.minimum(tl.maximum(low, STD_LO), STD_HI) + 1e-6, tau)
        best_imbalance = tl.where(step == 0, current, best_imbalance)
        improved = current <= best_imbalance  # ties keep the later state
        frozen = not improved  # the first rise freezes the state for good: stop (see the module docstring)
        best_imbalance = tl.where(improved, current, best_imbalance)
        best_v = tl.where(improved, v, best_v)
        v = tl.minimum(tl.maximum(v + _log_step(col_std, tau, STD_LO, STD_HI, STEP_LO, STEP_HI), LOG_LO), LOG_HI)
        step += 1  # (if frozen, the loop ends here and the updated v is never used)
        tl.debug_barrier()  # this step's u and row stds, written by any thread, are read back by the next step

    # Ran all steps without a rise: the last step's state is the best and is recorded here (no steps: u = 0).
    u_last = work + ((step + 1) % 2) * rows
    rows_to_record = tl.where(improved, rows, 0)  # a row limit, not a scalar mask: the interpreter mishandles those
    for r0 in range(0, rows_to_record, BLOCK_R):
        r = r0 + r_offsets
        u = tl.load(u_last + r, mask=(r < rows) & (tl.zeros_like(r) + step > 0), other=0.0)
        tl.store(best_row_ptr + r, tl.exp(u), mask=r < rows)
    tl.store(col_factors_ptr + tile.to(tl.int64) * cols + c, tl.exp(best_v), mask=col_in)


def sinkhorn_factors(
    tiles: torch.Tensor,
    steps: int,
    std_clamp: tuple[float, float],
    step_clamp: tuple[float, float],
    log_clip: tuple[float, float],
    *,
    block_rows: int | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row factors exp(u*) (..., R) and column factors exp(v*) (..., C), float32, of each tile of ``tiles`` (..., R, C).

    ``tiles`` may be any float dtype and any strides (the transposed views ``quantize_weight`` makes are read in
    place; leading dims that no stride can flatten are copied). The clamps are ``sinq_ao.sinkhorn``'s (passed in:
    the kernels do not import the math). ``block_rows`` (a power of two), ``num_warps`` and ``num_stages`` (the
    depth of the software pipeline over row blocks) are tuning knobs; the defaults (128 x 64 blocks for 64-column
    tiles, 4 warps, 3 stages) were the fastest of 12 on every Llama-3-8B weight shape on an H100, 2.6-3.0x faster
    than 64-row blocks with 8 warps and 2 stages (``benchmarks/gpu_speed.py quant-time --sweep``).
    """
    rows, cols = tiles.shape[-2:]
    if cols > MAX_TILE_COLUMNS:
        raise ValueError(f"the Sinkhorn kernel handles tiles up to {MAX_TILE_COLUMNS} columns, got {cols}")
    batch = tiles.shape[:-2]
    tiles = tiles.reshape(-1, *tiles.shape[-3:]) if tiles.dim() >= 3 else tiles.reshape(1, 1, rows, cols)
    n_tiles = tiles.shape[0] * tiles.shape[1]
    row_factors = torch.empty(n_tiles, rows, device=tiles.device, dtype=torch.float32)
    col_factors = torch.empty(n_tiles, cols, device=tiles.device, dtype=torch.float32)
    work = torch.empty(n_tiles, 4, rows, device=tiles.device, dtype=torch.float32)
    block_cols = triton.next_power_of_2(cols)
    block_rows = block_rows or min(max(1, _BLOCK_ELEMENTS // block_cols), triton.next_power_of_2(rows))
    sinkhorn_kernel[(n_tiles,)](
        tiles, work, row_factors, col_factors, tiles.shape[1], rows, cols, *tiles.stride(), steps,
        STD_LO=std_clamp[0], STD_HI=std_clamp[1], STEP_LO=step_clamp[0], STEP_HI=step_clamp[1],
        LOG_LO=log_clip[0], LOG_HI=log_clip[1], BLOCK_R=block_rows, BLOCK_C=block_cols, NUM_STAGES=num_stages,
        num_warps=num_warps,
    )  # fmt: skip
    return row_factors.view(*batch, rows), col_factors.view(*batch, cols)
