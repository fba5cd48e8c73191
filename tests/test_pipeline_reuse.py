"""The parts of a step's reuse key, as pure logic: what changes a part and what does not."""

from __future__ import annotations

from pathlib import Path

from amlfs.jobs.spec import OutputSpec
from amlfs.pipelines.reuse import changed, code_digest, key_parts, reuse_key
from amlfs.pipelines.spec import Step


def step(**changes: object) -> Step:
    fields: dict = dict(name="s", command=["python", "s.py", "{outputs.o}"], code=["s.py"],
                        env={"A": "1"}, inputs=[],
                        outputs=[OutputSpec("o", "store", "o/{run-id}", "upload", "ds")],
                        reuse=True)  # fmt: skip
    return Step(**{**fields, **changes})


def test_a_folders_digest_covers_its_files_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "a.py").write_bytes(b"x = 1\n")
    first = code_digest(tmp_path / "pkg")
    assert code_digest(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "sub" / "a.py").write_bytes(b"x = 2\n")
    assert code_digest(tmp_path / "pkg") != first
    (tmp_path / "pkg" / "sub" / "a.py").write_bytes(b"x = 1\n")
    (tmp_path / "pkg" / "sub" / "a.py").rename(tmp_path / "pkg" / "sub" / "b.py")
    assert code_digest(tmp_path / "pkg") != first


def test_each_part_of_the_key_changes_alone_and_is_named(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("print(1)")
    base = key_parts(step(), tmp_path, {})
    assert key_parts(step(), tmp_path, {}) == base
    variants = {
        "command": step(command=["python", "s.py", "--fast", "{outputs.o}"]),
        "env": step(env={"A": "2"}),
        "outputs": step(outputs=[OutputSpec("o", "store", "o/{run-id}", "upload", "other")]),
    }
    for part, variant in variants.items():
        parts = key_parts(variant, tmp_path, {})
        assert changed(base, parts) == [part]
        assert reuse_key(parts) != reuse_key(base)
    (tmp_path / "s.py").write_text("print(2)")
    assert changed(base, key_parts(step(), tmp_path, {})) == ["code s.py"]
