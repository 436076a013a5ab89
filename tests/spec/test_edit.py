"""Round-trip edits of iir.yaml keep every comment and untouched line byte-identical."""

from __future__ import annotations

import difflib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from iir.compile.build import build_text
from iir.spec.edit import SpecEditError, add_model, remove_model, update_model, write_atomically

COMMENTED = """# yaml-language-server: $schema=config/iir.schema.json
# A heavily commented spec: every comment must survive an edit.
version: 1   # trailing comment on version

server:
    listen:   127.0.0.1:8000      # odd spacing and 4-space indent, kept as written
    max_body: 4MiB

backends:
  # the laptop agent
  laptop:
    kind: agent
    url: 'http://127.0.0.1:5000'     # single-quoted on purpose
    models: [tiny-demo]              # flow list
    context_window: 512
  gpu-box:
    kind: vllm
    url: "http://10.0.0.5:8000/v1"
    models:                          # block list
      - llama-3.1-8b
      - qwen-2.5-7b    # a comment on an item
    price:
      llama-3.1-8b: {input: 0.10, output: 0.20}

# routes: first match wins
routes:
  - name: light
    match: {model: auto, prompt_tokens: {max: 400}}
    to: [laptop, gpu-box]
  - name: by-model     # catch the rest
    match:
      model: "*"
    to: by-model
"""


def _changes(old: str, new: str) -> list[tuple[str, list[str], list[str]]]:
    a, b = old.splitlines(True), new.splitlines(True)
    return [(tag, a[i1:i2], b[j1:j2]) for tag, i1, i2, j1, j2 in
            difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if tag != "equal"]


def _valid(text: str) -> None:
    build_text(text, "iir.yaml", {})


def test_add_to_flow_list_changes_only_that_line() -> None:
    new = add_model(COMMENTED, "tiny-2", backend="laptop")
    _valid(new)
    [(tag, old, added)] = _changes(COMMENTED, new)
    assert (tag, old) == ("replace", ["    models: [tiny-demo]              # flow list\n"])
    assert len(added) == 1 and added[0].startswith("    models: [tiny-demo, tiny-2]") and added[0].endswith("# flow list\n")


def test_a_changed_line_keeps_its_comment_in_place() -> None:
    """The comment column stays when the code still fits before it, else the original spacing."""
    added = add_model(COMMENTED, "tiny-2", backend="laptop")
    assert "    models: [tiny-demo, tiny-2]      # flow list\n" in added  # same column as before
    renamed = update_model(COMMENTED, "qwen-2.5-7b", rename="q")
    assert "      - q              # a comment on an item\n" in renamed
    longer = update_model(COMMENTED, "qwen-2.5-7b", rename="qwen-2.5-7b-instruct-q4")
    assert "      - qwen-2.5-7b-instruct-q4    # a comment on an item\n" in longer  # spacing kept
    flow = "version: 1\nbackends:\n  a: {kind: agent, url: 'http://h:1', models: [m]}   # flow\nroutes: [{name: r, to: [a]}]"
    assert add_model(flow, "n", backend="a").splitlines()[2] == \
        "  a: {kind: agent, url: 'http://h:1', models: [m, n]}   # flow"


def test_add_to_block_list_with_price_inserts_lines_only() -> None:
    new = add_model(COMMENTED, "mistral-7b", backend="gpu-box", price=(0.05, 0.1), upstream="mistralai/Mistral-7B")
    _valid(new)
    changes = _changes(COMMENTED, new)
    assert all(tag == "insert" for tag, _, _ in changes), changes
    inserted = [line for _, _, lines in changes for line in lines]
    assert "      - mistral-7b\n" in inserted
    assert any("mistral-7b: {input: 0.05, output: 0.1}" in line for line in inserted)
    assert any("model_map" in line for line in inserted)
    # every original line is still there, in order
    assert [ln for ln in new.splitlines(True) if ln not in inserted] == COMMENTED.splitlines(True)


