"""Vault agent mode: the OpenBao agent Kustos renders into the pods (ConfigMap, init
container, sidecar, volumes). Pure, no cluster: the manifests as the render returns them.

Named test_vault_agent_render: tests/integration/test_vault_agent.py has the live test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kustos.api.v1alpha1.modeldeployment import ModelDeploymentSpec, VaultSpec
from kustos.config import Images, OperatorConfig, VaultSettings
from kustos.controllers import context
from kustos.controllers.attachments import AttachmentProblem
from kustos.controllers.vault import _agent_attachments
from kustos.render import vault_agent as va
from kustos.render.meta import SPEC_HASH
from kustos.render.modeldeployment import render
from kustos.render.vault import SECRET_MOUNT
from kustos.status.pods import problem

DIGEST = "sha256:" + "ab" * 32
PATH = "secret/data/ml/credit"
ADDRESS = "http://vault.vault.svc:8200"
IMAGE = "example.test/agent:1"
RESOURCES = {"requests": {"cpu": "10m"}}


def agent_spec(**kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"mode": "agent", "role": "credit", "refreshInterval": "30s",
                            "items": [{"path": PATH, "key": "db_password", "file": "db_password"},
                                      {"path": PATH, "file": "all.json"}]}
    spec.update(kw)
    return spec


def body(vault: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {"model": {"version": "1", "uri": "s3://m/model.skops", "digest": DIGEST},
                     "secrets": {"vault": vault}}}


def vault_of(b: dict[str, Any]) -> VaultSpec:
    v = ModelDeploymentSpec.model_validate(b["spec"]).secrets
    assert v is not None and v.vault is not None
    return v.vault


def rendered(vault: dict[str, Any]) -> dict[str, Any]:
    """The children of a ModelDeployment in agent mode, by kind."""
    b = body(vault)
    att = va.agent_attachments(b, vault_of(b), ADDRESS + "/", "vault", IMAGE, RESOURCES)
    objs = render(b, OperatorConfig(), att)
    return {o["kind"]: o for o in objs}


def pod_spec(objs: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = objs["Deployment"]["spec"]["template"]["spec"]
    return spec


def configs(objs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = objs["ConfigMap"]["data"]
    assert set(data) == {"init.json", "agent.json"}
    return json.loads(data["init.json"]), json.loads(data["agent.json"])


def test_init_container_runs_after_the_fetch_and_the_sidecar_beside_the_server() -> None:
    spec = pod_spec(rendered(agent_spec()))
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-model", va.INIT_CONTAINER]
    assert [c["name"] for c in spec["containers"]] == ["server", va.SIDECAR]
    init, sidecar = spec["initContainers"][1], spec["containers"][1]
    assert init["args"] == ["agent", f"-config={va.CONFIG_DIR}/init.json"]
    assert sidecar["args"] == ["agent", f"-config={va.CONFIG_DIR}/agent.json"]
    for c in (init, sidecar):
        assert c["image"] == IMAGE and c["resources"] == RESOURCES
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["vault-secrets"]["mountPath"] == SECRET_MOUNT
        assert not mounts["vault-secrets"].get("readOnly")  # the agents write the files
        assert mounts[va.CONFIG_VOLUME]["readOnly"] and mounts["vault-token"]["readOnly"]
    # Only the agents get the Vault token; nobody gets the API server's.
    assert spec["automountServiceAccountToken"] is False
    server = spec["containers"][0]
    assert {"name": "vault-secrets", "mountPath": SECRET_MOUNT, "readOnly": True} \
        in server["volumeMounts"]
    assert "vault-token" not in {m["name"] for m in server["volumeMounts"]}


def test_volumes_in_memory_config_map_and_token_with_audience() -> None:
    b = body(agent_spec())
    att = va.agent_attachments(b, vault_of(b), ADDRESS, "bao-aud", IMAGE, RESOURCES)
    volumes = {v["name"]: v for v in att.volumes}
    assert volumes["vault-secrets"]["emptyDir"]["medium"] == "Memory"
    assert volumes[va.CONFIG_VOLUME]["configMap"] == {"name": "credit-vault-agent"}
    token = volumes["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "bao-aud" and token["path"] == "token"


def test_pre_populate_only_has_no_sidecar() -> None:
    spec = pod_spec(rendered(agent_spec(prePopulateOnly=True)))
    assert [c["name"] for c in spec["containers"]] == ["server"]
    assert va.INIT_CONTAINER in [c["name"] for c in spec["initContainers"]]


def test_agent_configs_init_exits_sidecar_keeps_rendering() -> None:
    init, agent = configs(rendered(agent_spec(authPath="k8s/prod", namespace="team-a")))
    for cfg in (init, agent):
        assert cfg["vault"] == {"address": ADDRESS, "namespace": "team-a"}
        (method,) = cfg["auto_auth"]["method"]
        assert method["type"] == "kubernetes"
        assert method["mount_path"] == "auth/k8s/prod"
        assert method["config"] == {"role": "credit", "token_path": va.TOKEN_PATH}
        assert cfg["template_config"]["static_secret_render_interval"] == "30s"
        assert [t["destination"] for t in cfg["template"]] == \
            [f"{SECRET_MOUNT}/db_password", f"{SECRET_MOUNT}/all.json"]
        assert {t["perms"] for t in cfg["template"]} == {"0440"}
        assert all(t["error_on_missing_key"] for t in cfg["template"])
        assert "sink" not in cfg["auto_auth"]  # the token is never written anywhere
    assert init["exit_after_auth"] is True
    assert init["auto_auth"]["method"][0]["exit_on_err"] is True
    assert init["template_config"]["exit_on_retry_failure"] is True
    assert agent["exit_after_auth"] is False
    assert "exit_on_err" not in agent["auto_auth"]["method"][0]
    assert agent["template_config"]["exit_on_retry_failure"] is False


def test_templates_default_to_the_value_or_json_and_custom_ones_are_kept() -> None:
    custom = '{{ with secret "kv/app" }}{{ .Data.user }}{{ end }}'
    init, _ = configs(rendered(agent_spec(items=[
        {"path": PATH, "key": "db_password", "file": "db_password"},
        {"path": PATH, "file": "all.json"},
        {"path": "kv/app", "file": "user", "template": custom}])))
    contents = [t["contents"] for t in init["template"]]
    assert contents[0] == ('{{- with secret "secret/data/ml/credit" -}}'
                           '{{ index .Data.data "db_password" }}{{- end }}')
    assert contents[1] == '{{- with secret "secret/data/ml/credit" -}}' \
        '{{ .Data.data | toJSON }}{{- end }}'
    assert contents[2] == custom


def test_refresh_interval_has_a_floor_of_five_seconds() -> None:
    init, _ = configs(rendered(agent_spec(refreshInterval="500ms")))
    assert init["template_config"]["static_secret_render_interval"] == "5s"
    _, agent = configs(rendered(agent_spec(refreshInterval="1h")))
    assert agent["template_config"]["static_secret_render_interval"] == "3600s"


def test_config_map_is_an_owned_hashed_child_and_rolls_the_pods_when_it_changes() -> None:
    objs = rendered(agent_spec())
    cm = objs["ConfigMap"]
    # Applied in render order: the ConfigMap exists before the pods that mount it.
    assert list(objs).index("ConfigMap") < list(objs).index("Deployment")
    assert cm["metadata"]["name"] == "credit-vault-agent"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert SPEC_HASH in cm["metadata"]["annotations"]
    checksum = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"][
        va.CONFIG_CHECKSUM]
    assert checksum == rendered(agent_spec())["Deployment"]["spec"]["template"]["metadata"][
        "annotations"][va.CONFIG_CHECKSUM]
    other = rendered(agent_spec(role="credit-v2"))
    assert other["Deployment"]["spec"]["template"]["metadata"]["annotations"][
        va.CONFIG_CHECKSUM] != checksum


def test_nothing_of_sync_or_injector_mode() -> None:
    objs = rendered(agent_spec())
    annotations = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert not [k for k in annotations if k.startswith("vault.hashicorp.com/")]
    assert "kustos.dev/vault-secrets-version" not in annotations
    assert "Secret" not in objs


def contribution(vault: dict[str, Any]) -> Any:
    """What the Vault contributor gives a ModelDeployment in agent mode."""
    b = body(vault)
    return _agent_attachments(b, vault_of(b))


def test_address_from_config_or_spec_and_a_clear_problem_without_one() -> None:
    saved = context.config()
    try:
        context.set_config(OperatorConfig(images=Images(vault_agent=IMAGE)))
        with pytest.raises(AttachmentProblem) as err:
            contribution(agent_spec())
        assert err.value.reason == "NoVaultAddress"
        context.set_config(OperatorConfig(images=Images(vault_agent=IMAGE),
                                          vault=VaultSettings(address=ADDRESS)))
        att = contribution(agent_spec())
        (cm,) = att.children
        assert json.loads(cm["data"]["init.json"])["vault"]["address"] == ADDRESS
        assert att.init_containers[0]["image"] == IMAGE
        context.set_config(OperatorConfig(vault=VaultSettings(
            address=ADDRESS, allowed_addresses=[ADDRESS])))
        with pytest.raises(AttachmentProblem) as err:
            contribution(agent_spec(address="http://elsewhere:8200"))
        assert err.value.reason == "AddressNotAllowed"
    finally:
        context.set_config(saved)


# The end of the agent's log when the role does not exist (bao agent 2.7, exit_on_err).
AGENT_LOG = """\
2026-12-06T03:04:10.100Z [INFO]  agent.template.server: template server stopped
2026-12-06T03:04:10.100Z [ERROR] agent: runtime error encountered:
  error=
  | Error making API request.
  |\x20
  | URL: PUT http://10.244.0.1:8200/v1/auth/kubernetes/login
  | Code: 400. Errors:
  |\x20
  | * invalid role name "nope"
   exitCode=1
Error encountered during run, refer to logs for more details.
"""


def test_a_failed_agent_init_container_is_the_pods_problem_with_vaults_answer() -> None:
    pod = {"metadata": {"name": "credit-abc"}, "status": {"initContainerStatuses": [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}},
        {"name": va.INIT_CONTAINER, "state": {"waiting": {"reason": "PodInitializing"}},
         "lastState": {"terminated": {"exitCode": 1, "message": AGENT_LOG}}}]}}
    found = problem([pod])
    assert found is not None and found.reason == "VaultAgentFailed"
    assert found.message == (
        "pod credit-abc: the Vault agent could not log in or render the secrets: PUT "
        'http://10.244.0.1:8200/v1/auth/kubernetes/login, Code: 400: invalid role name "nope"')
    # Vault unreachable: no answer block, the agent's own error line.
    line = ('2026-12-06T03:04:10Z [ERROR] agent: runtime error encountered: error="dial tcp '
            '10.244.0.1:8200: connect: connection refused" exitCode=1')
    pod["status"]["initContainerStatuses"][1]["lastState"]["terminated"]["message"] = \
        f"{line}\nError encountered during run, refer to logs for more details.\n"
    found = problem([pod])
    assert found is not None and found.message.endswith(line)
