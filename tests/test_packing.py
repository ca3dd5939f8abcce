"""Packing layout v1: exact round trip for every bit width and shape."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sinq_ao.packing import SUPPORTED_BITS, bit_planes, pack, packed_columns, unpack


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


def test_four_bit_layout_is_consecutive_little_endian_nibbles():
    codes = torch.arange(32, dtype=torch.int32).remainder(16).view(1, 32)
    word = pack(codes, 4)[0, 0].item() & 0xFFFFFFFF
    assert word == sum(i << (4 * i) for i in range(8))


def test_eight_bit_qdata_bytes_are_the_codes():
    codes = torch.randint(0, 256, (3, 64), dtype=torch.int32)
    assert torch.equal(pack(codes, 8).view(torch.uint8).view(3, 64).to(torch.int32), codes)


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_unsupported_bits_are_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        pack(torch.zeros(2, 32, dtype=torch.int32), bits)
