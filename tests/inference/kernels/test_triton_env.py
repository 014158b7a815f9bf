"""One Triton guard: every kernel module reads the same function, for every spelling of the flag."""

from __future__ import annotations

import pytest

from turbopack.inference.kernels import attention, epilogue, triton_env


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("ON", True), ("yes", True), ("0", False),
                                            ("", False), ("false", False), ("off", False)])
def test_interpreting_reads_the_flag_the_same_way_everywhere(monkeypatch, value, expected):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert triton_env.interpreting() is expected
    assert attention.interpreting is triton_env.interpreting is epilogue.interpreting


def test_unset_flag_means_compiled(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_env.interpreting() is False