def test_new_backend_is_appended_to_backends() -> None:
    new = add_model(COMMENTED, "llama-70b", backend="cluster", new_backend={"kind": "llm-d", "url": "http://llmd:80/v1"})
    _valid(new)
    changes = _changes(COMMENTED, new)
    assert [tag for tag, _, _ in changes] == ["insert"]
    assert changes[0][2] == ["  cluster:\n", "    kind: llm-d\n", "    url: http://llmd:80/v1\n", "    models: [llama-70b]\n"]


def test_rename_follows_routes_and_keeps_price() -> None:
    new = update_model(COMMENTED, "llama-3.1-8b", rename="llama-8b")
    _valid(new)
    assert "      - llama-8b\n" in new and "      llama-8b: {input: 0.10, output: 0.20}\n" in new
    assert "llama-3.1-8b" not in new
    assert len(_changes(COMMENTED, new)) == 2


def test_remove_model_and_its_price() -> None:
    new = remove_model(COMMENTED, "llama-3.1-8b")
    _valid(new)
    assert "llama-3.1-8b" not in new
    assert "      - qwen-2.5-7b    # a comment on an item\n" in new
    assert all(tag == "delete" for tag, _, _ in _changes(COMMENTED, new))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: add_model(t, "x", backend="laptpo"), "unknown backend 'laptpo' (did you mean 'laptop'?)"),
    (lambda t: add_model(t, "tiny-demo", backend="laptop"), "backend 'laptop' already serves 'tiny-demo'"),
    (lambda t: remove_model(t, "tiny-demo"), "'tiny-demo' is the only model of backend 'laptop'; remove the backend instead"),
    (lambda t: remove_model(t, "nope"), "model 'nope' is not served by any backend"),
    (lambda t: update_model(t, "qwen-2.5-7b", rename="llama-3.1-8b"), "backend 'gpu-box' already serves 'llama-3.1-8b'"),
])
def test_impossible_edits_are_refused(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecEditError) as e:
        edit(COMMENTED)
    assert str(e.value).startswith(message)


def test_write_atomically_keeps_mode_and_leaves_no_temp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "iir.yaml"
    p.write_text("old\n")
    p.chmod(0o640)
    write_atomically(p, "new\n")
    assert p.read_text() == "new\n"
    assert p.stat().st_mode & 0o777 == 0o640
    assert [x.name for x in tmp_path.iterdir()] == ["iir.yaml"]


_NAMES = st.from_regex(r"[a-z][a-z0-9.\-]{0,20}(/[a-z0-9.\-]{1,12})?(:[a-z0-9]{1,6})?", fullmatch=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_NAMES, min_size=1, max_size=4, unique=True),
       backend=st.sampled_from(["laptop", "gpu-box"]), price=st.booleans())
def test_any_sequence_of_adds_and_removes_keeps_the_rest_byte_identical(names: list[str], backend: str,
                                                                        price: bool) -> None:
    """Property: adding models (then removing them again) never touches any other line, every
    comment survives, the result validates, and removing what was added restores the file (up
    to the spacing before the comment of the one flow-list line that changed)."""
    text = COMMENTED
    assume(all(n not in text for n in names))
    for name in names:
        text = add_model(text, name, backend=backend, price=(0.5, 1.0) if price else None)
        _valid(text)
    comments = [ln for ln in COMMENTED.splitlines() if "#" in ln and ln.lstrip().startswith("#")]
    assert all(c in text.splitlines() for c in comments)
    changed = [ln for tag, old, _ in _changes(COMMENTED, text) if tag != "insert" for ln in old]
    assert changed in ([], ["    models: [tiny-demo]              # flow list\n"])  # only laptop's flow list line
    for name in names:
        text = remove_model(text, name)
    assert [" ".join(ln.split()) for ln in text.splitlines()] == [" ".join(ln.split()) for ln in COMMENTED.splitlines()]
    assert [tag for tag, _, _ in _changes(COMMENTED, text)] in ([], ["replace"])


def test_write_atomically_through_a_symlink_keeps_the_link(tmp_path) -> None:  # type: ignore[no-untyped-def]
    real = tmp_path / "config" / "iir.yaml"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "iir.yaml"
    link.symlink_to(real)
    write_atomically(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert sorted(x.name for x in real.parent.iterdir()) == ["iir.yaml"]
