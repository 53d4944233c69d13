"""Weight conversion: strict errors, the bit-exact round trip, safetensors interchange."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as torch_load_safetensors

import jaxcnn
import torch_ref
from jaxcnn.testing import assert_close

from ._cases import (
    CASES,
    Case,
    inputs,
    jax_input,
    jitted_apply,
    make_pair,
    torch_output_to_numpy,
)

IDS = [c.id for c in CASES]


def _first_param_key(sd: dict) -> str:
    return next(k for k, v in sd.items() if v.ndim >= 1 and v.numel() > 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_strict_errors_name_every_key(case: Case) -> None:
    pair = make_pair(case)
    sd = dict(pair.state_dict)
    keys = list(sd)
    dropped, reshaped = keys[-1], _first_param_key(sd)

    with pytest.raises(jaxcnn.StateDictError) as err:
        jaxcnn.from_torch_state_dict(pair.model, {k: v for k, v in sd.items() if k != dropped})
    assert f"missing keys (1): {dropped}" in str(err.value)
    assert err.value.missing == [dropped]

    with pytest.raises(jaxcnn.StateDictError) as err:
        jaxcnn.from_torch_state_dict(pair.model, {**sd, "head.weight": torch.zeros(3)})
    assert "unexpected keys (1): head.weight" in str(err.value)

    bad = torch.zeros(*sd[reshaped].shape[:-1], sd[reshaped].shape[-1] + 1)
    with pytest.raises(jaxcnn.StateDictError) as err:
        jaxcnn.from_torch_state_dict(pair.model, {**sd, reshaped: bad})
    expected = f"size mismatch for {reshaped}: expected shape {tuple(sd[reshaped].shape)}, " \
               f"got {tuple(bad.shape)}"
    assert expected in str(err.value)

    # All three at once: one error lists them all.
    mixed = {k: v for k, v in sd.items() if k != dropped}
    mixed.update({"extra.bias": torch.zeros(1), reshaped: bad})
    with pytest.raises(jaxcnn.StateDictError) as err:
        jaxcnn.from_torch_state_dict(pair.model, mixed)
    msg = str(err.value)
    assert dropped in msg and "extra.bias" in msg and reshaped in msg


def test_torch_refuses_what_jaxcnn_refuses() -> None:
    """The same wrong state dict fails in torch's load_state_dict too (same key names)."""
    tm = torch_ref.create_model("lenet")
    sd = tm.state_dict()
    sd.pop("fc.4.bias")
    with pytest.raises(RuntimeError, match=r"fc\.4\.bias"):
        torch_ref.create_model("lenet").load_state_dict(sd)
    with pytest.raises(jaxcnn.StateDictError, match=r"fc\.4\.bias"):
        jaxcnn.from_torch_state_dict(jaxcnn.create_model("lenet"), sd)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_roundtrip_is_bit_exact(case: Case) -> None:
    """torch -> jaxcnn -> torch gives the same keys, order, shapes, dtypes and bits."""
    pair = make_pair(case)
    sd = pair.state_dict
    back = jaxcnn.to_torch_state_dict(pair.model, jaxcnn.from_torch_state_dict(pair.model, sd))
    assert list(back) == list(sd)
    for key, value in sd.items():
        v = value.numpy()
        assert back[key].dtype == v.dtype, f"{key}: dtype {back[key].dtype} != {v.dtype}"
        assert back[key].shape == v.shape, f"{key}: shape {back[key].shape} != {v.shape}"
        assert np.array_equal(back[key], v), f"{key}: values differ"
    if any(k.endswith("num_batches_tracked") for k in sd):
        assert all(int(back[k]) == 3 for k in sd if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_numpy_input_equals_tensor_input(case: Case) -> None:
    pair = make_pair(case)
    from_np = jaxcnn.from_torch_state_dict(
        pair.model, {k: v.numpy() for k, v in pair.state_dict.items()})
    a = jaxcnn.to_torch_state_dict(pair.model, from_np)
    b = jaxcnn.to_torch_state_dict(pair.model, pair.variables)
    assert all(np.array_equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_safetensors_file_opens_in_torch(case: Case, tmp_path) -> None:
    """jaxcnn writes a .safetensors under torch names without torch; torch loads it strictly
    and gives the same outputs; jaxcnn reads it back bit-exactly."""
    pair = make_pair(case)
    path = tmp_path / "model.safetensors"
    jaxcnn.save_safetensors(path, jaxcnn.to_torch_state_dict(pair.model, pair.variables))

    tm = torch_ref.create_model(case.name, **case.kwargs).eval()
    tm.load_state_dict(torch_load_safetensors(str(path)), strict=True)
    x, _ = inputs(case)
    with torch.no_grad():
        expected = torch_output_to_numpy(tm(torch.from_numpy(x)))
    got = np.asarray(jitted_apply(pair.model)(pair.variables, jax_input(x)))
    assert_close(got, expected, f"{case.id}: output after the safetensors round trip")

    reread = jaxcnn.from_torch_state_dict(pair.model, jaxcnn.load_safetensors(path))
    a = jaxcnn.to_torch_state_dict(pair.model, reread)
    b = jaxcnn.to_torch_state_dict(pair.model, pair.variables)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in b)


def test_save_safetensors_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    jaxcnn.save_safetensors(path, {"a": np.ones(3, np.float32)})
    before = path.read_bytes()
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError, match='Unknown dtype "object"'):
        jaxcnn.save_safetensors(path, {"a": np.array([object()])})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_load_safetensors_missing_file_names_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        jaxcnn.load_safetensors(tmp_path / "nope.safetensors")


def test_dropout_masks_convert_to_torch_layout() -> None:
    model = jaxcnn.create_model("nin")
    mask = np.zeros((2, 5, 5, 384), bool)
    mask[0, 1, 2, 3] = True
    out = jaxcnn.convert.dropout_masks_to_torch(model, {"6": {"mask": mask}})
    assert list(out) == ["6"] and out["6"].shape == (2, 384, 5, 5) and out["6"][0, 3, 1, 2]
