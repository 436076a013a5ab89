"""Both Helm charts: `helm lint --strict`, `helm template` with default, example and exported
values, every rendered manifest validated by kubernetes-validate --strict, exported values
checked against each chart's values.schema.json. Real helm v3 (make deploy-tools), offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from iir.compile.build import build_table
from iir.export import helm_values

from .conftest import EXPORT_ENV, ROOT, example_specs, helm_env, run, tool

pytestmark = [pytest.mark.slow, pytest.mark.deploy]

CHARTS = {"iir-router": ROOT / "helm" / "iir-router", "llm-d": ROOT / "helm" / "llm-d"}
K8S_VERSIONS = ("1.29.0", "1.37.0")


def _exported(tmp: Path) -> list[tuple[str, Path]]:
    """(chart, values file) exported from every example spec."""
    out = []
    for spec in example_specs():
        built = build_table(spec, EXPORT_ENV)
        charts = ["iir-router"] + (["llm-d"] if any(b.kind == "llm-d" for b in built.table.backends.values()) else [])
        for chart in charts:
            path = tmp / f"{spec.stem}.{chart}.yaml"
            path.write_text(helm_values(built, chart))
            out.append((chart, path))
    return out


def _value_sets(tmp: Path) -> list[tuple[str, list[str]]]:
    sets: list[tuple[str, list[str]]] = []
    for chart, path in CHARTS.items():
        sets.append((chart, []))
        sets.extend((chart, ["-f", str(v)]) for v in sorted((path / "ci").glob("*.yaml")))
    sets.extend((chart, ["-f", str(v)]) for chart, v in _exported(tmp))
    return sets


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm")


def _helm(work: Path, *args: str, check: bool = True):
    return run([tool("helm"), *args], env=helm_env(work), check=check)


def _merged(chart: str, values_file: Path | None) -> dict:
    yaml = YAML(typ="safe")
    merged = yaml.load((CHARTS[chart] / "values.yaml").read_text())
    if values_file is not None:
        def deep(a: dict, b: dict) -> dict:
            for k, v in b.items():
                a[k] = deep(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            return a
        merged = deep(merged, yaml.load(values_file.read_text()))
    return merged


def test_lint_strict_every_value_set(work: Path) -> None:
    for chart, args in _value_sets(work):
        proc = _helm(work, "lint", "--strict", str(CHARTS[chart]), *args)
        assert "0 chart(s) failed" in proc.stdout, (chart, args, proc.stdout)


def test_rendered_manifests_pass_kubernetes_schemas(work: Path) -> None:
    for n, (chart, args) in enumerate(_value_sets(work)):
        rendered = work / f"rendered-{n}.yaml"
        rendered.write_text(_helm(work, "template", "rel", str(CHARTS[chart]), "--namespace", "iir", *args).stdout)
        docs = [d for d in YAML(typ="safe").load_all(rendered.read_text()) if d]
        assert docs, (chart, args)
        for version in K8S_VERSIONS:
            proc = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(rendered)], check=False)
            assert proc.returncode == 0, f"{chart} {args} against {version}:\n{proc.stdout}{proc.stderr}"


def test_kubernetes_validate_can_fail(work: Path) -> None:
    bad = work / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  portz: []\n")
    proc = run([tool("kubernetes-validate"), "--strict", "--quiet", str(bad)], check=False)
    assert proc.returncode != 0


def test_exported_values_pass_the_values_schema(work: Path) -> None:
    for chart, path in _exported(work):
        schema = json.loads((CHARTS[chart] / "values.schema.json").read_text())
        jsonschema.validate(_merged(chart, path), schema)


def test_default_and_example_values_pass_the_values_schema() -> None:
    for chart, path in CHARTS.items():
        schema = json.loads((path / "values.schema.json").read_text())
        jsonschema.validate(_merged(chart, None), schema)
        for v in sorted((path / "ci").glob("*.yaml")):
            jsonschema.validate(_merged(chart, v), schema)


def test_values_schema_rejects_a_typo(work: Path) -> None:
    bad = work / "typo.yaml"
    bad.write_text("replicaCont: 2\n")
    proc = _helm(work, "lint", "--strict", str(CHARTS["iir-router"]), "-f", str(bad), check=False)
    assert proc.returncode != 0 and "replicaCont" in proc.stdout + proc.stderr


def _router_docs(work: Path, *args: str) -> dict[str, dict]:
    text = _helm(work, "template", "rel", str(CHARTS["iir-router"]), *args).stdout
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in YAML(typ="safe").load_all(text) if d}


def test_router_chart_holds_the_spec_and_rolls_out_on_change(work: Path) -> None:
    spec = (ROOT / "iir.yaml").read_text()
    (work / "a.yaml").write_text(json.dumps({"spec": spec}))
    (work / "b.yaml").write_text(json.dumps({"spec": spec + "# edited\n"}))
    a, b = _router_docs(work, "-f", str(work / "a.yaml")), _router_docs(work, "-f", str(work / "b.yaml"))
    assert a["ConfigMap/rel-iir-router-spec"]["data"]["iir.yaml"] == spec
    sum_a = a["Deployment/rel-iir-router"]["spec"]["template"]["metadata"]["annotations"]["checksum/spec"]
    sum_b = b["Deployment/rel-iir-router"]["spec"]["template"]["metadata"]["annotations"]["checksum/spec"]
    assert sum_a != sum_b
    hot = _router_docs(work, "-f", str(work / "a.yaml"), "--set", "reload.strategy=hot-reload")
    assert "checksum/spec" not in (hot["Deployment/rel-iir-router"]["spec"]["template"]["metadata"].get("annotations") or {})


def test_router_chart_probes_redis_and_hpa(work: Path) -> None:
    docs = _router_docs(work, "--set", "redis.enabled=true", "--set", "autoscaling.enabled=true")
    pod = docs["Deployment/rel-iir-router"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["REDIS_URL"] == "redis://rel-iir-router-redis:6379/0"
    assert "Service/rel-iir-router-redis" in docs and "HorizontalPodAutoscaler/rel-iir-router" in docs
    assert "replicas" not in docs["Deployment/rel-iir-router"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["resources"]["limits"]


def test_llmd_chart_service_and_gpu(work: Path) -> None:
    text = _helm(work, "template", "rel", str(CHARTS["llm-d"]), "--namespace", "llm-d", "--set", "gpu.count=4").stdout
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in YAML(typ="safe").load_all(text) if d}
    svc = docs["Service/llm-d"]
    assert svc["spec"]["ports"][0]["port"] == 8000
    c = docs["Deployment/rel-llm-d"]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "4"


def test_llmd_notes_print_the_endpoint(work: Path) -> None:
    """NOTES.txt is rendered through `tpl` in a scratch copy (helm template skips NOTES)."""
    chart = work / "llm-d-notes"
    shutil.rmtree(chart, ignore_errors=True)
    shutil.copytree(CHARTS["llm-d"], chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
        "{{ tpl (.Files.Get \"notes.txt\") . | indent 4 }}\n")
    out = _helm(work, "template", "rel", str(chart), "--namespace", "gpu", "--show-only", "templates/zz-notes.yaml").stdout
    assert "LLMD_ENDPOINT=http://llm-d.gpu.svc.cluster.local:8000" in out
