"""Bit packing of integer codes into int32 words (layout version 2).

Layout, chosen so that a GPU kernel reads one contiguous run of words per 32 weights, and the activations that
multiply code position p of consecutive words are consecutive too:

* The K axis of an (N, K) code matrix is cut into chunks of 32 codes (K is zero-padded to a multiple of 32).
* A ``bits``-wide code is split into bit planes of power-of-two widths, widest first, low bits first:
  8 -> [8], 7 -> [4, 2, 1], 6 -> [4, 2], 5 -> [4, 1], 4 -> [4], 3 -> [2, 1], 2 -> [2], 1 -> [1].
* A plane of width ``w`` holds the 32 codes of a chunk in ``w`` words, interleaved: code ``i`` of the chunk is
  in word ``i % w``, at bits ``[p * w, (p + 1) * w)`` with position ``p = i // w``. So code position p of the
  chunk's words j = 0..w-1 covers the w consecutive columns ``p * w + j``.
* The planes of a chunk follow one another, so a chunk is exactly ``bits`` words, and
  ``qdata`` has shape ``(N, ceil(K / 32) * bits)``, dtype int32.

For 4 bits, word j of a chunk holds columns j, j + 4, ..., j + 28 in its nibbles 0..7; for 8 bits, word j holds
columns j, j + 8, j + 16, j + 24 in its bytes. Storage is exactly ``bits`` bits per weight. Layout version 1
(before sinq_ao 0.2) kept consecutive codes in a word (word j held codes j·32/w ... (j + 1)·32/w − 1);
:func:`upgrade` converts it.
"""

from __future__ import annotations

import torch

LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # unpack reads these; pack writes LAYOUT_VERSION
CHUNK = 32
SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def bit_planes(bits: int) -> list[tuple[int, int]]:
    """``(width, bit_offset)`` of each plane of a ``bits``-wide code, widest first."""
    planes, offset = [], 0
    for width in (8, 4, 2, 1):
        if bits & width:
            planes.append((width, offset))
            offset += width
    return planes


def packed_columns(in_features: int, bits: int) -> int:
    """Number of int32 columns of ``qdata`` for ``in_features`` codes per row."""
    return -(-in_features // CHUNK) * bits


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; choose one of {SUPPORTED_BITS}")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` of shape (N, K) into int32 words (N, ceil(K/32) * bits)."""
    _check_bits(bits)
    if codes.ndim != 2:
        raise ValueError(f"pack expects a 2-D code matrix, got shape {tuple(codes.shape)}")
    n, k = codes.shape
    pad = (-k) % CHUNK
    chunks = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).view(n, -1, CHUNK)
    words = []
    for width, offset in bit_planes(bits):
        per_word = CHUNK // width
        plane = ((chunks >> offset) & ((1 << width) - 1)).view(n, -1, per_word, width).transpose(-1, -2)
        shifts = torch.arange(per_word, device=codes.device, dtype=torch.int64) * width
        words.append((plane << shifts).sum(dim=-1))  # disjoint bit fields: sum == bitwise or
    packed = torch.cat(words, dim=-1).reshape(n, -1)
    # Values are in [0, 2**32); map to the int32 with the same bit pattern.
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack(qdata: torch.Tensor, bits: int, in_features: int, layout_version: int = LAYOUT_VERSION) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words (N, ceil(K/32) * bits) -> int32 codes (N, K); reads the current
    layout or, with ``layout_version=1``, the old one."""
    _check_bits(bits)
    if layout_version not in READABLE_VERSIONS:
        raise ValueError(f"layout_version={layout_version!r} is not one of {READABLE_VERSIONS}")
    n = qdata.shape[0]
    words = qdata.view(n, -1, bits)
    codes = None
    first_word = 0
    for width, offset in bit_planes(bits):
        per_word = CHUNK // width
        plane_words = words[:, :, first_word : first_word + width]
        first_word += width
        shifts = torch.arange(per_word, device=qdata.device, dtype=torch.int32) * width
        plane = (plane_words.unsqueeze(-1) >> shifts) & ((1 << width) - 1)  # (n, chunks, word j, position p)
        if layout_version >= 2:
            plane = plane.transpose(-1, -2)  # code p * width + j
        plane = plane.reshape(n, -1) << offset
        codes = plane if codes is None else codes | plane
    return codes[:, :in_features]


def upgrade(qdata: torch.Tensor, bits: int, in_features: int, layout_version: int) -> torch.Tensor:
    """``qdata`` packed in an older readable layout, repacked in the current one (returned as is if current)."""
    if layout_version == LAYOUT_VERSION:
        return qdata
    return pack(unpack(qdata, bits, in_features, layout_version), bits)
