import json

import pytest

from shared.contracts import Sampling
from shared.env import SettingsError

from services.worker.sampling import to_sampling_params
from services.worker.settings import WorkerSettings


def _env(tmp_path, **extra):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    return {"SLUICE_MODEL": str(tmp_path), **extra}


def test_cpu_pool_defaults(tmp_path):
    s = WorkerSettings.from_env(_env(tmp_path))
    assert s.pool == "cpu" and s.group_id == f"sluice-worker-cpu.{tmp_path.name}"
    assert s.engine.nice == 0 and s.engine.extra == {}


def test_cuda_and_ascend_pools_are_selectable(tmp_path):
    for pool in ("cuda", "ascend"):
        s = WorkerSettings.from_env(_env(tmp_path, SLUICE_POOL=pool,
                                         WORKER_ENGINE_ARGS='{"tensor_parallel_size": 8}'))
        assert s.pool == pool and s.group_id == f"sluice-worker-{pool}.{tmp_path.name}"
        assert s.engine.nice == 0 and s.engine.extra == {"tensor_parallel_size": 8}


def test_engine_args_must_be_a_json_object(tmp_path):
    with pytest.raises(SettingsError):
        WorkerSettings.from_env(_env(tmp_path, WORKER_ENGINE_ARGS="[1]"))


def test_sampling_maps_onto_vllm_params():
    p = to_sampling_params(Sampling(n=2, temperature=0.5, top_p=0.9, top_k=7, max_tokens=11,
                                    min_tokens=2, stop=["x"], seed=3, presence_penalty=0.1,
                                    frequency_penalty=0.2, repetition_penalty=1.1,
                                    ignore_eos=True, logprobs=2))
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_tokens, p.min_tokens) == (2, 0.5, 0.9, 7, 11, 2)
    assert (p.stop, p.seed, p.ignore_eos, p.logprobs) == (["x"], 3, True, 2)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.1, 0.2, 1.1)
    assert p.output_kind.name == "DELTA"


def test_engine_cpu_confinement_settings(tmp_path):
    assert WorkerSettings.from_env(_env(tmp_path)).engine.cpus == "executor"
    assert WorkerSettings.from_env(_env(tmp_path, WORKER_ENGINE_CPUS="")).engine.cpus == ""
    assert WorkerSettings.from_env(_env(tmp_path, WORKER_ENGINE_CPUS="0-3,8")).engine.cpus == "0-3,8"
    assert WorkerSettings.from_env(_env(tmp_path, SLUICE_POOL="cuda")).engine.cpus == ""
    with pytest.raises(SettingsError):
        WorkerSettings.from_env(_env(tmp_path, WORKER_ENGINE_CPUS="all of them"))


def test_cpu_lists_parse():
    from services.worker.placement import engine_cores

    assert engine_cores("0-2,5", []) == {0, 1, 2, 5}
    assert engine_cores("", []) == set()
    assert engine_cores("executor", []) == set()  # no engine processes: nothing to confine to
