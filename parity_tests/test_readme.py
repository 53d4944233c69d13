"""README's conversion example (the first Python block) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_conversion_example_runs(tmp_path, monkeypatch) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    assert "from_torch_state_dict" in code and "assert_close" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md example", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "lenet_bn.safetensors").stat().st_size > 100_000
