"""probes.config resolves every key in one order, the one the README documents: the
configuration an activity was given (``chaos run --var``, else the experiment's env
declaration), then ``MESHCHAOS_<KEY>``, then the reference chain's default; and through
chaoslib's own load_configuration, ``--var`` beats the environment for every key an
experiment declares.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chaoslib.configuration import load_configuration

from probes.config import DEFAULTS, KEYS, env_name, raw_value, resolve
from probes.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def test_the_variable_of_a_key_is_its_name_in_capitals_with_the_prefix_once() -> None:
    assert env_name("entry_path") == "MESHCHAOS_ENTRY_PATH"
    assert env_name("meshchaos_state_dir") == "MESHCHAOS_STATE_DIR"
    assert env_name("meshchaos_manifests") == "MESHCHAOS_MANIFESTS"


def test_configuration_beats_the_environment_which_beats_the_default() -> None:
    env = {"MESHCHAOS_NAMESPACE": "from-env"}
    assert raw_value({"namespace": "from-var"}, "namespace", env) == "from-var"
    assert raw_value({}, "namespace", env) == "from-env"
    assert raw_value({}, "namespace", {}) == DEFAULTS["namespace"] == "shop"


def test_an_empty_value_counts_as_unset_at_every_level() -> None:
    """chaoslib hands an undeclared-in-env key with default "" to the activity as ""."""
    env = {"MESHCHAOS_STATE_DIR": "/tmp/elsewhere"}
    assert raw_value({"meshchaos_state_dir": ""}, "meshchaos_state_dir", env) == \
        "/tmp/elsewhere"
    assert resolve({"entry_path": ""}, {"MESHCHAOS_ENTRY_PATH": ""}).entry_path == "/"


def test_an_unknown_key_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="unknown configuration key 'entry'"):
        raw_value({}, "entry", {})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("target_service", "Stock", "'target_service': 'Stock' is not a Kubernetes name"),
    ("entry_path", "api/items", "'entry_path' must be a request path starting with '/'"),
    ("entry_headers", "[1]", "'entry_headers' must be a JSON object, got '[1]'"),
    ("mesh_set_env", "catalog=x", "'mesh_set_env': 'catalog=x' is not NAMESPACE/DEPLOYMENT"),
    ("call_tree", "{", "'call_tree' is not JSON"),
])
def test_a_bad_value_names_its_key_and_value(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[")):
        resolve({key: value}, {})


def test_structured_keys_are_parsed() -> None:
    settings = resolve({"entry_headers": '{"X-Store-Slow-Ms": "300"}',
                        "mesh_set_env": "store/catalog:STORE_DEFECT=leak-call;"
                                        "store/stock:WORK_MS=40",
                        "call_tree": '{"entry": "gateway", "calls": {"gateway": ["catalog"]}}',
                        "namespace": "store"}, {})
    assert settings.entry_headers == {"x-store-slow-ms": "300"}
    assert settings.mesh_set_env == (("store", "catalog", "STORE_DEFECT", "leak-call"),
                                     ("store", "stock", "WORK_MS", "40"))
    assert settings.call_tree == {"entry": "gateway", "calls": {"gateway": ["catalog"]}}
    assert settings.allowed_namespaces == ("store",)  # default: the namespace itself


def test_through_chaoslib_a_var_beats_the_environment_for_every_declared_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """chaoslib 1.44 load_configuration: extra_vars override the env declarations, and a
    key the experiment does not declare is dropped (so every experiment declares all)."""
    experiment = json.loads((ROOT / "experiments" / "timeout-cascade.json").read_text())
    declared = set(experiment["configuration"])
    assert declared == set(KEYS) - {"run_id"}
    for key in declared:
        monkeypatch.setenv(env_name(key), "from-env")
    assert load_configuration(experiment["configuration"], {}) == \
        {k: "from-env" for k in declared}
    assert load_configuration(experiment["configuration"], {k: "from-var" for k in declared}) \
        == {k: "from-var" for k in declared}
    assert "run_id" not in load_configuration(experiment["configuration"], {"run_id": "x"})


def test_the_readme_documents_every_key_in_its_configuration_table() -> None:
    """The README's table is the user's reference: a key added here must appear there."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):readme.index("### Preflight")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {key.strip("` ") for row in rows for key in row.split("|")[1].split(",")}
    assert documented == set(KEYS) - {"run_id"}
