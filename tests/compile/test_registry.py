"""The SQLite registry on real files: snapshots, rows, agents, migrations, crash safety."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iir.compile.build import build_text
from iir.compile.registry import Registry, RegistryError

SPEC = """version: 1
auth:
  admin_token: "${ADMIN}"
  keys: [{name: ci, key: "${CI_KEY}"}]
backends:
  laptop: {kind: agent, url: "http://127.0.0.1:5000", models: [tiny-demo], context_window: 512}
  gpu-box:
    kind: vllm
    url: "http://10.0.0.5:8000/v1"
    models: [llama, qwen]
    model_map: {llama: meta/llama}
    price: {llama: {input: 0.1, output: 0.2}}
routes:
  - {name: light, match: {model: auto}, to: [laptop, gpu-box]}
  - {name: by-model, match: {model: "*"}, to: by-model}
"""
ENV = {"ADMIN": "admin-SECRET-1234", "CI_KEY": "ci-SECRET-5678"}


def _built(text: str = SPEC, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return build_text(text, "iir.yaml", env or ENV)


def test_persist_writes_snapshot_and_rows(tmp_path: Path) -> None:
    built = _built()
    with Registry(tmp_path / "iir.db") as reg:
        snap = reg.persist(built.table, built.loaded.text, "iir.yaml")
        active = reg.active_snapshot()
        assert active is not None and active.id == snap and active.digest == built.table.digest
        assert [r["name"] for r in reg.rows("backends")] == ["laptop", "gpu-box"]
        models = {(r["name"], r["backend"]): r for r in reg.rows("models")}
        assert models[("llama", "gpu-box")]["upstream"] == "meta/llama"
        assert models[("llama", "gpu-box")]["price_input"] == 0.1
        assert [r["name"] for r in reg.rows("routes")] == ["light", "by-model"]
        assert reg.source_of(snap) == SPEC
        # same digest again: nothing new
        assert reg.persist(built.table, built.loaded.text) == snap
        assert len(reg.snapshots()) == 1


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    env = {**ENV, "GW_TOKEN": "gateway-SECRET-9012", "UP_KEY": "upstream-SECRET-3456", "VLLM_KEY": "vllm-SECRET-7890"}
    text = SPEC.replace('    model_map: {llama: meta/llama}\n', '    model_map: {llama: meta/llama}\n'
                        '    api_key: "${VLLM_KEY}"\n'
                        '    headers: {x-gateway-token: "${GW_TOKEN}", Authorization: "Bearer ${UP_KEY}", '
                        'X-Title: my-app}\n')
    built = _built(text, env)
    db = tmp_path / "iir.db"
    with Registry(db) as reg:
        reg.persist(built.table, built.loaded.text)
        active = reg.active_snapshot()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in env.values():
        assert secret.encode() not in raw
    assert active is not None
    headers = dict(active.compiled["backends"][1]["headers"])
    assert headers == {"x-gateway-token": "<set>", "Authorization": "<set>", "X-Title": "my-app"}  # public stays


def test_a_password_in_a_backend_url_never_reaches_the_file(tmp_path: Path) -> None:
    """basic auth in the URL (a vLLM behind nginx): stored and shown as <set>, still used to
    connect, and a changed password is a changed digest."""
    text = SPEC.replace('url: "http://10.0.0.5:8000/v1"', 'url: "http://ops:${VLLM_PW}@10.0.0.5:8000/v1"')
    built = _built(text, {**ENV, "VLLM_PW": "pw-SECRET-2468"})
    assert built.table.backends["gpu-box"].base_url == "http://ops:pw-SECRET-2468@10.0.0.5:8000/v1"
    with Registry(tmp_path / "iir.db") as reg:
        reg.persist(built.table, built.loaded.text)
        active = reg.active_snapshot()
        rows = {r["name"]: r for r in reg.rows("backends")}
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"pw-SECRET-2468" not in raw
    assert active is not None and active.compiled["backends"][1]["base_url"] == "http://ops:<set>@10.0.0.5:8000/v1"
    assert rows["gpu-box"]["base_url"] == "http://ops:<set>@10.0.0.5:8000/v1"
    assert rows["laptop"]["base_url"] == "http://127.0.0.1:5000"  # no userinfo: unchanged
    assert _built(text, {**ENV, "VLLM_PW": "pw-SECRET-1357"}).table.digest != built.table.digest
    assert _built().table.digest != built.table.digest


def test_new_snapshot_replaces_rows_and_keeps_history(tmp_path: Path) -> None:
    with Registry(tmp_path / "iir.db") as reg:
        first = _built()
        reg.persist(first.table, first.loaded.text)
        second = _built(SPEC.replace("[llama, qwen]", "[llama]"))
        reg.persist(second.table, second.loaded.text)
        snaps = reg.snapshots()
        assert [s.active for s in snaps] == [True, False]
        assert snaps[0].digest == second.table.digest
        assert ("qwen", "gpu-box") not in {(r["name"], r["backend"]) for r in reg.rows("models")}


def test_failure_mid_write_keeps_previous_snapshot(tmp_path: Path) -> None:
    with Registry(tmp_path / "iir.db") as reg:
        first = _built()
        reg.persist(first.table, first.loaded.text)
        before = {t: reg.rows(t) for t in ("backends", "models", "routes")}
        second = _built(SPEC.replace("tiny-demo", "tiny-2"))

        def boom(step: str) -> None:
            if step == "models":
                raise RuntimeError("injected failure")

        with pytest.raises(RuntimeError, match="injected"):
            reg.persist(second.table, second.loaded.text, _step=boom)
        assert reg.active_snapshot().digest == first.table.digest  # type: ignore[union-attr]
        assert len(reg.snapshots()) == 1
        assert {t: reg.rows(t) for t in ("backends", "models", "routes")} == before


def test_process_killed_mid_write_keeps_previous_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "iir.db"
    first = _built()
    with Registry(db) as reg:
        reg.persist(first.table, first.loaded.text)
    script = textwrap.dedent(f"""
        import os
        from iir.compile.build import build_text
        from iir.compile.registry import Registry
        built = build_text({SPEC.replace('tiny-demo', 'tiny-2')!r}, "iir.yaml", {ENV!r})
        reg = Registry({str(db)!r})
        def die(step):
            if step == "routes":
                os._exit(17)  # no cleanup, no rollback: like a crash or kill -9
        reg.persist(built.table, built.loaded.text, _step=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 17, proc.stderr.decode()
    with Registry(db) as reg:
        assert reg.active_snapshot().digest == first.table.digest  # type: ignore[union-attr]
        assert [s.digest for s in reg.snapshots()] == [first.table.digest]
        assert "tiny-demo" in {r["name"] for r in reg.rows("models")}


def test_wal_mode_and_concurrent_reader(tmp_path: Path) -> None:
    db = tmp_path / "iir.db"
    built = _built()
    with Registry(db) as writer:
        assert writer.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        writer.persist(built.table, built.loaded.text)
        with Registry(db) as reader:
            assert reader.active_snapshot().digest == built.table.digest  # type: ignore[union-attr]


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "iir.db"
    with Registry(db, migrate=False) as reg:
        assert reg.migrate() == ["m001_initial"]
        assert reg.migrate() == []
    with Registry(db) as reg:
        assert reg.applied_migrations() == ["m001_initial"]
    names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"snapshots", "backends", "models", "routes", "agents", "_sqlite_migrations"} <= names


