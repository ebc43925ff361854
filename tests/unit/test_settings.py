import json

import pytest

from shared.env import SettingsError
from shared.settings import ModelCatalog, Topics, lease_seconds

from services.gateway.handlers import request_timeout
from services.gateway.settings import GatewaySettings


def make_model(tmp_path, name, max_pos=1024):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": max_pos}))
    return folder


def test_single_model_from_env(tmp_path):
    folder = make_model(tmp_path, "tiny")
    cat = ModelCatalog.from_env({"SLUICE_MODEL": str(folder), "SLUICE_MAX_MODEL_LEN": "512"})
    (spec,) = cat.models
    assert (spec.name, spec.pool, spec.max_model_len) == ("tiny", "cpu", 512)


def test_several_models_with_pools(tmp_path):
    a, b = make_model(tmp_path, "a"), make_model(tmp_path, "b", 2048)
    cat = ModelCatalog.from_env({"SLUICE_MODELS": f"text={a}@cpu; vision={b}@cuda"})
    assert [(m.name, m.pool, m.max_model_len) for m in cat.models] == [
        ("text", "cpu", 1024), ("vision", "cuda", 2048)]
    assert [m.route for m in cat.models] == ["cpu.text", "cuda.vision"]
    assert cat.get("vision").path == b and cat.get("vision").vision is None


@pytest.mark.parametrize("env", [
    {},
    {"SLUICE_MODEL": "/does/not/exist"},
    {"SLUICE_MODELS": "just-a-name"},
])
def test_bad_model_configuration_is_a_clear_error(env):
    with pytest.raises(SettingsError):
        ModelCatalog.from_env(env)


def test_unknown_pool_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="pool"):
        ModelCatalog.from_env({"SLUICE_MODEL": str(make_model(tmp_path, "m")), "SLUICE_POOL": "tpu"})


def test_two_models_may_not_share_a_route(tmp_path):
    a = make_model(tmp_path, "a")
    with pytest.raises(SettingsError, match="route"):
        ModelCatalog.from_env({"SLUICE_MODELS": f"x/y={a}@cpu;x_y={a}@cpu"})


def test_topics_have_explicit_partition_counts(tmp_path):
    t = Topics.from_env({"SLUICE_REQUEST_PARTITIONS": "4"})
    cat = ModelCatalog.from_env({"SLUICE_MODELS": f"org/tiny-1.0={make_model(tmp_path, 'a')}@cpu"})
    core = {s.name: s.partitions for s in t.core(cat.models)}
    assert core["sluice.requests"] == 4 and core["sluice.preprocess"] == 8
    assert core["sluice.infer.cpu.org_tiny-1_0"] == 8
    assert core["sluice.aborts"] == 1 and core["sluice.replies"] == 16  # one fixed reply topic


def test_every_topic_keeps_its_records_for_a_bounded_time(tmp_path):
    t = Topics.from_env({"SLUICE_REQUEST_TIMEOUT_S": "600", "SLUICE_RESUME_RETENTION_S": "300"})
    cat = ModelCatalog.from_env({"SLUICE_MODEL": str(make_model(tmp_path, "a"))})
    configs = {s.name: s.configs for s in t.core(cat.models)}
    assert all("retention.ms" in c and "segment.ms" in c for c in configs.values())
    # Work topics: a request outlives its deadline a little; the reply log, its resume window.
    assert configs["sluice.requests"]["retention.ms"] == str((600 + 600) * 1000)
    assert configs["sluice.replies"]["retention.ms"] == str((600 + 300 + 600) * 1000)
    assert configs["sluice.replies"]["message.timestamp.type"] == "LogAppendTime"
    assert configs["sluice.deadletter"]["retention.ms"] == str(7 * 86400 * 1000)
    assert int(configs["sluice.deadletter"]["retention.ms"]) > int(configs["sluice.replies"]["retention.ms"])


def test_lease_has_a_sane_range():
    assert lease_seconds({}) == 4.0 and lease_seconds({"SLUICE_LEASE_S": "2.5"}) == 2.5
    for bad in ("0", "-1", "1000", "soon"):
        with pytest.raises(SettingsError):
            lease_seconds({"SLUICE_LEASE_S": bad})


def test_request_deadline_defaults_and_may_only_be_shortened(tmp_path):
    env = {"SLUICE_MODEL": str(make_model(tmp_path, "m"))}
    assert GatewaySettings.from_env(env).request_timeout_s == 1800
    with pytest.raises(SettingsError):
        GatewaySettings.from_env({**env, "SLUICE_REQUEST_TIMEOUT_S": "0"})
    assert request_timeout(None, 60) == 60
    assert request_timeout("2.5", 60) == 2.5
    assert request_timeout("600", 60) == 60  # a client may shorten the deadline, not extend it
    for bad in ("0", "-3", "soon", "nan", "inf"):
        with pytest.raises(Exception, match="X-Request-Timeout"):
            request_timeout(bad, 60)
