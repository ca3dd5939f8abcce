"""Packing layout v2: exact round trip for every bit width and shape; layout v1 still reads."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sinq_ao.packing import LAYOUT_VERSION, SUPPORTED_BITS, bit_planes, pack, packed_columns, unpack, upgrade


@given(st.sampled_from(SUPPORTED_BITS), st.integers(1, 9), st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_pack_then_unpack_is_exact(bits, rows, cols, seed):
    codes = torch.randint(0, 2**bits, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    qdata = pack(codes, bits)
    assert qdata.dtype == torch.int32 and qdata.shape == (rows, packed_columns(cols, bits))
    assert torch.equal(unpack(qdata, bits, cols), codes)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_storage_is_exactly_bits_per_weight(bits):
    assert packed_columns(4096, bits) * 32 == 4096 * bits
    assert sum(width for width, _ in bit_planes(bits)) == bits


def test_four_bit_word_j_holds_every_fourth_column_from_j():
    codes = torch.arange(32, dtype=torch.int32).remainder(16).view(1, 32)
    words = pack(codes, 4)[0].tolist()
    for j, word in enumerate(words):
        assert word & 0xFFFFFFFF == sum(((j + 4 * p) % 16) << (4 * p) for p in range(8))


def test_eight_bit_word_j_holds_columns_j_plus_multiples_of_eight_in_its_bytes():
    codes = torch.randint(0, 256, (3, 64), dtype=torch.int32)
    qbytes = pack(codes, 8).view(torch.uint8).view(3, 2, 8, 4).to(torch.int32)  # (row, chunk, word j, byte p)
    assert torch.equal(qbytes.transpose(-1, -2).reshape(3, 64), codes)


def _pack_layout_v1(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Layout v1, written independently of sinq_ao.packing: word j of a w-wide plane held codes j·32/w onwards."""
    n, k = codes.shape
    chunks = torch.nn.functional.pad(codes.to(torch.int64), (0, (-k) % 32)).view(n, -1, 32)
    words = []
    for width, offset in bit_planes(bits):
        plane = ((chunks >> offset) & ((1 << width) - 1)).view(n, -1, width, 32 // width)
        words.append((plane << (torch.arange(32 // width) * width)).sum(-1))
    packed = torch.cat(words, dim=-1).reshape(n, -1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


@given(st.sampled_from(SUPPORTED_BITS), st.integers(1, 5), st.integers(1, 100), st.integers(0, 2**31 - 1))
def test_layout_v1_is_read_and_upgraded_exactly(bits, rows, cols, seed):
    codes = torch.randint(0, 2**bits, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    old = _pack_layout_v1(codes, bits)
    assert torch.equal(unpack(old, bits, cols, layout_version=1), codes)
    assert torch.equal(upgrade(old, bits, cols, 1), pack(codes, bits))
    assert upgrade(old, bits, cols, LAYOUT_VERSION) is old


def test_unknown_layout_version_is_refused_by_unpack():
    with pytest.raises(ValueError, match="layout_version=7"):
        unpack(torch.zeros(1, 4, dtype=torch.int32), 4, 32, layout_version=7)


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_unsupported_bits_are_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        pack(torch.zeros(2, 32, dtype=torch.int32), bits)
