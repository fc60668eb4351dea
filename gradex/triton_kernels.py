"""Triton kernels of the two GE ops, registered as ``torch.ops.gradex_triton.*``.

Same schemas and contract as the compiled ops (csrc/gradex.cpp): ``reduce_stage`` leaves one
partial channel sum and one partial maximum per program (no zeroed buffers, no atomics: one
launch, the same S on every run), and ``extrapolate_chain`` runs everything after the reductions
(local or global stage weighting, the upsample-multiply steps, the resize, the normalisation with
constant maps to zeros) in one program per sample. They run on CUDA tensors, and on CPU tensors
when the environment sets TRITON_INTERPRET=1 before this module is imported (the tests do).

Compiled kernels must hold two rules the interpreter does not check (tests/test_triton_compile.py
compiles every kernel for sm_80 and sm_90 to keep them): a module global read inside a kernel must
be a ``tl.constexpr``, and an integer argument may arrive as a constant (Triton specialises ints
equal to 1), so kernels convert ints with ``tl.cast``, never with a method of the argument.

Importing this module imports triton; gradex imports it only when the backend is first used.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import chain_autograd, reference
from ._ext import (
    check_chain_args,
    check_reduce_stage_args,
    extrapolate_chain_fake,
    reduce_stage_fake,
)

# gradex.reference's constants, as the kernels read them.
CONSTANT_RTOL: tl.constexpr = tl.constexpr(reference.CONSTANT_RTOL)
LOCAL_FLOOR: tl.constexpr = tl.constexpr(reference.LOCAL_FLOOR)
MIN_FLOOR: tl.constexpr = tl.constexpr(reference.MIN_FLOOR)
FLOAT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)


def _on_device(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not on whichever is current."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@triton.jit
def _reduce_stage_kernel(
    a_ptr,
    sums_ptr,
    maxima_ptr,
    B,
    C,
    W,
    P,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    splits,
    chunks,
    per_split,
    per_chunk,
    TRANSFORM: tl.constexpr,
    FLAT_PLANE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # One program: the positions of one chunk of one sample, the channels of one split. It
    # writes its partial sums (every position of its chunk) and its partial maximum.
    pid = tl.program_id(0).to(tl.int64)
    chunk = pid % chunks
    split = (pid // chunks) % splits
    b = pid // (chunks * splits)
    p_begin = chunk * per_chunk
    p_end = tl.minimum(p_begin + per_chunk, P)
    c_begin = split * per_split
    c_end = tl.minimum(c_begin + per_split, C)
    sample = a_ptr + b * stride_b
    out = sums_ptr + (split * B + b) * P

    top = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)  # M is clamped at 0 (dead anyway)
    nans = tl.zeros([BLOCK_P], dtype=tl.int32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        p_mask = p < p_end
        if FLAT_PLANE:  # noqa: SIM108  (a constexpr branch: the other side is never compiled)
            offsets_p = p * stride_w
        else:
            offsets_p = (p // W) * stride_h + (p % W) * stride_w
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for c in range(c_begin, c_end, BLOCK_C):
            cs = c + tl.arange(0, BLOCK_C).to(tl.int64)
            mask = (cs < c_end)[:, None] & p_mask[None, :]
            ptrs = sample + cs[:, None] * stride_c + offsets_p[None, :]
            v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            if TRANSFORM == 1:
                v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, as torch.clamp_min does
            elif TRANSFORM == 2:
                v = tl.abs(v)
            acc += v
            top = tl.maximum(top, v)
        s = tl.sum(acc, axis=0)
        tl.store(out + p, s, mask=p_mask)
        # A NaN anywhere in the stage shows in S; the max need not propagate it.
        nans += tl.where(p_mask & (s != s), 1, 0)
    block_max = tl.max(tl.max(top, axis=1), axis=0)
    result = tl.where(tl.sum(nans, axis=0) > 0, float("nan"), block_max)
    tl.store(maxima_ptr + b * (splits * chunks) + split * chunks + chunk, result)


@torch.library.custom_op("gradex_triton::reduce_stage", mutates_args=())
def reduce_stage(
    activation: torch.Tensor, transform: int, splits: int, chunks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    check_reduce_stage_args(activation, transform, splits, chunks, "gradex_triton::reduce_stage")
    batch, channels, height, width = activation.shape
    positions = height * width
    options = {"dtype": torch.float32, "device": activation.device}
    sums = torch.empty(splits, batch, 1, height, width, **options)
    maxima = torch.empty(batch, splits * chunks, **options)
    programs = batch * splits * chunks
    if programs == 0:
        return sums, maxima
    if programs >= 2**31:
        raise ValueError(
            f"gradex_triton::reduce_stage: batch × splits × chunks must be below 2^31, got "
            f"{programs}"
        )
    stride_b, stride_c, stride_h, stride_w = activation.stride()
    per_split = triton.cdiv(channels, splits)
    per_chunk = triton.cdiv(positions, chunks)
    if stride_c == 1 and channels > 1:  # channels_last: a program reads whole runs of channels
        block_c = min(64, _next_power_of_two(per_split))
        block_p = max(1, 2048 // block_c)
    else:  # NCHW: a program reads runs of positions, several channels at a time
        block_p = min(256, max(16, _next_power_of_two(per_chunk)))
        block_c = max(1, 2048 // block_p)
    with _on_device(activation):
        _reduce_stage_kernel[(programs,)](
            activation,
            sums,
            maxima,
            batch,
            channels,
            width,
            positions,
            stride_b,
            stride_c,
            stride_h,
            stride_w,
            splits,
            chunks,
            per_split,
            per_chunk,
            TRANSFORM=transform,
            FLAT_PLANE=height == 1 or stride_h == width * stride_w,
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=8 if block_c * block_p >= 2048 else 4,
        )
    return sums, maxima


reduce_stage.register_fake(reduce_stage_fake)


@triton.jit
def _bilinear_tap(dst, in_size, out_size):
    # As ATen computes F.interpolate(bilinear, align_corners=False): float scale, source
    # index clamped at 0, upper neighbour clamped at the edge.
    scale = tl.div_rn(tl.cast(in_size, tl.float32), tl.cast(out_size, tl.float32))
    src = scale * (tl.cast(dst, tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    lo = tl.cast(src, tl.int64)
    hi = tl.where(lo < in_size - 1, lo + 1, lo)
    w_hi = src - tl.cast(lo, tl.float32)
    return lo, hi, 1.0 - w_hi, w_hi


@triton.jit
def _bilinear(src, src_h, src_w, y, x, out_h, out_w, mask):
    # The bilinear value of the (src_h, src_w) map at output points (y, x), in ATen's order.
    y_lo, y_hi, wy_lo, wy_hi = _bilinear_tap(y, src_h, out_h)
    x_lo, x_hi, wx_lo, wx_hi = _bilinear_tap(x, src_w, out_w)
    row_lo = src + y_lo * src_w
    row_hi = src + y_hi * src_w
    top = wx_lo * tl.load(row_lo + x_lo, mask=mask, other=0.0) + wx_hi * tl.load(
        row_lo + x_hi, mask=mask, other=0.0
    )
    bottom = wx_lo * tl.load(row_hi + x_lo, mask=mask, other=0.0) + wx_hi * tl.load(
        row_hi + x_hi, mask=mask, other=0.0
    )
    return wy_lo * top + wy_hi * bottom


@triton.jit
def _pow2_shift(magnitude):
    # gradex.reference.pow2_shift: from the exponent bits of a non-negative float32.
    biased = (magnitude.to(tl.int32, bitcast=True) >> 23) & 0xFF
    return tl.minimum(tl.maximum(127 - biased, -126), 127)


@triton.jit
def _pow2(shift):
    # 2^shift, exactly, for shift in [-126, 127].
    return ((shift + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _channel_sum(sums, parts, B, P, b, p, mask):
    # S at positions p of sample b: the partial sums added.
    s = tl.load(sums + b * P + p, mask=mask, other=0.0)
    for n in range(1, parts):
        s += tl.load(sums + (n * B + b) * P + p, mask=mask, other=0.0)
    return s


@triton.jit
def _extrapolate_chain_kernel(
    heatmap,
    h0,
    w0,
    sums,
    parts,
    maxima,
    counts,
    heights,
    widths,
    B,
    ny,
    nx,
    out_ptr,
    Ho,
    Wo,
    scratch,
    largest,
    K: tl.constexpr,
    LOCAL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    FINAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per sample walks the whole chain; phases are separated by barriers, which also
    # make one phase's writes to the scratch maps visible to the next. FINAL: 0, the shallowest
    # stage wrote the output; 1, copy the map; 2, resize it.
    b = tl.program_id(0).to(tl.int64)
    buffers = scratch + b * (2 * largest + ny * nx)
    pooled = buffers + 2 * largest
    out = out_ptr + b * Ho * Wo
    offsets = tl.arange(0, BLOCK).to(tl.int64)

    # The heatmap is read times a power of two that brings its largest finite magnitude near 1
    # (gradex.reference.pow2_shift: overflow); the raw map gets it back at the end.
    h_magnitude = tl.zeros([BLOCK], dtype=tl.float32)
    for i0 in range(0, h0 * w0, BLOCK):
        i = i0 + offsets
        v = tl.abs(tl.load(heatmap + b * h0 * w0 + i, mask=i < h0 * w0, other=0.0))
        h_magnitude = tl.maximum(h_magnitude, tl.where(v <= FLOAT_MAX, v, 0.0))  # NaN, Inf: skip
    g_shift = _pow2_shift(tl.max(h_magnitude, axis=0))
    g_scale = _pow2(g_shift)

    for k in tl.static_range(K - 1, -1, -1):  # deepest first
        H = heights[k]
        W = widths[k]
        P = H * W
        if k == K - 1:
            g = heatmap + b * h0 * w0
            gh = h0
            gw = w0
        else:
            g = buffers + ((k + 1) % 2) * largest
            gh = heights[k + 1]
            gw = widths[k + 1]
        dst = buffers + (k % 2) * largest
        if k == 0 and FINAL == 0:  # both constexpr: decided when the kernel is compiled
            dst = out

        # M from its partial maxima; a NaN anywhere marks the stage dead.
        top = tl.zeros([BLOCK], dtype=tl.float32)
        nans = tl.zeros([BLOCK], dtype=tl.int32)
        for i0 in range(0, counts[k], BLOCK):
            i = i0 + offsets
            v = tl.load(maxima[k] + b * counts[k] + i, mask=i < counts[k], other=0.0)
            nans += tl.where(v != v, 1, 0)
            top = tl.maximum(top, tl.where(v != v, 0.0, v))
        sample_max = tl.max(top, axis=0)
        live = (tl.sum(nans, axis=0) == 0) & (sample_max > 0.0) & (sample_max <= FLOAT_MAX)
        # S and M times a power of two from M (overflow); 1 on a dead stage.
        scale = tl.where(live, _pow2(_pow2_shift(sample_max)), 1.0)

        floor = 0.0
        if LOCAL:
            # Each window's mean of S, summed in float64 (exact for a constant S).
            largest_mean = tl.zeros([BLOCK], dtype=tl.float32) - float("inf")
            for w in range(0, ny * nx):
                wy = w // nx
                wx = w % nx
                y0 = (wy * H) // ny
                y1 = ((wy + 1) * H + ny - 1) // ny
                x0 = (wx * W) // nx
                x1 = ((wx + 1) * W + nx - 1) // nx
                width = x1 - x0
                count = (y1 - y0) * width
                acc = tl.zeros([BLOCK], dtype=tl.float64)
                for i0 in range(0, count, BLOCK):
                    i = i0 + offsets
                    mask = i < count
                    p = (y0 + i // width) * W + x0 + i % width
                    s = _channel_sum(sums[k], parts[k], B, P, b, p, mask)
                    acc += tl.where(mask, s, 0.0).to(tl.float64)
                mean = (tl.sum(acc, axis=0) / tl.cast(count, tl.float64)).to(tl.float32) * scale
                tl.store(pooled + w, mean)
                largest_mean = tl.maximum(largest_mean, mean)
            floor = tl.maximum(tl.max(largest_mean, axis=0) * LOCAL_FLOOR, MIN_FLOOR)
            tl.debug_barrier()

        for p0 in range(0, P, BLOCK):
            p = p0 + offsets
            mask = p < P
            y = p // W
            x = p % W
            s = _channel_sum(sums[k], parts[k], B, P, b, p, mask) * scale
            if LOCAL:
                local_mean = _bilinear(pooled, ny, nx, y, x, H, W, mask)
                s = tl.div_rn(s, local_mean + floor)
            gv = _bilinear(g, gh, gw, y, x, H, W, mask)
            if k == K - 1:
                gv = gv * g_scale
            value = gv * s
            if not LOCAL:  # the local weighting divides by 1: M's scale no longer matters
                value = tl.div_rn(value, tl.where(live, sample_max * scale, 1.0))
            tl.store(dst + p, tl.where(live, value, 0.0), mask=mask)
        tl.debug_barrier()

    # The resize to the output size (or a copy), with the statistics.
    if K == 0:
        g = heatmap + b * h0 * w0
        gh = h0
        gw = w0
    else:
        g = buffers
        gh = heights[0]
        gw = widths[0]
    n = Ho * Wo
    lo = tl.full([BLOCK], float("inf"), dtype=tl.float32)
    hi = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float64)
    nans = tl.zeros([BLOCK], dtype=tl.int32)
    for i0 in range(0, n, BLOCK):
        i = i0 + offsets
        mask = i < n
        if FINAL == 0:
            v = tl.load(out + i, mask=mask, other=0.0)
        elif FINAL == 1:
            v = tl.load(g + i, mask=mask, other=0.0)
        else:
            v = _bilinear(g, gh, gw, i // Wo, i % Wo, Ho, Wo, mask)
        if K == 0:  # no stage applied the heatmap's scale
            v = v * g_scale
        if NORMALIZE == 0:  # the raw map: the heatmap's scale back, in two exact steps
            # half = trunc(-g_shift / 2), with shifts of non-negative ints only
            half = tl.where(g_shift >= 0, -(g_shift >> 1), (-g_shift) >> 1)
            v = v * _pow2(half) * _pow2(-g_shift - half)
        if FINAL != 0 or K == 0 or NORMALIZE == 0:
            tl.store(out + i, v, mask=mask)
        lo = tl.minimum(lo, tl.where(mask, v, float("inf")))
        hi = tl.maximum(hi, tl.where(mask, v, float("-inf")))
        total += tl.where(mask, v, 0.0).to(tl.float64)
        nans += tl.where(mask & (v != v), 1, 0)

    if NORMALIZE != 0:
        tl.debug_barrier()
        lo_all = tl.min(lo, axis=0)
        hi_all = tl.max(hi, axis=0)
        magnitude = tl.maximum(tl.abs(lo_all), tl.abs(hi_all))
        varying = (tl.sum(nans, axis=0) == 0) & (hi_all - lo_all > magnitude * CONSTANT_RTOL)
        varying = varying & (n > 1)
        if NORMALIZE == 1:
            shift = lo_all
            span = tl.where(varying, hi_all - lo_all, 1.0)
            mean = 0.0
            std = 1.0
        else:
            mean64 = tl.sum(total, axis=0) / tl.cast(n, tl.float64)
            squares = tl.zeros([BLOCK], dtype=tl.float64)
            for i0 in range(0, n, BLOCK):
                i = i0 + offsets
                mask = i < n
                d = tl.load(out + i, mask=mask, other=0.0).to(tl.float64) - mean64
                squares += tl.where(mask, d * d, 0.0)
            variance = tl.sum(squares, axis=0) / (tl.cast(n, tl.float64) - 1.0)
            mean = mean64.to(tl.float32)
            std = tl.where(varying, tl.sqrt(variance).to(tl.float32), 1.0)
            z_lo = tl.minimum(tl.maximum(tl.div_rn(lo_all - mean, std), -1.0), 1.0)
            z_hi = tl.minimum(tl.maximum(tl.div_rn(hi_all - mean, std), -1.0), 1.0)
            varying = varying & (z_hi > z_lo)
            shift = z_lo
            span = tl.where(varying, z_hi - z_lo, 1.0)
        for i0 in range(0, n, BLOCK):
            i = i0 + offsets
            mask = i < n
            v = tl.load(out + i, mask=mask, other=0.0)
            if NORMALIZE == 2:
                v = tl.minimum(tl.maximum(tl.div_rn(v - mean, std), -1.0), 1.0)
            tl.store(out + i, tl.where(varying, tl.div_rn(v - shift, span), 0.0), mask=mask)


@torch.library.custom_op("gradex_triton::extrapolate_chain", mutates_args=())
def extrapolate_chain(
    heatmap: torch.Tensor,
    sums: list[torch.Tensor],
    maxima: list[torch.Tensor],
    windows: list[int],
    output_size: list[int],
    local: bool,
    normalize: int,
) -> torch.Tensor:
    check_chain_args(
        heatmap, sums, maxima, windows, output_size, normalize, "gradex_triton::extrapolate_chain"
    )
    heatmap = heatmap.contiguous()
    sums = [s.contiguous() for s in sums]
    maxima = [m.contiguous() for m in maxima]
    batch, _, h0, w0 = heatmap.shape
    height, width = output_size
    out = torch.empty(batch, 1, height, width, dtype=torch.float32, device=heatmap.device)
    if batch == 0:
        return out
    if batch >= 2**31:
        raise ValueError(f"gradex_triton::extrapolate_chain: batch must be below 2^31, got {batch}")
    largest = max((s.shape[-2] * s.shape[-1] for s in sums), default=0)
    ny, nx = windows
    scratch = torch.empty(batch * (2 * largest + ny * nx), dtype=torch.float32, device=out.device)
    if sums and tuple(sums[0].shape[-2:]) == (height, width):
        final = 0
    elif tuple((sums[0] if sums else heatmap).shape[-2:]) == (height, width):
        final = 1
    else:
        final = 2
    with _on_device(heatmap):
        _extrapolate_chain_kernel[(batch,)](
            heatmap,
            h0,
            w0,
            tuple(sums),
            tuple(s.shape[0] for s in sums),
            tuple(maxima),
            tuple(m.shape[1] for m in maxima),
            tuple(s.shape[-2] for s in sums),
            tuple(s.shape[-1] for s in sums),
            batch,
            ny,
            nx,
            out,
            height,
            width,
            scratch,
            largest,
            K=len(sums),
            LOCAL=local,
            NORMALIZE=normalize,
            FINAL=final,
            BLOCK=1024,
            num_warps=8,
        )
    return out


extrapolate_chain.register_fake(extrapolate_chain_fake)
chain_autograd.register("gradex_triton::extrapolate_chain")
