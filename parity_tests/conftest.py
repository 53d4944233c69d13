"""Shared set-up of the parity suite: CPU, float32, JAX matmul precision 'highest', TF32 off.

torch and torchvision are imported unconditionally: without them the suite fails at
collection rather than skipping.
"""

from __future__ import annotations

import jax
import pytest
import torch
import torchvision  # noqa: F401  (the suite must fail, not skip, without it)

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_default_dtype(torch.float32)


def pytest_sessionfinish(session) -> None:
    """In a pytest-xdist worker: hand this worker's diffs, flips and planted failures to the
    controller (``pytest_testnodedown``), which prints the summary of the whole run."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is None:
        return
    from ._cases import DIFFS, FLIPS, PLANTED_FAILURES

    workeroutput["parity"] = {
        "diffs": [[m, c, d, t] for (m, c), (d, t) in DIFFS.items()],
        "flips": [[m, c, r, p] for (m, c), (r, p) in FLIPS.items()],
        "planted": [[k, v] for k, v in PLANTED_FAILURES.items()],
    }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """In the pytest-xdist controller: merge a finished worker's records (the largest share of
    its tolerance per model and check wins)."""
    from ._cases import FLIPS, PLANTED_FAILURES, record

    parity = getattr(node, "workeroutput", {}).get("parity")
    if not parity:
        return
    for model, check, diff, tol in parity["diffs"]:
        record(model, check, diff, tol)
    for model, check, relu, pool in parity["flips"]:
        FLIPS[(model, check)] = (relu, pool)
    PLANTED_FAILURES.update(dict(parity["planted"]))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the largest diff per model and check (and its share of the tolerance)."""
    from ._cases import DIFFS, FLIPS, PLANTED_FAILURES

    tr = terminalreporter
    if PLANTED_FAILURES:
        tr.section("parity: planted errors and the failure each caused")
        for name, message in sorted(PLANTED_FAILURES.items()):
            tr.write_line(f"  {name}: {message}")
    if FLIPS:
        tr.section("parity: branches jaxcnn float32 took unlike float64 (ReLU elements, "
                   "max-pool windows)")
        for (model, check), (relu, pool) in sorted(FLIPS.items()):
            tr.write_line(f"  {model} ({check}): {relu} ReLU, {pool} max-pool")
    if not DIFFS:
        return
    tr.section("parity: largest max|diff| per model and check (tolerance in brackets)")
    checks = sorted({c for _, c in DIFFS})
    models = sorted({m for m, _ in DIFFS})
    width = max(len(m) for m in models) + 2
    for check in checks:
        tr.write_line(f"{check}:")
        for model in models:
            if (model, check) in DIFFS:
                diff, tol = DIFFS[(model, check)]
                tr.write_line(f"  {model:<{width}} {diff:.2e}  [{tol:.1e}, {diff / tol:5.1%}]")