def test_agents_table(tmp_path: Path) -> None:
    with Registry(tmp_path / "iir.db") as reg:
        rec = reg.upsert_agent("mac-1", "http://127.0.0.1:5001", ["tiny-demo"], context_window=512,
                               capabilities=["json", "tools"], now=100.0)
        assert (rec.registered_at, rec.last_heartbeat, rec.state) == (100.0, 100.0, "ready")
        assert reg.heartbeat("mac-1", load={"queue": 2}, now=130.0)
        assert reg.set_agent_state("mac-1", "busy")
        again = reg.upsert_agent("mac-1", "http://127.0.0.1:5001", ["tiny-demo", "phi"], now=200.0)
        assert again.registered_at == 100.0 and again.models == ("tiny-demo", "phi")
        reg.upsert_agent("mac-2", "http://127.0.0.1:5002", ["phi"], state="draining")
        assert [a.id for a in reg.list_agents()] == ["mac-1", "mac-2"]
        assert [a.id for a in reg.list_agents(state="draining")] == ["mac-2"]
        assert reg.get_agent("mac-1").load == {}  # type: ignore[union-attr]
        assert reg.remove_agent("mac-2") and not reg.remove_agent("mac-2")
        assert not reg.heartbeat("ghost") and not reg.set_agent_state("ghost", "ready")
        with pytest.raises(ValueError, match="agent state"):
            reg.set_agent_state("mac-1", "sleepy")


def test_unopenable_path_is_a_registry_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(RegistryError, match="cannot open registry"):
        Registry(tmp_path / "dir.db")


def test_concurrent_openers_of_a_fresh_file_all_succeed(tmp_path: Path) -> None:
    """Router workers and `iir compile` may create, migrate and write the same file at once."""
    import threading

    db = tmp_path / "fresh.db"
    tables = [_built(SPEC.replace("models: [tiny-demo]", f"models: [tiny-demo, m{i}]")).table for i in range(8)]
    start = threading.Barrier(len(tables))
    errors: list[BaseException] = []

    def compile_one(table) -> None:  # type: ignore[no-untyped-def]
        start.wait()
        try:
            with Registry(db) as reg:
                reg.persist(table, "text")
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=compile_one, args=(t,)) for t in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with Registry(db) as reg:
        assert len(reg.snapshots()) == len(tables)
        assert reg.applied_migrations() == ["m001_initial"]
