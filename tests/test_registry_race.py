"""Two evaluations racing on a real `mlflow server` (started here on 127.0.0.1, a free port): they
must not both become champion without being compared, and neither's metrics/registry.json may
say `champion` when it is not. Then the server is stopped: the registry must fail closed."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pneumonia.errors import PipelineError
from pneumonia.gate import CHAMPION
from pneumonia.team.servers import free_port
from tests.registrykit import GOOD, REPO, evaluate_once, gate_params, log_stand_in_model, wrong_on


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict]:
    """`mlflow server` on a sqlite store, artifacts served from tmp_path; stopped at the end
    (its process group), also when start-up fails."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job workers: lighter
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield {"url": url, "proc": proc, "log": log}
    finally:
        _stop(proc)


@pytest.mark.slow  # ~30 s idle (a server, two worker processes importing MLflow); ~90 s contended
def test_two_evaluations_racing_on_a_server(server: dict, tmp_path: Path, workdir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Champion version 1 (accuracy 0.95). A (0.955) and B (1.00) register at the same moment;
    each alone would pass against version 1, but A is not non-inferior to B. Whatever order
    the store numbers them in, the champion must end at B, and every version that was ever
    decided `champion` must have been compared with the champion before it."""
    import mlflow

    from pneumonia.registry import aliases

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(server["url"])
    exp = mlflow.create_experiment("race")
    mlflow.set_experiment(experiment_id=exp)
    model = log_stand_in_model()
    first, _, _ = evaluate_once(exp, wrong_on(slice(0, 10)), gate_params(floor=0.5), model)
    assert first.alias == CHAMPION

    # A: 0.955 (8 of version 1's errors and one other), B: 1.00. Each alone is non-inferior to
    # version 1 (margin 0.02); A is not non-inferior to B.
    a_prob, b_prob = wrong_on([*range(8), 100]), GOOD
    procs, folders = {}, {}
    for name, prob in (("A", a_prob), ("B", b_prob)):
        folders[name] = tmp_path / "race" / name
        folders[name].mkdir(parents=True)
        np.save(folders[name] / "prob.npy", prob)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.registrykit", server["url"], exp, model,
             str(folders[name] / "prob.npy"), str(folders[name])],
            cwd=REPO, env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((f / "ready").exists() for f in folders.values()):
            assert all(p.poll() is None for p in procs.values()), \
                {n: p.communicate()[0][-3000:] for n, p in procs.items()}
            assert time.monotonic() < deadline, "the workers did not get ready"
            time.sleep(0.05)
        (tmp_path / "race" / "go").write_text("1")  # both at once
        outputs = {n: p.communicate(timeout=180)[0].decode(errors="replace")
                   for n, p in procs.items()}
    finally:
        for p in procs.values():
            _stop(p)
    failed = {n: outputs[n][-1500:] for n, p in procs.items() if p.returncode != 0}
    assert not failed, "\n".join(f"{n}: {out}" for n, out in failed.items())
    result = {n: json.loads((f / "result.json").read_text()) for n, f in folders.items()}
    gate = {n: json.loads((f / "metrics" / "registry.json").read_text())
            for n, f in folders.items()}

    client = mlflow.MlflowClient()
    champion = aliases(client, "pneu")[CHAMPION]
    assert champion == result["B"]["version"], (result, gate)
    # The champions form one chain in version order: each compared with the one before.
    tags = {int(mv.version): mv.tags for mv in client.search_model_versions("name = 'pneu'")}
    promoted = sorted(v for v, t in tags.items() if t["gate.decision"] == CHAMPION)
    assert promoted[0] == 1 and str(promoted[-1]) == champion
    for before, after in itertools.pairwise(promoted):
        assert tags[after]["gate.compared_with"] == str(before), (before, tags[after])
    # Each registry.json tells the truth about every version its stage saw: one that saw both
    # says champion only if it is the final champion.
    both = max(int(r["version"]) for r in result.values())
    for name in ("A", "B"):
        doc = gate[name]
        assert doc["version"] == int(result[name]["version"])
        assert doc["decision"] == tags[doc["version"]]["gate.decision"]
        if doc["alias"] == CHAMPION:
            assert doc["champion_version"] == str(doc["version"])
        if doc["versions_seen"] >= both:
            assert doc["champion_version"] == champion
            assert (doc["alias"] == CHAMPION) == (str(doc["version"]) == champion), doc
    a_doc = gate["A"]
    if a_doc["decision"] == CHAMPION:  # A came first in version order, then B beat it
        assert int(champion) > a_doc["version"]
        assert tags[int(champion)]["gate.compared_with"] == str(a_doc["version"])
    else:  # B came first: A was gated against B (worse, or below B's anchor), not version 1
        assert a_doc["alias"] != CHAMPION and a_doc["champion_version"] == champion
        assert tags[a_doc["version"]]["gate.compared_with"] == champion

    # The server goes away mid-way: the champion is not "absent", the stage fails closed.
    from pneumonia.registry import champion_version

    _stop(server["proc"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        champion_version(client, "pneu")
    from pneumonia.inference import loading

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    with pytest.raises(PipelineError, match="cannot read the `champion`"):
        loading.champion_uri("pneu")
