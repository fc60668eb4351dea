"""Triton kernels of the three GE primitives, registered as ``torch.ops.gradex_triton.*``.

Same contract as the compiled ops (csrc/gradex.cpp): S = Σ_c t(A) in fp32, M = max(0, max t(A))
per sample (NaN where S holds a NaN), one bilinear-upsample × S / M step with dead stages zeroed,
and the per-sample normalisation. They run on CUDA tensors, and on CPU tensors when the
environment sets TRITON_INTERPRET=1 before this module is imported (the tests do).

Importing this module imports triton; gradex imports it only when the backend is first used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._ext import normalize_maps_fake, reduce_stage_fake, upsample_multiply_fake

# The bit pattern of the canonical quiet NaN: as an int32 it is larger than that of any
# non-negative float (+Inf included), so atomic_max on the int view makes a NaN stick in M.
NAN_BITS = 0x7FC00000


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a small 'GPU', so that tests also exercise the channel split


@triton.jit
def _reduce_stage_kernel(
    a_ptr,
    s_ptr,
    m_bits_ptr,
    C,
    W,
    P,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    channels_per_split,
    TRANSFORM: tl.constexpr,
    FLAT_PLANE: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # One program: BLOCK_P positions of sample program_id(2), the channels of split program_id(1).
    b = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    p_mask = p < P
    if FLAT_PLANE:  # noqa: SIM108  (a constexpr branch: the other side is never compiled)
        offsets_p = p * stride_w
    else:
        offsets_p = (p // W) * stride_h + (p % W) * stride_w
    base = a_ptr + b * stride_b + offsets_p
    c_begin = tl.program_id(1).to(tl.int64) * channels_per_split
    c_end = tl.minimum(c_begin + channels_per_split, C)

    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    top = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)  # M is clamped at 0 (dead anyway)
    for c in range(c_begin, c_end, BLOCK_C):
        cs = c + tl.arange(0, BLOCK_C).to(tl.int64)
        mask = (cs < c_end)[:, None] & p_mask[None, :]
        v = tl.load(base[None, :] + cs[:, None] * stride_c, mask=mask, other=0.0).to(tl.float32)
        if TRANSFORM == 1:
            v = tl.where(v < 0.0, 0.0, v)  # keeps NaN, as torch.clamp_min does
        elif TRANSFORM == 2:
            v = tl.abs(v)
        acc += v
        top = tl.maximum(top, v)

    s = tl.sum(acc, axis=0)
    s_ptrs = s_ptr + b * P + p
    if SINGLE_SPLIT:
        tl.store(s_ptrs, s, mask=p_mask)
    else:
        tl.atomic_add(s_ptrs, s, mask=p_mask)
    # A NaN anywhere in the stage shows in S; the max need not propagate it.
    saw_nan = tl.sum(tl.where(p_mask & (s != s), 1, 0), axis=0) > 0
    block_max = tl.max(tl.max(top, axis=1), axis=0)
    bits = tl.where(saw_nan, NAN_BITS, block_max.to(tl.int32, bitcast=True))
    tl.atomic_max(m_bits_ptr + b, bits)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@torch.library.custom_op("gradex_triton::reduce_stage", mutates_args=())
def reduce_stage(activation: torch.Tensor, transform: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width = activation.shape
    positions = height * width
    sample_max_bits = torch.zeros(batch, dtype=torch.int32, device=activation.device)
    if batch == 0:
        empty = torch.empty(0, 1, height, width, dtype=torch.float32, device=activation.device)
        return empty, sample_max_bits.view(torch.float32)
    stride_b, stride_c, stride_h, stride_w = activation.stride()
    channels_inner = stride_c == 1 and channels > 1
    if channels_inner:  # channels_last: a program reads whole runs of channels
        block_c = min(64, _next_power_of_two(channels))
        block_p = max(1, 2048 // block_c)
    else:  # NCHW: a program reads runs of positions, several channels at a time
        block_p = min(256, max(16, _next_power_of_two(positions)))
        block_c = max(1, 2048 // block_p)
    tiles = triton.cdiv(positions, block_p)
    # Split channels until the grid holds about four programs per SM (7×7 and 14×14 planes
    # leave most of the GPU idle otherwise), keeping several channel blocks per program.
    wanted = 4 * _multiprocessors(activation.device)
    max_splits = max(1, channels // (2 * block_c))
    splits = min(max(1, triton.cdiv(wanted, tiles * batch)), max_splits)
    channels_per_split = triton.cdiv(channels, splits)
    splits = triton.cdiv(channels, channels_per_split)

    alloc = torch.empty if splits == 1 else torch.zeros
    channel_sum = alloc(batch, 1, height, width, dtype=torch.float32, device=activation.device)
    _reduce_stage_kernel[(tiles, splits, batch)](
        activation,
        channel_sum,
        sample_max_bits,
        channels,
        width,
        positions,
        stride_b,
        stride_c,
        stride_h,
        stride_w,
        channels_per_split,
        TRANSFORM=transform,
        FLAT_PLANE=height == 1 or stride_h == width * stride_w,
        SINGLE_SPLIT=splits == 1,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=8 if block_c * block_p >= 2048 else 4,
    )
    return channel_sum, sample_max_bits.view(torch.float32)


reduce_stage.register_fake(reduce_stage_fake)


@triton.jit
def _bilinear_tap(dst, in_size, out_size):
    # As ATen computes F.interpolate(bilinear, align_corners=False): float scale, source
    # index clamped at 0, upper neighbour clamped at the edge.
    scale = tl.div_rn(in_size.to(tl.float32), out_size.to(tl.float32))
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    lo = src.to(tl.int64)
    hi = tl.where(lo < in_size - 1, lo + 1, lo)
    w_hi = src - lo.to(tl.float32)
    return lo, hi, 1.0 - w_hi, w_hi


@triton.jit
def _upsample_multiply_kernel(g_ptr, s_ptr, m_ptr, out_ptr, total, h, w, H, W, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < total
    x = i % W
    y = (i // W) % H
    b = i // (H * W)
    m = tl.load(m_ptr + b, mask=mask, other=0.0)
    live = (m > 0.0) & (m <= 3.402823466e38)  # false for NaN and +Inf: a dead stage
    y_lo, y_hi, wy_lo, wy_hi = _bilinear_tap(y, h, H)
    x_lo, x_hi, wx_lo, wx_hi = _bilinear_tap(x, w, W)
    row_lo = g_ptr + (b * h + y_lo) * w
    row_hi = g_ptr + (b * h + y_hi) * w
    up = wy_lo * (
        wx_lo * tl.load(row_lo + x_lo, mask=mask, other=0.0)
        + wx_hi * tl.load(row_lo + x_hi, mask=mask, other=0.0)
    ) + wy_hi * (
        wx_lo * tl.load(row_hi + x_lo, mask=mask, other=0.0)
        + wx_hi * tl.load(row_hi + x_hi, mask=mask, other=0.0)
    )
    s = tl.load(s_ptr + i, mask=mask, other=0.0)
    safe_m = tl.where(live, m, 1.0)
    out = tl.where(live, tl.div_rn(up * s, safe_m), 0.0)
    tl.store(out_ptr + i, out, mask=mask)


@torch.library.custom_op("gradex_triton::upsample_multiply", mutates_args=())
def upsample_multiply(
    g: torch.Tensor, channel_sum: torch.Tensor, sample_max: torch.Tensor
) -> torch.Tensor:
    g, channel_sum, sample_max = g.contiguous(), channel_sum.contiguous(), sample_max.contiguous()
    batch, _, h, w = g.shape
    height, width = channel_sum.shape[-2:]
    out = torch.empty(batch, 1, height, width, dtype=torch.float32, device=g.device)
    total = out.numel()
    if total:
        block = 1024
        _upsample_multiply_kernel[(triton.cdiv(total, block),)](
            g, channel_sum, sample_max, out, total, h, w, height, width, BLOCK=block
        )
    return out


upsample_multiply.register_fake(upsample_multiply_fake)


@triton.jit
def _normalize_maps_kernel(g_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # One program per sample: a map is at most a few hundred KB and stays in L2 for the three
    # passes (statistics, spread, write). Sums in float64, as the CPU kernel does.
    row = tl.program_id(0).to(tl.int64)
    x_ptr = g_ptr + row * n
    o_ptr = out_ptr + row * n
    total = tl.zeros([BLOCK], dtype=tl.float64)
    lo = tl.full([BLOCK], float("inf"), dtype=tl.float32)
    hi = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    nans = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, n, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < n
        v = tl.load(x_ptr + idx, mask=mask, other=0.0)
        total += tl.where(mask, v, 0.0).to(tl.float64)
        lo = tl.minimum(lo, tl.where(mask, v, float("inf")))
        hi = tl.maximum(hi, tl.where(mask, v, float("-inf")))
        nans += tl.where(mask & (v != v), 1, 0)
    mean = tl.sum(total, axis=0) / n
    lo_all = tl.min(lo, axis=0)
    hi_all = tl.max(hi, axis=0)
    # Constancy is decided on the map itself, as the reference does (a NaN map counts too).
    varying = (tl.sum(nans, axis=0) == 0) & (hi_all > lo_all) & (n > 1)

    squares = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < n
        d = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float64) - mean
        squares += tl.where(mask, d * d, 0.0)
    variance = tl.sum(squares, axis=0) / tl.maximum(n - 1, 1)
    mean32 = mean.to(tl.float32)
    std = tl.sqrt(variance).to(tl.float32)
    std = tl.where(varying, std, 1.0)
    z_lo = tl.minimum(tl.maximum(tl.div_rn(lo_all - mean32, std), -1.0), 1.0)
    z_hi = tl.minimum(tl.maximum(tl.div_rn(hi_all - mean32, std), -1.0), 1.0)
    span = z_hi - z_lo
    varying = varying & (span > 0.0)
    span = tl.where(varying, span, 1.0)
    for start in range(0, n, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < n
        v = tl.load(x_ptr + idx, mask=mask, other=0.0)
        z = tl.minimum(tl.maximum(tl.div_rn(v - mean32, std), -1.0), 1.0)
        tl.store(o_ptr + idx, tl.where(varying, tl.div_rn(z - z_lo, span), 0.0), mask=mask)


@torch.library.custom_op("gradex_triton::normalize_maps", mutates_args=())
def normalize_maps(g: torch.Tensor) -> torch.Tensor:
    g = g.contiguous()
    batch, _, height, width = g.shape
    out = torch.empty(batch, 1, height, width, dtype=torch.float32, device=g.device)
    n = height * width
    if batch and n:
        block = min(4096, max(128, _next_power_of_two(n)))
        _normalize_maps_kernel[(batch,)](g, out, n, BLOCK=block, num_warps=8)
    return out


normalize_maps.register_fake(normalize_maps_fake)
