"""The Helm charts rendered with Helm's own library (helm-python-sdk, Helm 4) and every rendered
manifest validated against the Kubernetes 1.33 schemas (kubernetes-validate), for the default
values and for the configurations in each chart's ci/ directory; values.schema.json refuses bad
values field by field. Run by `cargo test` (tests/charts.rs) with the venv that
.ci/run prepares; CAIRN_KIT_VALUES names a values file freshly written by `provision`."""

import os
import pathlib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHARTS = pathlib.Path(__file__).resolve().parent.parent
KUBE_VERSION = "1.33"
# Kinds whose schemas belong to operators (cert-manager, Prometheus Operator), not Kubernetes.
OPERATOR_KINDS = {"Certificate", "ServiceMonitor"}


def values_of(path):
    return yaml.safe_load(pathlib.Path(path).read_text())


def render(chart, values, name="test"):
    """The rendered manifests as parsed objects, by kind and name."""
    rendered = helm.Chart.load(str(CHARTS / chart)).render(values, name=name, namespace="fl")
    objects = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def configurations():
    for chart in ("participant", "coordinator"):
        for values in sorted((CHARTS / chart / "ci").glob("*.yaml")):
            yield pytest.param(chart, values, id=f"{chart}-{values.stem}")


@pytest.mark.parametrize("chart,values_file", list(configurations()))
def test_renders_lints_and_validates(chart, values_file):
    values = values_of(values_file)
    lint = helm.lint(str(CHARTS / chart), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert lint["errors"] == [], lint
    objects = render(chart, values)
    assert objects
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    for workload in by_kind(objects, "Deployment") + by_kind(objects, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # Only the operator talks to the Kubernetes API, so only it gets a token.
        operator = values.get("operator", {}).get("enabled", False)
        assert pod["automountServiceAccountToken"] is operator
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
    assert by_kind(objects, "NetworkPolicy"), "a NetworkPolicy is rendered"


def test_participant_gpu_and_cert_manager():
    objects = render("participant", values_of(CHARTS / "participant/ci/gpu-certmanager-values.yaml"))
    deployment = by_kind(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--backend=wgpu" in container["args"]
    assert container["image"].endswith("-gpu")
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    certificate = by_kind(objects, "Certificate")[0]["spec"]
    assert certificate["commonName"] == "hopital-nord"
    assert certificate["subject"]["organizationalUnits"] == ["participant"]
    assert certificate["privateKey"] == {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"}
    assert "client auth" in certificate["usages"]
    assert certificate["issuerRef"] == {"name": "federation-ca", "kind": "StepClusterIssuer", "group": "certmanager.step.sm"}
    # The key and certificate come from cert-manager's Secret, the CA from the site's own copy.
    sources = next(v for v in pod["volumes"] if v["name"] == "kit")["projected"]["sources"]
    assert [i["key"] for i in sources[0]["secret"]["items"]] == ["tls.crt", "tls.key"]
    anchor = sources[1]["configMap"]
    assert [i["path"] for i in anchor["items"]] == ["ca.pem"]
    ca = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == anchor["name"])
    assert ca["data"]["ca.pem"] == values_of(CHARTS / "participant/ci/gpu-certmanager-values.yaml")["kit"]["certManager"]["ca"]
    assert by_kind(objects, "Secret") == []
    without_ca = with_change(values_of(CHARTS / "participant/ci/gpu-certmanager-values.yaml"), "kit.certManager.ca", "")
    with pytest.raises(helm.HelmError, match="kit.certManager.ca is required"):
        render("participant", without_ca)


def test_participant_default_has_no_gpu_and_egress_only_to_the_coordinator():
    objects = render("participant", values_of(CHARTS / "participant/ci/default-values.yaml"))
    container = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "--backend=cpu" in container["args"]
    threads = next(e for e in container["env"] if e["name"] == "CAIRN_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu", "divisor": "1"}
    assert "--coordinator=https://fl.example.org:7443" in container["args"]
    assert "--keep-going" not in container["args"]
    following = render("participant", with_change(values_of(CHARTS / "participant/ci/default-values.yaml"), "coordinator.followJobs", True))
    assert "--keep-going" in by_kind(following, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    policy = by_kind(objects, "NetworkPolicy")[0]["spec"]
    assert policy["ingress"] == []
    destinations = [rule["to"][0] for rule in policy["egress"]]
    assert destinations[0] == {"ipBlock": {"cidr": "203.0.113.10/32"}}
    assert destinations[1]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert len(destinations) == 2


def test_participant_policy_is_strict_by_default_and_set_by_values():
    base = values_of(CHARTS / "participant/ci/default-values.yaml")
    args = by_kind(render("participant", base), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allow-plaintext" not in args
    assert {"--min-participants=3", "--min-neighbours=2", "--min-threshold=0.5", "--max-round-attempts=5"} <= set(args)
    assert not any(a.startswith(("--partners", "--max-epsilon")) for a in args)
    assert "--privacy-delta=1e-05" in args
    partners = "# agreed on 2026-11-30\nst-marys sha256:" + "ab" * 32 + "\nhopital-nord\n"
    values = with_change(with_change(base, "policy.partners", partners), "policy.minParticipants", 5)
    values = with_change(values, "policy.allowPlaintext", True)
    values = with_change(with_change(values, "policy.maxEpsilon", 8), "policy.privacyDelta", 1e-6)
    objects = render("participant", values)
    pod = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert {"--allow-plaintext", "--min-participants=5", "--partners=/etc/cairn/policy/partners",
            "--max-epsilon=8", "--privacy-delta=1e-06"} <= set(args)
    config_map = by_kind(objects, "ConfigMap")[0]
    assert config_map["data"]["partners"] == partners
    volume = next(v for v in pod["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "policy")
    assert mount["mountPath"] == "/etc/cairn/policy" and mount["readOnly"] is True
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("chart,field,kind,directory", [
    ("participant", "policy.crl", "Deployment", "/etc/cairn/policy"),
    ("coordinator", "crl", "StatefulSet", "/etc/cairn/crl"),
])
def test_a_revocation_list_reaches_the_process_as_a_file(chart, field, kind, directory):
    crl = "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n"
    default = values_of(CHARTS / chart / "ci/default-values.yaml")
    objects = render(chart, with_change(default, field, crl))
    pod = by_kind(objects, kind)[0]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert f"--crl={directory}/crl.pem" in args
    assert not any(a.startswith("--partners") for a in args)
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == directory)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"])
    assert config_map["data"] == {"crl.pem": crl}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    args = by_kind(render(chart, default), kind)[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--crl") for a in args), "no list, no flag"


def test_a_kit_from_provision_is_the_whole_installation():
    path = os.environ.get("CAIRN_KIT_VALUES")
    if not path:
        message = "CAIRN_KIT_VALUES is not set (tests/charts.rs sets it)"
        if os.environ.get("CI", "") not in ("", "false", "0"):
            pytest.fail(message)
        pytest.skip(message)
    values = values_of(path)
    objects = render("participant", values, name=values["participantId"])
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    secret = by_kind(objects, "Secret")[0]
    assert secret["stringData"]["key.pem"] == values["kit"]["key"]
    assert "BEGIN PRIVATE KEY" in secret["stringData"]["key.pem"]


def test_coordinator_job_dashboard_monitoring_and_helm_test():
    values = values_of(CHARTS / "coordinator/ci/ingress-monitoring-values.yaml")
    objects = render("coordinator", values, name="fl")
    configmaps = {c["metadata"]["name"]: c for c in by_kind(objects, "ConfigMap")}
    assert yaml.safe_load(configmaps["fl-cairn-coordinator-job"]["data"]["job.yaml"]) == values["job"]
    dashboard = configmaps["fl-cairn-coordinator-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert '"title": "Cairn coordinator"' in dashboard["data"]["cairn.json"]
    monitor = by_kind(objects, "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert monitor["path"] == "/metrics" and monitor["authorization"]["type"] == "Bearer"
    pods = by_kind(objects, "Pod")
    assert pods[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pods[0]["spec"]["containers"][0]["command"][-1].endswith("/readyz")
    statefulset = by_kind(objects, "StatefulSet")[0]
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--api-token-file=/etc/cairn/api/tokens" in args
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    grpc = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("-grpc"))
    assert grpc["spec"]["type"] == "LoadBalancer"
    assert by_kind(objects, "Ingress")[0]["spec"]["rules"][0]["host"] == "fl-monitor.example.org"


def test_coordinator_operator_mode_has_rbac_leader_election_and_no_job():
    values = values_of(CHARTS / "coordinator/ci/operator-values.yaml")
    objects = render("coordinator", values, name="fl")
    statefulset = by_kind(objects, "StatefulSet")[0]
    assert statefulset["spec"]["replicas"] == 2
    # The standby is never ready: replicas must not wait for each other.
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert statefulset["spec"]["updateStrategy"] == {"type": "OnDelete"}
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:3] == ["serve", "--kubernetes", "--lease-duration-s=20"]
    assert not any(a.startswith(("--job", "--api-linger-s")) for a in container["args"])
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # The API (and /healthz) exists only while a job runs: no liveness probe, readiness says
    # which replica runs the job.
    assert "livenessProbe" not in container
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["serviceAccountName"] == "fl-cairn-coordinator"
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == "cairn-state"
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert not any(v["name"] == "job" for v in pod["volumes"])
    assert not any(c["metadata"]["name"].endswith("-job") for c in by_kind(objects, "ConfigMap"))
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in by_kind(objects, "Role")[0]["rules"]}
    assert rules == {
        ("cairn.dev", "federatedjobs"): ["list", "watch", "patch"],
        ("cairn.dev", "federatedjobs/status"): ["patch"],
        ("coordination.k8s.io", "leases"): ["get", "create", "patch"],
        ("events.k8s.io", "events"): ["create", "patch"],
    }
    binding = by_kind(objects, "RoleBinding")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fl-cairn-coordinator", "namespace": "fl"}]
    egress = by_kind(objects, "NetworkPolicy")[0]["spec"]["egress"]
    assert egress[-1] == {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    # Without the operator, none of it is rendered.
    plain = render("coordinator", values_of(CHARTS / "coordinator/ci/default-values.yaml"))
    assert not by_kind(plain, "Role") and not by_kind(plain, "ServiceAccount")
    assert "podManagementPolicy" not in by_kind(plain, "StatefulSet")[0]["spec"]


def with_change(base, dotted, value):
    values = yaml.safe_load(yaml.safe_dump(base))
    node = values
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return values


PARTICIPANT_BAD = [
    ("participantId", "St Marys", "participantId"),
    ("coordinator.address", "http://fl.example.org:7443", "coordinator/address"),
    ("coordinator.cidr", "everywhere", "coordinator/cidr"),
    ("data.source", "s3", "data/source"),
    ("gpu.count", 0, "gpu/count"),
    ("model", "resnet", "model"),
    ("kit.cert", "not a certificate", "kit/cert"),
    ("kit.certManager.ca", "not a certificate", "kit/certManager/ca"),
    ("kit.certManager.issuerGroup", "Step CA", "kit/certManager/issuerGroup"),
    ("image.pullPolicy", "Sometimes", "image/pullPolicy"),
    ("replicas", 2, "replicas"),
    ("coordinator.followJobs", "yes", "coordinator/followJobs"),
    ("policy.minParticipants", 2, "policy/minParticipants"),
    ("policy.minThreshold", 0.4, "policy/minThreshold"),
    ("policy.maxRoundAttempts", 0, "policy/maxRoundAttempts"),
    ("policy.maxEpsilon", 0, "policy/maxEpsilon"),
    ("policy.privacyDelta", 0.5, "policy/privacyDelta"),
    ("policy.partners", "St Marys\n", "policy/partners"),
    ("policy.partners", "alpha sha1:00\n", "policy/partners"),
    ("policy.crl", "not a revocation list", "policy/crl"),
    ("policy.trustCoordinator", True, "policy"),
]

COORDINATOR_BAD = [
    ("job.rounds", 0, "job/rounds"),
    ("job.model", "transformer", "job/model"),
    ("job.participants", ["Bad Name"], "job/participants"),
    ("job.secure_aggregation.threshold", 0.4, "job/secure_aggregation/threshold"),
    ("tls.existingSecret", "", "tls/existingSecret"),
    ("grpc.service.type", "External", "grpc/service/type"),
    ("state.size", "10GB", "state/size"),
    ("serviceMonitor.interval", "often", "serviceMonitor/interval"),
    ("job", {}, "job"),
    ("operator.replicas", 5, "operator/replicas"),
    ("operator.leaseDurationSeconds", 1, "operator/leaseDurationSeconds"),
    ("operator.apiServer.cidr", "the cluster", "operator/apiServer/cidr"),
    ("crl", "not a revocation list", "crl"),
]


def test_the_operator_refuses_a_job_in_values():
    values = with_change(values_of(CHARTS / "coordinator/ci/default-values.yaml"), "operator.enabled", True)
    with pytest.raises(helm.HelmError) as refused:
        render("coordinator", values)
    assert "job" in str(refused.value), str(refused.value)


@pytest.mark.parametrize("chart,field,value,path", [("participant", *c) for c in PARTICIPANT_BAD] + [("coordinator", *c) for c in COORDINATOR_BAD])
def test_values_schema_refuses_bad_values(chart, field, value, path):
    base = values_of(CHARTS / chart / "ci/default-values.yaml")
    with pytest.raises(helm.HelmError) as refused:
        render(chart, with_change(base, field, value))
    assert path in str(refused.value) or field.split(".")[-1] in str(refused.value), str(refused.value)


def test_participant_needs_exactly_one_kit_source():
    base = values_of(CHARTS / "participant/ci/default-values.yaml")
    both = with_change(base, "kit.certManager", {"enabled": True, "issuerName": "ca"})
    with pytest.raises(helm.HelmError) as refused:
        render("participant", both)
    assert "set exactly one of kit.existingSecret" in str(refused.value)


def crd():
    return yaml.safe_load((CHARTS / "coordinator/crds/federatedjob.yaml").read_text())


def test_the_federatedjob_crd_is_a_valid_crd():
    kubernetes_validate.validate(crd(), KUBE_VERSION, strict=True)


def federated_job_errors(resource):
    import jsonschema

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(resource)]


@pytest.mark.parametrize("manifest", sorted((CHARTS.parent / "examples/kubernetes").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_federated_jobs_match_the_crd(manifest):
    resource = yaml.safe_load(manifest.read_text())
    assert resource["kind"] == "FederatedJob"
    assert federated_job_errors(resource) == []


def test_a_malformed_federated_job_is_refused_by_the_crd_schema():
    resource = yaml.safe_load((CHARTS.parent / "examples/kubernetes/federatedjob-mnist.yaml").read_text())
    resource["spec"]["rounds"] = "fifty"
    resource["spec"]["model"] = "transformer"
    del resource["spec"]["participants"]
    errors = " | ".join(federated_job_errors(resource))
    assert "'fifty' is not of type 'integer'" in errors, errors
    assert "'transformer' is not of type 'object'" in errors, errors
    assert "'participants' is a required property" in errors, errors
