"""deploy/: the compose file and the Kubernetes Job are wired right, and the job they run works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import remoteckpt
from remoteckpt.tools.inventory import list_checkpoints

yaml = pytest.importorskip("yaml")
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
AWS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_compose_runs_four_workers_against_the_s3_service() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert len(workers) == 4
    ranks = sorted(int(s["environment"]["RANK"]) for s in workers.values())
    assert ranks == [0, 1, 2, 3]
    for service in workers.values():
        env = service["environment"]
        assert env["WORLD_SIZE"] == "4" and env["CHECKPOINT_DIR"].startswith("s3://")
        assert AWS <= set(env) and env["AWS_ENDPOINT_URL"] == "http://s3:8333"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
    assert "-s3" in services["s3"]["command"]
    bucket = services["bucket"]["command"]
    assert bucket[-1] == "s3://" + workers["worker-0"]["environment"]["CHECKPOINT_DIR"][5:].split("/")[0]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/app/job.py"]' in dockerfile and "COPY deploy/job.py /app/job.py" in dockerfile


def test_kubernetes_indexed_job_wiring() -> None:
    job = yaml.safe_load((DEPLOY / "k8s" / "job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["python", "/app/job.py"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WORLD_SIZE"]["value"] == str(spec["completions"])
    assert "job-completion-index" in env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "controller-uid" in env["REMOTECKPT_SAVE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["key"] == secret
    assert env["CHECKPOINT_DIR"]["value"].startswith("s3://")


def test_images_are_pinned_and_the_job_runs_unprivileged() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert "@sha256:" in base or re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), base
    uid, gid = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)[-1]
    assert int(uid) > 0 and int(gid) > 0
    pod = yaml.safe_load((DEPLOY / "k8s" / "job.yaml").read_text())["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": int(uid), "runAsGroup": int(gid)}
    for service in yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"].values():
        if "image" in service and "build" not in service:
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?", service["image"]), service["image"]


def test_readme_names_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert f"`{path.relative_to(DEPLOY)}`" in readme, path


def _run_job(directory: str, world: int, extra: dict[str, str] | None = None) -> list[str]:
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), CHECKPOINT_DIR=directory,
                   STEPS="12", CHECKPOINT_EVERY="5")
        env.update(extra or {})
        procs.append(subprocess.Popen([sys.executable, str(DEPLOY / "job.py")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_job_runs_as_four_workers_and_resumes(s3_prefix: str) -> None:
    outputs = _run_job(s3_prefix, 4)
    assert f"latest checkpoint: {s3_prefix}/model.ckpt-11" in outputs[0]
    steps = [c.step for c in list_checkpoints(s3_prefix)]
    assert steps == [5, 10, 11]  # every 5 steps, plus the final step; 3 kept
    kernel = remoteckpt.CheckpointReader(f"{s3_prefix}/model.ckpt-11").get_tensor("dense/kernel")
    assert kernel.shape == (4096, 1024) and abs(float(kernel[0, 0]) - 0.12) < 1e-5
    again = _run_job(s3_prefix, 4, {"STEPS": "14"})  # a restarted job resumes, each worker its rows
    assert all("resumed from" in out for out in again)
    kernel = remoteckpt.CheckpointReader(f"{s3_prefix}/model.ckpt-13").get_tensor("dense/kernel")
    assert abs(float(kernel[-1, -1]) - 0.14) < 1e-5
