"""Bucketed autotuning keys of the Triton MSCA kernels.

On a GPU each autotuned kernel times every configuration once per distinct key; with exact
position counts in the key every new H x W was re-timed. The keys now hold the bucket of the
position count (size_bucket: next power of two), so two maps in one bucket share a key, and the
kernels must stay correct anywhere inside a bucket (masks use the exact size, never the key).
The keys are computed here from the recorded launch arguments as triton's autotuner computes
them: the values of the named arguments."""
import pytest
import torch

import msca_kernels as mk
from test_msca import check_against_reference, make_inputs

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)


def test_size_bucket():
    from msca_kernels.triton._common import size_bucket

    assert [size_bucket(n) for n in (0, 1, 2, 3, 17, 32, 33, 4096 * 4096)] == [
        1, 1, 2, 4, 32, 32, 64, 2**24]
    with pytest.raises(ValueError, match="n: expected a size >= 0"):
        size_bucket(-1)


@pytest.fixture
def recorded(monkeypatch):
    from msca_kernels.triton import _common

    launches = []
    monkeypatch.setattr(_common, "launch",
                        lambda kernel, grid, *a, **meta: launches.append((kernel, a, meta)))
    return launches


def _name(kernel):
    import triton

    # on a GPU an Autotuner wraps the JITFunction
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    return fn.__name__, fn


def tune_keys(launches):
    """{kernel name: its autotuning key} for the autotuned launches among `launches`."""
    from msca_kernels.triton import msca as tm

    keys = {}
    for kernel, args, meta in launches:
        name, fn = _name(kernel)
        if name not in tm.TUNE_KEYS:
            continue
        values = dict(zip(fn.arg_names, args), **meta)
        keys[name] = tuple(values[k] for k in tm.TUNE_KEYS[name])
    return keys


def keys_for(recorded, hw2, hw1):
    from msca_kernels.triton import msca as tm

    B, N, M2, M1, K = 1, 8, 4, 6, 5
    r = lambda *s: torch.zeros(*s, device="meta")  # noqa: E731
    fx2, fc2, fc1 = r(B, N, hw2), r(B, M2, hw2), r(B, M1, hw1)
    phi, psi, pb, qb, mask = r(K, N + M2), r(K, M1), r(K), r(K), r(B, K)
    recorded.clear()
    out, V, lse = tm.triton_msca_fwd(fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None)
    tm.triton_msca_bwd(out, fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None, V, lse,
                       False, False)
    return tune_keys(recorded)


def test_keys_name_kernel_parameters_and_no_exact_position_count():
    from msca_kernels.triton import msca as tm

    for name, key in tm.TUNE_KEYS.items():
        fn = getattr(tm, name)
        assert set(key) <= set(fn.arg_names), name
        assert not {"P1", "P2", "S"} & set(key), name


def test_two_map_sizes_in_one_bucket_share_the_keys(recorded):
    # 45x45 = 2025 and 40x41 = 1640 positions: bucket 2048; 46x46 = 2116: bucket 4096.
    a = keys_for(recorded, 45 * 45, 33 * 31)
    b = keys_for(recorded, 40 * 41, 32 * 32)
    c = keys_for(recorded, 46 * 46, 33 * 32)
    assert set(a) == {"_msca_fwd_kernel", "_msca_out_kernel", "_msca_bwd_target_kernel",
                      "_msca_bwd_exemplar_kernel"}
    assert a == b
    for name in a:
        assert a[name] != c[name], name


# Both ends of one bucket for each map: 5x7 = 35 and 8x8 = 64 exemplar positions (bucket 64),
# 3x6 = 18 and 4x8 = 32 target positions (bucket 32); (B, N, M2, M1, K, H2, W2, H1, W1).
@pytest.mark.parametrize("shape", [(2, 5, 3, 7, 3, 5, 7, 3, 6), (1, 6, 4, 5, 4, 8, 8, 4, 8)],
                         ids=str)
def test_correct_anywhere_in_a_bucket(shape):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_against_reference(make_inputs(shape, torch.float32, dev), "triton", torch.float32)
