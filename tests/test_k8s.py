"""The Kubernetes base job templates (infra/k8s/) as far as this machine can check them without a
cluster: the Prefect server accepts each as a kubernetes pool's template; a flow run of a deployment
on that pool is rendered into a Job exactly as prefect-kubernetes' worker does it
(KubernetesWorkerJobConfiguration.from_template_and_values + prepare_for_flow_run); the Job has the
image, GPU limit, node selector, tolerations, Secret, namespace and service account it should, and
is valid against the Kubernetes OpenAPI schemas of 1.29, 1.33 and 1.37 (kubernetes-validate) and
kubernetes_asyncio's V1Job model. What needs a cluster is not checked (infra/README.md says what)."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/clip-unlearn/worker:test"
pytest.importorskip("prefect_kubernetes", reason="prefect-kubernetes (dev extra) not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) not installed")


def test_the_committed_templates_are_a_fresh_build_of_prefect_kubernetes_default():
    res = subprocess.run([sys.executable, "infra/k8s/make_templates.py", "--check"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


async def _render(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async with get_client() as c:   # what KubernetesWorker does for each flow run it picks up
        fr = await c.read_flow_run(flow_run_id)
        dep = await c.read_deployment(fr.deployment_id)
        flow = await c.read_flow(fr.flow_id)
        pool = await c.read_work_pool(dep.work_pool_name)
        cfg = await KubernetesWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, {**(dep.job_variables or {}), **(fr.job_variables or {})}, client=c)
        cfg.prepare_for_flow_run(flow_run=fr, deployment=dep, flow=flow, work_pool=pool, worker_name="k8s-worker")
        return cfg.job_manifest


def _v1job_roundtrip(manifest: dict) -> dict:
    from kubernetes_asyncio.client import ApiClient

    class Response:   # kubernetes_asyncio deserializes from a response-like object
        data = json.dumps(manifest)

    async def go():
        async with ApiClient() as api:   # needs a running event loop
            return api.sanitize_for_serialization(api.deserialize(Response(), "V1Job"))

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_a_flow_run_renders_into_a_valid_job(kind, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    tag = uuid.uuid4().hex[:6]
    template = json.loads((REPO / f"infra/k8s/base-job-template-{kind}.json").read_text())
    variables = {"image": IMAGE, **({"gpu_count": 1} if kind == "gpu" else {}), "env": {"OMP_NUM_THREADS": "8"}}
    with get_client(sync_client=True) as c:
        pool = c.create_work_pool(WorkPoolCreate(name=f"k8s-{kind}-{tag}", type="kubernetes", base_job_template=template))
        flow_id = c.create_flow_from_name("erase-request")
        dep_id = c.create_deployment(flow_id=flow_id, name=f"erase-{kind}-{tag}", work_pool_name=pool.name,
                                     entrypoint="flows/erase.py:erase_request", job_variables=variables,
                                     pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}])
        fr = c.create_flow_run_from_deployment(dep_id, name="erase-k8s-1", parameters={"request_id": "k8s-1"})
    try:
        manifest = asyncio.run(_render(fr.id))
    finally:
        with get_client(sync_client=True) as c:
            c.delete_deployment(dep_id)
            c.delete_work_pool(pool.name)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert manifest["kind"] == "Job" and manifest["metadata"]["namespace"] == "clip-unlearn"
    assert container["image"] == IMAGE and container["args"] == ["prefect", "flow-run", "execute"]
    assert container["envFrom"] == [{"secretRef": {"name": "clip-unlearn-env"}}]
    assert pod["serviceAccountName"] == "clip-unlearn-runner" and pod["restartPolicy"] == "Never"
    assert manifest["spec"]["backoffLimit"] == 0
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "8" and env["PREFECT__FLOW_RUN_ID"] == str(fr.id)
    if kind == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    for version in ("1.29.0", "1.33.0", "1.37.0"):
        kubernetes_validate.validate(manifest, version, strict=False)
    # strict (unknown fields refused): only the pod-spec parallelism/completions of prefect-kubernetes' own
    # default are unknown there (Kubernetes ignores them; its worker insists on them)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    trimmed = copy.deepcopy(manifest)
    for k in ("parallelism", "completions"):
        trimmed["spec"]["template"]["spec"].pop(k)
    kubernetes_validate.validate(trimmed, "1.37.0", strict=True)
    back = _v1job_roundtrip(manifest)["spec"]["template"]["spec"]
    assert back["containers"][0]["envFrom"][0]["secretRef"]["name"] == "clip-unlearn-env"
    assert back["nodeSelector"] == pod["nodeSelector"] and set(pod) - set(back) == {"parallelism", "completions"}
