"""engine.frontend.faults: which exceptions poison the device (fatal) and which fail only the requests they touched."""

from __future__ import annotations

import pytest
import torch

from engine.frontend.faults import classify, describe, device_probe, is_device_error

ILLEGAL = "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be reported later"


def raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception:
            raise outer  # noqa: B904 - the implicit __context__ is what is under test
    except Exception as err:
        return err


@pytest.mark.parametrize(
    "err",
    [
        RuntimeError(ILLEGAL),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("an illegal memory access was encountered"),
        RuntimeError("CUDA error: unspecified launch failure"),
        raised_from(ValueError("while sampling"), RuntimeError(ILLEGAL)),
    ],
)
def test_cuda_errors_are_fatal(err):
    assert is_device_error(err)
    fault = classify(err)
    assert fault.fatal


@pytest.mark.skipif(not hasattr(torch, "AcceleratorError"), reason="this torch has no AcceleratorError")
def test_accelerator_error_is_fatal_whatever_its_message():
    assert classify(torch.AcceleratorError("something went wrong")).fatal


@pytest.mark.parametrize(
    "err",
    [
        IndexError("index out of range in self"),
        ValueError("value cannot be converted to type int64 without overflow"),
        RuntimeError("probability tensor contains either `inf`, `nan` or element < 0"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        TypeError("TextEncodeInput must be Union[...]"),
    ],
)
def test_other_errors_fail_only_their_requests(err):
    fault = classify(err)
    assert not fault.fatal
    assert fault.cause.startswith(type(err).__name__ + ": ")


def test_a_failing_probe_makes_any_error_fatal():
    def poisoned() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    fault = classify(IndexError("index 5 is out of bounds"), probe=poisoned)
    assert fault.fatal
    assert "IndexError" in fault.cause and "device sync failed" in fault.cause


def test_a_passing_probe_keeps_it_per_request():
    calls = []
    fault = classify(IndexError("index 5 is out of bounds"), probe=lambda: calls.append(1))
    assert not fault.fatal and calls == [1]


def test_no_probe_on_the_cpu():
    assert device_probe(torch.device("cpu")) is None


def test_describe_keeps_the_first_line():
    assert (
        describe(RuntimeError(ILLEGAL))
        == "RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    assert describe(KeyError()) == "KeyError"
