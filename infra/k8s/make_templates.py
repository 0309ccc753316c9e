"""Build the Kubernetes work-pool base job templates (CPU and GPU) from prefect-kubernetes' default.

    python infra/k8s/make_templates.py            # writes infra/k8s/base-job-template-{cpu,gpu}.json
    python infra/k8s/make_templates.py --check    # exit 1 if the committed files differ from a fresh build

Starting from KubernetesWorker.get_default_base_job_template() (prefect-kubernetes 0.8.0) keeps every
variable its worker knows (cluster_config, watch timeouts, stream_output, ...) and adds ours:
the environment from a Secret (envFrom), a node selector, tolerations and, for the GPU pool, the
nvidia.com/gpu limit; it also sets defaults for the image, namespace, service account, resources
and threads. tests/test_k8s.py renders a Job from each file exactly as the worker does and validates
it against the Kubernetes OpenAPI schemas (kubernetes-validate).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from prefect_kubernetes.worker import KubernetesWorker

HERE = Path(__file__).resolve().parent
IMAGE = "registry.example.com/clip-unlearn/worker"   # a placeholder: set yours (image variable)


def build(kind: str) -> dict:
    gpu = kind == "gpu"
    t = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = t["variables"]["properties"]
    props["image"]["default"] = f"{IMAGE}:{kind}"
    props["namespace"]["default"] = "clip-unlearn"
    props["service_account_name"]["default"] = "clip-unlearn-runner"
    props["image_pull_policy"]["default"] = "IfNotPresent"
    props["backoff_limit"]["default"] = 0        # a failed pod is not retried by Kubernetes; the sweeper retries
    props["finished_job_ttl"]["default"] = 3600
    props["cpu_request"]["default"] = "4" if gpu else "2"
    props["memory_request"]["default"] = "16Gi" if gpu else "4Gi"
    props["memory_limit"]["default"] = "32Gi" if gpu else "8Gi"
    props["env"]["default"] = {"OMP_NUM_THREADS": "4" if gpu else "2", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true",
                               "MLFLOW_DISABLE_TELEMETRY": "true"}
    props["env"]["description"] += " A deployment's env replaces this default as a whole."
    props["env_secret_name"] = {
        "title": "Environment Secret", "type": "string", "default": "clip-unlearn-env",
        "description": "Secret whose keys become environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                       "AWS_ENDPOINT_URL, MLFLOW_TRACKING_URI, CLIP_UNLEARN_SIGNING_KEY, PREFECT_API_AUTH_STRING, ..."}
    props["node_selector"] = {
        "title": "Node selector", "type": "object", "additionalProperties": {"type": "string"},
        "default": {"nvidia.com/gpu.present": "true"} if gpu else {"kubernetes.io/os": "linux"},
        "description": "Labels a node must have to run the job (GPU feature discovery sets nvidia.com/gpu.present)."}
    props["tolerations"] = {
        "title": "Tolerations", "type": "array", "items": {"type": "object"},
        "default": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if gpu else [],
        "description": "Taints the job tolerates (GPU nodes are usually tainted nvidia.com/gpu)."}
    if gpu:
        props["gpu_count"] = {"title": "GPUs", "type": "integer", "default": 1, "minimum": 1,
                              "description": "nvidia.com/gpu limit of the container."}
    pod = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["envFrom"] = [{"secretRef": {"name": "{{ env_secret_name }}"}}]
    if gpu:
        container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    # The default puts parallelism/completions in the *pod* spec, where Kubernetes ignores them (a strict
    # schema check flags them); prefect-kubernetes refuses a template without them there, so they stay.
    return t


def files() -> dict[Path, str]:
    return {HERE / f"base-job-template-{kind}.json": json.dumps(build(kind), indent=2) + "\n" for kind in ("cpu", "gpu")}


if __name__ == "__main__":
    stale = [p for p, text in files().items() if not p.is_file() or p.read_text() != text]
    if "--check" in sys.argv[1:]:
        for p in stale:
            print(f"{p} differs from a fresh build: python infra/k8s/make_templates.py")
        sys.exit(1 if stale else 0)
    for p, text in files().items():
        p.write_text(text)
        print("wrote", p)
